"""Pipelines as Prefect flows on the process infrastructure, against a real Prefect API and MLflow store."""

import textwrap
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from prefect_ml import Input, Output, command, gate, pipeline
from prefect_ml.errors import GateError, StepFailed, StepInputError
from tests.conftest import task_runs


def script(dir: Path, name: str, body: str) -> None:
    (dir / name).write_text(textwrap.dedent(body))


@pytest.fixture
def tools(tmp_path):
    """Tiny components: `sleepy` sleeps then writes a file; `count` writes metrics; `fail` exits 3."""
    code = tmp_path / "code"
    code.mkdir()
    script(code, "sleepy.py", """
        import sys, time, pathlib
        time.sleep(float(sys.argv[1]))
        pathlib.Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(sys.argv[2]) / "done.txt").write_text(sys.argv[3])
    """)
    script(code, "touch.py", """
        import sys, pathlib
        pathlib.Path(sys.argv[1]).write_text("started")
    """)
    script(code, "fail.py", """
        import sys
        print("about to fail")
        sys.exit(3)
    """)
    sleepy = command(name="sleepy", code=code,
                     command="python sleepy.py ${{inputs.seconds}} ${{outputs.out}} ${{inputs.tag}}",
                     inputs={"seconds": Input(type="number", default=2.0), "tag": Input(type="string", default="x")},
                     outputs={"out": Output(type="uri_folder")})
    return code, sleepy


def test_independent_steps_run_concurrently(env, tools):
    _, sleepy = tools

    @pipeline
    def two_sleeps():
        a = sleepy(seconds=2.0, tag="a")
        b = sleepy(seconds=2.0, tag="b")
        return {"a": a.outputs.out, "b": b.outputs.out}

    state = two_sleeps(return_state=True)
    out = state.result()
    assert Path(out["a"].removeprefix("file://"), "done.txt").read_text() == "a"
    runs = {r.name: r for r in task_runs(state, names=["sleepy", "sleepy-2"])}
    a, b = runs["sleepy"], runs["sleepy-2"]
    assert a.state.is_completed() and b.state.is_completed()
    # both started before either ended: they overlapped in time
    assert a.start_time < b.end_time and b.start_time < a.end_time


def test_consumer_waits_for_producer_and_values_stay_literal(env, tmp_path):
    code = tmp_path / "c"
    code.mkdir()
    script(code, "echo.py", """
        import sys, pathlib
        pathlib.Path(sys.argv[2]).write_text(sys.argv[1])
    """)
    script(code, "cat.py", """
        import sys, pathlib
        pathlib.Path(sys.argv[2]).mkdir(exist_ok=True)
        (pathlib.Path(sys.argv[2]) / "copy.txt").write_text(pathlib.Path(sys.argv[1]).read_text())
    """)
    echo = command(name="echo", code=code, command="python echo.py ${{inputs.text}} ${{outputs.file}}",
                   inputs={"text": "string"}, outputs={"file": "uri_file"})
    cat = command(name="cat", code=code, command="python cat.py ${{inputs.src}} ${{outputs.dst}}",
                  inputs={"src": "uri_file"}, outputs={"dst": "uri_folder"})
    evil = "a b; echo pwned > /tmp/prefect-ml-pwned | $(id) `id` 'q' \"dq\""

    @pipeline
    def chain(text: str):
        return cat(src=echo(text=text).outputs.file).outputs.dst

    dst = chain(text=evil)
    assert Path(dst.removeprefix("file://"), "copy.txt").read_text() == evil
    assert not Path("/tmp/prefect-ml-pwned").exists()


def test_failed_step_reports_exit_code_and_publishes_nothing(env, tools):
    code, _ = tools
    fail = command(name="fail", code=code, command="python fail.py ${{outputs.o}}", outputs={"o": "uri_folder"})

    @pipeline
    def failing():
        return fail().outputs.o

    with pytest.raises(StepFailed, match=r"step 'fail' failed: exit code 3\. Last lines:\nabout to fail"):
        failing()
    root = env / "artifacts"
    assert not list((root / "steps").glob("*")) if (root / "steps").exists() else True
    assert not list((root / ".staging").iterdir())


