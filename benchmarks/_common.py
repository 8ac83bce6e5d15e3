"""Shared helpers for the benchmarks: timing, interleaved repetitions, statistics, tables, results.

Every benchmark measures its baseline in the same run, interleaving the cases repetition by
repetition (rotating their order), so slow drift of a shared machine hits every case alike.
Results go to `benchmarks/results/<name>.json` together with the machine, the load average
and the command, so `docs/benchmarks.md` can be refreshed from them.

This module imports nothing heavy (no Prefect): peer workers run it in their own venvs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENVS_DIR = BENCH_DIR / ".venvs"
# The interpreter that runs measured prefect-ml processes: the running one unless told otherwise.
STACK_PYTHON = Path(os.environ.get("PREFECT_ML_BENCH_PYTHON") or sys.executable)


# --- timing and statistics ----------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stats(xs: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max, and the half-range around the median) of repetitions."""
    xs = sorted(float(x) for x in xs)
    if not xs:
        return {"n": 0}
    med = statistics.median(xs)
    return {
        "n": len(xs),
        "median": med,
        "min": xs[0],
        "max": xs[-1],
        "spread": (xs[-1] - xs[0]) / 2,
        "values": xs,
    }


def interleave(
    cases: Mapping[str, Callable[[], Optional[float]]],
    reps: int,
    *,
    warmup: int = 0,
    log: Callable[[str], None] = None,
) -> dict[str, list[float]]:
    """Run every case `reps` times, one repetition of each in turn, rotating the order.

    A case returns None (then its wall time is recorded) or its own measured seconds (when it
    times only part of what it does, e.g. without a per-call setup).
    """
    log = log or note
    names = list(cases)
    for w in range(warmup):
        for name in names:
            log(f"warm-up {w + 1}/{warmup}: {name}")
            cases[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            own = cases[name]()
            elapsed = time.perf_counter() - t0
            t = float(own) if isinstance(own, (int, float)) and not isinstance(own, bool) else elapsed
            times[name].append(t)
            log(f"rep {r + 1}/{reps}: {name}: {t:.3f} s")
    return times


def slope(points: Iterable[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    pts = list(points)
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else float("nan")


def fmt_s(x: Optional[float], digits: int = 3) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.{digits}f}"


def fmt_stat(s: Mapping[str, float], digits: int = 3) -> str:
    """`median ± half-range` of a `stats()` dict."""
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:.{digits}f} ± {s['spread']:.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (also readable on a terminal)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


# --- machine, load, results ----------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def versions(*packages: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - informative only
        return ""


class Run:
    """One benchmark run: its start, load averages, notes and the results file it writes."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.args = args
        self.started = dt.datetime.now(dt.timezone.utc)
        self.load = {"start": loadavg()}
        self.notes: list[str] = []

    def write(self, results: dict[str, Any], table_text: str) -> Path:
        self.load["end"] = loadavg()
        payload = {
            "benchmark": self.name,
            "command": " ".join(["python", f"benchmarks/bench_{self.name}.py", *sys.argv[1:]]),
            "started_utc": self.started.isoformat(timespec="seconds"),
            "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "quick": bool(getattr(self.args, "quick", False)),
            "reps": getattr(self.args, "reps", None),
            "loadavg": self.load,
            "machine": machine(),
            "git_commit": git_commit(),
            "versions": versions("prefect", "prefect-ml", "mlflow", "s3fs", "adlfs", "docker"),
            "results": results,
            "notes": self.notes,
            "table": table_text,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        suffix = "-quick" if payload["quick"] else ""
        path = RESULTS_DIR / f"{self.name}{suffix}.json"
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\n{self.name}: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
              f"{self.load['start']} -> {self.load['end']} (1/5/15 min), {os.cpu_count()} cores\n")
        print(table_text)
        for n in self.notes:
            print(f"- {n}")
        print(f"\nresults: {path.relative_to(REPO)}")
        return path


def parser(description: str, reps: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--reps", type=int, default=reps, help=f"repetitions per case (default {reps})")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 repetition, smallest sizes")
    p.add_argument("--workdir", default=None, help="scratch dir (default: a fresh temporary dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir")
    return p


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir(args: argparse.Namespace, name: str):
    """A scratch dir for one benchmark run (removed afterwards unless --keep or --workdir)."""
    if args.workdir:
        p = Path(args.workdir).resolve()
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    p = Path(tempfile.mkdtemp(prefix=f"prefect-ml-bench-{name}-"))
    try:
        yield p
    finally:
        if not args.keep:
            shutil.rmtree(p, ignore_errors=True)


# --- the environment a measured Prefect process runs in -----------------------------------------


# `run_all.sh --quick` starts one Prefect server for every script and names it here: a smoke test need not
# pay a temporary Prefect API per script (~16 s each on 2 cores). Full runs never set it.
SHARED_API_URL = os.environ.get("PREFECT_ML_BENCH_API_URL")


def bench_env(work: Path, *, own_api: bool = False, **extra: str) -> dict[str, str]:
    """Environment for a process that runs flows: its own Prefect home and prefect-ml home, no
    telemetry, console logs at WARNING (logs still go to the API at INFO, as for a user). The Prefect
    API is the embedded default, or run_all's shared one under `--quick` unless `own_api`."""
    env = dict(os.environ)
    for k in ("PREFECT_API_URL", "PREFECT_API_KEY", "MLFLOW_TRACKING_URI", "PREFECT_ML_ARTIFACT_ROOT",
              "PREFECT_ML_INFRASTRUCTURE", "PREFECT_ML_CACHE", "PREFECT_ML_BENCH_API_URL"):
        env.pop(k, None)
    if SHARED_API_URL and not own_api:
        env["PREFECT_API_URL"] = SHARED_API_URL
    (work / "prefect").mkdir(parents=True, exist_ok=True)
    env.update({
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_ML_HOME": str(work / "ml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL": "WARNING",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(p for p in (str(BENCH_DIR), str(REPO), env.get("PYTHONPATH", "")) if p),
    })
    env.update(extra)
    return env


def apply_env(env: Mapping[str, str]) -> None:
    """Make `env` this process' environment (for in-process workers)."""
    os.environ.clear()
    os.environ.update(env)


# --- workers: a measured process that takes requests on stdin -----------------------------------


class Worker:
    """A long-lived measuring process (in any venv) driven by JSON lines.

    The driver sends `{"op": ..., **kwargs}`; the worker answers one JSON line on the pipe it was
    given (stdout is redirected to stderr inside the worker, so library prints cannot corrupt it).
    Keeping workers alive lets cases interleave without paying imports and server start-up per rep.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path, *, cwd: Optional[Path] = None,
                 timeout: float = 900):
        self.log_path = log
        self.log = open(log, "ab")
        self.timeout = timeout
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=dict(env), cwd=cwd, text=True, bufsize=1)

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args} died; see {self.log_path}:\n{tail(self.log_path)}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker op {op} failed: {reply['error']}; see {self.log_path}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tail(path: Path, n: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    return ""


def serve(handlers: Mapping[str, Callable[..., Any]]) -> None:
    """Worker side of `Worker`: answer JSON requests from stdin until it closes."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to the log, not the reply pipe
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.pop("op")
        try:
            reply = handlers[op](**req)
            if not isinstance(reply, dict):
                reply = {"value": reply}
        except BaseException as exc:  # noqa: BLE001 - report to the driver, keep serving
            import traceback

            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply, default=str) + "\n")
        out.flush()


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
