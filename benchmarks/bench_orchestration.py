"""Orchestration overhead: pipelines of 1, 10, 50 chained trivial steps (`python -c pass`) on
process infrastructure, vs the same number of bare Prefect tasks running the same subprocess,
and vs Kubeflow Pipelines' local SubprocessRunner and ZenML's local orchestrator (each in a venv
of its own under benchmarks/.venvs/, made by `--setup-peers`).

    python benchmarks/bench_orchestration.py [--reps 5] [--sizes 1,10,50] [--quick] [--breakdown]

Per-step cost = least-squares slope of the median wall time over the chain length; overhead =
per-step cost minus the bare `python -c pass` subprocess. Target: <= 0.03 s per step, below KFP's.

`--breakdown` adds prefect-ml with fewer step observers (MLflow tracking only; none), to show what
each record of a step costs: the observers are the only difference from the full run.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

TARGET_OVERHEAD_S = 0.03
# --breakdown: prefect-ml with fewer observers (runtime.task.default_observers), in the same worker
BREAKDOWN = ("prefect-ml, tracking only", "prefect-ml, no observers")
PEERS = {
    "kfp": ["kfp"],
    "zenml": ["zenml[local]"],
}


# --- workers (each runs in its own process; peers in their own venvs) ---------------------------


def worker_prefect() -> None:
    from _pipelines import bare_chain, chain_pipeline, noop_component, subprocess_seconds

    state = {}

    def start(work: str):
        work = Path(work)
        chain = chain_pipeline(noop_component(work))
        state["chain"] = chain
        t0 = time.perf_counter()
        bare_chain(1)  # starts the ephemeral Prefect API: not part of any measurement
        first = time.perf_counter() - t0
        chain(n=1)  # imports MLflow, creates the experiment
        return {"prefect_start_s": first}

    def run(kind: str, n: int):
        import prefect_ml.runtime.task as step_task
        from prefect_ml.runtime.tracking import TrackingObserver

        fn = state["chain"] if kind.startswith("prefect-ml") else bare_chain
        full = step_task.default_observers
        if kind == "prefect-ml, tracking only":
            step_task.default_observers = lambda: [TrackingObserver()]
        elif kind == "prefect-ml, no observers":
            step_task.default_observers = lambda: []
        try:
            t0 = time.perf_counter()
            fn(n=n)
            return {"seconds": time.perf_counter() - t0}
        finally:
            step_task.default_observers = full

    def sub():
        return {"seconds": subprocess_seconds()}

    c.serve({"start": start, "run": run, "subprocess": sub})


# --- driver --------------------------------------------------------------------------------------


def setup_peers() -> None:
    """Make benchmarks/.venvs/<peer> with uv (or python -m venv + pip)."""
    import shutil
    import subprocess

    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    for name, reqs in PEERS.items():
        venv = c.VENVS_DIR / name
        if (venv / "bin" / "python").exists():
            continue
        c.note(f"creating {venv} with {reqs}")
        if Path(uv).exists():
            subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True)
            subprocess.run([uv, "pip", "install", "-q", *reqs], check=True, env={**__import__("os").environ,
                                                                            "VIRTUAL_ENV": str(venv)})
        else:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *reqs], check=True)


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=5)
    p.add_argument("--sizes", default="1,10,50")
    p.add_argument("--no-peers", action="store_true", help="skip KFP and ZenML")
    p.add_argument("--setup-peers", action="store_true", help="create the peer venvs first (needs PyPI)")
    p.add_argument("--servers", action="store_true",
                   help="run prefect-ml and bare Prefect against `prefect-ml server start` servers (fresh homes, free "
                        "ports: MLflow over REST) instead of the embedded default; results in orchestration_servers.json")
    p.add_argument("--breakdown", action="store_true",
                   help="also run prefect-ml with MLflow tracking only and with no step observers")
    p.add_argument("--worker", help=argparse_hidden())
    args = p.parse_args()
    if args.worker:
        worker_prefect()
        return
    if args.setup_peers:
        setup_peers()
    sizes = [1, 10] if args.quick else [int(x) for x in args.sizes.split(",")]
    reps = 1 if args.quick else args.reps
    run = c.Run("orchestration_servers" if args.servers else "orchestration", args)
    with c.workdir(args, "orchestration") as work:
        env = c.bench_env(work)
        workers: dict[str, c.Worker] = {}
        servers_env = None
        try:
            if args.servers:
                from bench_warm_rerun import start_servers

                servers_env = start_servers(env, run)
            workers["prefect"] = c.Worker([str(c.STACK_PYTHON), __file__, "--worker", "prefect"], env,
                                          work / "prefect-worker.log")
            start = workers["prefect"].call("start", work=str(work))
            run.notes.append(f"ephemeral Prefect API start (excluded): {start['prefect_start_s']:.1f} s")
            peers = [] if args.no_peers else list(PEERS)
            for peer in peers:
                py = c.VENVS_DIR / peer / "bin" / "python"
                if not py.exists():
                    run.notes.append(f"{peer}: no venv at {py.relative_to(c.REPO)} (run with --setup-peers); skipped")
                    continue
                pw = work / peer
                pw.mkdir()
                penv = c.bench_env(pw, ZENML_ANALYTICS_OPT_IN="false", ZENML_CONFIG_PATH=str(pw / "zenml-config"),
                                   ZENML_LOGGING_VERBOSITY="WARN", ZENML_ENABLE_RICH_TRACEBACK="false",
                                   AUTO_OPEN_DASHBOARD="false", ZENML_DEBUG="false")
                script = c.BENCH_DIR / f"_peer_{peer}.py"
                if peer == "zenml":  # ZenML resolves step code relative to the dir where `zenml init` ran
                    repo = pw / "zenml-repo"
                    repo.mkdir()
                    script = Path(shutil.copy(script, repo / script.name))
                    penv["PREFECT_ML_BENCH_DIR"] = str(c.BENCH_DIR)
                w = c.Worker([str(py), str(script)], penv, work / f"{peer}-worker.log", cwd=script.parent)
                try:
                    w.call("start", work=str(pw))
                    workers[peer] = w
                except RuntimeError as exc:
                    run.notes.append(f"{peer}: could not start ({str(exc).splitlines()[0][:200]}); skipped")
                    w.close()
            kinds = ["prefect-ml", *(BREAKDOWN if args.breakdown else ()), "prefect",
                     *[p for p in peers if p in workers]]
            owner = {"prefect-ml": "prefect", "prefect": "prefect", **{k: "prefect" for k in BREAKDOWN}}
            cases = {}
            for n in sizes:
                for kind in kinds:
                    w = workers[owner.get(kind, kind)]
                    cases[f"{kind}:{n}"] = (lambda w=w, kind=kind, n=n: w.call("run", kind=kind, n=n)["seconds"])
                cases[f"subprocess:{n}"] = lambda: workers["prefect"].call("subprocess")["seconds"]
            times = c.interleave(cases, reps)
        finally:
            for w in workers.values():
                w.close()
            if servers_env is not None:
                from bench_warm_rerun import stop_servers

                stop_servers(servers_env)
    sub = c.stats([t for k, v in times.items() if k.startswith("subprocess:") for t in v])
    results = {"sizes": sizes, "subprocess_s": sub, "kinds": {}}
    rows = []
    base_slope = None
    for kind in kinds:
        per_n = {n: c.stats(times[f"{kind}:{n}"]) for n in sizes}
        k_slope = c.slope((n, per_n[n]["median"]) for n in sizes)
        overhead = k_slope - sub["median"]
        if kind == "prefect":
            base_slope = k_slope
        results["kinds"][kind] = {"per_n": per_n, "per_step_s": k_slope, "overhead_per_step_s": overhead}
    for kind in kinds:
        r = results["kinds"][kind]
        extra = r["per_step_s"] - base_slope if base_slope is not None else float("nan")
        target = ""
        if kind == "prefect-ml":
            target = f"<= {TARGET_OVERHEAD_S} s: {'met' if r['overhead_per_step_s'] <= TARGET_OVERHEAD_S else 'MISSED'}"
        rows.append([kind, *[c.fmt_stat(r["per_n"][n]) for n in sizes], c.fmt_s(r["per_step_s"]),
                     c.fmt_s(r["overhead_per_step_s"]), f"{extra:+.3f}", target])
    headers = ["runner", *[f"{n} steps (s)" for n in sizes], "per step (s)", "overhead/step (s)",
               "per step minus bare Prefect's (s)", "target"]
    run.notes.append(f"bare `python -c pass` subprocess: {c.fmt_stat(sub)} s (subtracted to get the overhead)")
    run.notes.append("times are median ± half-range of the repetitions; per step = least-squares slope over chain length")
    run.write(results, c.table(headers, rows))


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
