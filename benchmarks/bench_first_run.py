"""First-run latency: from the README's first command on a fresh clone to the registered model,
split into install / Prefect start / build / pipeline.

    python benchmarks/bench_first_run.py [--reps 1] [--installer pip|uv|both] [--demo] [--quick]

Phases, each measured on its own so the split is exact:
  install        a fresh `git clone` of this repo, then what demo.sh does first: `scripts/bootstrap.sh`
                 (a new .venv, `pip install uv`, `uv pip install -e .`) with empty pip and uv
                 caches (everything downloaded, as for a newcomer); `--installer pip` adds a plain
                 `pip install -e .` for comparison
  prefect start  a fresh process with a fresh PREFECT_HOME: imports, then the first flow call
                 (the ephemeral API server starts and migrates its database)
  build          the environment build the run needs: none on process infrastructure with the
                 running interpreter (the demo's default); the sklearn-cpu venv, cold, for scale
  pipeline       credit-default, cold (fresh PREFECT_ML_HOME: empty MLflow store and cache), in
                 the same fresh process right after the Prefect start
With `--demo` (default when scripts/demo.sh exists), `bash scripts/demo.sh` itself is timed end
to end once, in another fresh clone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402


def child(work: str) -> None:
    """One fresh process: import, Prefect start, then the cold pipeline; print the split as JSON."""
    t0 = time.perf_counter()
    import importlib.util

    from prefect import flow

    spec = importlib.util.spec_from_file_location("credit_default_flow", c.REPO / "flows" / "credit_default.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t1 = time.perf_counter()

    @flow(name="hello")
    def hello():
        return 1

    hello()
    t2 = time.perf_counter()
    out = mod.credit_default()
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "prefect_start_s": t2 - t1, "pipeline_s": t3 - t2,
                      "registered": bool(out.get("registered"))}))


def fresh_clone(dest: Path) -> None:
    subprocess.run(["git", "clone", "-q", str(c.REPO), str(dest)], check=True)


def install(work: Path, installer: str) -> float:
    repo = work / f"clone-{installer}"
    fresh_clone(repo)
    env = dict(os.environ, PIP_CACHE_DIR=str(work / f"pip-cache-{installer}"), UV_CACHE_DIR=str(work / f"uv-cache-{installer}"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("VIRTUAL_ENV", None)
    t0 = time.perf_counter()
    if installer == "bootstrap":
        subprocess.run(["bash", "-c", "source scripts/bootstrap.sh"], cwd=repo, check=True, env=env,
                       stdout=subprocess.DEVNULL)
    elif installer == "pip":
        subprocess.run(["python3", "-m", "venv", ".venv"], cwd=repo, check=True, env=env)
        subprocess.run([".venv/bin/pip", "install", "-q", "-e", "."], cwd=repo, check=True, env=env)
    else:
        uv = shutil.which("uv") or "/tmp/probe-venv/bin/uv"
        subprocess.run([uv, "venv", "-q", ".venv"], cwd=repo, check=True, env=env)
        subprocess.run([uv, "pip", "install", "-q", "-e", "."], cwd=repo, check=True,
                       env={**env, "VIRTUAL_ENV": str(repo / ".venv")})
    seconds = time.perf_counter() - t0
    shutil.rmtree(repo, ignore_errors=True)
    return seconds


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=1)
    p.add_argument("--installer", default="bootstrap", choices=["bootstrap", "pip", "uv", "both", "all", "none"],
                   help="both = bootstrap and uv; all = bootstrap, pip and uv")
    p.add_argument("--demo", action="store_true", default=None)
    p.add_argument("--child", action="store_true", help=__import__("argparse").SUPPRESS)
    p.add_argument("--child-work", help=__import__("argparse").SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child_work)
    reps = 1 if args.quick else args.reps
    installers = [] if args.quick or args.installer == "none" else (
        {"all": ["bootstrap", "pip", "uv"], "both": ["bootstrap", "uv"]}.get(args.installer, [args.installer]))
    demo = args.demo if args.demo is not None else (c.REPO / "scripts" / "demo.sh").exists() and not args.quick
    run = c.Run("first_run", args)
    results: dict = {"phases": {}}
    with c.workdir(args, "first-run") as work:
        for inst in installers:
            c.note(f"install with {inst} (fresh clone, empty cache) ...")
            ts = [install(work, inst) for _ in range(reps)]
            results["phases"][f"install ({inst}, empty cache)"] = c.stats(ts)
        splits = []
        for r in range(reps):
            w = work / f"fresh-{r}"
            w.mkdir()
            c.note("fresh process: import, Prefect start, cold credit-default ...")
            proc = subprocess.run([str(c.STACK_PYTHON), __file__, "--child", "--child-work", str(w)],
                                  env=c.bench_env(w, own_api=True), capture_output=True, text=True, timeout=1200, cwd=c.REPO)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            splits.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for k in ("import_s", "prefect_start_s", "pipeline_s"):
            results["phases"][k] = c.stats([s[k] for s in splits])
        # the venv build, cold (fresh PREFECT_ML_HOME): what process infrastructure with an environment venv adds
        w = work / "venv-build"
        w.mkdir()
        code = ("import time,sys; from prefect_ml import environments as e; t=time.perf_counter(); "
                "e.ensure_venv('sklearn-cpu', start=__import__('pathlib').Path('.').resolve()); "
                "print(time.perf_counter()-t)")
        proc = subprocess.run([str(c.STACK_PYTHON), "-c", code], env=c.bench_env(w, own_api=True), capture_output=True, text=True,
                              cwd=c.REPO, timeout=900)
        venv_s = float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else float("nan")
        if proc.returncode != 0:
            run.notes.append(f"venv build failed: {proc.stderr[-300:]}")
        results["phases"]["venv build (sklearn-cpu, cold)"] = c.stats([venv_s])
        if demo:
            clone = work / "clone-demo"
            fresh_clone(clone)
            denv = c.bench_env(work / "demo-homes", own_api=True)
            for k in ("PREFECT_HOME", "PREFECT_ML_HOME", "PYTHONPATH"):
                denv.pop(k, None)  # the script sets up its own, as for a newcomer
            denv["HOME"] = str(work / "demo-user-home")  # fresh ~/.prefect and ~/.prefect-ml
            Path(denv["HOME"]).mkdir()
            denv["PIP_CACHE_DIR"] = str(work / "demo-pip-cache")  # empty caches, as for a newcomer
            denv["UV_CACHE_DIR"] = str(work / "demo-uv-cache")
            c.note("bash scripts/demo.sh in a fresh clone ...")
            t0 = time.perf_counter()
            proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=clone, env=denv, capture_output=True, text=True,
                                  timeout=1800)
            results["demo_sh"] = {"seconds": time.perf_counter() - t0, "rc": proc.returncode,
                                  "tail": proc.stdout[-1500:] + proc.stderr[-1500:]}
    ph = results["phases"]
    rows = []
    for inst in installers:
        what = "scripts/bootstrap.sh (venv, pip install uv, uv pip install -e .)" if inst == "bootstrap" else \
            f"venv, `{inst} install -e .`"
        rows.append([f"install: fresh clone, {what}, empty caches",
                     c.fmt_stat(ph[f"install ({inst}, empty cache)"], 1)])
    rows += [
        ["imports (prefect, prefect-ml, the flow's components)", c.fmt_stat(ph["import_s"], 1)],
        ["Prefect start (first flow call: ephemeral API server + DB)", c.fmt_stat(ph["prefect_start_s"], 1)],
        ["build: none on process infrastructure (the demo's default)", "0"],
        ["build, for scale: sklearn-cpu venv, cold", c.fmt_stat(ph["venv build (sklearn-cpu, cold)"], 1)],
        ["pipeline: credit-default, cold, to the registered model", c.fmt_stat(ph["pipeline_s"], 1)],
    ]
    first = installers[0] if installers else None
    total = (ph[f"install ({first}, empty cache)"]["median"] if first else 0) + sum(
        ph[k]["median"] for k in ("import_s", "prefect_start_s", "pipeline_s"))
    rows.append([f"total ({first or 'no'} install + start + pipeline)", c.fmt_s(total, 1)])
    if "demo_sh" in results:
        d = results["demo_sh"]
        rows.append(["`bash scripts/demo.sh` end to end, fresh clone (once)",
                     f"{d['seconds']:.1f}" + ("" if d["rc"] == 0 else f" (exit {d['rc']})")])
    else:
        run.notes.append("scripts/demo.sh was not timed end to end (absent or --quick)")
    run.write(results, c.table(["phase", "wall (s)"], rows))


if __name__ == "__main__":
    main()
