"""Steps on a Docker engine on another machine (issue #16): no bind mounts of this machine's paths; the
code dir and inputs are copied in, outputs and the MLflow relay store copied out, through the Docker API.

The "remote" engine is a second dockerd on tcp://127.0.0.1:2376 (its own data root, engine ID and
containers), started and given the base image by scripts/setup-test-services.sh. It shares this
machine's file system, so the tests check that the containers had no bind mounts at all rather than
that the mounts failed. The local/remote decision without an engine:
tests/unit/test_docker_infrastructure_offline.py.
"""

from __future__ import annotations

import contextvars
import os
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.conftest import ours
from tests.paths import REPO
from tests.servers import DEFAULT_BASE_IMAGE

REMOTE = os.environ.get("PREFECT_ML_REMOTE_DOCKER_HOST", "tcp://127.0.0.1:2376")
BLOCK = "remote-engine"


@pytest.fixture(scope="module")
def remote_client(docker_client):
    """A client of the second engine; requires it and the base image in it."""
    import docker.errors
    from docker.client import DockerClient

    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    client = DockerClient(base_url=REMOTE, timeout=60)
    try:
        client.ping()
    except Exception as exc:
        client.close()
        require(False, f"no second Docker engine at {REMOTE} ({type(exc).__name__}): run "
                       "scripts/setup-test-services.sh")
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        client.close()
        require(False, f"{image} is not in the engine at {REMOTE}: run scripts/setup-test-services.sh")
    yield client
    client.close()


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    """After the module: no step container of these tests on either engine."""
    yield
    from docker.client import DockerClient, from_env

    left = []
    for make in (from_env, lambda: DockerClient(base_url=REMOTE, timeout=10)):
        try:
            client = make()
        except Exception:
            continue
        try:
            left += [(str(client.api.base_url), c.short_id, c.labels.get("prefect-ml.step"), c.status)
                     for c in ours(client) if str(c.labels.get("prefect-ml.step", "")).startswith("remote_")]
        except Exception:  # the engine is not there: nothing of ours either
            pass
        finally:
            client.close()
    assert not left, f"containers left behind: {left}"


@pytest.fixture
def remote_block(env, monkeypatch, remote_client) -> str:
    """The block `remote-engine`: the second engine, network mode host, `transfer` left on auto."""
    from prefect_docker import DockerHost

    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    monkeypatch.setenv("PREFECT_ML_BASE_IMAGE", os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE)
    DockerStepInfrastructure(docker_host=DockerHost(base_url=REMOTE), network_mode="host").save(BLOCK, overwrite=True)
    return BLOCK


def step_code(tmp_path: Path, name: str, source: str) -> Path:
    code = tmp_path / f"code-{name}"
    code.mkdir(mode=0o755)
    (code / f"{name}.py").write_text(textwrap.dedent(source))
    (code / "helper.txt").write_text("from the code dir\n")
    tmp_path.chmod(0o755)
    return code


# The step waits for the test to inspect its running container (the test then creates /tmp/go in it),
# reads its input and a file of its code dir, writes an output folder and logs a metric into the MLflow
# store the container sees (the relay: copied back into the step's run after it).
GATED = """
    import os, sys, time
    data, out = sys.argv[1], sys.argv[2]
    deadline = time.monotonic() + 300
    while not os.path.exists("/tmp/go") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.makedirs(out, exist_ok=True)
    text = open(data).read()
    with open(os.path.join(out, "result.txt"), "w") as f:
        f.write(text.upper() + open("helper.txt").read())
    with open(os.path.join(out, "seen.txt"), "w") as f:
        f.write(f"{os.getuid()} {os.getcwd()} {sorted(os.listdir('.'))}")
    run = os.environ.get("MLFLOW_RUN_ID")
    if run and os.environ.get("MLFLOW_TRACKING_URI", "").startswith("file:///prefect-ml/mlruns"):
        metrics = f"/prefect-ml/mlruns/0/{run}/metrics"
        with open(os.path.join(metrics, "remote_metric"), "w") as f:
            f.write(f"{int(time.time() * 1000)} 0.25 0\\n")
    print("remote step done")
"""


