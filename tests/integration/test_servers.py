"""Smoke tests of the test servers in tests/servers.py: start each, make one real request."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from tests import servers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_moto_s3_bucket_roundtrip():
    s3fs = pytest.importorskip("s3fs")
    with servers.moto_server() as endpoint_url:
        assert endpoint_url.startswith("http://127.0.0.1:")
        fs = s3fs.S3FileSystem(
            key="testing", secret="testing", skip_instance_cache=True,
            client_kwargs={"endpoint_url": endpoint_url},
        )
        fs.mkdir("smoke-bucket")
        fs.pipe("smoke-bucket/dir/hello.txt", b"hello s3")
        assert "smoke-bucket" in fs.ls("", refresh=True)
        assert fs.cat("smoke-bucket/dir/hello.txt") == b"hello s3"


def test_azurite_blob_roundtrip():
    blob = pytest.importorskip("azure.storage.blob")
    adlfs = pytest.importorskip("adlfs")
    ok, reason = servers.azurite_available()
    if not ok:
        servers.skip_or_fail(reason)
    with servers.azurite() as az:
        assert az["endpoint"].startswith("http://127.0.0.1:")
        service = blob.BlobServiceClient.from_connection_string(az["connection_string"])
        service.create_container("smoke")
        service.get_blob_client("smoke", "dir/hello.txt").upload_blob(b"hello azure")
        # read back through adlfs, the way prefect-ml reads abfs:// URIs
        fs = adlfs.AzureBlobFileSystem(
            connection_string=az["connection_string"], skip_instance_cache=True
        )
        assert fs.cat("smoke/dir/hello.txt") == b"hello azure"


def test_mlflow_server_experiment_and_artifact(tmp_path):
    mlflow_client = pytest.importorskip("mlflow.tracking")
    with servers.mlflow_server(tmp_path / "mlflow") as tracking_uri:
        assert tracking_uri.startswith("http://127.0.0.1:")
        client = mlflow_client.MlflowClient(tracking_uri=tracking_uri)
        experiment_id = client.create_experiment(f"smoke-{uuid.uuid4().hex[:8]}")
        experiment = client.get_experiment(experiment_id)
        assert experiment.artifact_location.startswith("mlflow-artifacts:")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "auc", 0.9)
        client.log_text(run.info.run_id, "hello mlflow", "smoke/hello.txt")
        client.set_terminated(run.info.run_id)
        assert [f.path for f in client.list_artifacts(run.info.run_id, "smoke")] == ["smoke/hello.txt"]
        # the server stored the artifact under WORKDIR/artifacts (proxied upload)
        stored = list((tmp_path / "mlflow" / "artifacts").rglob("hello.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "hello mlflow"


def test_prefect_server_health(tmp_path):
    pytest.importorskip("prefect")
    with servers.prefect_server(tmp_path / "prefect-home") as api_url:
        assert api_url.startswith("http://127.0.0.1:") and api_url.endswith("/api")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{api_url}/health", timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read()) is True
