"""Deployments whose workers have no shared checkout, and the Azure ML YAML pipeline deployed from prefect.yaml.

They share the session's Prefect server, `prefect-ml init` and `prefect --no-prompt deploy --all` with
tests/integration/test_deployments.py (`deploy_stack`), and start their own workers:

- `credit-default-yaml/cpu`: flows/azure_pipeline.py deployed with `prefect deploy --name`, run with
  `prefect deployment run` by the ml-cpu worker; its parameters are the YAML's inputs;
- `credit-default/git`: a process worker in a directory with no checkout; the run's `git_clone` pull step
  clones a local bare repository (`file://`, a copy of this working tree) and runs the flow from the clone;
- `credit-default/docker`: a Docker worker (`--type docker`) runs the flow in the flow image
  (scripts/build-flow-image.sh), its steps on process infrastructure inside the container; no container
  is left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_deployments import (  # noqa: F401 - fixtures
    BIN,
    STEP_NAMES,
    Stack,
    Worker,
    deploy_stack,
    wait_for_workers,
)
from tests.paths import REPO
from tests.servers import DEFAULT_BASE_IMAGE, docker_image_available, skip_or_fail

YAML_STEPS = ("prep", "train", "evaluate")  # the job names of flows/credit_default_pipeline.yml


def _summary_rows(stack: Stack, run_id: str, key: str) -> list[dict]:
    data = stack.artifacts(run_id)[key]["data"]
    return json.loads(data) if isinstance(data, str) else data


def _sample_csv(tmp: Path) -> Path:
    from prefect_ml.samples import credit_default_sample

    return credit_default_sample(tmp / "credit_default_sample.csv", rows=1500)


# --- issue #15: the Azure ML pipeline YAML, deployed from prefect.yaml ----------------------------


def test_yaml_pipeline_deployment_runs_with_the_yaml_inputs_as_parameters(deploy_stack: Stack, tmp_path):  # noqa: F811 - fixture
    stack = deploy_stack
    # deployed from its prefect.yaml entry by name, as a user would (deploy --all made it once already);
    # `prefect deploy --name` matches FUNCTION/NAME of the entrypoint (azure_pipeline), not the flow's name
    stack.cli(BIN / "prefect", "--no-prompt", "deploy", "--name", "azure-pipeline/cpu")
    dep = stack.deployment("credit-default-yaml/cpu")
    assert dep["entrypoint"] == "flows/azure_pipeline.py:azure_pipeline"
    assert dep["work_pool_name"] == "ml-cpu"
    assert dep["job_variables"]["env"]["PREFECT_ML_PIPELINE_YAML"] == "flows/credit_default_pipeline.yml"
    # the Run form (parameter_openapi_schema) lists the YAML's inputs, with their types and defaults
    schema = dep["parameter_openapi_schema"]
    props = schema["properties"]
    assert set(props) == {"data", "test_train_ratio", "learning_rate"}, props
    assert schema.get("required") == ["data"]
    assert props["data"]["type"] == "string" and "credit-default" in props["data"]["description"]
    assert props["test_train_ratio"] == {**props["test_train_ratio"], "type": "number", "default": 0.25}
    assert props["learning_rate"]["default"] == 0.1

    # `data` is required: a run without it is refused before it is created
    refused = stack.cli(BIN / "prefect", "deployment", "run", "credit-default-yaml/cpu", check=False)
    assert refused.returncode != 0, refused.stdout

    data = _sample_csv(tmp_path)
    run_id = stack.run_deployment("credit-default-yaml/cpu", f"data={json.dumps(str(data))}", "learning_rate=0.2")
    run = stack.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.workers['cpu-1'].tail()}"
    assert run["parameters"] == {"data": str(data), "learning_rate": 0.2}, run["parameters"]
    tasks = {t["name"]: t for t in stack.task_runs(run_id)}
    for name in YAML_STEPS:
        assert name in tasks and tasks[name]["state"]["type"] == "COMPLETED", (name, sorted(tasks))
    rows = _summary_rows(stack, run_id, "pipeline-credit-default-yaml")
    assert [r["step"] for r in rows] == list(YAML_STEPS)


def test_a_yaml_pipeline_with_azure_forms_deploys_from_its_entrypoint_and_runs(deploy_stack: Stack):  # noqa: F811
    """tests/fixtures/azure/pipeline.yml, as a user deploys their own YAML (docs/azure.md): the same entrypoint with
    PREFECT_ML_PIPELINE_YAML at deploy time and in the job variables. Its jobs use what the shipped example
    does not: an `azureml:train@latest` component whose environment is an `azureml://registries/...` name
    through the alias map, `azureml:score:1`, job `compute`, `limits.timeout`, `environment_variables`,
    `services` (warned about), pipeline outputs bound with `${{parent.outputs...}}`."""
    stack = deploy_stack
    env = {"PREFECT_ML_PIPELINE_YAML": "tests/fixtures/azure/pipeline.yml"}
    stack.cli(BIN / "prefect", "--no-prompt", "deploy", "flows/azure_pipeline.py:azure_pipeline",
              "--name", "fixtures", "--pool", "ml-cpu", "--work-queue", "default",
              "--job-variable", json.dumps({"env": env}), env=env)
    dep = stack.deployment("azure-three-jobs/fixtures")
    props = dep["parameter_openapi_schema"]["properties"]
    assert set(props) == {"raw_data", "ratio", "epochs"}, props
    assert props["epochs"]["default"] == 3

    run_id = stack.run_deployment("azure-three-jobs/fixtures", "epochs=4")
    run = stack.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.workers['cpu-1'].tail()}"
    tasks = {t["name"]: t["state"]["type"] for t in stack.task_runs(run_id)}
    assert {tasks.get(j) for j in ("prep_job", "train_job", "score_job")} == {"COMPLETED"}, tasks
    result = stack.api("GET", f"/flow_runs/{run_id}")
    assert result["parameters"] == {"epochs": 4}


# --- issue #16: git_clone pull step, worker without a checkout ------------------------------------


def _bare_repository(tmp: Path) -> str:
    """A bare repository made from a copy of this working tree (tracked and untracked, not ignored files)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    copy = tmp / "copy"
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / rel)
    git = ["git", "-c", "user.name=prefect-ml tests", "-c", "user.email=tests@prefect-ml.invalid",
           "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot for the git_clone test"]):
        subprocess.run([*git, "-C", str(copy), *args], check=True, capture_output=True)
    bare = tmp / "prefect-ml.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(copy), str(bare)], check=True, capture_output=True)
    shutil.rmtree(copy)  # the bare repository is now the only other copy of the code
    return bare.as_uri()


