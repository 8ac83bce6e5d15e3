"""Azure ML pipeline YAML run unchanged (issue 15): through the CLI and through Python, on the
session's Prefect API; an `https://`-style input served by a local http.server on 127.0.0.1.

Fixtures (Azure's published schemas): tests/fixtures/azure/. Unit-level checks: tests/unit/test_azure_files.py.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefect_ml import storage
from prefect_ml.dsl.azure_pipeline import load_pipeline_yaml
from prefect_ml.errors import StepFailed

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder (with Last-Modified, from the file's mtime); a file `NAME.etag` beside `NAME`
    makes the server send its text as NAME's ETag header."""

    def log_message(self, *args: object) -> None:
        pass

    def end_headers(self) -> None:
        tag = Path(self.translate_path(self.path) + ".etag")
        if tag.is_file():
            self.send_header("ETag", f'"{tag.read_text().strip()}"')
        super().end_headers()


@pytest.fixture
def http_data(tmp_path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving a folder: (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def test_three_job_pipeline_through_the_cli(env):
    from prefect_ml.cli import app

    result = CliRunner().invoke(app, ["run", str(FIXTURES / "pipeline.yml"), "--set", "inputs.epochs=5"])
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output[result.output.index("{"):])
    assert set(outputs) == {"trained_model", "final_report"}
    report = storage.local_path(outputs["final_report"]).read_text()
    assert "epochs=5" in report and "ratio=0.25" in report and "files=rows.csv" in report
    assert "STAGE=from-yaml" in report  # job-level environment_variables


def test_pipeline_yaml_as_a_python_flow_reuses_steps(env):
    flow = load_pipeline_yaml(FIXTURES / "pipeline.yml")
    first = flow(ratio=0.5)
    again = flow(ratio=0.5)
    assert first == again  # unchanged inputs: every step reused, same output URIs
    assert "ratio=0.5" in storage.local_path(first["final_report"]).read_text()


def test_mltable_https_inline_component_and_inline_environment(env, http_data):
    base, folder = http_data
    (folder / "remote.csv").write_text("x,y\n3,4\n")
    url = f"{base}/remote.csv"
    fp = storage.fingerprint(url)
    assert fp.startswith("remote:") and storage.exists(url)
    flow = load_pipeline_yaml(FIXTURES / "data_forms.yml")
    out = storage.local_path(flow(remote=url)["copied"])
    assert (out / "remote.csv").read_text() == "x,y\n3,4\n"
    assert "read_delimited" in (out / "MLTable.seen").read_text()
    (folder / "remote.csv").write_text("x,y\n5,6\n7,8\n")  # new size / Last-Modified: a new fingerprint
    assert storage.fingerprint(url) != fp


def test_data_forms_through_the_cli(env, http_data):
    """data_forms.yml (mltable, https-style input, inline component + inline environment, identity) run by
    `prefect-ml run ... --set inputs.remote=<url>`, as the Python test above runs it."""
    from prefect_ml.cli import app

    base, folder = http_data
    (folder / "remote.csv").write_text("x,y\n9,9\n")
    result = CliRunner().invoke(app, ["run", str(FIXTURES / "data_forms.yml"), "--set",
                                      f"inputs.remote={base}/remote.csv"])
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.stdout[result.stdout.index("{\n"):])  # log lines may hold braces too
    out = storage.local_path(outputs["copied"])
    assert (out / "remote.csv").read_text() == "x,y\n9,9\n"
    assert "read_delimited" in (out / "MLTable.seen").read_text()


def test_https_fingerprint_follows_last_modified_and_etag_at_the_same_size(http_data):
    base, folder = http_data
    data, url = folder / "same.csv", f"{base}/same.csv"
    data.write_text("x,y\n3,4\n")
    os.utime(data, (1_700_000_000, 1_700_000_000))
    first = storage.fingerprint(url)
    data.write_text("x,y\n5,6\n")  # same size, a later Last-Modified
    os.utime(data, (1_700_000_100, 1_700_000_100))
    second = storage.fingerprint(url)
    assert second != first
    (folder / "same.csv.etag").write_text("v1")  # an ETag, when the server sends one, is what is compared
    tagged = storage.fingerprint(url)
    assert tagged != second and storage.fingerprint(url) == tagged
    data.write_text("x,y\n7,8\n")  # same size, same Last-Modified, a new ETag
    os.utime(data, (1_700_000_100, 1_700_000_100))
    (folder / "same.csv.etag").write_text("v2")
    assert storage.fingerprint(url) != tagged


