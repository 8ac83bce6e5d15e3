"""Steps in Docker against the real engine: the credit-default flow, log streaming, exit codes, OOM,
timeout, cancellation, GPU requests on a host without GPUs, and bad input (block settings and an
unreachable engine, no engine needed: tests/unit/test_docker_infrastructure_offline.py)."""

from __future__ import annotations

import contextvars
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import task_runs
from tests.integration.conftest import ours
from tests.paths import REPO
from tests.servers import DEFAULT_BASE_IMAGE, docker_available


@pytest.fixture(scope="module", autouse=True)
def no_containers_left_behind(request):
    """After this module, `docker ps -a` shows no container with our labels."""
    yield
    if docker_available()[0]:
        import docker

        client = docker.from_env()
        left = [(c.short_id, c.labels.get("prefect-ml.step"), c.status) for c in ours(client)]
        client.close()
        assert not left, f"containers left behind: {left}"


@pytest.fixture
def base_image(monkeypatch, docker_client) -> str:
    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    monkeypatch.setenv("PREFECT_ML_BASE_IMAGE", image)
    return image


@pytest.fixture(scope="session")
def sklearn_cpu_image(docker_client, tmp_path_factory):
    """Build the sklearn-cpu environment once per session (first time ~1-3 min; then a tag lookup)."""
    from prefect_ml import environments

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_ML_BASE_IMAGE", os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE)
        mp.setenv("PREFECT_ML_HOME", str(tmp_path_factory.mktemp("build-home")))
        started = time.monotonic()
        tag = environments.ensure_image("sklearn-cpu", docker_client, start=REPO / "components", pull_policy="never")
        print(f"\nsklearn-cpu image {tag} ready in {time.monotonic() - started:.1f} s")
    return tag


def step_code(tmp_path: Path, name: str, source: str) -> Path:
    code = tmp_path / f"code-{name}"
    code.mkdir()
    (code / f"{name}.py").write_text(textwrap.dedent(source))
    return code


# --- the credit-default pipeline, every step in Docker ----------------------------------------


def test_credit_default_every_step_in_docker_registers_a_model(env, base_image, sklearn_cpu_image, monkeypatch,
                                                               docker_client):
    monkeypatch.setenv("PREFECT_ML_INFRASTRUCTURE", "docker")
    sys.path.insert(0, str(REPO / "flows"))
    try:
        from credit_default import credit_default
    finally:
        sys.path.remove(str(REPO / "flows"))
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    state = credit_default(n_estimators=20, registered_model_name="docker_model", return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["registered"] and out["registered"]["version"] == 1
    metrics = json.loads(Path(out["metrics"].removeprefix("file://")).read_text())
    assert 0.5 < metrics["auc"] <= 1.0
    model_dir = Path(out["model"].removeprefix("file://"))
    assert (model_dir / "MLmodel").is_file()
    assert os.stat(model_dir / "MLmodel").st_uid == os.getuid()  # outputs belong to the host user

    flow_run_id = state.state_details.flow_run_id
    runs = task_runs(state, names=["data_prep", "train", "evaluate"])
    with get_client(sync_client=True) as c:
        logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    assert {"data_prep", "train", "evaluate"} <= {r.name for r in runs}
    text = "\n".join(log.message for log in logs)
    assert text.count("running on docker:") + text.count("running on docker") >= 3
    assert "saved MLflow model to /prefect-ml/outputs/model" in text  # the in-container path
    assert not ours(docker_client, **{"prefect-ml.flow-run-id": str(flow_run_id)})


# --- log streaming ----------------------------------------------------------------------------


def test_log_lines_reach_the_task_run_logs_while_the_step_runs(env, base_image, tmp_path, docker_client):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    from prefect_ml import Output, command, pipeline

    name = f"ticker_{uuid.uuid4().hex[:8]}"
    code = step_code(tmp_path, "tick", """
        import sys, time
        for i in range(5):
            print(f"tick {i}")
            time.sleep(1)
        open(sys.argv[1], "w").write("done")
        print("ticking done")
    """)
    ticker = command(name=name, code=code, command="python3 tick.py ${{outputs.done}}",
                     outputs={"done": Output(type="uri_file")}, cache=False)

    @pipeline(name="ticker", infrastructure="docker")
    def ticks():
        return ticker().outputs.done

    result: dict = {}
    ctx = contextvars.copy_context()  # the test harness' API settings live in context variables
    flow = threading.Thread(target=lambda: result.setdefault("state", ctx.run(ticks, return_state=True)))
    flow.start()
    try:
        seen_first, seen_end_then = None, None
        deadline = time.monotonic() + 120
        task_run_id = None
        with get_client(sync_client=True) as c:
            while time.monotonic() < deadline and flow.is_alive():
                if task_run_id is None:
                    found = ours(docker_client, **{"prefect-ml.step": name})
                    task_run_id = found[0].labels["prefect-ml.task-run-id"] if found else None
                if task_run_id:
                    logs = c.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])))
                    messages = [log.message for log in logs]
                    if "tick 0" in messages:
                        seen_first = True
                        seen_end_then = "ticking done" in messages
                        break
                time.sleep(0.2)
    finally:
        flow.join(timeout=120)
    assert seen_first, "the first line never reached the task run's logs while the step ran"
    assert seen_end_then is False, "the first line arrived only after the step had finished"
    assert result["state"].is_completed()


