"""prefect_ml.storage on a local (file://) artifact root: layout, atomic publish, fingerprints; remote code
paths on fsspec's in-memory filesystem; one reset for every cache (zero-copy passing between the steps of
a pipeline: tests/integration/test_storage_flows.py)."""

import json
import os

import pytest

from prefect_ml import storage
from prefect_ml.errors import StorageError


def test_uri_layout(tmp_path):
    root = storage.ArtifactRoot(str(tmp_path / "root"))
    assert root.uri == (tmp_path / "root").as_uri()
    assert root.step_uri("k1") == f"{root.uri}/steps/k1"
    assert root.marker_uri("k1") == f"{root.uri}/steps/k1/_COMPLETE.json"
    assert storage.normalize("s3://b/p/") == "s3://b/p"
    assert storage.join("s3://b/p/", "/steps/", "k") == "s3://b/p/steps/k"
    assert storage.canonical_protocol("az://c/x") == "abfs" and storage.canonical_protocol("s3a://b") == "s3"
    assert storage.is_local("file:///x") and not storage.is_local("abfs://c/x")


@pytest.mark.parametrize("uri", ["gs://bucket/x", "hdfs://nn/x", "ftp://host/x"])
def test_unknown_scheme_is_a_clear_error(uri):
    with pytest.raises(StorageError, match=r"unknown URI scheme .*use a local path, file://, s3://, abfs:// or az://"):
        storage.ArtifactRoot(uri)
    with pytest.raises(StorageError, match="unknown URI scheme"):
        storage.fingerprint(uri)


def test_credentials_in_a_uri_are_refused():
    with pytest.raises(StorageError, match="must not carry credentials") as err:
        storage.filesystem("s3://AKIA:topsecret@bucket/x")
    assert "topsecret" not in str(err.value)


def test_bad_storage_options_json(monkeypatch):
    monkeypatch.setenv("PREFECT_ML_STORAGE_OPTIONS", "{not json")
    with pytest.raises(StorageError, match="PREFECT_ML_STORAGE_OPTIONS is not valid JSON"):
        storage.storage_options("s3")
    monkeypatch.setenv("PREFECT_ML_STORAGE_OPTIONS", json.dumps({"s3": {"endpoint_url": "http://127.0.0.1:1"}}))
    assert storage.storage_options("s3a") == {"endpoint_url": "http://127.0.0.1:1"}
    assert storage.storage_options("az") == {}


def test_redact_scrubs_known_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-very-secret")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey=azkey123==;BlobEndpoint=http://x")
    monkeypatch.setenv("PREFECT_ML_STORAGE_OPTIONS", json.dumps({"s3": {"secret": "opt-secret-1", "endpoint_url": "http://e"}}))
    text = storage.redact("aws-very-secret azkey123== opt-secret-1 AccountKey=other; https://x?sv=1&sig=abcdef http://e")
    for s in ("aws-very-secret", "azkey123==", "opt-secret-1", "other", "abcdef"):
        assert s not in text
    assert "http://e" in text


def _attempt(root, tmp_path, files):
    attempt, staging = root.new_attempt(tmp_path / "staging-home")
    for rel, data in files.items():
        p = staging / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return attempt, staging


def test_publish_is_atomic_and_marker_last(tmp_path):
    root = storage.ArtifactRoot(str(tmp_path / "root"))
    attempt, staging = _attempt(root, tmp_path, {"model/w.bin": b"x" * 100, "metrics.json": b'{"auc": 0.9}'})
    assert staging.is_relative_to(tmp_path / "root")  # local root: staging inside it, so publish is a rename
    assert root.completed("k", ["model", "metrics"]) is None
    ino = (staging / "model" / "w.bin").stat().st_ino
    pub = root.publish("k", attempt, staging, {"model": "model", "metrics": "metrics.json"}, {"step": "s"})
    assert not staging.exists()
    assert storage.local_path(pub.outputs["model"]).joinpath("w.bin").stat().st_ino == ino  # moved, not copied
    marker = root.read_marker("k")
    assert marker["attempt"] == attempt and marker["step"] == "s"
    assert root.completed("k", ["model", "metrics"]).outputs == pub.outputs
    assert root.completed("k", ["model"]) is None  # a different output set is not this step

    # a second attempt on the same key keeps the first one's outputs
    a2, s2 = _attempt(root, tmp_path, {"model/w.bin": b"y", "metrics.json": b"{}"})
    assert root.publish("k", a2, s2, {"model": "model", "metrics": "metrics.json"}, {}).attempt == attempt
    assert not s2.exists()


def test_outputs_without_marker_are_not_complete(tmp_path):
    """What a killed step leaves (outputs, no marker), a torn marker, or a missing output: never complete."""
    root = storage.ArtifactRoot(str(tmp_path / "root"))
    attempt, staging = _attempt(root, tmp_path, {"out/a": b"1"})
    target = storage.local_path(storage.join(root.step_uri("k"), attempt))
    target.parent.mkdir(parents=True)
    os.rename(staging, target)  # outputs in place, killed before the marker
    assert root.completed("k", ["out"]) is None
    storage.local_path(root.marker_uri("k")).write_text('{"attempt": "x", "outp')  # torn
    assert root.completed("k", ["out"]) is None
    storage.local_path(root.marker_uri("k")).write_text(json.dumps(
        {"attempt": attempt, "outputs": {"out": storage.join(root.step_uri("k"), attempt, "gone")}}))
    assert root.completed("k", ["out"]) is None


