"""Container overhead: a trivial step (`python3 -c pass`) on Docker infrastructure vs a bare
`docker run` of the same image, interleaved in one run. Target: <= +0.3 s per step.

    python benchmarks/bench_container.py [--reps 5] [--sizes 1,5,10] [--quick]

Per-step cost of a Docker step = least-squares slope of the pipeline's median wall time over the
chain length (so the flow's fixed cost drops out); overhead = that minus a bare
`docker run --rm --network host IMAGE python3 -c pass`. The same chain on process infrastructure
and a minimal docker-py create/start/wait/remove are measured too, to place the number.
The image is PREFECT_ML_BASE_IMAGE (default here: prefect-ml/base:bookworm, the local base image).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

TARGET_S = 0.3


def worker() -> None:
    from _pipelines import bare_chain, chain_pipeline, noop_component

    state = {}

    def start(work: str):
        work = Path(work)
        state["docker"] = chain_pipeline(noop_component(work, name="noop-docker", program="python3"),
                                         name="chain-docker", infrastructure="docker")
        state["process"] = chain_pipeline(noop_component(work, name="noop-process"), name="chain-process",
                                          infrastructure="process")
        bare_chain(1)  # starts the ephemeral Prefect API: not measured
        state["docker"](n=1)
        state["process"](n=1)
        return {}

    def run(kind: str, n: int):
        t0 = time.perf_counter()
        state[kind](n=n)
        return {"seconds": time.perf_counter() - t0}

    def docker_py(image: str):
        import docker

        client = state.get("client") or docker.from_env()
        state["client"] = client
        t0 = time.perf_counter()
        ctr = client.containers.create(image, ["python3", "-c", "pass"], network_mode="host")
        ctr.start()
        ctr.wait()
        ctr.logs()
        ctr.remove(force=True)
        return {"seconds": time.perf_counter() - t0}

    c.serve({"start": start, "run": run, "docker_py": docker_py})


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=5)
    p.add_argument("--sizes", default="1,5,10")
    p.add_argument("--worker", action="store_true", help=__import__("argparse").SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker()
    reps = 1 if args.quick else args.reps
    sizes = [1, 3] if args.quick else [int(x) for x in args.sizes.split(",")]
    image = os.environ.get("PREFECT_ML_BASE_IMAGE", "prefect-ml/base:bookworm")
    run = c.Run("container", args)
    with c.workdir(args, "container") as work:
        env = c.bench_env(work, PREFECT_ML_BASE_IMAGE=image)
        with c.Worker([str(c.STACK_PYTHON), __file__, "--worker"], env, work / "worker.log") as w:
            w.call("start", work=str(work))
            cases = {}
            for n in sizes:
                for kind in ("docker", "process"):
                    cases[f"{kind}:{n}"] = lambda kind=kind, n=n: w.call("run", kind=kind, n=n)["seconds"]
                cases[f"docker run:{n}"] = lambda: subprocess.run(
                    ["docker", "run", "--rm", "--network", "host", image, "python3", "-c", "pass"], check=True)
                cases[f"docker-py:{n}"] = lambda: w.call("docker_py", image=image)["seconds"]
            times = c.interleave(cases, reps)
    bare = c.stats([t for k, v in times.items() if k.startswith("docker run:") for t in v])
    dpy = c.stats([t for k, v in times.items() if k.startswith("docker-py:") for t in v])
    results = {"image": image, "sizes": sizes, "docker_run_s": bare, "docker_py_s": dpy, "kinds": {}}
    rows = []
    for kind in ("docker", "process"):
        per_n = {n: c.stats(times[f"{kind}:{n}"]) for n in sizes}
        s = c.slope((n, per_n[n]["median"]) for n in sizes)
        results["kinds"][kind] = {"per_n": per_n, "per_step_s": s}
        over = s - bare["median"]
        target = f"<= +{TARGET_S} s: {'met' if over <= TARGET_S else 'MISSED'}" if kind == "docker" else ""
        rows.append([f"prefect-ml, {kind} infrastructure", *[c.fmt_stat(per_n[n]) for n in sizes], c.fmt_s(s),
                     f"{over:+.3f}" if kind == "docker" else "", target])
    rows.append(["bare `docker run --rm` (per container)", *["" for _ in sizes], c.fmt_stat(bare), "+0.000", ""])
    rows.append(["docker-py create/start/wait/logs/remove", *["" for _ in sizes], c.fmt_stat(dpy),
                 f"{dpy['median'] - bare['median']:+.3f}", ""])
    run.notes.append(f"image {image}; per step = least-squares slope over chain lengths {sizes}")
    run.write(results, c.table(["runner", *[f"{n} steps (s)" for n in sizes], "per step (s)",
                                "vs bare docker run (s)", "target"], rows))


if __name__ == "__main__":
    main()
