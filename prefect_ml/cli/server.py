"""`prefect-ml server start|stop|status|env`: a local Prefect server and MLflow server in the background.

Why: without a running Prefect API every `python flow.py` starts a temporary server (12-90 s), and
an embedded SQLite MLflow store costs the `mlflow` import (2-7 s) plus the first store query on
every run. With both servers running, a run connects (no temporary server) and talks to MLflow
through its REST API, so an unchanged re-run takes about a second.

The servers run detached (their own session), bound to loopback, with pid and log files under
`<PREFECT_ML_HOME>/server/`. `start` is idempotent: a server already answering on its port is used
as it is. The Prefect server keeps its data in `PREFECT_HOME` (default `~/.prefect`), the MLflow
server in `<PREFECT_ML_HOME>/mlflow.db` (the embedded default's store, so earlier runs stay
visible) with artifacts served from `<PREFECT_ML_HOME>/mlartifacts`.

Use them from a shell with `eval "$(prefect-ml server env)"`; a user who set `PREFECT_API_URL` or
`MLFLOW_TRACKING_URI` keeps their own (`env` prints nothing for a variable already set).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

# health checks talk to loopback directly, never through an HTTP(S)_PROXY
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Service:
    name: str  # prefect | mlflow
    host: str
    port: int
    home: Path  # pid/log dir

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + ("/api/health" if self.name == "prefect" else "/health")

    @property
    def env_var(self) -> str:
        return "PREFECT_API_URL" if self.name == "prefect" else "MLFLOW_TRACKING_URI"

    @property
    def env_value(self) -> str:
        return self.url + "/api" if self.name == "prefect" else self.url

    @property
    def ui_url(self) -> str:
        return self.url

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"


def services() -> list[Service]:
    from prefect_ml.settings import get_settings

    s = get_settings()
    return [Service("prefect", s.server_host, s.server_prefect_port, s.server_dir),
            Service("mlflow", s.server_host, s.server_mlflow_port, s.server_dir)]


def healthy(svc: Service, timeout: float = 2.0) -> bool:
    try:
        with _OPENER.open(svc.health_url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _pid(svc: Service) -> int | None:
    """The pid in the service's pid file, if that process is alive and is that server."""
    try:
        pid = int(svc.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if svc.name in cmdline and "server" in cmdline else None


def _started_alive(svc: Service) -> bool:
    """Whether the process in the pid file still runs (right after the start its command line may not
    be the server's yet: exec has not happened, so `_pid` cannot be used here)."""
    try:
        pid = int(svc.pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)


def _program(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", name]


def command(svc: Service) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start `svc`."""
    from prefect_ml.settings import get_settings

    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    if svc.name == "prefect":
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_UI_API_URL"] = f"{svc.url}/api"  # else the UI calls port 4200 (STACK-NOTES)
        return [*_program("prefect"), "server", "start", "--host", svc.host, "--port", str(svc.port)], env
    home = get_settings().home_path
    (home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    env.pop("MLFLOW_TRACKING_URI", None)
    # no job runner (GenAI jobs): 2-4x faster start and ~0.7 GB less
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return [*_program("mlflow"), "server", "--host", svc.host, "--port", str(svc.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination", str(home / "mlartifacts")], env


def start_service(svc: Service) -> str:
    """Start `svc` unless it runs or its port already answers; returns what happened."""
    if healthy(svc):
        pid = _pid(svc)
        who = f" (pid {pid})" if pid else " (not started by prefect-ml)"
        return f"{svc.name}: already running at {svc.url}{who}"
    if (pid := _pid(svc)) is not None:
        return f"{svc.name}: starting (pid {pid}), log {svc.log_file}"
    svc.home.mkdir(parents=True, exist_ok=True)
    cmd, env = command(svc)
    with open(svc.log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=svc.home, start_new_session=True)
    svc.pid_file.write_text(f"{proc.pid}\n")
    return f"{svc.name}: started (pid {proc.pid}), log {svc.log_file}"


def wait_healthy(svcs: list[Service], timeout: float) -> list[Service]:
    """Wait until every service answers; returns those that did not within `timeout`."""
    deadline = time.monotonic() + timeout
    pending = list(svcs)
    while pending and time.monotonic() < deadline:
        pending = [s for s in pending if not healthy(s)]
        for s in pending:
            if not _started_alive(s):  # it exited (its log says why)
                return pending
        if pending:
            time.sleep(0.5)
    return pending


def stop_service(svc: Service, grace: float = 15.0) -> str:
    pid = _pid(svc)
    if pid is None:
        svc.pid_file.unlink(missing_ok=True)
        extra = f" (but something answers at {svc.url}: not started by prefect-ml)" if healthy(svc, 0.5) else ""
        return f"{svc.name}: not running{extra}"
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # its own session: the group holds its workers too
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and not _zombie(pid):
            time.sleep(0.2)
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            break
    svc.pid_file.unlink(missing_ok=True)
    return f"{svc.name}: stopped (pid {pid})"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def env_lines(only_unset: bool = True) -> list[str]:
    """`export NAME=VALUE` for each healthy local server whose variable the user has not set."""
    lines = []
    for svc in services():
        if only_unset and os.environ.get(svc.env_var):
            continue
        if healthy(svc):
            lines.append(f"export {svc.env_var}={svc.env_value}")
    return lines


@app.command("start")
def start(
    wait: bool = typer.Option(True, help="Wait until both servers answer (up to PREFECT_ML_SERVER_START_TIMEOUT)."),
) -> None:
    """Start the local Prefect and MLflow servers in the background (idempotent)."""
    from prefect_ml.settings import get_settings

    svcs = services()
    for svc in svcs:
        typer.echo(start_service(svc))
    if wait:
        t0 = time.monotonic()
        late = wait_healthy(svcs, get_settings().server_start_timeout)
        if late:
            for svc in late:
                typer.echo(f"{svc.name} did not answer {svc.health_url}; see {svc.log_file}", err=True)
            raise typer.Exit(1)
        typer.echo(f"both servers answer ({time.monotonic() - t0:.1f} s)")
    _print_usage(svcs)


def _print_usage(svcs: list[Service]) -> None:
    p, m = svcs
    typer.echo(f"Prefect UI: {p.ui_url}    MLflow UI: {m.ui_url}")
    typer.echo('Use them: eval "$(prefect-ml server env)"   Stop them: prefect-ml server stop')


@app.command("stop")
def stop() -> None:
    """Stop the local servers started by `prefect-ml server start`."""
    for svc in services():
        typer.echo(stop_service(svc))


@app.command("status")
def status() -> None:
    """Whether each local server runs and answers."""
    for svc in services():
        pid = _pid(svc)
        state = "healthy" if healthy(svc) else ("starting or unhealthy" if pid else "stopped")
        typer.echo(f"{svc.name:8} {state:22} {svc.url}" + (f"  pid {pid}" if pid else "") + f"  log {svc.log_file}")


@app.command("env")
def env(all_vars: bool = typer.Option(False, "--all", help="Also for variables already set.")) -> None:
    """Shell exports that point runs at the running local servers: eval "$(prefect-ml server env)"."""
    for line in env_lines(only_unset=not all_vars):
        typer.echo(line)
