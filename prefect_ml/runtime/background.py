"""One background writer per process for records nothing waits for (MLflow writes, Prefect artifacts).

A step's critical path is its decision, its command and its publish. What only records it (MLflow
params, metrics and run status; the cache-key and lineage artifacts) is queued here and applied in
order by one daemon thread. The pipeline flushes the queue before its flow returns, on success and
on failure (`flush` in a `finally`), and the process flushes it at exit, so nothing is lost.

A write queued with `in_context=True` runs inside a copy of the caller's `contextvars` context, so a
Prefect call made from the writer thread (`create_markdown_artifact`, `emit_event`) still belongs to
the task run that queued it.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import queue
import threading
from collections.abc import Callable

_logger = logging.getLogger("prefect_ml.background")


class Writer:
    """One daemon thread that applies queued writes in order; `flush` waits for all queued so far."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, Callable[[], object]] | None] = queue.Queue()
        self._errors: list[str] = []
        self._errors_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, what: str, fn: Callable[[], object], *, in_context: bool = False) -> None:
        """Queue `fn` (described by `what` in an error report)."""
        if in_context:
            ctx = contextvars.copy_context()
            call: Callable[[], object] = lambda: ctx.run(fn)  # noqa: E731
        else:
            call = fn
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="prefect-ml-writer", daemon=True)
                self._thread.start()
        self._queue.put((what, call))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                what, fn = item
                try:
                    fn()
                except Exception as exc:
                    with self._errors_lock:
                        self._errors.append(f"{what}: {type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 120.0) -> list[str]:
        """Wait until every write queued so far is applied; return (and forget) the failures."""
        done = threading.Event()
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(("flush", done.set))
            if not done.wait(timeout):
                return [f"background writes not flushed within {timeout:.0f} s ({self._queue.qsize()} queued)"]
        with self._errors_lock:
            errors, self._errors = self._errors, []
        return errors


writer = Writer()


def submit(what: str, fn: Callable[[], object], *, in_context: bool = False) -> None:
    writer.submit(what, fn, in_context=in_context)


def flush(timeout: float = 120.0, warn: Callable[[str], None] | None = None) -> list[str]:
    """Apply every queued write now; each failure goes to `warn` (default: this module's logger)."""
    errors = writer.flush(timeout)
    for e in errors:
        (warn or _logger.warning)(f"a background write failed: {e}")
    return errors


atexit.register(flush, 60.0)
