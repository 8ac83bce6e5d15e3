"""Remote artifact roots and inputs against real servers on 127.0.0.1: moto (S3) and Azurite (Azure Blob).

Credentials come only from the standard environment chains (AWS_* / AZURE_STORAGE_CONNECTION_STRING),
as a user would set them.
"""

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from types import SimpleNamespace

import pytest

from prefect_ml import Input, Output, command, pipeline, storage
from prefect_ml.asset_registry import AssetRegistry
from prefect_ml.errors import StorageError
from tests.paths import REPO
from tests.servers import ServiceUnavailable, azurite, moto_server, skip_or_fail

MiB = 1 << 20


@contextlib.contextmanager
def _server(cm):
    try:
        value = cm.__enter__()
    except ServiceUnavailable as exc:
        skip_or_fail(str(exc))
    try:
        yield value
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def moto_endpoint():
    with _server(moto_server()) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def azurite_info():
    with _server(azurite()) as info:
        yield info


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """A fresh bucket; AWS credentials and endpoint in the environment only."""
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_ML_STORAGE_OPTIONS", raising=False)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    bucket = f"bkt-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    return SimpleNamespace(fs=fs, bucket=bucket, endpoint=moto_endpoint, url=lambda p="": f"s3://{bucket}/{p}".rstrip("/"))


@pytest.fixture
def abfs(azurite_info, monkeypatch):
    """A fresh container; the connection string in the environment only."""
    import adlfs

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_info["connection_string"])
    monkeypatch.delenv("PREFECT_ML_STORAGE_OPTIONS", raising=False)
    fs = adlfs.AzureBlobFileSystem(connection_string=azurite_info["connection_string"], skip_instance_cache=True)
    container = f"cont-{uuid.uuid4().hex[:10]}"
    fs.mkdir(container)
    return SimpleNamespace(fs=fs, container=container, info=azurite_info,
                           url=lambda p="", scheme="abfs": f"{scheme}://{container}/{p}".rstrip("/"))


@contextlib.contextmanager
def moto_auth(endpoint):
    """Make moto check credentials (it accepts any by default), then turn that off again."""
    def post(value):
        req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=value, method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10).read()
    post(b"0")
    try:
        yield
    finally:
        post(b"inf")


