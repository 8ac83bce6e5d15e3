"""`prefect-ml gc` against the real Docker engine and a moto S3 server: orphaned step containers,
outdated environment images, open multipart uploads (the file-system kinds: tests/unit/test_gc.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from typer.testing import CliRunner

from tests.conftest import require
from tests.servers import DEFAULT_BASE_IMAGE, ServiceUnavailable, moto_server


def test_gc_removes_containers_of_ended_pipelines_and_keeps_live_ones(ml_home, docker_client, monkeypatch, tmp_path):
    from prefect_ml.cli import app
    from prefect_ml.infrastructure.container import MANAGED_LABEL, OWNER_LABEL, _start_time, owner_label

    monkeypatch.chdir(tmp_path)
    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    dead_owner = f"{os.uname().nodename}:{ended.pid}:{_start_time(ended.pid)}"
    ended.wait()
    step = f"gc_{uuid.uuid4().hex[:6]}"
    orphan = docker_client.containers.run(image, ["sleep", "300"], detach=True, network_mode="none",
                                          labels={MANAGED_LABEL: "true", OWNER_LABEL: dead_owner,
                                                  "prefect-ml.step": step})
    live = docker_client.containers.run(image, ["sleep", "300"], detach=True, network_mode="none",
                                        labels={MANAGED_LABEL: "true", OWNER_LABEL: owner_label(),
                                                "prefect-ml.step": step})
    try:
        runner = CliRunner()
        dry = runner.invoke(app, ["gc", "--only", "containers"])
        assert dry.exit_code == 0, dry.output
        assert f"container {orphan.short_id} (running, step {step}" in dry.output
        assert live.short_id not in dry.output
        orphan.reload()
        assert orphan.status == "running"  # dry run
        done = runner.invoke(app, ["gc", "--only", "containers", "--yes"])
        assert done.exit_code == 0, done.output
        ids = {c.id for c in docker_client.containers.list(all=True, filters={"label": f"prefect-ml.step={step}"})}
        assert ids == {live.id}
    finally:
        for c in (orphan, live):
            try:
                c.remove(force=True)
            except Exception:
                pass


def test_gc_removes_outdated_images_of_environments_found_here(ml_home, docker_client, monkeypatch, tmp_path):
    from prefect_ml.cli import app

    base = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    name = f"gctest-{uuid.uuid4().hex[:6]}"
    env_dir = tmp_path / "environments" / name
    env_dir.mkdir(parents=True)
    (env_dir / "environment.yaml").write_text(f"name: {name}\nversion: '1'\nbase_image: {base}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_ML_ENVIRONMENTS_DIR", raising=False)
    old_tag = f"prefect-ml/{name}:0123456789abcdef"
    other_tag = f"prefect-ml/{name}-elsewhere:0123456789abcdef"  # no such environment here: kept
    docker_client.images.get(base).tag(old_tag)
    docker_client.images.get(base).tag(other_tag)
    try:
        runner = CliRunner()
        dry = runner.invoke(app, ["gc", "--only", "images"])
        assert dry.exit_code == 0, dry.output
        assert f"would remove image {old_tag}" in dry.output
        assert other_tag not in dry.output.split("note:")[0]
        assert f"prefect-ml/{name}-elsewhere" not in dry.output or "kept images" in dry.output
        done = runner.invoke(app, ["gc", "--only", "images", "--yes"])
        assert done.exit_code == 0, done.output
        tags = {t for i in docker_client.images.list(filters={"reference": f"prefect-ml/{name}*"}) for t in i.tags}
        assert old_tag not in tags and other_tag in tags
        docker_client.images.get(base)  # the base image itself is never touched
    finally:
        for tag in (old_tag, other_tag):
            try:
                docker_client.images.remove(tag)
            except Exception:
                pass


def test_gc_aborts_open_multipart_uploads_under_an_s3_root(ml_home, monkeypatch, tmp_path):
    import boto3

    from prefect_ml.cli import app

    try:
        server = moto_server()
        endpoint = server.__enter__()
    except ServiceUnavailable as exc:
        require(False, str(exc))
    try:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        monkeypatch.delenv("PREFECT_ML_STORAGE_OPTIONS", raising=False)
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="gc-bucket")
        ours = s3.create_multipart_upload(Bucket="gc-bucket", Key="root/steps/k/aaaaaaaaaaaa/model.bin")
        theirs = s3.create_multipart_upload(Bucket="gc-bucket", Key="elsewhere/file.bin")
        monkeypatch.setenv("PREFECT_ML_ARTIFACT_ROOT", "s3://gc-bucket/root")
        runner = CliRunner()
        dry = runner.invoke(app, ["gc", "--only", "uploads", "--older-than", "0"])
        assert dry.exit_code == 0, dry.output
        assert "would remove multipart upload s3://gc-bucket/root/steps/k/aaaaaaaaaaaa/model.bin" in dry.output
        assert "elsewhere" not in dry.output
        done = runner.invoke(app, ["gc", "--only", "uploads", "--older-than", "0", "--yes"])
        assert done.exit_code == 0, done.output
        left = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket="gc-bucket").get("Uploads", [])}
        assert ours["UploadId"] not in left and theirs["UploadId"] in left
    finally:
        server.__exit__(None, None, None)