def _step_states(flow_state) -> dict[str, str]:
    from tests.conftest import task_runs

    runs = task_runs(flow_state, names=("fail_job", "slow_job", "later_job"))
    return {r.name: r.state.name for r in runs}


def test_continue_on_step_failure_false_starts_no_step_after_a_failure(env, tmp_path):
    """Azure's default: after fail_job fails, later_job (waiting for slow_job) never starts; slow_job,
    already running, finishes and its output is reused by a re-run with continue_on_step_failure: true,
    where later_job runs although fail_job failed again."""
    flow = load_pipeline_yaml(FIXTURES / "step_failure.yml")
    state = flow(return_state=True)
    assert state.is_failed()
    with pytest.raises(StepFailed, match=r"(?s)^step .fail_job. failed: exit code 1.*fail_job fails on purpose"):
        state.result()
    assert _step_states(state) == {"fail_job": "Failed", "slow_job": "Completed", "later_job": "NotRun"}

    text = (FIXTURES / "step_failure.yml").read_text()
    assert "continue_on_step_failure: false" in text
    text = text.replace("continue_on_step_failure: false", "continue_on_step_failure: true")
    text = text.replace("code: ./components/inspect", f"code: {FIXTURES / 'components' / 'inspect'}")
    (tmp_path / "step_failure_continue.yml").write_text(text)
    flow = load_pipeline_yaml(tmp_path / "step_failure_continue.yml")
    state = flow(return_state=True)
    assert state.is_failed()  # a step failed: the run fails either way
    with pytest.raises(StepFailed, match=r"(?s)^step .fail_job. failed: exit code 1.*fail_job fails on purpose"):
        state.result()
    assert _step_states(state) == {"fail_job": "Failed", "slow_job": "Cached", "later_job": "Completed"}


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (its own CA) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "ca.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def https_data(tmp_path) -> Iterator[tuple[str, Path, Path]]:
    """An HTTPS server on 127.0.0.1 (a self-signed certificate) serving a folder: (base URL, folder, CA file)."""
    import ssl

    folder = tmp_path / "served-tls"
    folder.mkdir()
    ca, key = _self_signed(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", folder, ca
    finally:
        server.shutdown()
        server.server_close()


def test_https_input_over_tls_needs_its_ca_trusted_then_runs(env, https_data, tmp_path):
    """A real https:// input: without its CA trusted the error says so in one line (not "does not exist");
    `prefect-ml run` with SSL_CERT_FILE naming the CA stages it like any input."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from prefect_ml.errors import StorageError

    base, folder, ca = https_data
    (folder / "remote.csv").write_text("x,y\n1,2\n")
    url = f"{base}/remote.csv"
    with pytest.raises(StorageError) as err:
        storage.fingerprint(url)  # this process trusts the system CAs only
    assert "TLS certificate is not trusted" in str(err.value) and "SSL_CERT_FILE" in str(err.value)

    cli = Path(sys.executable).parent / "prefect-ml"
    run_env = {**os.environ, "SSL_CERT_FILE": str(ca), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run([str(cli), "run", str(FIXTURES / "data_forms.yml"), "--set", f"inputs.remote={url}"],
                          check=False, env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outputs = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert (storage.local_path(outputs["copied"]) / "remote.csv").read_text() == "x,y\n1,2\n"


def test_the_step_that_failed_first_is_the_runs_error_not_the_first_submitted(env):
    """Two failing steps: `slow_fail`, submitted first, fails after 3 s; `quick_fail` fails at once. The run's
    error is quick_fail's (it failed first), and no step starts after it."""
    from prefect_ml import Input, command, pipeline

    code = FIXTURES / "components" / "inspect"
    slow_fail = command(name="slow_fail", code=code, inputs={"s": Input(type="number")},
                        command="python -c \"import sys, time; time.sleep(float(sys.argv[1])); sys.exit('slow')\" "
                                "${{inputs.s}}")
    quick_fail = command(name="quick_fail", code=code, command="python -c \"import sys; sys.exit('quick')\"")

    @pipeline(continue_on_step_failure=False, cache=False)
    def two_failures():
        slow_fail(s=3)
        quick_fail()

    state = two_failures(return_state=True)
    assert state.is_failed()
    with pytest.raises(StepFailed, match=r"^step .quick_fail. failed"):
        state.result()
