"""Steps on a Dask cluster: a real `dask scheduler` and three `dask worker` processes on 127.0.0.1,
each with its own PREFECT_ML_HOME and working directory, a moto S3 artifact root and an MLflow server.

Nothing is shared between the workers and the pipeline's process but the network: the workers get
AWS credentials from their environment (the credential chain) and everything else (artifact root,
MLflow tracking URI, Prefect API) from the run itself. The component code dir is shared by path
(the documented requirement: the project at the same path on every worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from prefect_ml import Input, Output, command, pipeline, register_model, storage
from tests.conftest import require
from tests.servers import HOST, ServiceUnavailable, free_port, mlflow_server, moto_server, skip_or_fail


@pytest.fixture(autouse=True, scope="module")
def _prefect_dask() -> None:
    """prefect-dask is in the test extra: under CI its absence fails, it is never skipped silently."""
    require(find_spec("prefect_dask") is not None, "prefect-dask is not installed: pip install -e '.[test]'")


DASK = Path(sys.executable).parent / "dask"
N_WORKERS = 3


@contextlib.contextmanager
def _service(cm):
    try:
        with cm as value:
            yield value
    except ServiceUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with _service(mlflow_server(tmp_path_factory.mktemp("mlflow-dask"))) as uri:
        yield uri


@pytest.fixture(scope="module")
def s3_endpoint():
    with _service(moto_server()) as endpoint:
        yield endpoint


def _start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)


def _kill(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # its own group: the worker and the step processes it started
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Cluster:
    """A scheduler and workers (no nanny: a killed worker stays dead), each worker in its own dirs."""

    def __init__(self, base: Path, worker_env: dict[str, str]) -> None:
        self.base = base
        self.worker_env = worker_env
        self.address = f"tcp://{HOST}:{free_port()}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}  # address -> process
        self.homes: dict[str, Path] = {}

    def start(self, n: int) -> None:
        """Start the processes; `wait` for the workers to join."""
        env = dict(os.environ)
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = _start([str(DASK), "scheduler", "--host", HOST, "--port", port, "--no-dashboard"],
                                self.base / "scheduler.log", env, self.base)
        for i in range(n):
            address = f"tcp://{HOST}:{free_port()}"
            d = self.base / f"worker-{i}"
            (d / "cwd").mkdir(parents=True)
            wenv = {**self.worker_env, "PREFECT_ML_HOME": str(d / "home"), "PREFECT_HOME": str(d / "prefect")}
            self.workers[address] = _start(
                [str(DASK), "worker", self.address, "--host", HOST, "--worker-port", address.rsplit(":", 1)[1],
                 "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{i}",
                 "--local-directory", str(d / "dask"), "--death-timeout", "60"],
                d / "worker.log", wenv, d / "cwd")
            self.homes[address] = d / "home"

    def wait(self) -> None:
        from distributed import Client

        with Client(self.address, timeout=120) as client:
            client.wait_for_workers(len(self.workers), timeout=180)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.base.rglob("*.log")))

    def stop(self) -> None:
        procs = [*self.workers.values(), *([self.scheduler] if self.scheduler is not None else [])]
        for proc in procs:  # all at once, then wait for each
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            _kill(proc)


AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory, request) -> Iterator[Cluster]:
    """A scheduler and three workers for the module; the workers know only AWS credentials (and the
    endpoint): no artifact root, no MLflow URI, no Prefect API, each its own home and working dir."""
    worker_env = {k: v for k, v in os.environ.items()
                  if not k.startswith(("PREFECT_ML_", "MLFLOW_TRACKING", "PREFECT_API", "PREFECT_HOME", "AWS_"))}
    worker_env.update(AWS, AWS_ENDPOINT_URL=s3_endpoint)
    c = Cluster(tmp_path_factory.mktemp("dask-cluster"), worker_env)
    try:
        c.start(N_WORKERS)
        request.getfixturevalue("mlflow_uri")  # the MLflow server starts while the workers import
        c.wait()
        yield c
    finally:
        c.stop()
        print(c.logs())  # shown with a failure


@pytest.fixture
def dask_run(env, cluster, s3_endpoint, mlflow_uri, monkeypatch) -> Cluster:
    """The pipeline's process: a fresh S3 bucket as artifact root, the MLflow server, steps on the cluster."""
    import s3fs

    for k, v in {**AWS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_ML_STORAGE_OPTIONS", raising=False)
    bucket = f"dask-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint}).mkdir(bucket)
    monkeypatch.setenv("PREFECT_ML_ARTIFACT_ROOT", f"s3://{bucket}/ml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("PREFECT_ML_TASK_RUNNER", "dask")
    monkeypatch.setenv("PREFECT_ML_DASK_ADDRESS", cluster.address)
    return cluster


def _code(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "work.py").write_text(textwrap.dedent("""
        import os, sys, time, pathlib
        i, seconds, out = sys.argv[1], float(sys.argv[2]), pathlib.Path(sys.argv[3])
        out.write_text("partial\\n")  # what a step killed mid-run leaves in its private outputs
        time.sleep(seconds)
        out.write_text(f"part {i}\\n")
    """))
    # a tiny sklearn model saved as MLflow's sklearn flavour lays it out, without importing mlflow in the step
    (code / "fit.py").write_text(textwrap.dedent("""
        import sys, json, pathlib, pickle
        import sklearn
        from sklearn.linear_model import LogisticRegression
        model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        out = pathlib.Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.pkl").write_bytes(pickle.dumps(model))
        (out / "MLmodel").write_text(
            "flavors:\\n  python_function:\\n    loader_module: mlflow.sklearn\\n    model_path: model.pkl\\n"
            f"  sklearn:\\n    pickled_model: model.pkl\\n    serialization_format: pickle\\n"
            f"    sklearn_version: {sklearn.__version__}\\n")
        pathlib.Path(sys.argv[3]).write_text(json.dumps({"accuracy": float(model.score([[0.0], [3.0]], [0, 1]))}))
    """))
    return code


def _components(code: Path):
    work = command(name="work", code=code, command="python work.py ${{inputs.i}} ${{inputs.seconds}} ${{outputs.out}}",
                   inputs={"i": Input(type="integer"), "seconds": Input(type="number")},
                   outputs={"out": Output(type="uri_file")})
    fit = command(name="fit", code=code,
                  command="python fit.py ${{inputs.part}} ${{outputs.model}} ${{outputs.metrics}}",
                  inputs={"part": Input(type="uri_file")},
                  outputs={"model": Output(type="mlflow_model"), "metrics": Output(type="metrics")})
    return work, fit


def _step_runs(experiment: str) -> list[dict]:
    """Finished MLflow step runs of an experiment, as {step, worker, host, status}."""
    from prefect_ml.runtime import tracking

    client = tracking.client()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`prefect_ml.step` != ''", max_results=500)
    return [{"step": r.data.tags["prefect_ml.step"], "worker": r.data.tags.get("prefect_ml.dask_worker"),
             "host": r.data.tags.get("prefect_ml.host"), "status": r.info.status} for r in runs]


@pytest.mark.timeout(240)
def test_eight_steps_spread_over_workers_and_register_a_model(dask_run, tmp_path):
    cluster = dask_run
    work, fit = _components(_code(tmp_path))
    experiment = f"dask-{uuid.uuid4().hex[:6]}"
    name = f"dask_model_{uuid.uuid4().hex[:6]}"

    @pipeline(experiment=experiment, cache=False)
    def spread():
        parts = [work(i=i, seconds=1.5) for i in range(8)]
        model = fit(part=parts[0].outputs.out)
        registered = register_model(model.outputs.model, name=name, metrics=model.outputs.metrics)
        return {"parts": [p.outputs.out for p in parts], "model": model.outputs.model, "registered": registered}

    out = spread()
    root = os.environ["PREFECT_ML_ARTIFACT_ROOT"]
    assert len(out["parts"]) == 8
    for i, uri in enumerate(out["parts"]):
        assert uri.startswith(f"{root}/steps/"), uri
        fs, path = storage.filesystem(uri)
        assert fs.cat_file(path).decode() == f"part {i}\n"
    assert out["registered"]["version"] >= 1

    runs = _step_runs(experiment)
    finished = [r for r in runs if r["status"] == "FINISHED"]
    assert {r["step"] for r in finished} == {"work", *(f"work-{i}" for i in range(2, 9)), "fit"}
    workers = {r["worker"] for r in finished}
    assert None not in workers and workers <= set(cluster.workers), workers
    assert len(workers) >= 2, f"all steps ran on one worker: {finished}"
    # each step staged in its worker's own home (fit's input came down from S3 there); no step output was
    # staged in the pipeline's home (registration, in the pipeline's process, stages the model there)
    fit_worker = next(r["worker"] for r in finished if r["step"] == "fit")
    assert list((cluster.homes[fit_worker] / "staging" / "inputs").iterdir())
    assert all((cluster.homes[w] / "staging" / "outputs").is_dir() for w in workers)
    assert not (Path(os.environ["PREFECT_ML_HOME"]) / "staging" / "outputs").exists()


@pytest.mark.timeout(120)
def test_a_local_artifact_root_is_refused_before_anything_runs(dask_run, tmp_path, monkeypatch):
    from prefect_ml.runtime import tracking
    from prefect_ml.runtime.task_runners import TaskRunnerError

    monkeypatch.setenv("PREFECT_ML_ARTIFACT_ROOT", (tmp_path / "root").as_uri())
    work, _ = _components(_code(tmp_path))
    experiment = f"dask-refused-{uuid.uuid4().hex[:6]}"

    @pipeline(experiment=experiment)
    def refused():
        return {"out": work(i=0, seconds=0).outputs.out}

    with pytest.raises(TaskRunnerError, match=r"artifact root file://.* is a local path .*PREFECT_ML_ARTIFACT_ROOT"):
        refused()
    assert not (tmp_path / "root").exists()
    assert tracking.client().get_experiment_by_name(experiment) is None  # not even the MLflow parent run


@pytest.mark.timeout(240)
def test_a_killed_worker_s_step_runs_again_elsewhere(dask_run, tmp_path):
    cluster = dask_run
    from distributed import Client

    work, _ = _components(_code(tmp_path))
    experiment = f"dask-kill-{uuid.uuid4().hex[:6]}"

    @pipeline(experiment=experiment, cache=False)
    def survive():
        return {"parts": [work(i=i, seconds=6).outputs.out for i in range(3)]}

    killed: list[str] = []

    def kill_a_busy_worker() -> None:
        with Client(cluster.address, timeout=30) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                busy = [w for w, keys in client.processing().items() if keys]
                if busy:
                    time.sleep(2)  # the step is inside its command now
                    killed.append(busy[0])
                    _kill(cluster.workers[busy[0]], signal.SIGKILL)
                    return
                time.sleep(0.2)

    import threading

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    out = survive()
    killer.join(timeout=10)
    assert killed, "no worker was seen running a step"
    for i, uri in enumerate(out["parts"]):
        fs, path = storage.filesystem(uri)
        assert fs.cat_file(path).decode() == f"part {i}\n"
    finished = [r for r in _step_runs(experiment) if r["status"] == "FINISHED"]
    assert sorted(r["step"] for r in finished) == ["work", "work-2", "work-3"]
    assert killed[0] not in {r["worker"] for r in finished}  # the killed worker's step finished elsewhere
    # nothing partial: each step's folder on S3 holds only the attempt its marker names (the killed
    # attempt had written "partial" to its private outputs on the dead worker; none of it was uploaded)
    root = storage.ArtifactRoot(os.environ["PREFECT_ML_ARTIFACT_ROOT"])
    for uri in out["parts"]:
        key = uri.split("/steps/")[1].split("/")[0]
        marker = root.read_marker(key)
        assert marker and uri.startswith(f"{root.step_uri(key)}/{marker['attempt']}/"), json.dumps(marker)
        fs, path = storage.filesystem(root.step_uri(key))
        entries = {p.rstrip("/").rsplit("/", 1)[1] for p in fs.ls(path, detail=False, refresh=True)}
        assert entries == {marker["attempt"], root.marker_uri(key).rsplit("/", 1)[1]}, entries