def test_step_on_a_remote_engine_has_no_bind_mounts_and_publishes_its_outputs(remote_block, remote_client,
                                                                              docker_client, tmp_path, env):
    from mlflow.tracking import MlflowClient

    from prefect_ml import Input, Output, command, pipeline

    name = f"remote_{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data.txt"
    data.write_text("hello from the host\n")
    code = step_code(tmp_path, "gated", GATED)
    gated = command(name=name, code=code, cache=False, command="python3 gated.py ${{inputs.data}} ${{outputs.out}}",
                    inputs={"data": Input(type="uri_file")}, outputs={"out": Output(type="uri_folder")})

    @pipeline(name="remote-engine", infrastructure=remote_block)
    def on_remote(data: str):
        return gated(data=data).result()

    result: dict = {}
    ctx = contextvars.copy_context()  # the test harness' API settings live in context variables
    flow = threading.Thread(target=lambda: result.setdefault("state", ctx.run(on_remote, str(data),
                                                                               return_state=True)))
    flow.start()
    inspected = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and flow.is_alive():
            running = [c for c in ours(remote_client, **{"prefect-ml.step": name}) if c.status == "running"]
            if running:
                inspected = remote_client.api.inspect_container(running[0].id)
                running[0].exec_run(["touch", "/tmp/go"])
                break
            time.sleep(0.1)
    finally:
        flow.join(timeout=180)
    assert inspected is not None, f"the step's container never ran on {REMOTE}: {result}"
    assert inspected["Mounts"] == [] and not inspected["HostConfig"].get("Binds"), inspected["Mounts"]
    assert inspected["HostConfig"]["NetworkMode"] == "host"
    assert not ours(docker_client, **{"prefect-ml.step": name})  # it ran on the other engine only

    state = result["state"]
    assert state.is_completed(), state.message
    step = state.result()
    out = Path(step.outputs["out"].removeprefix("file://"))
    assert (out / "result.txt").read_text() == "HELLO FROM THE HOST\nfrom the code dir\n"
    uid, cwd, listing = (out / "seen.txt").read_text().split(" ", 2)
    assert cwd == "/prefect-ml/code" and listing == "['gated.py', 'helper.txt']"
    assert (os.getuid() != 0 or uid == "65534") and (out / "result.txt").stat().st_uid == os.getuid()
    run = MlflowClient(tracking_uri=f"sqlite:///{env / 'mlflow.db'}").get_run(step.mlflow_run_id)
    assert run.data.metrics.get("remote_metric") == 0.25  # the relay store came back out of the container
    assert not list((env / "staging").glob("mlruns-*"))
    assert not ours(remote_client, **{"prefect-ml.step": name})


def test_failing_step_on_a_remote_engine_publishes_nothing(remote_block, remote_client, docker_client, tmp_path, env):
    from prefect_ml import Output, command, pipeline
    from prefect_ml.errors import StepFailed

    name = f"remote_{uuid.uuid4().hex[:8]}"
    marker = f"marker-{uuid.uuid4().hex}.txt"
    code = step_code(tmp_path, "fails", f"""
        import os, sys
        os.makedirs(sys.argv[1], exist_ok=True)
        open(os.path.join(sys.argv[1], "{marker}"), "w").write("partial")
        print("about to fail")
        sys.exit(3)
    """)
    fails = command(name=name, code=code, cache=False, command="python3 fails.py ${{outputs.out}}",
                    outputs={"out": Output(type="uri_folder")})

    @pipeline(name="remote-fails", infrastructure=remote_block)
    def failing():
        return fails().result()

    with pytest.raises(StepFailed, match=rf"step '{name}' failed: exit code 3\. Last lines:\nabout to fail"):
        failing()
    assert not list(env.rglob(marker)), "a failed step's output reached this machine"
    assert not ours(remote_client, **{"prefect-ml.step": name})
    assert not ours(docker_client, **{"prefect-ml.step": name})


def test_timeout_and_oom_on_a_remote_engine_stop_and_remove_the_container(remote_block, remote_client, tmp_path):
    from prefect_docker import DockerHost

    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    code = step_code(tmp_path, "idle", "print('idle')\n")
    lines: list[str] = []
    infra = DockerStepInfrastructure(docker_host=DockerHost(base_url=REMOTE), network_mode="host", mem_limit="64m")
    name = f"remote_{uuid.uuid4().hex[:8]}"
    hog = StepJob(name, "python3 -c 'x = bytearray(400 * 1024 * 1024)'", code, {}, {},
                  {"out": tmp_path / "staging" / "out"}, labels={"prefect-ml.step": name})
    outcome = infra.run(hog, lines.append)
    assert outcome.exit_code == 137 and "out of memory" in outcome.reason and "mem_limit 64m" in outcome.reason
    assert any(line.startswith("copied ") and "into the container" in line for line in lines), lines
    assert not any("out of the container" in line for line in lines), lines  # a failed step's outputs stay there
    assert not ours(remote_client, **{"prefect-ml.step": name})

    name = f"remote_{uuid.uuid4().hex[:8]}"
    sleepy = StepJob(name, "sleep 300", code, {}, {}, {}, labels={"prefect-ml.step": name}, timeout=2)
    with pytest.raises(TimeoutError, match="timed out after 2 s"):
        infra.run(sleepy, lambda line: None)
    assert not ours(remote_client, **{"prefect-ml.step": name})


