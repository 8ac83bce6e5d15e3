"""Issue #11's pure parts: the MLflow background writer, the uv/pip install recipe, which venv
requirements the running interpreter already meets, the local-server CLI's commands and the lazy
imports on a run's hot path. Servers are exercised in tests/integration/test_fast_path.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from prefect_ml.runtime import tracking


def test_writer_applies_writes_in_order_and_flush_waits_for_them():
    writer = tracking._Writer()
    seen: list[int] = []
    gate = threading.Event()
    writer.submit("first", lambda: (gate.wait(5), seen.append(1)))
    writer.submit("second", lambda: seen.append(2))
    assert seen == []  # queued: the caller did not wait
    gate.set()
    assert writer.flush(timeout=10) == []
    assert seen == [1, 2]


def test_writer_reports_a_failed_write_once_and_keeps_going():
    writer = tracking._Writer()
    seen: list[str] = []

    def boom() -> None:
        raise RuntimeError("store is down")

    writer.submit("end of run abc", boom)
    writer.submit("tags of run abc", lambda: seen.append("tags"))
    errors = writer.flush(timeout=10)
    assert errors == ["end of run abc: RuntimeError: store is down"]
    assert seen == ["tags"]
    assert writer.flush(timeout=10) == []  # reported once


def test_flush_without_writes_returns_at_once():
    assert tracking._Writer().flush(timeout=1) == []


def test_settings_are_read_once_per_environment_and_again_when_it_changes(monkeypatch, tmp_path):
    from prefect_ml.settings import get_settings, use_settings

    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path / "a"))
    first = get_settings()
    assert get_settings() is first  # not rebuilt: a step reads them a dozen times
    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path / "b"))
    assert get_settings().home_path == tmp_path / "b"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert get_settings().mlflow_tracking_uri == "http://127.0.0.1:5999"
    with use_settings(first):  # a pipeline run's snapshot wins over later changes
        assert get_settings() is first


def test_install_script_uses_uv_with_pip_as_the_fallback():
    from prefect_ml.environments.image import install_script

    uv = install_script("uv")
    assert '"$PY" -m pip install -q uv' in uv
    assert '"$PY" -m uv pip install --python "$PY"' in uv
    assert 'else "$PY" -m pip install "$@"' in uv  # fallback when uv is not installable
    assert "pip uninstall -y -q uv" in uv  # the image does not keep uv
    pip = install_script("pip")
    assert "uv" not in pip
    assert 'install -r "$REQUIREMENTS"' in pip
    with pytest.raises(Exception, match="PREFECT_ML_INSTALLER"):
        install_script("conda")


def test_installer_setting_changes_the_image_hash(monkeypatch, tmp_path):
    from prefect_ml.environments import image
    from prefect_ml.environments.spec import load_environment

    env = load_environment("sklearn-cpu", start=Path(__file__).resolve().parents[2] / "components" / "train")
    monkeypatch.setenv("PREFECT_ML_INSTALLER", "uv")
    with_uv = image.image_hash(env, "sha256:base")
    monkeypatch.setenv("PREFECT_ML_INSTALLER", "pip")
    assert image.image_hash(env, "sha256:base") != with_uv  # a different recipe is a different image


def test_dockerfile_gives_uv_the_ca_bundle():
    from prefect_ml.environments.image import dockerfile
    from prefect_ml.environments.spec import load_environment

    env = load_environment("sklearn-cpu", start=Path(__file__).resolve().parents[2] / "components" / "train")
    text = dockerfile(env, "base:1", with_ca=True)
    assert "SSL_CERT_FILE=/tmp/prefect-ml/ca-bundle.crt" in text and "PIP_CERT=" in text


def test_unsatisfied_lists_only_what_the_running_interpreter_lacks(tmp_path):
    from prefect_ml.environments.venv import unsatisfied

    req = tmp_path / "requirements.txt"
    req.write_text("# comment\npytest>=1\n\nno-such-package-prefect-ml==1.0\npytest<1 ; python_version < '3'\n"
                   "pytest<1  # too old\n")
    assert unsatisfied(req) == ["no-such-package-prefect-ml==1.0", "pytest<1"]


@pytest.mark.parametrize("line", ["-r other.txt", "--index-url https://example.org/simple", "pkg[extra]>=1",
                                  "pkg @ https://example.org/pkg.whl", "not a requirement ==="])
def test_unsatisfied_hands_anything_else_to_the_installer_whole(tmp_path, line):
    from prefect_ml.environments.venv import unsatisfied

    req = tmp_path / "requirements.txt"
    req.write_text(f"pytest\n{line}\n")
    assert unsatisfied(req) is None


def test_server_commands_bind_loopback_and_use_the_home(monkeypatch, tmp_path):
    from prefect_ml.cli import server

    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_ML_SERVER_PREFECT_PORT", "4999")
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere/api")
    prefect, mlflow = server.services()
    cmd, env = server.command(prefect)
    assert cmd[-6:] == ["server", "start", "--host", "127.0.0.1", "--port", "4999"]
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4999/api" and "PREFECT_API_URL" not in env
    cmd, env = server.command(mlflow)
    assert f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in cmd and "--workers" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert prefect.pid_file.parent == tmp_path.resolve() / "server"


def test_server_env_prints_nothing_for_servers_that_do_not_answer(monkeypatch, tmp_path):
    from prefect_ml.cli import server

    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_ML_SERVER_PREFECT_PORT", "1")  # nothing listens on port 1
    monkeypatch.setenv("PREFECT_ML_SERVER_MLFLOW_PORT", "1")
    assert server.env_lines(only_unset=False) == []
    assert server.stop_service(server.services()[0]).startswith("prefect: not running")


def test_tracking_and_registry_hot_path_import_no_mlflow():
    """Importing what a run touches (pipeline, tracking, registry, REST client) must not import mlflow."""
    code = ("import sys; import prefect_ml.dsl.pipeline, prefect_ml.runtime.task, prefect_ml.runtime.registry, "
            "prefect_ml.runtime.mlflow_rest; print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_engine_fast_path_gives_up_quietly_without_an_engine(monkeypatch):
    from prefect_ml.environments.image import _engine_get

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert _engine_get("/images/x/json") is None
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")  # not a unix socket: the docker-py path decides
    assert _engine_get("/images/x/json") is None
