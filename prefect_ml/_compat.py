"""Every use of private Prefect and fsspec API, in one place.

Each function here reaches into something a library does not promise to keep. They fail soft
where a fallback exists, and `tests/unit/test_compat.py` checks each one against the installed
versions, so an upgrade that changes one fails a test instead of a pipeline run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def strip_protocol(fs: Any, uri: str) -> str:
    """The in-filesystem path of `uri` for the fsspec filesystem `fs`.

    fsspec's public `url_to_fs` would make a new filesystem per call; ours are cached with their
    options, so we use the classmethod every fsspec implementation defines.
    """
    return str(fs._strip_protocol(uri))


def block_document_name(block: Any) -> str | None:
    """The name a block was saved or loaded under (None for an unsaved block).

    Prefect keeps it in a private attribute; there is no public accessor in Prefect 3.
    """
    name = getattr(block, "_block_document_name", None)
    return str(name) if name else None


def block_schema_checksum(block_type: Any) -> str:
    """The checksum Prefect registers a block type's schema under (to see whether the server has it)."""
    return str(block_type._calculate_schema_checksum())


def task_cancel_event() -> threading.Event | None:
    """The event Prefect's thread-pool task runner sets when the flow run is cancelled (or terminated).

    Prefect sets it from `cancel_all()` and then waits for the task's thread; without watching it a
    step would run to completion after a cancel. None when it cannot be found.
    """
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        flow_ctx, task_ctx = FlowRunContext.get(), TaskRunContext.get()
        if not flow_ctx or not task_ctx:
            return None
        events = getattr(flow_ctx.task_runner, "_cancel_events", None) or {}
        event = events.get(task_ctx.task_run.id)
        return event if isinstance(event, threading.Event) else None
    except Exception:
        return None


def skip_heartbeat_join(is_ours: Callable[[Any], bool]) -> bool:
    """Stop Prefect's flow engine from joining the heartbeat thread at the end of our flows.

    Prefect 3.9's `flow_engine._send_heartbeats` runs a heartbeat thread that sleeps in 1 s steps
    and, for sync flows, joins it with `timeout=2` when the flow ends: every flow run waits for the
    next one-second tick (~0.5-1 s of a cached pipeline's wall time). Async flows already pass
    `join_on_exit=False`; we do the same for flows where `is_ours(engine.flow)` is true.
    Heartbeats still work: the thread is unchanged and emits on its schedule while the flow runs;
    after the stop event it returns at its next tick without emitting (it is a daemon thread).

    Returns False (and changes nothing) when Prefect no longer has the function we wrap.
    Idempotent. Upstream: see docs/benchmarks.md ("flow floor").
    """
    import inspect

    try:
        import prefect.flow_engine as flow_engine

        original = flow_engine._send_heartbeats
    except (ImportError, AttributeError):
        return False
    if getattr(original, "_prefect_ml_wrapped", False):
        return True
    if "join_on_exit" not in inspect.signature(original).parameters:
        return False

    @contextmanager
    def _send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        if join_on_exit and is_ours(getattr(engine, "flow", None)):
            join_on_exit = False
        with original(engine, join_on_exit=join_on_exit):
            yield

    _send_heartbeats._prefect_ml_wrapped = True  # type: ignore[attr-defined]
    _send_heartbeats._prefect_ml_original = original  # type: ignore[attr-defined]
    flow_engine._send_heartbeats = _send_heartbeats
    return True