# --- exit codes, OOM, timeout, cancellation ---------------------------------------------------


def test_nonzero_exit_fails_the_step_with_its_exit_code(env, base_image, tmp_path):
    from prefect_ml import command, pipeline
    from prefect_ml.errors import StepFailed

    code = step_code(tmp_path, "fail", "import sys\nprint('about to fail')\nsys.exit(3)\n")
    fail = command(name="fail", code=code, command="python3 fail.py", cache=False)

    @pipeline(name="fails", infrastructure="docker")
    def fails():
        fail().result()

    with pytest.raises(StepFailed, match=r"step 'fail' failed: exit code 3\. Last lines:\nabout to fail"):
        fails()


def test_oom_kill_is_reported_with_the_memory_limit(base_image, tmp_path, docker_client):
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    tmp_path.chmod(0o755)  # the code dir: containers run as a non-root user, who must be able to read it
    job = StepJob("hog", "python3 -c 'x = bytearray(400 * 1024 * 1024)'", tmp_path, {}, {}, {},
                  labels={"prefect-ml.step": "hog"})
    outcome = DockerStepInfrastructure(mem_limit="64m").run(job, lambda line: None)
    assert outcome.exit_code == 137
    assert "out of memory" in outcome.reason and "mem_limit 64m" in outcome.reason
    assert not ours(docker_client, **{"prefect-ml.step": "hog"})


def test_timeout_stops_and_removes_the_container(env, base_image, tmp_path, docker_client):
    from prefect_ml import command, pipeline

    name = f"sleepy_{uuid.uuid4().hex[:8]}"
    tmp_path.chmod(0o755)  # the code dir: containers run as a non-root user, who must be able to read it
    sleepy = command(name=name, code=tmp_path, command="sleep 300", cache=False, timeout=3)

    @pipeline(name="times-out", infrastructure="docker")
    def times_out():
        sleepy().result()

    started = time.monotonic()
    state = times_out(return_state=True)
    assert state.is_failed()
    assert time.monotonic() - started < 200  # it did not wait for `sleep 300`
    with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
        state.result()
    assert not ours(docker_client, **{"prefect-ml.step": name})


CANCEL_SCRIPT = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test dumps stacks if it hangs
from prefect_ml import command, pipeline
step = command(name=sys.argv[1], code=sys.argv[2], command="sleep 300", cache=False)

@pipeline(name="cancelled", infrastructure="docker")
def cancelled():
    step().result()

