"""The credit-default pipeline end to end on process infrastructure: demo data and the real UCI table."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client

from tests.conftest import task_runs
from tests.paths import REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "flows"))
from credit_default import credit_default

STEPS = {"data_prep", "train", "evaluate"}


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def check_run(state, model_name):
    """Steps completed, outputs published with markers, MLflow child runs, a loadable registered model."""
    import mlflow

    from prefect_ml.runtime import tracking

    out = state.result()
    runs = {r.name: r for r in task_runs(state, names=STEPS)}
    assert set(runs) >= STEPS and any(n.startswith("gate-auc") for n in runs)
    assert any(n == f"register-{model_name}" for n in runs)
    assert all(runs[s].state.is_completed() for s in STEPS)
    for uri in (out["model"], out["metrics"], out["report"]):
        path = local(uri)
        assert path.exists()
        assert (path.parent.parent / "_COMPLETE.json").is_file()  # <root>/steps/<key>/<attempt>/<output>
    assert (local(out["report"]) / "roc_curve.png").stat().st_size > 1000
    metrics = json.loads(local(out["metrics"]).read_text())
    assert set(metrics) == {"auc", "accuracy", "precision", "recall", "f1"}

    client = tracking.client()
    children = client.search_runs(
        [tracking.experiment_id("credit-default")],
        filter_string=f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'"
                      " and tags.`prefect_ml.step` = 'evaluate'",
    )
    assert children and children[0].data.metrics["auc"] == pytest.approx(metrics["auc"])
    assert children[0].data.tags["mlflow.parentRunId"]

    with get_client(sync_client=True) as c:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    gate_md = [a for a in artifacts if a.key == "gate-auc"]
    assert gate_md and "PASSED" in gate_md[0].data
    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"])
    assert "passed" in parent.data.tags["prefect_ml.gate.auc"]

    reg = out["registered"]
    version = client.get_model_version_by_alias(model_name, "candidate")
    assert int(version.version) == reg["version"]
    assert version.tags["prefect_ml.flow_run_id"] == str(state.state_details.flow_run_id)
    assert any(k.startswith("prefect_ml.input.data_prep.data") for k in version.tags)
    assert float(version.tags["metric.auc"]) == pytest.approx(metrics["auc"], rel=1e-5)

    mlflow.set_tracking_uri(tracking.tracking_uri())
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@candidate")
    test = pd.read_csv(local(runs_output(out, "test_data")) / "data.csv")
    scores = model.predict(test.drop(columns=["default payment next month"]).astype("float64"))
    assert len(scores) == len(test)
    return out, metrics


def runs_output(out, name):
    """The data_prep output URI next to the model's inputs (read from the evaluate step's marker)."""
    marker = json.loads((local(out["metrics"]).parent.parent / "_COMPLETE.json").read_text())
    return marker["inputs"][name]


def test_credit_default_on_demo_data_then_gate_blocks_registration(env):
    state = credit_default(min_auc=0.6, return_state=True)
    out, metrics = check_run(state, "credit_defaults_model")
    assert metrics["auc"] > 0.6
    from prefect_ml.runtime import tracking

    # a threshold the model cannot meet: the gate fails and no version is registered (steps are reused)
    state2 = credit_default(min_auc=0.99, return_state=True)
    assert state2.result()["registered"] is None
    versions = tracking.client().search_model_versions("name='credit_defaults_model'")
    assert len(versions) == 1
    cached = [r for r in task_runs(state2, names=STEPS) if r.name in STEPS]
    assert len(cached) == 3 and all(r.state.name == "Cached" for r in cached)

    # an unchanged re-run that passes the gate: the same model is not registered twice
    again = credit_default(min_auc=0.6, return_state=True).result()["registered"]
    assert again["version"] == out["registered"]["version"] and again["reused"] is True
    assert len(tracking.client().search_model_versions("name='credit_defaults_model'")) == 1


def test_credit_default_on_the_real_uci_table(env):
    if not SHARED_DATA.is_file():
        pytest.skip(f"the real UCI table is not at {SHARED_DATA} (it lives in ../shared/data, outside the project)")
    state = credit_default(data=str(SHARED_DATA), min_auc=0.7, registered_model_name="credit_real", return_state=True)
    _, metrics = check_run(state, "credit_real")
    assert metrics["auc"] > 0.7
