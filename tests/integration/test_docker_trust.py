"""Trust boundaries of steps (issue #12), against the real Docker engine and real processes.

A Docker step mounts only what it needs (code and inputs read-only, its own staging dirs read-write,
no PREFECT_ML_HOME, no MLflow store), runs as a non-root user with no network by default, logs to
MLflow through a private relay store, and the sklearn-cpu image can save models with skops. Steps
die with their pipeline: kill -9 leaves no process step behind and the next Docker step sweeps the
containers; SIGTERM stops a process step before it publishes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import ours
from tests.paths import REPO
from tests.servers import DEFAULT_BASE_IMAGE


@pytest.fixture
def base_image(monkeypatch, docker_client) -> str:
    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    monkeypatch.setenv("PREFECT_ML_BASE_IMAGE", image)
    return image


@pytest.fixture(scope="module")
def sklearn_cpu_image(docker_client, tmp_path_factory):
    """The sklearn-cpu environment's image (built on first use: a few minutes; then a tag lookup)."""
    from prefect_ml import environments

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_ML_BASE_IMAGE", os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE)
        mp.setenv("PREFECT_ML_HOME", str(tmp_path_factory.mktemp("build-home")))
        return environments.ensure_image("sklearn-cpu", docker_client, start=REPO / "components",
                                         pull_policy="never")


def step_code(tmp_path: Path, name: str, source: str) -> Path:
    code = tmp_path / f"code-{name}"
    code.mkdir(mode=0o755)
    (code / f"{name}.py").write_text(textwrap.dedent(source))
    return code


def published_markers(home: Path) -> list[Path]:
    return list((home / "artifacts" / "steps").glob("*/_COMPLETE.json"))


# --- 1. mounts and user -------------------------------------------------------------------------------

PROBE = """
    import json, os, sys
    out, data, home = sys.argv[1], sys.argv[2], sys.argv[3]
    report = {"uid": os.getuid(), "gid": os.getgid()}
    def try_write(path):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("pwned")
            return "written"
        except OSError as exc:
            return type(exc).__name__ + ": " + str(exc.strerror)
    report["code"] = try_write("/prefect-ml/code/pwned.txt")
    report["input"] = try_write(data)
    report["home_artifacts"] = try_write(os.path.join(home, "artifacts", "pwned.txt"))
    report["home_db_dir"] = try_write(os.path.join(home, "pwned.txt"))
    points = [line.split()[4] for line in open("/proc/self/mountinfo").read().splitlines()]
    report["home_mounted"] = any(p == home or p.startswith(home + "/") for p in points)
    report["mounts"] = sorted(p for p in points if p.startswith("/prefect-ml"))
    json.dump(report, open(out, "w"))
    print("probe done")
"""


def test_docker_step_mounts_only_what_it_needs_and_runs_as_non_root(env, base_image, tmp_path, docker_client):
    from prefect_ml import Input, Output, command, pipeline

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "d.csv").write_text("a\n1\n")
    code = step_code(tmp_path, "probe", PROBE)
    probe = command(name=f"probe_{uuid.uuid4().hex[:6]}", code=code, cache=False,
                    command="python3 probe.py ${{outputs.report}} ${{inputs.data}} ${{inputs.home}}",
                    inputs={"data": Input(type="uri_file"), "home": Input(type="string")},
                    outputs={"report": Output(type="uri_file")})

    @pipeline(name="probe", infrastructure="docker")
    def probing(data: str, home: str):
        return probe(data=data, home=home).outputs.report

    out = probing(str(data / "d.csv"), str(env))
    report_path = Path(out.removeprefix("file://"))
    report = json.loads(report_path.read_text())
    print(report)
    assert report["uid"] != 0 and (os.getuid() != 0 or report["uid"] == 65534), report
    assert report["code"].startswith("OSError") or "Read-only" in report["code"], report
    assert "Read-only" in report["input"], report
    assert not report["home_mounted"], report  # neither PREFECT_ML_HOME nor the MLflow store's dir
    assert not (env / "artifacts" / "pwned.txt").exists() and not (env / "pwned.txt").exists()
    assert not (code / "pwned.txt").exists() and (data / "d.csv").read_text() == "a\n1\n"
    assert set(report["mounts"]) <= {"/prefect-ml/code", "/prefect-ml/inputs/data/d.csv", "/prefect-ml/outputs",
                                     "/prefect-ml/mlruns"}, report
    # what the non-root user wrote is the host user's again
    assert report_path.stat().st_uid == os.getuid()


