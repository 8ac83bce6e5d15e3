"""Real servers for integration tests, on 127.0.0.1 only.

Each context manager starts one server as a subprocess on a free loopback port, waits
until it answers (with a timeout), yields how to reach it and stops it on exit (SIGTERM
to its process group, then SIGKILL). The server's output goes to a temporary log file;
if startup fails, the error names the command and quotes the log's last lines.

Examples:
    >>> with moto_server() as endpoint_url:           # S3, for s3fs/boto3
    ...     fs = s3fs.S3FileSystem(key="testing", secret="testing",
    ...                            client_kwargs={"endpoint_url": endpoint_url})
    >>> with azurite() as az:                          # Azure Blob, for adlfs
    ...     fs = adlfs.AzureBlobFileSystem(connection_string=az["connection_string"])
    >>> with mlflow_server(tmp_path) as tracking_uri: ...
    >>> with prefect_server(tmp_path / "prefect-home") as api_url: ...

Prerequisites come from the Python environment running the tests (moto[server], mlflow,
prefect) and from ``scripts/setup-test-services.sh`` (Azurite in ``.cache/node``, the
Docker engine). Nothing is downloaded at test time. A missing prerequisite raises
:class:`ServiceUnavailable`; tests turn that into a skip, or a failure under CI, with
:func:`skip_or_fail`.

This is a plain module (no fixtures) so that conftest files, benchmarks and scripts can
share it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "AZURITE_ACCOUNT_KEY",
    "AZURITE_ACCOUNT_NAME",
    "DEFAULT_BASE_IMAGE",
    "HOST",
    "STARTUP_SECONDS",
    "ServerError",
    "ServiceUnavailable",
    "azurite",
    "azurite_available",
    "docker_available",
    "docker_image_available",
    "free_port",
    "in_ci",
    "mlflow_server",
    "moto_server",
    "prefect_server",
    "skip_or_fail",
]

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SETUP_SCRIPT = "scripts/setup-test-services.sh"
DEFAULT_BASE_IMAGE = "prefect-ml/base:bookworm"

#: Azurite's well-known development account (published by Microsoft; not a secret).
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_BLOB = REPO / ".cache" / "node" / "node_modules" / ".bin" / "azurite-blob"

#: Seconds each server took to become healthy, by server name (last start wins).
STARTUP_SECONDS: dict[str, float] = {}

_LOG_TAIL_LINES = 40
_PORT_IN_USE = ("address already in use", "eaddrinuse", "port is already in use")
# Health checks talk to loopback directly, never through an HTTP(S)_PROXY.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """A server did not start (it exited, or did not become healthy in time)."""


class ServiceUnavailable(RuntimeError):
    """A prerequisite of a server (a program, a package) is not installed here."""


# --- helpers for tests ------------------------------------------------------------------


def in_ci() -> bool:
    """True when running under CI (``CI`` set to anything but empty/0/false/no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip the current test because a service is missing; under CI, fail instead.

    Args:
        reason: What is missing and how to get it (shown in pytest's summary).
    """
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI: a missing test service is a failure)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def docker_available() -> tuple[bool, str]:
    """Whether a Docker engine answers, with a reason for a skip message.

    Uses docker-py (``docker.from_env().ping()``) when installed, else the docker CLI.
    """
    hint = f"run {SETUP_SCRIPT}"
    try:
        import docker  # docker-py, a dependency of prefect-docker
    except ImportError:
        docker = None
    if docker is not None:
        try:
            client = docker.from_env(timeout=10)
            try:
                client.ping()
                version = client.version().get("Version", "?")
            finally:
                client.close()
        except Exception as exc:  # DockerException, connection errors, permissions
            return False, f"no Docker engine ({type(exc).__name__}: {exc}); {hint}"
        return True, f"Docker engine {version}"
    cli = shutil.which("docker")
    if cli is None:
        return False, f"neither docker-py nor the docker CLI is installed; {hint}"
    try:
        proc = subprocess.run(
            [cli, "version", "--format", "{{.Server.Version}}"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"docker CLI failed ({exc}); {hint}"
    if proc.returncode != 0:
        return False, f"no Docker engine ({proc.stderr.strip()[-300:]}); {hint}"
    return True, f"Docker engine {proc.stdout.strip()}"


def docker_image_available(image: str | None = None) -> tuple[bool, str]:
    """Whether the engine has ``image`` (default: ``$PREFECT_ML_BASE_IMAGE`` or the base image)."""
    image = image or os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    ok, reason = docker_available()
    if not ok:
        return ok, reason
    import docker
    from docker.errors import ImageNotFound

    client = docker.from_env(timeout=10)
    try:
        client.images.get(image)
    except ImageNotFound:
        return False, f"image {image} is not built; run {SETUP_SCRIPT} (or scripts/make-base-image.sh)"
    finally:
        client.close()
    return True, f"image {image}"


def azurite_available() -> tuple[bool, str]:
    """Whether Azurite (installed by the setup script) and Node.js are present."""
    if not os.access(AZURITE_BLOB, os.X_OK):
        return False, f"Azurite is not installed in {AZURITE_BLOB.parent}; run {SETUP_SCRIPT}"
    if shutil.which("node") is None:
        return False, "Node.js (node) is not on PATH; Azurite needs it (apt-get install -y nodejs)"
    return True, "Azurite"


# --- process management -----------------------------------------------------------------


def _venv_program(name: str, module: str) -> list[str]:
    """The console script ``name`` next to sys.executable, else ``python -m module``."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", module]


def _require_module(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ServiceUnavailable(f"{package} is not installed in {sys.prefix}")


def _http_status(url: str) -> int | None:
    """The HTTP status of GET url, or None when nothing answers."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _answers(path: str) -> Callable[[int], bool]:
    """Healthy when anything answers HTTP on path (any status: S3/Blob APIs say 4xx)."""
    return lambda port: _http_status(f"http://{HOST}:{port}{path}") is not None


def _ok(path: str) -> Callable[[int], bool]:
    """Healthy when GET path returns 200."""
    return lambda port: _http_status(f"http://{HOST}:{port}{path}") == 200


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the test process dies.

    Servers run in their own session, so without this a test run killed with SIGKILL
    (an outer timeout) would leave them running.
    """
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the server and everything in its process group: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the group is ours: start_new_session=True
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader exited; workers left in the group get one more SIGKILL below.
        if sig is signal.SIGTERM:
            time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return


@contextlib.contextmanager
def _serve(
    name: str,
    command: Callable[[int], Sequence[str]],
    healthy: Callable[[int], bool],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    attempts: int = 3,
) -> Iterator[int]:
    """Start ``command(port)``, wait until ``healthy(port)``, yield the port, stop it.

    Retries on a new port when the chosen one was taken between free_port() and bind.
    """
    logdir = Path(tempfile.mkdtemp(prefix=f"prefect-ml-test-{name}-"))
    proc: subprocess.Popen | None = None
    keep_log = False  # on a failed startup, for the post-mortem (its path is in the error)
    try:
        for attempt in range(1, attempts + 1):
            port = free_port()
            cmd = [str(c) for c in command(port)]
            log_path = logdir / f"{name}-{port}.log"
            start = time.monotonic()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=None if env is None else dict(env), cwd=cwd, start_new_session=True,
                    # the child only calls prctl (no locks, no allocation): safe though the parent has threads
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
                )
            while True:
                if proc.poll() is not None:
                    break
                if healthy(port):
                    STARTUP_SECONDS[name] = time.monotonic() - start
                    break
                if time.monotonic() - start > timeout:
                    _stop(proc)
                    keep_log = True
                    raise ServerError(
                        f"{name} did not become healthy within {timeout:.0f} s on port {port}\n"
                        f"command: {' '.join(cmd)}\nlog {log_path}, last lines:\n{_tail(log_path)}"
                    )
                time.sleep(0.2)
            if proc.returncode is None:
                break  # healthy
            tail = _tail(log_path)
            _stop(proc)  # workers it may have left behind
            if attempt < attempts and any(s in tail.lower() for s in _PORT_IN_USE):
                continue
            keep_log = True
            raise ServerError(
                f"{name} exited with status {proc.returncode} during startup "
                f"({time.monotonic() - start:.1f} s)\ncommand: {' '.join(cmd)}\n"
                f"log {log_path}, last lines:\n{tail}"
            )
        yield port
    finally:
        if proc is not None:
            _stop(proc)
        if not keep_log:
            shutil.rmtree(logdir, ignore_errors=True)


def _env(**overrides: str | None) -> dict[str, str]:
    """os.environ with overrides; a value of None removes the variable."""
    env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# --- the servers --------------------------------------------------------------------------


@contextlib.contextmanager
def moto_server(*, timeout: float = 60) -> Iterator[str]:
    """An S3 (and other AWS APIs) server from moto; yields its endpoint URL.

    Use any access key/secret (e.g. "testing") and no region for bucket creation.
    """
    _require_module("moto.server", "moto[server]")
    program = _venv_program("moto_server", "moto.server")
    with _serve(
        "moto",
        lambda port: [*program, "-H", HOST, "-p", str(port)],
        _answers("/moto-api/"),
        timeout=timeout,
        env=_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"),
    ) as port:
        yield f"http://{HOST}:{port}"


@contextlib.contextmanager
def azurite(location: str | os.PathLike[str] | None = None, *, timeout: float = 60) -> Iterator[dict]:
    """An Azure Blob Storage emulator (Azurite); yields how to connect to it.

    Args:
        location: Where Azurite keeps its data; a temporary directory by default
            (removed on exit).
        timeout: Seconds to wait for it to answer.

    Yields:
        ``connection_string``, ``account_name``, ``account_key``, ``endpoint``
        (``http://127.0.0.1:PORT/devstoreaccount1``).
    """
    ok, reason = azurite_available()
    if not ok:
        raise ServiceUnavailable(reason)
    with contextlib.ExitStack() as stack:
        if location is None:
            location = stack.enter_context(tempfile.TemporaryDirectory(prefix="prefect-ml-azurite-"))
        port = stack.enter_context(
            _serve(
                "azurite",
                lambda port: [
                    AZURITE_BLOB, "--blobHost", HOST, "--blobPort", str(port),
                    "--location", str(location), "--skipApiVersionCheck",
                    "--disableTelemetry", "--silent",
                ],
                _answers(f"/{AZURITE_ACCOUNT_NAME}?comp=list"),
                timeout=timeout,
                env=_env(),
            )
        )
        endpoint = f"http://{HOST}:{port}/{AZURITE_ACCOUNT_NAME}"
        yield {
            "connection_string": (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT_NAME};"
                f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint={endpoint};"
            ),
            "account_name": AZURITE_ACCOUNT_NAME,
            "account_key": AZURITE_ACCOUNT_KEY,
            "endpoint": endpoint,
        }


