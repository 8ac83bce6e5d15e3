"""Nothing wrong is served from the cache, and secrets stay out of keys, markers and logs (issue 12)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from prefect_ml import command
from prefect_ml.errors import StorageError
from prefect_ml.runtime.cache_key import component_definition
from prefect_ml.storage import ArtifactRoot, redact
from prefect_ml.storage.uri import carries_credentials


def _publish(tmp_path: Path) -> tuple[ArtifactRoot, str, dict]:
    root = ArtifactRoot((tmp_path / "root").as_uri())
    attempt, staging = root.new_attempt(tmp_path / "staging-home")
    (staging / "model").mkdir()
    (staging / "model" / "MLmodel").write_text("flavors: {}\n")
    (staging / "metrics.json").write_text('{"auc": 0.61}')
    published = root.publish("k1", attempt, staging, {"model": "model", "metrics": "metrics.json"}, {})
    return root, "k1", published.outputs


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_an_unchanged_publication_is_reused(tmp_path):
    root, key, outputs = _publish(tmp_path)
    published, why = root.check(key, ["model", "metrics"])
    assert published is not None and published.outputs == outputs and why == ""


def test_an_edited_cached_output_is_a_miss(tmp_path):
    root, key, outputs = _publish(tmp_path)
    _local(outputs["metrics"]).write_text('{"auc": 0.99}')  # let a model through a gate
    published, why = root.check(key, ["model", "metrics"])
    assert published is None and "output 'metrics' changed after it was published" in why


def test_a_marker_pointing_outside_its_attempt_is_a_miss(tmp_path):
    root, key, _ = _publish(tmp_path)
    marker_path = _local(root.marker_uri(key))
    marker = json.loads(marker_path.read_text())
    marker["outputs"]["model"] = "file:///etc/ssh"
    marker_path.write_text(json.dumps(marker))
    published, why = root.check(key, ["model", "metrics"])
    assert published is None and "outside its attempt folder" in why


@pytest.mark.parametrize("marker", [[1, 2], {"attempt": 5}, {"attempt": "../x", "outputs": {}, "integrity": {}},
                                    {"attempt": "0123456789ab", "outputs": "x", "integrity": {}}])
def test_a_marker_of_the_wrong_shape_is_a_miss_not_a_crash(tmp_path, marker):
    root, key, _ = _publish(tmp_path)
    _local(root.marker_uri(key)).write_text(json.dumps(marker))
    published, why = root.check(key, ["model", "metrics"])
    assert published is None and why


def test_disk_full_while_writing_the_marker_is_a_clear_error(tmp_path, monkeypatch):
    import prefect_ml.storage.artifact_root as artifact_root

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifact_root, "atomic_write_text", full)
    with pytest.raises(StorageError,
                       match=r"could not write the completion marker .*No space left on device.*not published"):
        _publish(tmp_path)


def test_environment_variable_values_are_digests_in_the_key_parts(tmp_path):
    c = command(name="c", code=tmp_path, command="true", environment_variables={"API_TOKEN": "s3cr3t-value"})
    parts = json.dumps(component_definition(c))
    assert "s3cr3t-value" not in parts and "API_TOKEN" in parts


@pytest.mark.parametrize("uri, carries", [
    ("s3://TOKEN@bucket/key", True), ("s3://user:pw@bucket/key", True),
    ("abfs://container@account.dfs.core.windows.net/p", False), ("abfs://u:pw@container/p", True),
    ("s3://bucket/key", False), ("/tmp/a@b", False),
])
def test_credentials_in_uris_are_detected(uri, carries):
    assert carries_credentials(uri) is carries


@pytest.mark.parametrize("text, secret", [
    ("s3://TOKEN123@bucket/x", "TOKEN123"),
    ("http://alice:hunter2@mlflow:5000", "hunter2"),
    ("https://a.blob.core.windows.net/c/x?sv=2024&sig=SIGVALUE", "SIGVALUE"),
    ("https://x/y?u=https%3A%2F%2Fa%3Fsv%3D1%26sig%3DSIGVALUE%26se%3D2", "SIGVALUE"),
])
def test_redaction_hides_credentials(text, secret):
    assert secret not in redact(text)


def test_mlflow_params_are_redacted_before_they_are_logged():
    from prefect_ml.runtime.tracking import _param

    assert "TOKEN" not in _param("s3://TOKEN@bucket/data.csv")
