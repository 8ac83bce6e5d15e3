"""Steps on a Dask cluster: 32 independent 2-second sleep-bound steps over 1, 2 and 4 Dask workers,
against the same steps on Prefect's thread-pool runner, measured in the same run.

    python benchmarks/bench_dask.py [--reps 1] [--steps 32] [--sleep 2] [--quick]

Real parts on 127.0.0.1: a Prefect server, an MLflow server, moto S3 as the artifact root, a
`dask scheduler` and up to 4 `dask worker` processes (one thread each, each its own PREFECT_ML_HOME
and working directory, no nanny). Each step runs `python sleep.py S` (a `time.sleep`) in a process.

- speed-up: wall(1 worker) / wall(k workers); linear is k. Target at 4 workers: >= 0.8 x linear.
- per-step dispatch overhead: (wall - steps x bare step) / steps for the one-wide runners (1 Dask
  worker, a 1-thread pool), where `bare step` is the same command measured alone; the Dask
  figure against the thread pool's is what sending a step to a worker costs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as c

TARGET_EFFICIENCY = 0.8  # of linear speed-up at 4 workers
WORKER_COUNTS = (1, 2, 4)


class Cluster:
    """A scheduler plus a changing number of workers (started and stopped between cases)."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        from tests.servers import HOST, free_port

        self.work, self.env, self.host = work, env, HOST
        self.address = f"tcp://{HOST}:{free_port()}"
        self.dask = str(Path(c.STACK_PYTHON).parent / "dask")
        self.scheduler = self._start([self.dask, "scheduler", "--host", HOST, "--port",
                                      self.address.rsplit(":", 1)[1], "--no-dashboard"], work / "scheduler")
        self.workers: list[subprocess.Popen] = []
        self.started = 0

    def _start(self, argv: list[str], d: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "log", "ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env or self.env, cwd=d, start_new_session=True)

    def scale(self, n: int) -> bool:
        """Stop or start workers until `n` run; True when a worker was started."""
        from distributed import Client

        grew = len(self.workers) < n
        while len(self.workers) > n:
            self._stop(self.workers.pop())
        while len(self.workers) < n:
            i = self.started
            self.started += 1
            d = self.work / f"worker-{i}"
            env = {**self.env, "PREFECT_ML_HOME": str(d / "home"), "PREFECT_HOME": str(d / "prefect")}
            argv = [self.dask, "worker", self.address, "--host", self.host, "--nthreads", "1", "--no-nanny",
                    "--no-dashboard", "--name", f"w{i}", "--local-directory", str(d / "dask"),
                    "--preload", "prefect_ml.runtime.task"]  # imports at start, not in the first step
            self.workers.append(self._start(argv, d, env))
        with Client(self.address, timeout=60) as client:
            deadline = time.monotonic() + 120
            while len(client.scheduler_info(n_workers=-1)["workers"]) != n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not reach {n} workers; see {self.work}")
                time.sleep(0.2)
        return grew

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        for p in self.workers:
            self._stop(p)
        self._stop(self.scheduler)


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=1)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--sleep", type=float, default=2.0)
    args = p.parse_args()
    reps = 1 if args.quick else args.reps
    n = 8 if args.quick else args.steps
    sleep = 0.5 if args.quick else args.sleep
    run = c.Run("dask", args)
    with c.workdir(args, "dask") as work, contextlib.ExitStack() as stack:
        from tests.servers import mlflow_server, moto_server, prefect_server

        env = c.bench_env(work)
        c.apply_env(env)
        c.note("starting moto, MLflow and Prefect servers")
        endpoint = stack.enter_context(moto_server())
        mlflow_uri = stack.enter_context(mlflow_server(work / "mlflow"))
        api = stack.enter_context(prefect_server(work / "prefect-server"))
        aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": endpoint}
        worker_env = {**env, **aws}
        os.environ.update({**aws, "PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": mlflow_uri,
                           "PREFECT_ML_ARTIFACT_ROOT": "s3://bench/ml"})
        import s3fs

        s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint}).mkdir("bench")

        from _pipelines import code_dir, subprocess_seconds
        from prefect.task_runners import ThreadPoolTaskRunner
        from prefect_dask import DaskTaskRunner

        from prefect_ml import Input, Output, command, pipeline

        code = code_dir(work)
        (code / "sleep.py").write_text("import sys, time\ntime.sleep(float(sys.argv[1]))\n")
        sleeper = command(name="sleep", code=code,
                          command="python sleep.py ${{inputs.seconds}} ${{inputs.i}} ${{outputs.out}}",
                          inputs={"i": Input(type="integer"), "seconds": Input(type="number")},
                          outputs={"out": Output(type="uri_folder")})

        @pipeline(name="dask-fanout", cache=False)
        def fanout(n: int = 8, seconds: float = 2.0):
            return {"outputs": [sleeper(i=i, seconds=seconds).outputs.out for i in range(n)]}

        def on_cluster():
            return fanout.with_options(task_runner=DaskTaskRunner(address=cluster.address))

        cluster = Cluster(work / "cluster", worker_env)
        stack.callback(cluster.close)
        bare = subprocess_seconds([sys.executable, str(code / "sleep.py"), str(sleep)], n=3)

        def on_dask(k: int):
            def case():
                if cluster.scale(k):  # new workers import Prefect and prefect-ml on their first step: not measured
                    on_cluster()(n=2 * k, seconds=0)
                t0 = time.perf_counter()
                out = on_cluster()(n=n, seconds=sleep)
                wall = time.perf_counter() - t0
                assert len(out["outputs"]) == n
                return wall
            return case

        def on_threads(k: int):
            def case():
                t0 = time.perf_counter()
                fanout.with_options(task_runner=ThreadPoolTaskRunner(max_workers=k))(n=n, seconds=sleep)
                return time.perf_counter() - t0
            return case

        c.note("warm-up: one small run on each runner")
        cluster.scale(1)
        on_cluster()(n=2, seconds=0)
        fanout.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(n=2, seconds=0)
        cases = {"threads x1": on_threads(1), **{f"dask x{k}": on_dask(k) for k in WORKER_COUNTS},
                 "threads x4": on_threads(4)}
        times = c.interleave(cases, reps)

    work_s = n * bare
    one = c.stats(times["dask x1"])["median"]
    results: dict = {"steps": n, "sleep_s": sleep, "bare_step_s": bare, "cores": os.cpu_count(), "cases": {}}
    rows = []
    for name, ts in times.items():
        s = c.stats(ts)
        width = int(name.split("x")[1])
        entry = {**s, "width": width, "ideal_s": work_s / width}
        if name.startswith("dask"):
            entry["speedup"] = one / s["median"]
            entry["efficiency"] = entry["speedup"] / width
        if width == 1:
            entry["overhead_per_step_s"] = (s["median"] - work_s) / n
        results["cases"][name] = entry
    four = results["cases"]["dask x4"]
    threads_overhead = results["cases"]["threads x1"]["overhead_per_step_s"]
    dask_overhead = results["cases"]["dask x1"]["overhead_per_step_s"]
    results["speedup_4"] = four["speedup"]
    results["efficiency_4"] = four["efficiency"]
    results["dispatch_overhead_vs_threads_s"] = dask_overhead - threads_overhead
    for name, e in results["cases"].items():
        target = ""
        if name == "dask x4":
            met = "met" if e["efficiency"] >= TARGET_EFFICIENCY else "MISSED"
            target = f">= {TARGET_EFFICIENCY:.1f} x linear: {met}"
        rows.append([name, c.fmt_stat(e), c.fmt_s(e["ideal_s"], 1),
                     f"{e['speedup']:.2f}x ({e['efficiency']:.0%} of linear)" if "speedup" in e else "",
                     c.fmt_s(e.get("overhead_per_step_s")), target])
    run.notes.append(f"{n} steps x `python sleep.py {sleep:g}` (alone: {bare:.3f} s); ideal = steps x that / width")
    run.notes.append(f"per-step dispatch overhead on Dask {dask_overhead:.3f} s vs thread pool "
                     f"{threads_overhead:.3f} s "
                     f"({dask_overhead - threads_overhead:+.3f} s); both include the run's fixed costs / {n}")
    run.notes.append("each step also creates its MLflow run over REST and publishes to moto S3, on both runners")
    run.write(results, c.table(["runner", "wall (s)", "ideal (s)", "speed-up vs 1 worker", "overhead/step (s)",
                                "target"], rows))


if __name__ == "__main__":
    main()