def test_git_clone_deployment_runs_on_a_worker_without_checkout(deploy_stack: Stack, tmp_path):  # noqa: F811 - fixture
    stack = deploy_stack
    url = _bare_repository(tmp_path)
    # the deployment's pull step reads the repository from a Prefect variable when a run starts
    out = stack.cli(BIN / "prefect-ml", "init", *stack.init_args, "--git-repository", url).stdout
    assert re.search(r"created\s+variable\s+prefect_ml_git_repository", out), out
    dep = stack.deployment("credit-default/git")
    assert dep["work_queue_name"] == "git"
    assert dep["pull_steps"] == [{"prefect.deployments.steps.git_clone": {
        "id": "clone",
        "repository": "{{ prefect.variables.prefect_ml_git_repository }}",
        "branch": "{{ prefect.variables.prefect_ml_git_branch }}",
    }}], dep["pull_steps"]

    worker_dir = tmp_path / "worker-cwd"  # no checkout here, nor above it
    runs_dir = tmp_path / "flow-run-dir"
    worker_dir.mkdir()
    runs_dir.mkdir()
    # a worker without a checkout polls only the `git` queue (every run there fetches its code)
    worker = stack.workers["git-1"] = Worker(stack, "ml-cpu", "git-1", limit=1, cwd=worker_dir, work_queue="git")
    try:
        wait_for_workers(stack, "ml-cpu", {"git-1"})
        # new training parameters: the steps run from the clone's components (not reused from another run)
        run_id = stack.run_deployment("credit-default/git", "min_auc=0.6", "n_estimators=11",
                                      job_variables={"working_dir": str(runs_dir)})
        run = stack.wait(run_id)
        assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{worker.tail()}\n{stack.logs(run_id)[-3000:]}"
        tasks = {t["name"]: t for t in stack.task_runs(run_id)}
        for name in STEP_NAMES:
            assert tasks[name]["state"]["type"] == "COMPLETED", (name, tasks[name]["state"])
        # the code came from the clone in the run's working directory
        clone = runs_dir / "prefect-ml"
        assert (clone / "flows" / "credit_default.py").is_file(), sorted(p.name for p in runs_dir.iterdir())
        origin = subprocess.run(["git", "-C", str(clone), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert origin == url
        assert not (worker_dir / "flows").exists()
        # whichever ml-cpu worker took the run (the others poll every queue), it ran outside any checkout
        (taker,) = [w for w in stack.workers.values() if f"submitting flow run '{run_id}'" in w.text()
                    and f"Aborted submission of flow run '{run_id}'" not in w.text()]
        assert REPO not in (taker.cwd.resolve(), *taker.cwd.resolve().parents), taker.cwd
    finally:
        worker.stop()
        stack.workers.pop("git-1", None)


# --- issue #16: Docker work pool, the flow in the flow image --------------------------------------


def test_docker_deployment_runs_flow_in_the_flow_image(deploy_stack: Stack, tmp_path):  # noqa: F811 - fixture
    stack = deploy_stack
    base = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    ok, reason = docker_image_available(base)
    if not ok:
        skip_or_fail(f"the Docker work pool test needs the Docker engine and the base image: {reason}")
    import docker

    client = docker.from_env()
    worker = None
    try:
        # build (or reuse: the tag is a content hash), then deploy: the deployment records that tag
        build = stack.cli("bash", REPO / "scripts" / "build-flow-image.sh", timeout=900)
        tag = build.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"prefect-ml/flow:[0-9a-f]{16}", tag), build.stdout
        assert client.images.get(tag)
        stack.cli(BIN / "prefect", "--no-prompt", "deploy", "--name", "credit-default/docker")
        dep = stack.deployment("credit-default/docker")
        assert dep["work_pool_name"] == "ml-docker"
        jv = dep["job_variables"]
        assert jv["image"] == tag, (jv["image"], tag)
        assert jv["image_pull_policy"] == "Never" and jv["network_mode"] == "host"
        assert jv["volumes"] == [f"{stack.ml_home}:{stack.ml_home}"]
        assert jv["env"]["PREFECT_ML_HOME"] == str(stack.ml_home)

        worker = stack.workers["docker-1"] = Worker(stack, "ml-docker", "docker-1", limit=1, worker_type="docker")
        wait_for_workers(stack, "ml-docker", {"docker-1"})
        env = {**jv["env"], "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        run_id = stack.run_deployment("credit-default/docker", "min_auc=0.6", "n_estimators=13",
                                      job_variables={"env": env})
        run = stack.wait(run_id)
        assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{worker.tail()}\n{stack.logs(run_id)[-3000:]}"
        # the flow ran in a container of the flow image ...
        assert (run.get("infrastructure_pid") or "").count(":") >= 1, run.get("infrastructure_pid")
        assert run_id in worker.text(), worker.tail()
        # ... and its steps on process infrastructure inside it, publishing to the mounted artifact root
        tasks = {t["name"]: t for t in stack.task_runs(run_id)}
        for name in STEP_NAMES:
            assert tasks[name]["state"]["type"] == "COMPLETED", (name, tasks[name]["state"])
        assert "running on process" in stack.logs(run_id)
        for row in _summary_rows(stack, run_id, "pipeline-credit-default"):
            for uri in re.findall(r"=(\S+?)(?:,|$)", row["outputs"]):
                assert Path(uri.removeprefix("file://")).exists(), uri

        # no container left behind (auto_remove; the engine removes it just after it exits)
        deadline = time.monotonic() + 60
        while (left := client.containers.list(all=True, filters={"label": f"io.prefect.flow-run-id={run_id}"})):
            if time.monotonic() > deadline:
                pytest.fail(f"containers left behind: {[(c.name, c.status) for c in left]}")
            time.sleep(1)
        assert not client.containers.list(all=True, filters={"ancestor": tag})
    finally:
        if worker is not None:
            worker.stop()
            stack.workers.pop("docker-1", None)
        client.close()
