"""Issue #11 against real servers: the MLflow REST client and queued tracking writes against a real
`mlflow server`, re-pointing a model alias without importing mlflow, and `prefect-ml server
start|status|env|stop` starting real Prefect and MLflow servers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests import servers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    pytest.importorskip("mlflow.server")
    with servers.mlflow_server(tmp_path_factory.mktemp("mlflow-fast-path")) as uri:
        yield uri


def test_rest_client_runs_batches_and_errors(mlflow_uri):
    from prefect_ml.runtime.mlflow_rest import MlflowRest, MlflowRestError

    rest = MlflowRest(mlflow_uri)
    name = f"rest-{uuid.uuid4().hex[:8]}"
    assert rest.get_experiment_id(name) is None
    exp = rest.create_experiment(name)
    assert rest.get_experiment_id(name) == exp
    run_id = rest.create_run(exp, "step", {"prefect_ml.step": "train"})
    # more params and tags than one LogBatch may carry: split, nothing lost
    rest.log_batch(run_id, params={f"p{i}": str(i) for i in range(150)},
                   metrics=[("auc", 0.75, 1, 0)], tags={f"t{i}": "x" for i in range(120)})
    rest.update_run(run_id, "FINISHED")
    run = rest.get_run(run_id)
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "step"
    assert len(run["data"]["params"]) == 150
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"auc": 0.75}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["prefect_ml.step"] == "train" and tags["t119"] == "x"
    with pytest.raises(MlflowRestError) as err:
        rest.update_run("0" * 32, "FINISHED")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert rest.search_model_versions("name = 'no-such-model'") == []


def test_queued_tracking_writes_land_on_flush_without_importing_mlflow(mlflow_uri, tmp_path):
    """A child process records a parent and a nested run the way a pipeline does; everything is in
    the server after `flush`, and `mlflow` was never imported."""
    code = """
import json, sys
from prefect_ml.runtime import tracking
parent = tracking.start_run("fast-path", "pipeline", {"prefect_ml.pipeline": "p"}, params={"lr": 0.1})
child = tracking.start_run("fast-path", "train", {"prefect_ml.step": "train"}, parent, params={"data": "file:///x"})
tracking.end_run(child, True, metrics={"auc": 0.8, "nan": float("nan")}, tags={"prefect_ml.output.model": "file:///m"})
tracking.set_tags(parent, {"prefect_ml.gate.auc": "pass"})
tracking.end_run(parent, False)
errors = tracking.flush()
print(json.dumps({"parent": parent, "child": child, "errors": errors, "mlflow": "mlflow" in sys.modules}))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PREFECT_ML_HOME": str(tmp_path)}
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["errors"] == [] and out["mlflow"] is False
    from prefect_ml.runtime.mlflow_rest import MlflowRest

    rest = MlflowRest(mlflow_uri)
    child, parent = rest.get_run(out["child"]), rest.get_run(out["parent"])
    assert child["info"]["status"] == "FINISHED" and parent["info"]["status"] == "FAILED"
    ctags = {t["key"]: t["value"] for t in child["data"]["tags"]}
    assert ctags["mlflow.parentRunId"] == out["parent"] and ctags["prefect_ml.output.model"] == "file:///m"
    assert [m["key"] for m in child["data"]["metrics"]] == ["auc"]  # non-finite values are dropped
    assert {p["key"]: p["value"] for p in parent["data"]["params"]} == {"lr": "0.1"}
    assert {t["key"]: t["value"] for t in parent["data"]["tags"]}["prefect_ml.gate.auc"] == "pass"


def _version(client, name: str, tags: dict[str, str]):
    """A model version whose source lies in a run of its own (the server checks that)."""
    exp = client.get_experiment_by_name("fast-path-models") or client.get_experiment(
        client.create_experiment("fast-path-models"))
    run = client.create_run(exp.experiment_id)
    return client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags)