cancelled()
"""


def test_cancelled_run_removes_its_container(env, base_image, tmp_path, docker_client):
    """A worker cancels a flow run by sending SIGTERM to its process: the step's container must go too."""
    from prefect.settings import get_current_settings

    name = f"cancel_{uuid.uuid4().hex[:8]}"
    tmp_path.chmod(0o755)  # the code dir: containers run as a non-root user, who must be able to read it
    script = tmp_path / "run_cancelled.py"
    script.write_text(CANCEL_SCRIPT)
    child_env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url),
                 "PREFECT_ML_BASE_IMAGE": base_image, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), name, str(tmp_path)], env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 120
        running = []
        while time.monotonic() < deadline and proc.poll() is None:
            running = [c for c in ours(docker_client, **{"prefect-ml.step": name}) if c.status == "running"]
            if running:
                break
            time.sleep(0.3)
        assert running, ("the step's container never started; output:\n"
                         f"{proc.stdout.read() if proc.poll() is not None else ''}")
        t_running = time.monotonic() - started
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"the flow process did not end within 90 s of SIGTERM; its output and stacks:\n{out[-8000:]}")
        print(f"container running after {t_running:.1f} s; "
              f"process ended {time.monotonic() - started - t_running:.1f} s after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not ours(docker_client, **{"prefect-ml.step": name}), out[-2000:]


# --- bad input: a clear error, nothing started ------------------------------------------------


def test_unknown_infrastructure_block_lists_the_saved_ones(env, docker_client):
    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure import resolve_infrastructure
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    DockerStepInfrastructure(mem_limit="1g").save("known-cpu", overwrite=True)
    with pytest.raises(InfrastructureError, match=r"unknown infrastructure 'nope'.*known-cpu"):
        resolve_infrastructure("nope")
    loaded = resolve_infrastructure("known-cpu")
    assert isinstance(loaded, DockerStepInfrastructure) and loaded.mem_limit == "1g"


def _has_gpu_support(client) -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*")) or "nvidia" in (client.info().get("Runtimes") or {})


def test_gpu_step_on_a_host_without_gpu_fails_fast_naming_block_and_what_is_missing(env, base_image, tmp_path,
                                                                                   docker_client):
    if _has_gpu_support(docker_client):
        pytest.skip("this host has a GPU or the NVIDIA runtime")
    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    DockerStepInfrastructure(gpus="all").save("gpu-test", overwrite=True)
    tmp_path.chmod(0o755)  # the code dir: containers run as a non-root user, who must be able to read it
    infra = DockerStepInfrastructure.load("gpu-test")
    job = StepJob("gpu-step", "nvidia-smi", tmp_path, {}, {}, {}, labels={"prefect-ml.step": "gpu-step"})
    with pytest.raises(InfrastructureError, match=r"^infrastructure block 'gpu-test'.*requests GPUs \(gpus='all'\) "
                                                  r"but this machine has no NVIDIA GPU or driver \(no /dev/nvidia\*.*"
                                                  r"has no NVIDIA container runtime \(runtimes: .*runc.*docs/gpu\.md"):
        infra.run(job, lambda line: None)
    assert not ours(docker_client, **{"prefect-ml.step": "gpu-step"})  # nothing was created


def test_gpu_block_without_gpu_fails_before_the_environment_image_is_built(env, base_image, tmp_path, docker_client,
                                                                          monkeypatch):
    """A GPU image is large: on a machine without GPU the step fails before its build starts."""
    if _has_gpu_support(docker_client):
        pytest.skip("this host has a GPU or the NVIDIA runtime")
    from prefect_ml import command, environments, pipeline
    from prefect_ml.environments import image as image_module
    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    env_name = f"gpu-probe-{uuid.uuid4().hex[:8]}"
    env_dir = tmp_path / "environments" / env_name
    env_dir.mkdir(parents=True)
    (env_dir / "environment.yaml").write_text(f"name: {env_name}\nversion: '1'\nrequirements: requirements.txt\n"
                                              "gpu: true\n")
    (env_dir / "requirements.txt").write_text("torch==2.5.1\n")
    monkeypatch.setenv("PREFECT_ML_ENVIRONMENTS_DIR", str(tmp_path / "environments"))
    builds: list = []
    monkeypatch.setattr(image_module, "_build", lambda *args, **kwargs: builds.append(args))
    DockerStepInfrastructure(gpus="all").save("gpu-first", overwrite=True)
    code = tmp_path / "code"
    code.mkdir()
    tmp_path.chmod(0o755)
    name = f"gpu_{uuid.uuid4().hex[:8]}"
    gpu_step = command(name=name, code=code, environment=env_name, command="nvidia-smi", cache=False)

    @pipeline(name="gpu-first", infrastructure="gpu-first")
    def on_gpu():
        gpu_step().result()

    with pytest.raises(InfrastructureError, match=r"infrastructure block 'gpu-first'.*requests GPUs.*this machine has "
                                                  r"no NVIDIA GPU or driver.*`process` infrastructure block.*docs/gpu"):
        on_gpu()
    assert builds == [], "the environment's image build was started"
    tag = environments.image_for(env_name, docker_client, start=code)
    assert tag and not docker_client.images.list(name=tag.split(":")[0])  # no image of the environment at all
    assert not ours(docker_client, **{"prefect-ml.step": name})


def test_missing_base_image_with_pull_policy_never_starts_nothing(env, tmp_path, docker_client, monkeypatch):
    from prefect_ml.errors import EnvironmentSpecError
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    monkeypatch.setenv("PREFECT_ML_BASE_IMAGE", "prefect-ml/no-such-base:1")
    job = StepJob("nobase", "true", tmp_path, {}, {}, {}, labels={"prefect-ml.step": "nobase"})
    with pytest.raises(EnvironmentSpecError, match=r"'prefect-ml/no-such-base:1' does not exist locally and "
                                                   r"the pull policy is 'never'.*prefect-ml env base-image"):
        DockerStepInfrastructure(pull_policy="never").run(job, lambda line: None)
    assert not ours(docker_client, **{"prefect-ml.step": "nobase"})


def test_environment_identity_for_the_cache_key_is_the_image_hash(base_image, sklearn_cpu_image):
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    identity = DockerStepInfrastructure().environment_identity("sklearn-cpu", REPO / "components" / "train")
    name, digest = identity.split("@")
    assert name == "sklearn-cpu" and sklearn_cpu_image == f"prefect-ml/sklearn-cpu:{digest[:16]}"