def test_fingerprints_follow_content(tmp_path):
    f = tmp_path / "d" / "a.csv"
    f.parent.mkdir()
    f.write_text("1,2\n")
    fp1 = storage.fingerprint(str(f))
    assert fp1.startswith("sha256:") and storage.fingerprint(f.as_uri()) == fp1
    tree1 = storage.fingerprint(str(f.parent))
    f.write_text("1,3\n")
    assert storage.fingerprint(str(f)) != fp1
    assert storage.fingerprint(str(f.parent)) != tree1
    (f.parent / "b.csv").write_text("x")
    files = storage.list_files(str(f.parent))
    assert [e.path for e in files] == ["a.csv", "b.csv"] and files[0].size == 4
    with pytest.raises(StorageError, match="does not exist"):
        storage.fingerprint(str(tmp_path / "missing.csv"))


def test_stage_in_local_is_in_place(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("x")
    storage.reset_transfer_stats()
    assert storage.stage_in(f.as_uri(), tmp_path / "staging") == f
    assert storage.transfer_stats().bytes_in == 0
    with pytest.raises(StorageError, match="does not exist"):
        storage.stage_in(str(tmp_path / "nope"), tmp_path / "staging")


def test_stage_in_a_remote_step_output_lists_it_once(tmp_path):
    """A `step:` fingerprint names no bytes: stage-in fingerprints the data itself, then downloads it once."""
    import uuid

    uri = f"memory://prefect-ml-test-{uuid.uuid4().hex[:8]}/out/data.csv"
    fs, path = storage.filesystem(uri)
    fs.pipe_file(path, b"a,b\n1,2\n")
    storage.reset_transfer_stats()
    local = storage.stage_in(uri, tmp_path / "staging", fingerprint_hint="step:k1/out")
    assert local.read_bytes() == b"a,b\n1,2\n" and storage.transfer_stats().bytes_in == 8
    assert storage.stage_in(uri, tmp_path / "staging", fingerprint_hint="step:k1/out") == local
    assert storage.transfer_stats().bytes_in == 8  # staged once
    # a data fingerprint is trusted as given (no listing): another fingerprint is another copy
    assert storage.stage_in(uri, tmp_path / "staging", fingerprint_hint="sha256:other") != local
    fs.rm(path)


def test_caches_clear_resets_every_cache(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("x")
    fs = storage.filesystem("memory://bucket/x")[0]
    assert storage.filesystem("memory://bucket/y")[0] is fs  # one instance per protocol and options
    storage.fingerprint(str(f))
    storage.caches.count("in", 5, 1)
    storage.caches.clear()
    assert storage.filesystem("memory://bucket/x")[0] is not fs
    assert storage.transfer_stats() == storage.TransferStats()
    assert storage.fingerprint(str(f)).startswith("sha256:")


@pytest.mark.parametrize("uri", [
    "https://b.s3.amazonaws.com/k.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=deadbeef",
    "https://acct.blob.core.windows.net/c/data.csv?sv=2024&sig=abc%3D",
    "https://storage.googleapis.com/b/o?X-Goog-Signature=abc",
    "https://example.org/data.csv?token=abc",
    "https://user:pw@example.org/data.csv",
])
def test_https_inputs_carrying_credentials_are_refused_and_never_shown(uri):
    from prefect_ml.errors import StorageError
    from prefect_ml.storage.credentials import check_uri

    with pytest.raises(StorageError, match=r"^https:// inputs must not carry credentials") as err:
        check_uri(uri)
    assert "deadbeef" not in str(err.value) and "abc" not in str(err.value) and "pw" not in str(err.value)
    assert "deadbeef" not in storage.redact(uri) and "sig=abc" not in storage.redact(uri)


def test_plain_https_and_abfs_container_uris_carry_no_credentials():
    from prefect_ml.storage.credentials import check_uri

    check_uri("https://example.org/data.csv?version=3")
    check_uri("abfs://container@account.dfs.core.windows.net/path")


def test_http_errors_say_what_the_server_or_network_said():
    """fsspec raises FileNotFoundError for every HTTP failure; the cause (aiohttp's error) decides the message.
    A local error while downloading (a full disk) is shown as it is, never as an HTTP refusal."""
    import aiohttp

    from prefect_ml.storage.locations import storage_error

    def wrapped(cause: BaseException) -> FileNotFoundError:
        try:
            raise FileNotFoundError("https://example.org/x.csv") from cause
        except FileNotFoundError as exc:
            return exc

    def response_error(status: int) -> aiohttp.ClientResponseError:
        from multidict import CIMultiDict, CIMultiDictProxy
        from yarl import URL

        info = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))
        return aiohttp.ClientResponseError(request_info=info, history=(), status=status)

    url = "https://example.org/x.csv"
    assert "HTTP 404" in str(storage_error(wrapped(response_error(404)), url, "read"))
    assert "the server failed (HTTP 503)" in str(storage_error(wrapped(response_error(503)), url, "read"))
    assert "refused it (HTTP 403)" in str(storage_error(wrapped(response_error(403)), url, "read"))
    disk = str(storage_error(OSError(28, "No space left on device"), url, "read"))
    assert "No space left on device" in disk and "HTTP" not in disk
    local = str(storage_error(PermissionError(13, "Permission denied"), url, "read"))
    assert "Permission denied" in local and "refused" not in local
