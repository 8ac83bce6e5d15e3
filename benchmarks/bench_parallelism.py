"""Parallelism: 8 independent CPU-bound 2-second steps vs the ideal, max(step time, total CPU /
cores) (8 x 2 s / 2 cores = 8 s on 2 cores; 2 s on 16), with bare Prefect tasks and 8 bare parallel processes (what this
machine really does) measured in the same run.

    python benchmarks/bench_parallelism.py [--reps 3] [--steps 8] [--cpu-seconds 2] [--quick]

Each step burns `--cpu-seconds` of CPU time (a busy loop on `time.process_time()`), so the
work is fixed however loaded the machine is. Target: <= 1.2x ideal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

TARGET_RATIO = 1.2
SPIN = "import sys, time\ncpu = float(sys.argv[1])\nwhile time.process_time() < cpu:\n    pass\n"


def spin_argv(code: Path, cpu: float) -> list[str]:
    return [sys.executable, str(code / "spin.py"), str(cpu)]


def worker() -> None:
    from _pipelines import bare_fanout, code_dir, fanout_pipeline

    from prefect_ml import Input, Output, command

    state = {}

    def start(work: str, cpu: float):
        code = code_dir(Path(work))
        (code / "spin.py").write_text(SPIN)
        spin = command(
            name="spin", code=code,
            command=f"python spin.py {cpu} ${{{{inputs.i}}}} ${{{{outputs.out}}}}",
            inputs={"i": Input(type="integer")}, outputs={"out": Output(type="uri_folder")},
        )
        state.update(code=code, cpu=cpu, fanout=fanout_pipeline(spin))
        bare_fanout(1, spin_argv(code, 0.01))  # starts the ephemeral API: not measured
        state["fanout"](n=1)
        return {}

    def run(kind: str, n: int):
        import resource

        argv = spin_argv(state["code"], state["cpu"])
        r0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        t0 = time.perf_counter()
        if kind == "prefect-ml":
            state["fanout"](n=n)
        elif kind == "prefect":
            bare_fanout(n, argv)
        else:  # n bare processes at once: what the machine itself can do
            procs = [subprocess.Popen(argv) for _ in range(n)]
            for p in procs:
                p.wait()
        wall = time.perf_counter() - t0
        r1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = [(b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(r0, r1)]
        return {"seconds": wall, "cpu_self_s": cpu[0], "cpu_children_s": cpu[1]}

    c.serve({"start": start, "run": run})


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--cpu-seconds", type=float, default=2.0)
    p.add_argument("--worker", action="store_true", help=__import__("argparse").SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker()
    reps = 1 if args.quick else args.reps
    cpu = 0.5 if args.quick else args.cpu_seconds
    n = args.steps
    cores = os.cpu_count()
    # a step cannot finish faster than its own CPU time, however many cores there are
    ideal = max(cpu, n * cpu / cores)
    run = c.Run("parallelism", args)
    with c.workdir(args, "parallelism") as work:
        with c.Worker([str(c.STACK_PYTHON), __file__, "--worker"], c.bench_env(work), work / "worker.log") as w:
            w.call("start", work=str(work), cpu=cpu)
            kinds = ["prefect-ml", "prefect", "processes"]
            cpu_use: dict[str, list] = {k: [] for k in kinds}

            def case(k):
                r = w.call("run", kind=k, n=n)
                cpu_use[k].append(r["cpu_self_s"] + r["cpu_children_s"])
                return r["seconds"]

            times = c.interleave({k: (lambda k=k: case(k)) for k in kinds}, reps)
    results = {"steps": n, "cpu_seconds": cpu, "cores": cores, "ideal_s": ideal, "kinds": {}}
    rows = []
    procs = c.stats(times["processes"])["median"]
    for k in kinds:
        s = c.stats(times[k])
        ratio = s["median"] / ideal
        cpu_s = c.stats(cpu_use[k])
        results["kinds"][k] = {**s, "vs_ideal": ratio, "vs_processes": s["median"] / procs, "cpu_s": cpu_s}
        target = f"<= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'}" if k == "prefect-ml" else ""
        rows.append([k, c.fmt_stat(s), f"{ratio:.2f}x", f"{s['median'] / procs:.2f}x", c.fmt_s(cpu_s["median"], 1), target])
    rows.append(["ideal max(step, n x cpu / cores)", c.fmt_s(ideal), "1.00x", f"{ideal / procs:.2f}x", c.fmt_s(n * cpu, 1), ""])
    run.notes.append("CPU used = user+sys of the orchestrating process and its children during the run")
    run.notes.append(f"{n} steps x {cpu} s CPU each on {cores} cores; 'processes' = {n} bare `python spin.py` at once")
    run.write(results, c.table(["runner", "wall (s)", "vs ideal", "vs bare processes", "CPU used (s)", "target"], rows))


if __name__ == "__main__":
    main()
