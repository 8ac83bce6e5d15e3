"""Azure ML pipeline YAML run unchanged (issue 15): through the CLI and through Python, on the
session's Prefect API; an `https://`-style input served by a local http.server on 127.0.0.1.

Fixtures (Azure's published schemas): tests/fixtures/azure/. Unit-level checks: tests/unit/test_azure_files.py.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefect_ml import storage
from prefect_ml.dsl.azure_pipeline import load_pipeline_yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


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
