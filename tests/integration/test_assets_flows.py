"""Data assets in pipelines, against the session's Prefect API: an asset as a pipeline input, bad asset
inputs that fail before any step, lineage records (the registry and the CLI: tests/unit/test_assets.py)."""

import json

import pytest

from prefect_ml import Input, Output, command, data_asset, pipeline, storage
from prefect_ml.asset_registry import AssetRegistry
from prefect_ml.errors import DataAssetError


@pytest.fixture
def copier(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "cp.py").write_text("import sys, shutil; shutil.copy(sys.argv[1], sys.argv[2])\n")
    return command(name="copier", code=code, command="python cp.py ${{inputs.data}} ${{outputs.out}}",
                   inputs={"data": Input(type="uri_file")}, outputs={"out": Output(type="uri_file")})


def test_a_data_asset_as_pipeline_input(env, data, copier):
    AssetRegistry.default().register("credit-card", "1", str(data / "credit.csv"))

    @pipeline
    def copy_asset(data: str = data_asset("credit-card", "latest")):
        return copier(data=data).outputs.out

    out = copy_asset()
    assert storage.local_path(out).read_text() == "a,b\n1,2\n"


@pytest.mark.parametrize("ref, message", [
    ("asset:nope:1", r"unknown data asset 'nope'.*registered assets: credit-card"),
    ("azureml:credit-card:7", r"data asset 'credit-card' has no version '7'; versions: 1"),
    ("asset:credit-card:1", r"data asset 'credit-card' version 1 changed since registration"),
])
def test_bad_data_asset_input_fails_before_any_step(env, data, copier, ref, message):
    AssetRegistry.default().register("credit-card", "1", str(data / "credit.csv"))
    if "changed" in message:
        (data / "credit.csv").write_text("a,b\n9,9\n")

    @pipeline
    def copy_asset(data: str):
        return copier(data=data).outputs.out

    with pytest.raises(DataAssetError, match=message):
        copy_asset(data=ref)
    assert not (env / "artifacts" / "steps").exists()  # nothing ran, nothing published


def test_lineage_records(env, data):
    from prefect import flow, task
    from prefect.client.orchestration import get_client

    from prefect_ml.runtime import lineage

    reg = AssetRegistry.default()
    reg.register("credit-card", "3", str(data / "credit.csv"))
    src = reg.resolve("credit-card", "3")
    inputs = {"data": src}
    fps = {"data": storage.fingerprint(src)}
    outputs = {"train_data": "s3://bucket/root/steps/k/a/train_data"}
    assert lineage.mlflow_tags(inputs, fps) == {
        "prefect_ml.input.data": src, "prefect_ml.input_fingerprint.data": fps["data"],
        "prefect_ml.data_asset.data": "credit-card:3"}
    assert lineage.model_version_tags({"data_prep": inputs, "train": {"train_data": outputs["train_data"]}}) == {
        "prefect_ml.data_asset.data_prep.data": "credit-card:3", "prefect_ml.data_assets": "credit-card:3"}

    @task
    def step_task():
        lineage.record_step("data_prep", inputs, fps, outputs, cache_key="k")
        return [e.event for e in lineage.emit_asset_events("data_prep", inputs, outputs, fingerprints=fps)]

    @flow
    def lineage_flow():
        return step_task()

    state = lineage_flow(return_state=True)
    assert state.result() == ["prefect.asset.referenced", "prefect.asset.materialization.succeeded"]
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

        # the session's server holds other tests' lineage artifacts too: read this flow run's own
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["lineage-data-prep"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert arts and "credit-card:3" in json.dumps(arts[0].data)