@contextlib.contextmanager
def mlflow_server(
    workdir: str | os.PathLike[str], *, timeout: float = 300, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """An MLflow tracking server with a SQLite store; yields its tracking URI.

    Runs are stored in ``WORKDIR/mlflow.db``; artifacts are proxied by the server
    (``mlflow-artifacts:/``) into ``WORKDIR/artifacts``, so clients (and step
    containers on the host network) log artifacts through HTTP, never through a
    shared file path. One worker (4 take 1.5-2.5 GB) and no job execution (set
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to get it). Startup takes ~15-25 s on an
    idle 2-core machine (a fresh SQLite store is migrated first), much longer under load.
    """
    _require_module("mlflow.server", "mlflow (with the server extras; mlflow-skinny cannot serve)")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "artifacts").mkdir(exist_ok=True)
    program = _venv_program("mlflow", "mlflow")
    with _serve(
        "mlflow",
        lambda port: [
            *program, "server", "--host", HOST, "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", str(workdir / "artifacts"),
            *extra_args,
        ],
        _ok("/health"),
        timeout=timeout,
        env=_env(
            MLFLOW_DISABLE_TELEMETRY="true",
            MLFLOW_TRACKING_URI=None,
            # No job runner + 7 huey consumers (GenAI jobs): 2-4x faster start, ~0.7 GB less.
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION=os.environ.get(
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"
            ),
        ),
        cwd=workdir,
    ) as port:
        yield f"http://{HOST}:{port}"


@contextlib.contextmanager
def prefect_server(
    home: str | os.PathLike[str],
    *,
    timeout: float = 300,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A Prefect server (API, UI and services) with its own home; yields the API URL.

    Args:
        home: PREFECT_HOME of the server (its SQLite database lives there).
        timeout: Seconds to wait for ``/api/health``.
        extra_env: More environment for the server (e.g. service toggles).

    Yields:
        ``http://127.0.0.1:PORT/api``; the UI is at the same address without ``/api``.
    """
    _require_module("prefect", "prefect")
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    program = _venv_program("prefect", "prefect")
    env = _env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=None,
        PREFECT_API_KEY=None,
    )
    env.update(extra_env or {})
    with contextlib.ExitStack() as stack:
        # PREFECT_UI_API_URL must carry the port, known only when the command is built.
        def command(port: int) -> list[str]:
            env["PREFECT_UI_API_URL"] = f"http://{HOST}:{port}/api"
            return [*program, "server", "start", "--host", HOST, "--port", str(port)]

        port = stack.enter_context(
            _serve("prefect", command, _ok("/api/health"), timeout=timeout, env=env, cwd=home)
        )
        yield f"http://{HOST}:{port}/api"