def test_missing_required_input_fails_before_anything_runs(env, tools):
    code, _ = tools
    marker = code / "started.txt"
    touch = command(name="touch", code=code, command="python touch.py " + str(marker) + " ${{inputs.n}}",
                    inputs={"n": Input(type="integer")}, outputs={})

    @pipeline
    def p():
        touch()

    with pytest.raises(StepInputError,
                       match=r"component 'touch', input 'n' is required but was not given; pass n=\.\.\."):
        p()

    @pipeline
    def q():
        touch(n="three")

    with pytest.raises(StepInputError, match=r"input 'n': expects an integer, got str 'three'"):
        q()
    assert not marker.exists()


def test_missing_data_uri_fails_before_anything_runs(env, tools):
    code, _ = tools
    use = command(name="use", code=code, command="python touch.py ${{inputs.data}}", inputs={"data": "uri_file"})

    @pipeline
    def p():
        use(data=str(code / "nope.csv"))

    with pytest.raises(StepInputError, match=r"component 'use', input 'data': data .*nope\.csv' does not exist"):
        p()


def test_gate_on_missing_metric_is_an_error(env, tmp_path):
    code = tmp_path / "m"
    code.mkdir()
    script(code, "m.py", """
        import json, sys
        json.dump({"auc": 0.8}, open(sys.argv[1], "w"))
    """)
    metrics = command(name="metrics", code=code, command="python m.py ${{outputs.metrics}}",
                      outputs={"metrics": "metrics"})

    @pipeline
    def gated():
        m = metrics()
        return gate(m.outputs.metrics, "auc", ">=", 0.5), gate(m.outputs.metrics, "f1", ">=", 0.5)

    with pytest.raises(GateError, match=r"metric 'f1' is not in the metrics output of step 'metrics'.*"
                                        r"available metrics: \['auc'\]"):
        gated()


def test_component_called_outside_a_pipeline_runs_at_once(env, tools):
    _, sleepy = tools
    step = sleepy(seconds=0.1, tag="solo")
    assert Path(step.outputs.out.uri().removeprefix("file://"), "done.txt").read_text() == "solo"


def test_timeout_stops_the_step_process_and_publishes_nothing(env, tmp_path):
    code = tmp_path / "slow"
    code.mkdir()
    script(code, "slow.py", """
        import os, sys, time, pathlib
        pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
        time.sleep(60)
    """)
    pidfile = tmp_path / "pid"
    slow = command(name="slow", code=code, command="python slow.py ${{inputs.pidfile}} ${{outputs.o}}",
                   inputs={"pidfile": "string"}, outputs={"o": "uri_folder"}, timeout=3)

    @pipeline
    def p():
        return slow(pidfile=str(pidfile)).outputs.o

    with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
        p()
    import os
    import time

    pid = int(pidfile.read_text())
    for _ in range(50):  # the process group is terminated on the way out
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"step process {pid} still alive after the timeout")
    assert not list((env / "artifacts" / ".staging").iterdir())


def test_output_streams_into_task_run_logs_while_the_step_runs(env, tmp_path):
    code = tmp_path / "talk"
    code.mkdir()
    script(code, "talk.py", """
        import time
        for i in range(4):
            print(f"tick {i}")
            time.sleep(1)
    """)
    talk = command(name="talk", code=code, command="python talk.py")

    @pipeline
    def p():
        talk()

    state = p(return_state=True)
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    # logs reach the API through Prefect's background log worker: give the last batch a moment
    deadline = time.monotonic() + 20
    while True:
        with get_client(sync_client=True) as c:
            logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
            run = next(r for r in task_runs(state, names=["talk"]) if r.name == "talk")
        ticks = sorted(log.timestamp for log in logs if log.message.startswith("tick "))
        if len(ticks) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(ticks) == 4
    # the first line was logged (by its own timestamp) well before the step ended
    assert (run.end_time - ticks[0]).total_seconds() > 2
