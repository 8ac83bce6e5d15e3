"""Memory: peak RSS of the orchestrating process during the credit-default pipeline vs a bare
Prefect flow (and a trivial prefect-ml pipeline, to tell the plugin's cost from the ML libraries').

    python benchmarks/bench_memory.py [--reps 2] [--quick]

Each case runs in a fresh Python process against one shared Prefect server (tests/servers.py),
so the server's own memory is not counted; the steps' subprocesses are not counted either (they
are the user's work). Peak RSS = the process' VmHWM at the end. Target: report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _common as c  # noqa: E402

KINDS = {
    "import prefect (floor)": "import",
    "bare Prefect flow, 5 tasks running `python -c pass`": "bare",
    "prefect-ml pipeline, 5 trivial steps": "trivial",
    "prefect-ml credit-default (cold run)": "credit-default",
}


def child(kind: str, work: str) -> None:
    """Run one case in this (fresh) process and print its peak RSS as JSON on the last line."""
    t0 = time.perf_counter()
    if kind == "import":
        import prefect  # noqa: F401
    elif kind == "bare":
        from _pipelines import bare_chain

        bare_chain(5)
    elif kind == "trivial":
        from _pipelines import chain_pipeline, noop_component

        chain_pipeline(noop_component(Path(work)))(n=5)
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("credit_default_flow", c.REPO / "flows" / "credit_default.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.credit_default()
    print(json.dumps({"peak_rss_mib": c.peak_rss_mib(), "seconds": time.perf_counter() - t0}))


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=2)
    p.add_argument("--child", help=__import__("argparse").SUPPRESS)
    p.add_argument("--child-work", help=__import__("argparse").SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.child_work)
    reps = 1 if args.quick else args.reps
    run = c.Run("memory", args)
    import servers

    rss: dict[str, list[float]] = {k: [] for k in KINDS}
    with c.workdir(args, "memory") as work:
        with servers.prefect_server(work / "server-home") as api_url:
            counter = iter(range(10**6))

            def case(label: str):
                w = work / f"case-{next(counter)}"
                w.mkdir()
                env = c.bench_env(w, PREFECT_API_URL=api_url)
                proc = subprocess.run([str(c.STACK_PYTHON), __file__, "--child", KINDS[label], "--child-work", str(w)],
                                      env=env, capture_output=True, text=True, timeout=900)
                if proc.returncode != 0:
                    raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rss[label].append(r["peak_rss_mib"])
                c.note(f"{label}: peak RSS {r['peak_rss_mib']:.0f} MiB")
                return r["seconds"]

            times = c.interleave({k: (lambda k=k: case(k)) for k in KINDS}, reps)
    base = c.stats(rss[next(k for k in KINDS if KINDS[k] == "bare")])["median"]
    rows, results = [], {"cases": {}}
    for label in KINDS:
        s = c.stats(rss[label])
        results["cases"][label] = {"peak_rss_mib": s, "seconds": c.stats(times[label])}
        rows.append([label, f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})", f"{s['median'] / base:.2f}x",
                     c.fmt_stat(c.stats(times[label]), 1)])
    run.notes.append("peak RSS = VmHWM of the orchestrating process; Prefect server and step subprocesses not counted")
    run.write(results, c.table(["orchestrating process", "peak RSS MiB (min-max)", "vs bare Prefect flow",
                                "wall (s)"], rows))


if __name__ == "__main__":
    main()
