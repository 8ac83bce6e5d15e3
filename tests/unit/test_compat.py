"""Each private Prefect/fsspec access in `prefect_ml._compat` against the installed versions.

When one of these fails after an upgrade, fix `_compat` (and only `_compat`)."""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import fsspec

from prefect_ml import _compat


def test_strip_protocol_for_local_and_memory_filesystems():
    assert _compat.strip_protocol(fsspec.filesystem("memory"), "memory://bucket/a/b") == "/bucket/a/b"
    assert _compat.strip_protocol(fsspec.filesystem("file"), "file:///tmp/x") == "/tmp/x"


def test_block_document_name_and_schema_checksum():
    from prefect_ml.infrastructure.process import ProcessStepInfrastructure

    block = ProcessStepInfrastructure()
    assert _compat.block_document_name(block) is None
    block._block_document_name = "cpu"
    assert _compat.block_document_name(block) == "cpu"
    assert _compat.block_schema_checksum(ProcessStepInfrastructure).startswith("sha256:")


def test_thread_pool_task_runner_keeps_cancel_events():
    from prefect.task_runners import ThreadPoolTaskRunner

    runner = ThreadPoolTaskRunner()
    assert isinstance(getattr(runner, "_cancel_events", None), dict)
    assert _compat.task_cancel_event() is None  # outside a task run: nothing to watch


def test_heartbeat_wrapper_skips_the_join_only_for_our_flows(monkeypatch):
    import prefect.flow_engine as flow_engine

    assert "join_on_exit" in inspect.signature(flow_engine._send_heartbeats).parameters
    calls = []

    @contextmanager
    def fake(engine, join_on_exit=True):
        calls.append((engine.flow, join_on_exit))
        yield

    monkeypatch.setattr(flow_engine, "_send_heartbeats", fake)
    assert _compat.skip_heartbeat_join(lambda flow: flow == "ours")
    assert _compat.skip_heartbeat_join(lambda flow: flow == "ours")  # idempotent: wraps once
    wrapped = flow_engine._send_heartbeats

    class Engine:
        def __init__(self, flow):
            self.flow = flow

    with wrapped(Engine("ours")):
        pass
    with wrapped(Engine("theirs")):
        pass
    assert calls == [("ours", False), ("theirs", True)]


def test_the_engine_still_calls_send_heartbeats_by_module_lookup():
    """The wrapper works only while the sync engine looks the function up in its module at call time."""
    import prefect.flow_engine as flow_engine

    source = inspect.getsource(flow_engine.FlowRunEngine)
    assert "_send_heartbeats(self)" in source