def test_an_input_the_step_user_cannot_read_fails_before_the_container_starts(base_image, tmp_path, docker_client):
    """`--param data=file:///etc/shadow`: mounted read-only, and the non-root user may not read it: the step
    fails at once naming the file, instead of a root container reading it."""
    if os.getuid() != 0:
        pytest.skip("needs a root pipeline (the default container user is then nobody)")
    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    secret = tmp_path / "secret.txt"
    secret.write_text("root only")
    secret.chmod(0o600)
    code = step_code(tmp_path, "cat", "import sys\nprint(open(sys.argv[1]).read())\n")
    job = StepJob("leak", "python3 cat.py ${{inputs.data}}", code, {}, {"data": secret}, {},
                  labels={"prefect-ml.step": "leak"})
    lines: list[str] = []
    with pytest.raises(InfrastructureError, match=r"input 'data' .*secret.txt is not readable by the container "
                                                  r"user 65534:65534 .*-rw-------"):
        DockerStepInfrastructure(pull_policy="never").run(job, lines.append)
    assert "root only" not in "\n".join(lines)
    assert not ours(docker_client, **{"prefect-ml.step": "leak"})
    # the user's choice: a block that runs as root may read it (documented)
    outcome = DockerStepInfrastructure(pull_policy="never", user="0:0").run(job, lines.append)
    assert outcome.exit_code == 0 and "root only" in lines


# --- 2. network ---------------------------------------------------------------------------------------

CONNECT = """
    import socket, sys
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3).close()
        print("CONNECTED")
    except OSError as exc:
        print("REFUSED", exc)
"""


def test_docker_steps_have_no_network_unless_the_block_opts_in(base_image, tmp_path, docker_client):
    """A step could otherwise reach loopback services such as an unauthenticated Prefect API (and its Secret
    blocks): by default it has no network at all; `network_mode="host"` is an explicit choice."""
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    port = server.getsockname()[1]
    accepted: list = []

    def accept():
        try:
            while True:
                conn, _ = server.accept()
                accepted.append(1)
                conn.close()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    code = step_code(tmp_path, "connect", CONNECT)
    job = StepJob("net", f"python3 connect.py {port}", code, {}, {}, {}, labels={"prefect-ml.step": "net"})
    try:
        assert DockerStepInfrastructure().network_mode == "none"
        lines: list[str] = []
        DockerStepInfrastructure(pull_policy="never").run(job, lines.append)
        assert any(line.startswith("REFUSED") for line in lines), lines
        assert not accepted
        lines = []
        DockerStepInfrastructure(pull_policy="never", network_mode="host").run(job, lines.append)
        assert "CONNECTED" in lines, lines
    finally:
        server.close()


# --- 6. MLflow inside a step --------------------------------------------------------------------------

LOGS_TO_MLFLOW = """
    import os, sys
    import mlflow
    expected = os.environ["MLFLOW_RUN_ID"]  # mlflow unsets it when start_run() reads it
    with mlflow.start_run() as run:
        assert run.info.run_id == expected, (run.info.run_id, expected)
        for step in range(3):
            mlflow.log_metric("inner_loss", 1.0 / (step + 1), step=step)
        mlflow.log_param("inner_param", "from-the-container")
        mlflow.set_tag("inner_tag", "yes")
        mlflow.log_text("hello from the step", "notes/hello.txt")
    open(sys.argv[1], "w").write("ok")
    print("logged to", os.environ["MLFLOW_TRACKING_URI"])
"""


