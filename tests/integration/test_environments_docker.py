"""Environment images against the real Docker engine: a build, then the same build as a cache hit; a
missing base image with pull policy `never`; an Azure `build:` (Dockerfile) environment built, reused
and rebuilt, with a step run in it (specs, hashes, venvs and the CLI: tests/unit/test_environments.py)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from tests.conftest import make_env, require
from tests.servers import DEFAULT_BASE_IMAGE, docker_available, docker_image_available

# --- images (real engine) ---------------------------------------------------------------------


@pytest.fixture
def docker_client(monkeypatch):
    ok, reason = docker_available()
    require(ok, reason)
    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    ok, reason = docker_image_available(image)
    require(ok, reason)
    monkeypatch.setenv("PREFECT_ML_BASE_IMAGE", image)
    import docker

    client = docker.from_env()
    yield client
    client.close()


def test_build_then_same_build_is_a_cache_hit(envs, docker_client, capsys):
    """A new environment builds (requirements.txt + the pip part of a conda file); the same build again
    finds its tag and builds nothing."""
    from prefect_ml.environments import ensure_image, load_environment

    name = f"tiny-{uuid.uuid4().hex[:8]}"  # unique: the first build is a real one
    make_env(envs, name, f"name: {name}\nrequirements: requirements.txt\nconda: conda.yaml\n", {
        "requirements.txt": "six==1.17.0\n",
        "conda.yaml": "dependencies: [python=3.11, pip, {pip: [idna==3.10]}]\n",
    })
    env = load_environment(name)
    lines: list[str] = []
    tag = None
    try:
        t0 = time.monotonic()
        tag = ensure_image(env, docker_client, pull_policy="never", log=lines.append)
        first = time.monotonic() - t0
        assert any(line.startswith("building image") for line in lines)
        lines.clear()
        t0 = time.monotonic()
        assert ensure_image(env, docker_client, pull_policy="never", log=lines.append) == tag
        second = time.monotonic() - t0
        assert lines == []  # nothing built
        with capsys.disabled():
            print(f"\nenvironment build: first {first:.1f} s, second (cache hit) {second:.3f} s")
        out = docker_client.containers.run(
            tag, ["python", "-c", "import six, idna, sys; print(sys.prefix, six.__version__, idna.__version__)"],
            network_mode="host", remove=True).decode()
        assert out.split() == ["/opt/venv", "1.17.0", "3.10"]
        image = docker_client.images.get(tag)
        assert image.labels["prefect-ml.environment"] == name
    finally:
        if tag:
            docker_client.images.remove(tag, force=True)


def test_missing_base_image_with_pull_policy_never(envs, docker_client):
    from prefect_ml.environments import ensure_image, load_environment
    from prefect_ml.errors import EnvironmentSpecError

    make_env(envs, "nobase", "name: nobase\nbase_image: prefect-ml/does-not-exist:1\n")
    with pytest.raises(EnvironmentSpecError, match=r"environment 'nobase': image 'prefect-ml/does-not-exist:1' does "
                                                   r"not exist locally and the pull policy is 'never'.*"
                                                   r"prefect-ml env base-image"):
        ensure_image(load_environment("nobase"), docker_client, pull_policy="never")




def test_a_failing_build_is_one_line_with_its_last_build_line(envs, docker_client):
    """The whole build output goes to the log; the error is one line: what failed, its last line, the fix."""
    from prefect_ml.environments import ensure_image, load_environment
    from prefect_ml.errors import EnvironmentSpecError

    base = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    d = make_env(envs, "brokenbuild", "name: brokenbuild\nbuild: {path: ctx}\n")
    (d / "ctx").mkdir()
    (d / "ctx" / "Dockerfile").write_text(f"FROM {base}\nRUN echo about to fail && exit 3\n")
    lines: list[str] = []
    with pytest.raises(EnvironmentSpecError) as err:
        ensure_image(load_environment("brokenbuild"), docker_client, pull_policy="never", log=lines.append)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("building environment 'brokenbuild'") and "failed: " in msg
    assert "non-zero code: 3" in msg and "Fix the Dockerfile" in msg
    assert any("about to fail" in line for line in lines)  # the output went to the log
    assert not docker_client.images.list(name="prefect-ml/brokenbuild")


def test_dockerfile_environment_builds_runs_a_step_is_reused_and_rebuilds_on_change(envs, docker_client, tmp_path):
    """An Azure component with `environment: {build: {path: ./docker}}`: the Dockerfile (FROM the local base
    image) is built through the Docker infrastructure and the step runs in it; a second run finds the tag
    and builds nothing; an edited Dockerfile gives a new tag and a rebuild."""
    from prefect_ml import load_component
    from prefect_ml.environments import image_for
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure
    from tests.integration.conftest import ours

    base = os.environ["PREFECT_ML_BASE_IMAGE"]
    token = uuid.uuid4().hex[:8]  # a unique context: the first build is a real one
    comp = tmp_path / "comp"
    (comp / "docker").mkdir(parents=True)
    (comp / "src").mkdir()
    (comp / "docker" / "marker.txt").write_text(f"from-the-context-{token}\n")
    dockerfile = comp / "docker" / "Dockerfile"
    dockerfile.write_text(f"FROM {base}\nCOPY marker.txt /opt/marker.txt\nENV DOCKERFILE_STAGE=first\n")
    (comp / "src" / "show.py").write_text(
        "import os\nprint('marker', open('/opt/marker.txt').read().strip(), os.environ['DOCKERFILE_STAGE'])\n")
    for d in (tmp_path, comp, comp / "src"):
        d.chmod(0o755)  # the code dir: containers run as a non-root user, who must be able to read it
    (comp / "component.yml").write_text(
        "name: show\ntype: command\ncode: ./src\nenvironment:\n  build: {path: ./docker}\ncommand: python3 show.py\n")
    component = load_component(comp / "component.yml")
    assert component.environment.startswith("inline-env-")
    label = f"dockerfile-{token}"
    block = DockerStepInfrastructure(pull_policy="never")
    tags: list[str] = []

    def run() -> tuple[list[str], str]:
        tag = image_for(component.environment, docker_client)
        assert tag is not None
        tags.append(tag)
        job = StepJob("show", component.command, component.code, {}, {}, {}, labels={"prefect-ml.step": label},
                      environment=component.environment)
        lines: list[str] = []
        outcome = block.run(job, lines.append)
        assert outcome.exit_code == 0, lines
        return lines, tag

    try:
        lines, first = run()
        assert any(line.startswith("building image") and "from" in line and "Dockerfile" in line for line in lines)
        assert f"marker from-the-context-{token} first" in lines  # the Dockerfile's COPY and ENV took effect
        assert docker_client.images.get(first).labels["prefect-ml.environment"] == component.environment

        lines, again = run()  # unchanged context: the same tag, nothing built
        assert again == first
        assert not any(line.startswith(("building image", "Step ")) for line in lines), lines
        assert f"marker from-the-context-{token} first" in lines

        dockerfile.write_text(f"FROM {base}\nCOPY marker.txt /opt/marker.txt\nENV DOCKERFILE_STAGE=second\n")
        lines, changed = run()  # an edited Dockerfile: a new tag, built
        assert changed != first
        assert any(line.startswith("building image") for line in lines)
        assert f"marker from-the-context-{token} second" in lines
    finally:
        for tag in set(tags):
            try:
                docker_client.images.remove(tag, force=True)
            except Exception:
                pass  # never built (the test failed before)
    assert not ours(docker_client, **{"prefect-ml.step": label})
