"""Every use of private Prefect and fsspec API, in one place.

Each function here reaches into something a library does not promise to keep. They fail soft
where a fallback exists, and `tests/unit/test_compat.py` checks each one against the installed
versions, so an upgrade that changes one fails a test instead of a pipeline run.
"""

from __future__ import annotations

import threading
from typing import Any, Optional


def strip_protocol(fs: Any, uri: str) -> str:
    """The in-filesystem path of `uri` for the fsspec filesystem `fs`.

    fsspec's public `url_to_fs` would make a new filesystem per call; ours are cached with their
    options, so we use the classmethod every fsspec implementation defines.
    """
    return str(fs._strip_protocol(uri))


def block_document_name(block: Any) -> Optional[str]:
    """The name a block was saved or loaded under (None for an unsaved block).

    Prefect keeps it in a private attribute; there is no public accessor in Prefect 3.
    """
    name = getattr(block, "_block_document_name", None)
    return str(name) if name else None


def block_schema_checksum(block_type: Any) -> str:
    """The checksum Prefect registers a block type's schema under (to see whether the server has it)."""
    return str(block_type._calculate_schema_checksum())


def task_cancel_event() -> Optional[threading.Event]:
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
    except Exception:  # noqa: BLE001 - a missing cancel hook must never fail a step
        return None
