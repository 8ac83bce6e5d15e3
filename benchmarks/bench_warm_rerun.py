"""Warm re-run: an unchanged re-run of credit-default against running local servers, as a whole
process and from the pipeline call to its return, vs a bare one-task Prefect flow process.

    python benchmarks/bench_warm_rerun.py [--reps 5] [--quick]

Starts its own `prefect-ml server start` (Prefect + MLflow servers on free loopback ports, a
fresh PREFECT_HOME and PREFECT_ML_HOME in the scratch dir), runs credit-default once cold, then
interleaves per repetition:
- `credit-default re-run`: `python flows/credit_default.py` unchanged (every step cached, the
  model version re-pointed), timed as a whole process and inside it from the call to the return;
- `credit-default re-run, no champion comparison`: the same pipeline without `compare_with`
  (separates what the champion/challenger comparison costs);
- `bare one-task flow`: a process that imports Prefect and runs `@flow` calling one `@task`;
- `empty @pipeline (flow floor)`: a pipeline with no steps (the heartbeat-join floor: its call
  should sit well under the bare flow's ~1 s).
Both talk to the same running Prefect server. Each reports whether `mlflow` was imported.
Targets: call <= 1 s; process <= 1.5x the bare flow process; re-run <= 5 % of the cold run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

BARE_FLOW = """
import json, sys, time
t0 = time.perf_counter()
from prefect import flow, task

@task
def one():
    return 1

@flow
def bare():
    return one()

t1 = time.perf_counter()
bare()
print("RESULT " + json.dumps({"call_s": time.perf_counter() - t1, "import_s": t1 - t0,
                              "mlflow_imported": "mlflow" in sys.modules}))
"""

EMPTY_PIPELINE = """
import json, sys, time
t0 = time.perf_counter()
from prefect_ml import pipeline

@pipeline(name="empty")
def empty():
    return 1

t1 = time.perf_counter()
empty()
print("RESULT " + json.dumps({"call_s": time.perf_counter() - t1, "import_s": t1 - t0,
                              "mlflow_imported": "mlflow" in sys.modules}))