def _load_credit_default():
    spec = importlib.util.spec_from_file_location("credit_default_flow", REPO / "flows" / "credit_default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.credit_default


def _tiny(tmp_path):
    code = tmp_path / "tiny"
    code.mkdir(exist_ok=True)
    (code / "w.py").write_text("import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('hi')\n")
    return command(name="tiny", code=code, command="python w.py ${{outputs.out}}",
                   outputs={"out": Output(type="uri_file")})


# --- end to end --------------------------------------------------------------------------------


def _run_credit_default(tmp_path, monkeypatch, root, data_uri, put):
    from prefect_ml.runtime import tracking
    from prefect_ml.samples import credit_default_sample

    sample = credit_default_sample(tmp_path / "credit.csv", rows=2000)
    put(str(sample), data_uri)
    monkeypatch.setenv("PREFECT_ML_ARTIFACT_ROOT", root)
    reg = AssetRegistry.default()
    assert reg.uri == f"{root}/assets"
    rec = reg.register("credit-card", "1", data_uri, description="credit default sample")
    assert rec.files[0]["checksum"].startswith("etag:")

    credit_default = _load_credit_default()
    out = credit_default(data="asset:credit-card:1", n_estimators=20, min_auc=0.5)
    for name in ("model", "metrics", "report"):
        assert out[name].startswith(f"{root}/steps/"), out
    metrics = json.loads(storage.filesystem(out["metrics"])[0].cat_file(storage.filesystem(out["metrics"])[1]))
    assert 0.5 <= metrics["auc"] <= 1.0
    model_step = storage.ArtifactRoot(root).read_marker(out["model"].split("/steps/")[1].split("/")[0])
    assert model_step and model_step["outputs"]["model"] == out["model"]  # published, marker last
    assert out["registered"] and out["registered"]["version"] >= 1
    version = tracking.client().get_model_version(out["registered"]["name"], str(out["registered"]["version"]))
    assert version.tags["prefect_ml.input.data_prep.data"] == storage.normalize(data_uri)
    return credit_default, out


def test_credit_default_on_s3_with_a_data_asset(env, s3, tmp_path, monkeypatch):
    credit_default, out = _run_credit_default(
        tmp_path, monkeypatch, s3.url("ml"), s3.url("datasets/credit.csv"), s3.fs.put_file)
    assert s3.fs.exists(f"{s3.bucket}/ml/assets/credit-card/1.json")

    # a second run reuses every step from the S3 root: nothing is uploaded again
    storage.reset_transfer_stats()
    again = credit_default(data="asset:credit-card:1", n_estimators=20, min_auc=0.5)
    assert again["model"] == out["model"] and again["metrics"] == out["metrics"]
    assert storage.transfer_stats().bytes_out == 0


def test_credit_default_on_azurite_with_a_data_asset(env, abfs, tmp_path, monkeypatch):
    _run_credit_default(tmp_path, monkeypatch, abfs.url("ml"), abfs.url("datasets/credit.csv", scheme="az"),
                        abfs.fs.put_file)
    assert abfs.fs.exists(f"{abfs.container}/ml/assets/credit-card/1.json")


# --- atomic publish -------------------------------------------------------------------------------

KILL_SCRIPT = """
import sys
from prefect_ml import Output, command, pipeline

writer = command(name="writer", code=sys.argv[1], command="python write.py ${{outputs.out}}",
                 outputs={"out": Output(type="uri_folder")})

@pipeline
def upload_pipe():
    return {"out": writer().outputs.out}

if __name__ == "__main__":
    upload_pipe()
"""


def test_step_killed_during_upload_publishes_nothing(env, s3, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    code = tmp_path / "code"
    code.mkdir()
    (code / "write.py").write_text(textwrap.dedent("""
        import os, sys
        for i in range(32):  # 64 MiB in 32 objects: the upload takes a while
            with open(os.path.join(sys.argv[1], f"part-{i:02d}.bin"), "wb") as f:
                f.write(os.urandom(2 << 20))
    """))
    script = tmp_path / "upload_pipe.py"
    script.write_text(KILL_SCRIPT)
    root = s3.url("ml")
    monkeypatch.setenv("PREFECT_ML_ARTIFACT_ROOT", root)
    uploaded: list[str] = []
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), str(code)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                uploaded = [p for p in s3.fs.find(f"{s3.bucket}/ml/steps") if p.endswith(".bin")]
                if uploaded:
                    os.killpg(proc.pid, signal.SIGKILL)  # the orchestrating process dies mid-upload
                    break
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert uploaded, f"the upload never started; log:\n{(tmp_path / 'killed.log').read_text()[-3000:]}"
    key, killed_attempt = uploaded[0].split("/steps/")[1].split("/")[:2]
    assert not s3.fs.exists(f"{s3.bucket}/ml/steps/{key}/_COMPLETE.json"), "killed too late: the marker was written"
    assert storage.ArtifactRoot(root).completed(key, ["out"]) is None  # nothing a reader or the cache trusts

    # the next run recomputes the step and publishes a new, complete attempt
    monkeypatch.setattr(sys, "argv", [str(script), str(code)])
    spec = importlib.util.spec_from_file_location("upload_pipe", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.upload_pipe()
    new_key, new_attempt = out["out"].split("/steps/")[1].split("/")[:2]
    assert new_key == key and new_attempt != killed_attempt
    assert storage.ArtifactRoot(root).completed(key, ["out"]).attempt == new_attempt
    assert len(s3.fs.ls(out["out"])) == 32


def test_200_mib_through_s3_staging_keeps_its_checksum(s3, tmp_path):
    root = storage.ArtifactRoot(s3.url("ml"))
    attempt, staging = root.new_attempt(tmp_path / "staging-home")
    h = hashlib.sha256()
    with open(staging / "blob.bin", "wb") as f:
        for _ in range(200 // 8):
            chunk = os.urandom(8 * MiB)
            h.update(chunk)
            f.write(chunk)
    storage.reset_transfer_stats()
    pub = root.publish("big", attempt, staging, {"blob": "blob.bin"}, {})
    assert s3.fs.info(pub.outputs["blob"])["size"] == 200 * MiB
    local = storage.stage_in(pub.outputs["blob"], tmp_path / "staging-home")
    assert storage.sha256_file(local) == "sha256:" + h.hexdigest()
    stats = storage.transfer_stats()
    assert stats.bytes_out == stats.bytes_in == 200 * MiB
    # staged once: a second stage-in of the same, unchanged object downloads nothing
    assert storage.stage_in(pub.outputs["blob"], tmp_path / "staging-home") == local
    assert storage.transfer_stats().bytes_in == 200 * MiB


def test_remote_folder_stage_in(abfs, tmp_path):
    for i in range(5):
        abfs.fs.pipe(f"{abfs.container}/folder/sub/f{i}.txt", f"file {i}".encode())
    local = storage.stage_in(abfs.url("folder"), tmp_path / "staging")
    assert sorted(p.name for p in (local / "sub").iterdir()) == [f"f{i}.txt" for i in range(5)]
    assert (local / "sub" / "f3.txt").read_text() == "file 3"


def test_storage_error_inside_a_step_surfaces_with_its_message(env, s3, tmp_path, monkeypatch):
    """The data vanishes after the pipeline checked it: the consuming step fails with the storage message."""
    monkeypatch.setenv("PREFECT_ML_ARTIFACT_ROOT", s3.url("ml"))
    s3.fs.pipe(f"{s3.bucket}/in/data.csv", b"a,b\n1,2\n")
    code = tmp_path / "code"
    code.mkdir()
    (code / "rm.py").write_text("import sys, s3fs, pathlib\n"
                                "s3fs.S3FileSystem().rm(sys.argv[1])\npathlib.Path(sys.argv[2]).write_text('x')\n")
    (code / "cat.py").write_text("import sys, shutil; shutil.copy(sys.argv[1], sys.argv[2])\n")
    remover = command(name="remover", code=code, command="python rm.py ${{inputs.target}} ${{outputs.done}}",
                      inputs={"target": Input(type="string")}, outputs={"done": Output(type="uri_file")})
    reader = command(name="reader", code=code, command="python cat.py ${{inputs.data}} ${{outputs.copy}}",
                     inputs={"data": Input(type="uri_file"), "after": Input(type="uri_file")},
                     outputs={"copy": Output(type="uri_file")})

    @pipeline
    def vanishing():
        gone = remover(target=s3.url("in/data.csv"))
        return reader(data=s3.url("in/data.csv"), after=gone.outputs.done).outputs.copy

    with pytest.raises(StorageError, match=r"in/data.csv.*no data there; check the path or URI"):
        vanishing()


# --- bad input: clear message, nothing published, no secret ------------------------------------


def _assert_nothing_published(fs, prefix):
    assert not [p for p in fs.find(prefix) if "/steps/" in p], f"something was published under {prefix}"


def test_missing_bucket(env, s3, tmp_path):
    tiny = _tiny(tmp_path)

    @pipeline(artifact_root="s3://no-such-bucket-4711/ml")
    def to_missing_bucket():
        return tiny().outputs.out

    with pytest.raises(StorageError,
                       match=r"the bucket 'no-such-bucket-4711' .* does not exist; create it or fix the URI"):
        to_missing_bucket()
    assert not s3.fs.exists("no-such-bucket-4711")
    with pytest.raises(StorageError, match=r"the bucket 'no-such-bucket-4711' .*does not exist"):
        storage.fingerprint("s3://no-such-bucket-4711/data.csv")


def test_missing_container(env, abfs, tmp_path):
    tiny = _tiny(tmp_path)

    @pipeline(artifact_root="abfs://no-such-container/ml")
    def to_missing_container():
        return tiny().outputs.out

    with pytest.raises(StorageError,
                       match=r"the container 'no-such-container' .* does not exist; create it or fix the URI"):
        to_missing_container()
    assert not abfs.fs.exists("no-such-container")


def test_wrong_s3_credentials(env, s3, tmp_path, monkeypatch, capfd):
    secret = "wrong-secret-" + uuid.uuid4().hex
    tiny = _tiny(tmp_path)

    @pipeline(artifact_root=s3.url("ml"))
    def with_wrong_key():
        return tiny().outputs.out

    with moto_auth(s3.endpoint):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        with pytest.raises(StorageError,
                           match=r"access denied: the s3:// credentials were rejected.*AWS_ACCESS_KEY_ID") as err:
            with_wrong_key()
    assert secret not in str(err.value)
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err
    _assert_nothing_published(s3.fs, s3.bucket)


def test_wrong_azure_credentials(env, abfs, tmp_path, monkeypatch, capfd):
    bad_key = "WRONG" + abfs.info["account_key"][5:]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       abfs.info["connection_string"].replace(abfs.info["account_key"], bad_key))
    tiny = _tiny(tmp_path)

    @pipeline(artifact_root=abfs.url("ml"))
    def with_wrong_key():
        return tiny().outputs.out

    with pytest.raises(StorageError, match=r"access denied: the abfs:// credentials were rejected.*"
                                           r"AZURE_STORAGE_CONNECTION_STRING") as err:
        with_wrong_key()
    assert bad_key not in str(err.value)
    captured = capfd.readouterr()
    assert bad_key not in captured.out + captured.err
    _assert_nothing_published(abfs.fs, abfs.container)


# --- credentials from a Prefect block; data assets on S3 ----------------------------------------


def test_storage_options_from_a_secret_block(env, s3, monkeypatch):
    from prefect.blocks.system import Secret

    Secret(value=json.dumps({"s3": {"key": "testing", "secret": "testing", "endpoint_url": s3.endpoint}})).save(
        "ml-storage-test", overwrite=True)
    s3.fs.pipe(f"{s3.bucket}/x.txt", b"x")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("PREFECT_ML_STORAGE_OPTIONS_BLOCK", "secret/ml-storage-test")
    assert storage.exists(s3.url("x.txt"))
    assert storage.storage_options("s3a")["endpoint_url"] == s3.endpoint
    monkeypatch.setenv("PREFECT_ML_STORAGE_OPTIONS_BLOCK", "secret/no-such-block")
    with pytest.raises(StorageError, match="names block 'secret/no-such-block', which cannot be loaded"):
        storage.exists(s3.url("x.txt"))


def test_s3_data_asset_change_detection_and_snapshot(s3, ml_home, monkeypatch):
    from prefect_ml.errors import DataAssetError

    monkeypatch.setenv("PREFECT_ML_ARTIFACT_ROOT", s3.url("ml"))
    s3.fs.pipe(f"{s3.bucket}/raw/a.csv", b"1,2\n")
    s3.fs.pipe(f"{s3.bucket}/raw/b.csv", b"3,4\n")
    reg = AssetRegistry.default()
    v1 = reg.register("raw", "1", s3.url("raw"))
    snap = reg.register("raw", "2", s3.url("raw"), snapshot=True)  # server-side copy under the root
    assert v1.type == snap.type == "uri_folder" and snap.uri == s3.url("ml/assets/raw/2/data/raw")
    s3.fs.pipe(f"{s3.bucket}/raw/b.csv", b"3,5\n")  # same size, new content: the ETag changes
    with pytest.raises(DataAssetError,
                       match=r"data asset 'raw' version 1 changed since registration.*'b.csv' content changed"):
        reg.resolve("raw", "1")
    assert reg.resolve("raw", "latest") == snap.uri
    assert s3.fs.cat(f"{s3.bucket}/ml/assets/raw/2/data/raw/b.csv") == b"3,4\n"