def test_same_source_re_points_the_alias_over_rest(mlflow_uri, tmp_path):
    """A version registered with the mlflow library; registering the same step output again (same
    source key) re-points the alias through REST, with no new version and no mlflow import."""
    from mlflow.tracking import MlflowClient

    from prefect_ml.runtime.registry import SOURCE_KEY_TAG

    name = f"model-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    client.create_registered_model(name)
    v1 = _version(client, name, {SOURCE_KEY_TAG: "key-1"})
    _version(client, name, {SOURCE_KEY_TAG: "key-2"})
    code = f"""
import json, sys
from pathlib import Path
from prefect_ml.records import StepResult
from prefect_ml.runtime import registry
producer = StepResult(step="train", key="key-1", outputs={{"model": "file:///m"}}, cached=True, mlflow_run_id=None,
                      inputs={{}}, fingerprints={{}})
info = registry.register(producer=producer, model_uri="file:///m", output="model", name={name!r}, alias="candidate",
                         metrics_uri=None, tags={{}}, staging_home=Path({str(tmp_path)!r}))
print(json.dumps({{"info": info, "mlflow": "mlflow" in sys.modules}}))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PREFECT_ML_HOME": str(tmp_path)}
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["info"]["reused"] is True and out["info"]["version"] == int(v1.version)
    assert out["mlflow"] is False
    assert client.get_registered_model(name).aliases == {"candidate": v1.version}
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


def test_rest_registry_reads_like_mlflow_client(mlflow_uri):
    from mlflow.tracking import MlflowClient

    from prefect_ml.runtime.mlflow_rest import MlflowRest, MlflowRestError, RestRegistry

    name = f"model-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    client.create_registered_model(name)
    v = _version(client, name, {"metric.auc": "0.8"})
    reg = RestRegistry(MlflowRest(mlflow_uri))
    reg.set_registered_model_alias(name, "champion", v.version)
    reg.set_model_version_tag(name, v.version, "status", "Approved")
    model = reg.get_registered_model(name)
    assert model.aliases == {"champion": v.version} == client.get_registered_model(name).aliases
    mv = reg.get_model_version(name, v.version)
    assert mv.tags == client.get_model_version(name, v.version).tags == {"metric.auc": "0.8", "status": "Approved"}
    assert [m.version for m in reg.search_model_versions(f"name = '{name}'")] == [v.version]
    with pytest.raises(MlflowRestError) as err:
        reg.get_registered_model(f"{name}-missing")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_server_command_starts_status_env_and_stops(tmp_path):
    """`prefect-ml server start` twice (idempotent), `status`, `env`, then `stop`: real servers."""
    env = {**os.environ, "PREFECT_ML_HOME": str(tmp_path / "ml"), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_ML_SERVER_PREFECT_PORT": str(servers.free_port()),
           "PREFECT_ML_SERVER_MLFLOW_PORT": str(servers.free_port()), "PREFECT_ML_SERVER_START_TIMEOUT": "600"}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = [sys.executable, "-c", "from prefect_ml.cli import app; app()", "server"]

    def run(*args: str) -> str:
        proc = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=700, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    try:
        first = run("start")
        assert "prefect: started" in first and "mlflow: started" in first and "prefect-ml server stop" in first
        again = run("start")
        assert "prefect: already running" in again and "mlflow: already running" in again
        assert run("status").count("healthy") == 2
        exports = dict(line.removeprefix("export ").split("=", 1) for line in run("env").splitlines())
        assert exports == {"PREFECT_API_URL": f"http://127.0.0.1:{env['PREFECT_ML_SERVER_PREFECT_PORT']}/api",
                           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{env['PREFECT_ML_SERVER_MLFLOW_PORT']}"}
        env["MLFLOW_TRACKING_URI"] = "http://mine:5000"  # a user's own server wins: not exported
        assert "MLFLOW_TRACKING_URI" not in run("env")
    finally:
        stopped = run("stop")
    assert "prefect: stopped" in stopped and "mlflow: stopped" in stopped
    assert run("status").count("stopped") == 2


def test_existing_image_answers_like_docker_py_without_importing_it():
    ok, reason = servers.docker_image_available()
    if not ok:
        servers.skip_or_fail(reason)
    code = """
import json, sys
from pathlib import Path
from prefect_ml.environments.image import existing_image, image_for
found = existing_image("sklearn-cpu", start=Path("components/train"))
before = "docker" in sys.modules
import docker
client = docker.from_env()
tag = image_for("sklearn-cpu", client, start=Path("components/train"))
built = None
try:
    built = client.images.get(tag).id
except docker.errors.ImageNotFound:
    pass
print(json.dumps({"found": found, "tag": tag, "built": built, "docker_before": before}))
"""
    env = {**os.environ, "PREFECT_ML_BASE_IMAGE": os.environ.get("PREFECT_ML_BASE_IMAGE") or servers.DEFAULT_BASE_IMAGE}
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                                    cwd=servers.REPO).stdout.strip().splitlines()[-1])
    assert out["docker_before"] is False
    assert out["found"] == ([out["tag"], out["built"]] if out["built"] else None)