@pytest.mark.parametrize("store", ["default sqlite", "relative sqlite"])
def test_mlflow_logging_inside_a_docker_step_reaches_the_step_run(store, env, base_image, sklearn_cpu_image,
                                                                  tmp_path, monkeypatch, docker_client):
    from mlflow.tracking import MlflowClient

    from prefect_ml import Output, command, pipeline

    if store == "relative sqlite":
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
        uri = "sqlite:///mlflow.db"
    else:
        uri = f"sqlite:///{env / 'mlflow.db'}"
    monkeypatch.setenv("PREFECT_ML_ENVIRONMENTS_DIR", str(REPO / "environments"))
    code = step_code(tmp_path, "logs", LOGS_TO_MLFLOW)
    logs = command(name=f"logs_{uuid.uuid4().hex[:6]}", code=code, environment="sklearn-cpu", cache=False,
                   command="python logs.py ${{outputs.done}}", outputs={"done": Output(type="uri_file")})

    @pipeline(name="logs-to-mlflow", infrastructure="docker")
    def logging_pipeline():
        return logs().result()

    state = logging_pipeline(return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    run = MlflowClient(tracking_uri=uri).get_run(result.mlflow_run_id)
    assert run.data.metrics["inner_loss"] == pytest.approx(1 / 3)
    history = MlflowClient(tracking_uri=uri).get_metric_history(result.mlflow_run_id, "inner_loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert run.data.params["inner_param"] == "from-the-container"
    assert run.data.tags["inner_tag"] == "yes"
    assert [f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(result.mlflow_run_id, "notes")] == [
        "notes/hello.txt"]
    assert not list((env / "staging").glob("mlruns-*"))  # the relay store is gone


def test_relay_skips_links_the_step_left_in_its_store(tmp_path):
    """What the container wrote is untrusted: a param that is a link to a host file is not read."""
    from prefect_ml.infrastructure.container import _init_relay_store, read_relay

    run_id = uuid.uuid4().hex
    _init_relay_store(tmp_path, run_id, "s")
    secret = tmp_path.parent / "host-secret.txt"
    secret.write_text("host secret")
    (tmp_path / "0" / run_id / "params" / "leak").symlink_to(secret)
    (tmp_path / "0" / run_id / "params" / "ok").write_text("fine")
    os.mkfifo(tmp_path / "0" / run_id / "metrics" / "fifo")
    params, metrics, _tags, artifacts = read_relay(tmp_path)
    assert params == {"ok": "fine"} and not metrics and not artifacts


def test_relay_keeps_the_runs_input_params_and_says_so(tmp_path):
    from mlflow.tracking import MlflowClient

    from prefect_ml.infrastructure.container import _init_relay_store, relay_into_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("relay")).info.run_id
    client.log_param(run_id, "x", "1")
    relay = tmp_path / "relay"
    _init_relay_store(relay, run_id, "s")
    (relay / "0" / run_id / "params" / "x").write_text("2")
    (relay / "0" / run_id / "params" / "y").write_text("3")
    (relay / "0" / run_id / "params" / "lr").write_text("0.5")  # an input whose param write is still queued
    (relay / "0" / run_id / "metrics" / "loss").write_text("1700000000000 0.25 4\n")
    lines: list[str] = []
    assert relay_into_run(relay, uri, run_id, lines.append, inputs={"lr": "0.1", "data": None}) == 2
    run = client.get_run(run_id)
    assert run.data.params == {"x": "1", "y": "3"} and run.data.metrics == {"loss": 0.25}
    assert any("the step logged param 'x'='2' but its run already has x='1'" in line for line in lines), lines
    assert any("param 'lr'='0.5' but its run already has lr='0.1'" in line for line in lines), lines


# --- 7. skops ----------------------------------------------------------------------------------------

SAVES_WITH_SKOPS = """
    import sys
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    mlflow.sklearn.save_model(model, sys.argv[1], pip_requirements=["scikit-learn"])  # MLflow 3's default: skops
    print(open(sys.argv[1] + "/MLmodel").read())
"""


def test_sklearn_cpu_image_saves_models_with_mlflows_default_skops(env, base_image, sklearn_cpu_image, tmp_path,
                                                                   monkeypatch, docker_client):
    from prefect_ml import Output, command, pipeline

    monkeypatch.setenv("PREFECT_ML_ENVIRONMENTS_DIR", str(REPO / "environments"))
    code = step_code(tmp_path, "save", SAVES_WITH_SKOPS)
    save = command(name=f"save_{uuid.uuid4().hex[:6]}", code=code, environment="sklearn-cpu", cache=False,
                   command="python save.py ${{outputs.model}}", outputs={"model": Output(type="mlflow_model")})

    @pipeline(name="skops-default", infrastructure="docker")
    def saving():
        return save().outputs.model

    model_dir = Path(saving().removeprefix("file://"))
    assert "serialization_format: skops" in (model_dir / "MLmodel").read_text()


# --- 10. termination ---------------------------------------------------------------------------------

PIPELINE_SCRIPT = """
import sys
from prefect_ml import Output, command, pipeline
name, code, infra, script = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
step = command(name=name, code=code, command=f"python3 {script} ${{{{outputs.out}}}}",
               outputs={"out": Output(type="uri_file")})

@pipeline(name="terminated", infrastructure=infra)
def terminated():
    step().result()

terminated()
"""

# writes its pid and a background child's pid, then runs for a long time; on SIGTERM it writes its output
# and exits 0, so a step that is merely sent SIGTERM would look successful
STUBBORN_STEP = """
import os, signal, subprocess, sys, time
out = sys.argv[1]
def finish(*_):
    open(out, "w").write("written after SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
child = subprocess.Popen(["sleep", "300"])
open(os.environ["PIDS_FILE"], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_pipeline(tmp_path: Path, env_home: Path, name: str, infra: str, step_source: str,
                    extra_env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    from prefect.settings import get_current_settings

    code = step_code(tmp_path, "stubborn", step_source)
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE_SCRIPT)
    pids = tmp_path / "pids.txt"
    child_env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url), "PYTHONPATH": str(REPO),
                 "PIDS_FILE": str(pids), "PREFECT_ML_HOME": str(env_home), **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, str(script), name, str(code), infra, "stubborn.py"], env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, pids


def _wait_for(cond, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"the pipeline ended early:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out; pipeline output:\n{proc.communicate()[0][-4000:]}")


def test_kill_9_of_the_pipeline_kills_its_process_step_and_what_it_started(env, tmp_path):
    proc, pids = _start_pipeline(tmp_path, env, f"orphan_{uuid.uuid4().hex[:6]}", "process", STUBBORN_STEP)
    step_pid = child_pid = 0
    try:
        _wait_for(lambda: pids.exists() and pids.read_text().strip(), 120, proc)
        step_pid, child_pid = map(int, pids.read_text().split())
        assert _alive(step_pid) and _alive(child_pid)
        proc.kill()  # SIGKILL: no handler, no atexit, no finally runs in the pipeline process
        proc.wait()
        killed = time.monotonic()
        while time.monotonic() - killed < 10 and (_alive(step_pid) or _alive(child_pid)):
            time.sleep(0.05)
        print(f"step and its child gone {time.monotonic() - killed:.2f} s after kill -9 of the pipeline")
        assert not _alive(step_pid), "the step's process outlived its pipeline"
        assert not _alive(child_pid), "a process the step started outlived its pipeline"
        assert not published_markers(env)
    finally:
        for pid in (step_pid, child_pid):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_sigterm_stops_a_process_step_and_publishes_nothing(env, tmp_path):
    """A worker cancels a flow run with SIGTERM: the step must stop, not run on and publish (the step here even
    exits 0 on SIGTERM after writing its output)."""
    proc, pids = _start_pipeline(tmp_path, env, f"term_{uuid.uuid4().hex[:6]}", "process", STUBBORN_STEP)
    step_pid = child_pid = 0
    try:
        _wait_for(lambda: pids.exists() and pids.read_text().strip(), 120, proc)
        step_pid, child_pid = map(int, pids.read_text().split())
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
        print(f"pipeline ended {time.monotonic() - sent:.2f} s after SIGTERM")
        assert proc.returncode != 0, out[-3000:]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_alive(step_pid) or _alive(child_pid)):
            time.sleep(0.05)
        assert not _alive(step_pid) and not _alive(child_pid)
        assert not published_markers(env), "a terminated pipeline published its step"
    finally:
        for pid in (step_pid, child_pid):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


SLEEPING_STEP = """
import os, sys, time
print("container up", flush=True)
time.sleep(300)
"""


def test_containers_left_by_a_killed_pipeline_are_swept_by_the_next_docker_step(env, base_image, tmp_path,
                                                                               docker_client):
    from prefect_ml.infrastructure import container as container_module
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    name = f"left_{uuid.uuid4().hex[:6]}"
    proc, _ = _start_pipeline(tmp_path, env, name, "docker", SLEEPING_STEP,
                              {"PREFECT_ML_BASE_IMAGE": base_image})
    try:
        _wait_for(lambda: any(c.status == "running" for c in ours(docker_client, **{"prefect-ml.step": name})),
                  120, proc)
        proc.kill()
        proc.wait()
        time.sleep(1)
        left = ours(docker_client, **{"prefect-ml.step": name})
        assert left, "nothing to sweep: the container went away by itself"
        # this test process may have swept already: make its next step sweep again
        getattr(container_module, "_swept", set()).clear()
        lines: list[str] = []
        job = StepJob("next", "true", step_code(tmp_path, "next", ""), {}, {}, {}, labels={"prefect-ml.step": "next"})
        started = time.monotonic()
        DockerStepInfrastructure(pull_policy="never").run(job, lines.append)
        print(f"next step incl. sweep: {time.monotonic() - started:.2f} s")
        assert not ours(docker_client, **{"prefect-ml.step": name}), lines
        assert any("removed 1 leftover step container" in line for line in lines), lines
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in ours(docker_client, **{"prefect-ml.step": name}):
            c.remove(force=True)


def test_sweep_keeps_containers_of_live_pipelines(base_image, tmp_path, docker_client):
    from prefect_ml.infrastructure.container import MANAGED_LABEL, OWNER_LABEL, orphaned_containers, owner_label

    live = docker_client.containers.create(base_image, ["sleep", "60"], network_mode="none",
                                           labels={MANAGED_LABEL: "true", OWNER_LABEL: owner_label(),
                                                   "prefect-ml.step": "live"})
    other_host = docker_client.containers.create(base_image, ["sleep", "60"], network_mode="none",
                                                 labels={MANAGED_LABEL: "true", OWNER_LABEL: "elsewhere:1:1",
                                                         "prefect-ml.step": "other"})
    try:
        ids = {c.id for c in orphaned_containers(docker_client)}
        assert live.id not in ids and other_host.id not in ids
    finally:
        live.remove(force=True)
        other_host.remove(force=True)