def test_transfer_auto_mounts_on_this_machines_engine_and_copies_on_the_other(remote_client, docker_client):
    from prefect_docker import DockerHost

    from prefect_ml.infrastructure.docker_client import engine_transfer

    assert engine_transfer(docker_client, "auto")[0] == "mount"
    mode, why = engine_transfer(remote_client, "auto", DockerHost(base_url=REMOTE))
    assert mode == "copy" and remote_client.info()["ID"] in why, why
    assert engine_transfer(remote_client, "mount", DockerHost(base_url=REMOTE))[0] == "mount"  # the block decides


def test_images_are_looked_up_and_built_on_the_blocks_engine(remote_block, remote_client, docker_client,
                                                             monkeypatch):
    """A base image that exists only on this machine's engine is missing for the remote block: the
    environment's image is resolved (and would be built) through the block's engine."""
    from prefect_docker import DockerHost

    from prefect_ml.errors import EnvironmentSpecError
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    only_here = f"prefect-ml/only-here:{uuid.uuid4().hex[:8]}"
    docker_client.images.get(os.environ["PREFECT_ML_BASE_IMAGE"]).tag(only_here)
    try:
        monkeypatch.setenv("PREFECT_ML_BASE_IMAGE", only_here)
        infra = DockerStepInfrastructure(docker_host=DockerHost(base_url=REMOTE), pull_policy="never")
        with pytest.raises(EnvironmentSpecError, match=rf"'{only_here}' does not exist locally"):
            infra.environment_identity("sklearn-cpu", REPO / "components" / "train")
        assert DockerStepInfrastructure(pull_policy="never").environment_identity(
            "sklearn-cpu", REPO / "components" / "train").startswith("sklearn-cpu@")
    finally:
        docker_client.images.remove(only_here)


def test_gpu_block_on_a_remote_engine_without_nvidia_runtime_names_that_engine(remote_block, remote_client,
                                                                               tmp_path):
    """On another machine's engine only the engine can be checked (its GPUs cannot be seen from here)."""
    if "nvidia" in (remote_client.info().get("Runtimes") or {}):
        pytest.skip("the second engine has the NVIDIA runtime")
    from prefect_docker import DockerHost

    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    name = f"remote_{uuid.uuid4().hex[:8]}"
    code = step_code(tmp_path, "gpu", "print('gpu')\n")
    infra = DockerStepInfrastructure(docker_host=DockerHost(base_url=REMOTE), network_mode="host", gpus=1)
    with pytest.raises(InfrastructureError) as err:
        infra.run(StepJob(name, "nvidia-smi", code, {}, {}, {}, labels={"prefect-ml.step": name}), lambda line: None)
    msg = str(err.value)
    assert f"the Docker engine at {REMOTE} has no NVIDIA container runtime" in msg and "docs/gpu.md" in msg
    assert "GPU or driver" not in msg and "\n" not in msg
    assert not ours(remote_client, **{"prefect-ml.step": name})


def test_gc_on_a_remote_engine_removes_only_its_orphans(remote_client, docker_client, ml_home, monkeypatch, tmp_path):
    """`prefect-ml gc --docker-host URL` looks at that engine, not this machine's."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from prefect_ml.cli import app
    from prefect_ml.infrastructure.container import MANAGED_LABEL, OWNER_LABEL, _start_time

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner = f"{os.uname().nodename}:{ended.pid}:{_start_time(ended.pid)}"
    ended.wait()
    step = f"remote_gc_{uuid.uuid4().hex[:6]}"
    labels = {MANAGED_LABEL: "true", OWNER_LABEL: dead_owner, "prefect-ml.step": step}
    orphan = remote_client.containers.run(image, ["sleep", "300"], detach=True, network_mode="none", labels=labels)
    try:
        runner = CliRunner()
        here = runner.invoke(app, ["gc", "--only", "containers"])
        assert here.exit_code == 0, here.output
        assert orphan.short_id not in here.output  # the local engine's gc does not see the other engine
        there = runner.invoke(app, ["gc", "--only", "containers", "--docker-host", REMOTE, "--yes"])
        assert there.exit_code == 0, there.output
        assert f"removed container {orphan.short_id}" in there.output
        assert not remote_client.containers.list(all=True, filters={"label": f"prefect-ml.step={step}"})
    finally:
        try:
            orphan.remove(force=True)
        except Exception:
            pass