"""

DRIVER = """
import importlib.util, json, sys, time
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("credit_default_flow", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
fn = mod.credit_default
if sys.argv[2] == "nocompare":
    # the same pipeline body without the champion comparison (diagnostic case)
    from prefect_ml import gate, pipeline, register_model
    @pipeline(name="credit-default")
    def fn(n_estimators: int = 100):
        data = str(mod.get_settings().home_path / "samples" / "credit_default_synthetic.csv")
        prep = mod.data_prep(data=data, test_train_ratio=0.25)
        model = mod.train(train_data=prep.outputs.train_data, learning_rate=0.1, n_estimators=n_estimators)
        report = mod.evaluate(model=model.outputs.model, test_data=prep.outputs.test_data)
        out = {"registered": None}
        if gate(report.outputs.metrics, "auc", ">=", 0.7):
            out["registered"] = register_model(model.outputs.model, name="credit_defaults_model",
                                               metrics=report.outputs.metrics)
        return out
t1 = time.perf_counter()
out = fn(n_estimators=int(sys.argv[3]))
reg = out.get("registered") or {}
print("RESULT " + json.dumps({"call_s": time.perf_counter() - t1, "import_s": t1 - t0,
                              "mlflow_imported": "mlflow" in sys.modules, "reused": reg.get("reused"),
                              "version": reg.get("version")}))
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(py: str) -> list[str]:
    """`prefect-ml` of the measured interpreter."""
    return [py, "-c", "from prefect_ml.cli import app; app()"]


def start_servers(env: dict[str, str], run: c.Run) -> dict[str, str]:
    """`prefect-ml server start` on free ports (homes from `env`); adds the API URLs to `env`."""
    py = str(c.STACK_PYTHON)
    env.update(PREFECT_ML_SERVER_PREFECT_PORT=str(free_port()), PREFECT_ML_SERVER_MLFLOW_PORT=str(free_port()))
    t0 = time.perf_counter()
    started = subprocess.run([*_cli(py), "server", "start"], check=False, env=env, capture_output=True, text=True,
                             cwd=c.REPO)
    run.notes.append(f"`prefect-ml server start` (Prefect + MLflow, fresh homes, in parallel): "
                     f"{time.perf_counter() - t0:.1f} s")
    if started.returncode != 0:
        raise SystemExit(f"prefect-ml server start failed:\n{started.stdout}\n{started.stderr}")
    exports = subprocess.run([*_cli(py), "server", "env", "--all"], check=False, env=env, capture_output=True,
                             text=True, cwd=c.REPO).stdout
    for line in exports.splitlines():
        k, v = line.removeprefix("export ").split("=", 1)
        env[k] = v
    return env


def stop_servers(env: dict[str, str]) -> None:
    subprocess.run([*_cli(str(c.STACK_PYTHON)), "server", "stop"], check=False, env=env, capture_output=True,
                   cwd=c.REPO)


def _run(argv: list[str], env: dict[str, str], log: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, cwd=c.REPO)
    wall = time.perf_counter() - t0
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}; see {log}:\n{proc.stderr[-2000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return {"process_s": wall, **json.loads(line[len("RESULT "):])}


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=5)
    p.add_argument("--n-estimators", type=int, default=100)
    args = p.parse_args()
    reps = 2 if args.quick else args.reps
    if args.quick:
        args.n_estimators = 10  # a shorter cold run
    run = c.Run("warm_rerun", args)
    py = str(c.STACK_PYTHON)
    with c.workdir(args, "warm-rerun") as work:
        env = c.bench_env(work, PREFECT_ML_SERVER_PREFECT_PORT=str(free_port()),
                          PREFECT_ML_SERVER_MLFLOW_PORT=str(free_port()))
        log = work / "runs.log"
        t0 = time.perf_counter()
        started = subprocess.run([*_cli(py), "server", "start"], check=False, env=env,
                                 capture_output=True, text=True, cwd=c.REPO)
        server_start = time.perf_counter() - t0
        if started.returncode != 0:
            raise SystemExit(f"prefect-ml server start failed:\n{started.stdout}\n{started.stderr}")
        run.notes.append(f"`prefect-ml server start` (Prefect + MLflow, fresh homes, in parallel): "
                         f"{server_start:.1f} s")
        try:
            exports = subprocess.run([*_cli(py), "server", "env", "--all"], check=False, env=env,
                                     capture_output=True, text=True, cwd=c.REPO).stdout
            for line in exports.splitlines():
                k, v = line.removeprefix("export ").split("=", 1)
                env[k] = v
            flow_file = str(c.REPO / "flows" / "credit_default.py")
            cases = {
                "credit-default re-run": [py, "-c", DRIVER, flow_file, "flow", str(args.n_estimators)],
                "credit-default re-run, no champion comparison": [py, "-c", DRIVER, flow_file, "nocompare",
                                                                  str(args.n_estimators)],
                "bare one-task flow": [py, "-c", BARE_FLOW],
                "empty @pipeline (flow floor)": [py, "-c", EMPTY_PIPELINE],
            }
            cold = _run(cases["credit-default re-run"], env, log)
            c.note(f"cold run: {cold['process_s']:.1f} s (call {cold['call_s']:.1f} s)")
            _run(cases["credit-default re-run, no champion comparison"], env, log)  # its own first registration
            results: dict[str, list[dict]] = {k: [] for k in cases}

            def case(name):
                def go():
                    r = _run(cases[name], env, log)
                    results[name].append(r)
                    return r["process_s"]
                return go

            c.interleave({k: case(k) for k in cases}, reps, log=c.note)
        finally:
            subprocess.run([*_cli(py), "server", "stop"], check=False, env=env, capture_output=True,
                           cwd=c.REPO)
    bare = c.stats([r["process_s"] for r in results["bare one-task flow"]])
    out = {"cold": cold, "server_start_s": server_start, "cases": {}}
    rows = []
    for name, rs in results.items():
        proc, call = c.stats([r["process_s"] for r in rs]), c.stats([r["call_s"] for r in rs])
        imp = c.stats([r["import_s"] for r in rs])
        ratio = proc["median"] / bare["median"]
        out["cases"][name] = {"process": proc, "call": call, "import": imp, "vs_bare_process": ratio,
                              "vs_cold": proc["median"] / cold["process_s"],
                              "mlflow_imported": any(r["mlflow_imported"] for r in rs),
                              "reused": [r.get("reused") for r in rs]}
        target = "" if not name.startswith("credit") else (
            f"call <= 1 s: {'met' if call['median'] <= 1 else 'MISSED'}; "
            f"process <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'}")
        rows.append([name, c.fmt_stat(proc, 2), c.fmt_stat(imp, 2), c.fmt_stat(call, 2), f"{ratio:.2f}x",
                     "yes" if out["cases"][name]["mlflow_imported"] else "no", target])
    rows.append(["cold run (first, once)", c.fmt_s(cold["process_s"], 2), c.fmt_s(cold["import_s"], 2),
                 c.fmt_s(cold["call_s"], 2), f"{cold['process_s'] / bare['median']:.2f}x",
                 "yes" if cold["mlflow_imported"] else "no", ""])
    run.notes.append("process = whole `python` process (interpreter start, imports, run, exit); call = from the "
                     "pipeline call to its return; both against the same running Prefect and MLflow servers")
    run.write(out, c.table(["case", "process (s)", "imports (s)", "call (s)", "process vs bare flow",
                            "mlflow imported", "target"], rows))


if __name__ == "__main__":
    main()
