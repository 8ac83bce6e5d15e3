"""Data assets: the registry (immutable versions, fingerprints, snapshots) and the CLI, on a local artifact root
(pipeline inputs and lineage, against a Prefect API: tests/integration/test_assets_flows.py)."""

import json
import os

import pytest
from typer.testing import CliRunner

from prefect_ml import storage
from prefect_ml.asset_registry import AssetRegistry, asset_of
from prefect_ml.errors import DataAssetError


@pytest.fixture
def reg(ml_home):
    return AssetRegistry.default()


def test_registry_lives_on_the_artifact_root(reg, ml_home):
    assert reg.uri == (ml_home / "artifacts" / "assets").resolve().as_uri()


def test_register_list_show_latest(reg, data):
    v1 = reg.register("credit-card", "1", str(data / "credit.csv"), description="UCI")
    assert v1.type == "uri_file" and v1.uri == (data / "credit.csv").as_uri()
    assert v1.files == [{"path": "credit.csv", "size": 8, "checksum": storage.sha256_file(data / "credit.csv"),
                         "mtime_ns": (data / "credit.csv").stat().st_mtime_ns}]
    assert storage.local_path(reg._record_uri("credit-card", "1")).is_file()
    v2 = reg.register("credit-card", "2", str(data / "folder"), type="uri_folder")
    assert v2.type == "uri_folder" and [f["path"] for f in v2.files] == ["p1.csv", "p2.csv"]
    assert [v.version for v in reg.versions("credit-card")] == ["1", "2"]
    assert reg.get("credit-card", "latest").version == "2"
    assert reg.resolve("credit-card", "1") == v1.uri
    assert asset_of(v1.uri) == ("credit-card", "1")  # remembered for lineage tags
    assert [(v.name, v.version) for v in reg.list()] == [("credit-card", "1"), ("credit-card", "2")]


def test_versions_are_immutable(reg, data):
    v1 = reg.register("cc", "1", str(data / "credit.csv"))
    assert reg.register("cc", "1", str(data / "credit.csv")).created_at == v1.created_at  # same data: a no-op
    with pytest.raises(DataAssetError,
                       match=r"version 1 already exists with other data.*register this data as a new version"):
        reg.register("cc", "1", str(data / "folder"))
    with pytest.raises(DataAssetError, match="is a file, not a folder; use --type uri_file"):
        reg.register("cc", "2", str(data / "credit.csv"), type="uri_folder")
    with pytest.raises(DataAssetError, match="not 'latest'"):
        reg.register("cc", "latest", str(data / "credit.csv"))
    with pytest.raises(DataAssetError, match="does not exist"):
        reg.register("cc", "3", str(data / "missing.csv"))


def test_unknown_name_and_version_list_what_exists(reg, data):
    reg.register("credit-card", "1", str(data / "credit.csv"))
    reg.register("credit-card", "2", str(data / "credit.csv"))
    reg.register("other", "a", str(data / "folder"))
    with pytest.raises(DataAssetError, match=r"unknown data asset 'nope' .*registered assets: credit-card, other\. "
                                             r"Register it with: prefect-ml data register nope"):
        reg.resolve("nope", "1")
    with pytest.raises(DataAssetError,
                       match=r"data asset 'credit-card' has no version '9'; versions: 1, 2 \(latest: 2\)"):
        reg.resolve("credit-card", "9")


def test_changed_data_is_an_error_and_a_snapshot_keeps_the_version(reg, data):
    reg.register("cc", "1", str(data / "credit.csv"))
    snap = reg.register("cc", "1s", str(data / "credit.csv"), snapshot=True)
    assert snap.snapshot and snap.uri.startswith(reg.uri) and snap.source_uri == (data / "credit.csv").as_uri()
    reg.register("folder", "1", str(data / "folder"))
    (data / "credit.csv").write_text("a,b\n1,3\n")
    (data / "folder" / "p3.csv").write_text("3\n")
    with pytest.raises(DataAssetError, match=r"data asset 'cc' version 1 changed since registration .*'credit.csv' "
                                             r"content changed.*register the current data as a new version"):
        reg.resolve("cc", "1")
    with pytest.raises(DataAssetError, match=r"changed since registration.*'p3.csv' was added"):
        reg.resolve("folder", "1")
    assert storage.local_path(reg.resolve("cc", "1s")).read_text() == "a,b\n1,2\n"  # the snapshot did not change
    # a touch without a content change is not a change
    os.utime(data / "folder" / "p1.csv", ns=(1, 1))
    (data / "folder" / "p3.csv").unlink()
    assert reg.resolve("folder", "1")


def test_cli_register_list_show(ml_home, data):
    from prefect_ml.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["data", "register", "credit-card", "--version", "1", "--path", str(data / "credit.csv"),
                            "--type", "uri_file", "--description", "UCI credit default"])
    assert r.exit_code == 0, r.output
    assert "Registered asset:credit-card:1" in r.output
    r = runner.invoke(app, ["data", "register", "credit-card", "--version", "2", "--path", str(data / "folder"),
                            "--snapshot"])
    assert r.exit_code == 0 and "snapshot of" in r.output, r.output
    r = runner.invoke(app, ["data", "list"])
    assert r.exit_code == 0 and "credit-card  1" in r.output and "uri_folder" in r.output, r.output
    r = runner.invoke(app, ["data", "list", "--json"])
    assert [v["version"] for v in json.loads(r.output)] == ["1", "2"]
    r = runner.invoke(app, ["data", "show", "credit-card:1"])
    assert r.exit_code == 0 and "UCI credit default" in r.output and "unchanged since registration" in r.output
    r = runner.invoke(app, ["data", "show", "credit-card"])
    assert "asset:credit-card:2" in r.output and "latest: 2" in r.output
    (data / "credit.csv").write_text("changed")
    r = runner.invoke(app, ["data", "show", "credit-card:1"])
    assert r.exit_code == 2 and "CHANGED since registration" in r.output
    r = runner.invoke(app, ["data", "show", "nope"])
    assert r.exit_code == 1 and "unknown data asset 'nope'" in r.output
