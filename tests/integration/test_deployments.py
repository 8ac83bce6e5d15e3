"""Deployments against a real Prefect server and real workers (prefect.yaml, `prefect-ml init`).

One `prefect server start` on 127.0.0.1 serves the whole session (tests/integration/test_ui.py shares it
through `deploy_stack`); `prefect-ml init` and `prefect --no-prompt deploy --all` run once, from
the repo root, exactly as a user types them. Workers are `prefect worker start` subprocesses;
steps of the CPU deployment run on `process` infrastructure (PREFECT_ML_INFRASTRUCTURE) to keep
the suite fast. The API is read over plain HTTP, never through the in-process Prefect settings
(the session's test harness owns those).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.paths import REPO
from tests.servers import (
    DEFAULT_BASE_IMAGE,
    ServerError,
    ServiceUnavailable,
    docker_available,
    docker_image_available,
    prefect_server,
    skip_or_fail,
)

BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT = 600  # seconds for one credit-default run under a worker on a busy 2-core box
STEP_NAMES = ("data_prep", "train", "evaluate")

pytestmark = pytest.mark.integration


# --- the stack: server, init, deploy, one CPU worker --------------------------------------------


@dataclass
class Stack:
    """A Prefect server with the repo's deployments, and how to reach it."""

    api_url: str
    tmp: Path
    ml_home: Path
    env: dict[str, str]
    init_output: str
    init_args: list[str] = field(default_factory=list)
    workers: dict[str, Worker] = field(default_factory=dict)
    cpu_run_id: str | None = None  # the first `credit-default/cpu` run (tests share it)

    @property
    def ui_url(self) -> str:
        return self.api_url[: -len("/api")]

    def api(self, method: str, path: str, body: dict | None = None):
        """One API call; retried like Prefect's client does when the busy SQLite server says 503."""
        import httpx

        with httpx.Client(base_url=self.api_url, trust_env=False, timeout=30) as client:
            for attempt in range(8):
                try:
                    resp = client.request(method, path, json=body)
                except httpx.TransportError:
                    if attempt == 7:
                        raise
                else:
                    if resp.status_code not in (429, 502, 503) or attempt == 7:
                        break
                time.sleep(min(2 ** attempt, 10))
        resp.raise_for_status()
        return resp.json()

    def cli(self, *args: str, check: bool = True, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(a) for a in args], cwd=REPO, env={**self.env, **(env or {})}, capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(map(str, args))} exited {proc.returncode}:\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def run_deployment(self, name: str, *params: str, job_variables: dict | None = None) -> str:
        """`prefect deployment run NAME --param k=v ... [--job-variable k=JSON ...]`; returns the flow run id."""
        args = [BIN / "prefect", "deployment", "run", name]
        for p in params:
            args += ["--param", p]
        for key, value in (job_variables or {}).items():
            args += ["--job-variable", f"{key}={json.dumps(value)}"]
        out = self.cli(*args).stdout
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        assert match, f"no flow run id in the output of prefect deployment run:\n{out}"
        return match.group(1)

    def wait(self, flow_run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        """Poll until the flow run is in a terminal state; fail with the workers' logs if it never gets there."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.api("GET", f"/flow_runs/{flow_run_id}")
            if run["state"] and run["state"]["type"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- worker {n}:\n{w.tail()}" for n, w in self.workers.items())
                pytest.fail(f"flow run {flow_run_id} still {run['state']['type']} after {timeout:.0f} s\n{logs}")
            time.sleep(2)

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.api("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})

    def artifacts(self, flow_run_id: str) -> dict[str, dict]:
        found = self.api("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {a["key"]: a for a in found}

    def logs(self, flow_run_id: str) -> str:
        found = self.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        return "\n".join(entry["message"] for entry in found)

    def deployment(self, name: str) -> dict:
        flow, _, dep = name.partition("/")
        return self.api("GET", f"/deployments/name/{flow}/{dep}")


class Worker:
    """A `prefect worker start` subprocess with its own log file."""

    def __init__(self, stack: Stack, pool: str, name: str, limit: int | None = None, env: dict | None = None,
                 worker_type: str = "process", cwd: Path | None = None, work_queue: str | None = None):
        self.name = name
        self.cwd = cwd or stack.tmp
        self.log_path = stack.tmp / f"worker-{name}.log"
        home = stack.tmp / f"worker-{name}-home"
        home.mkdir(exist_ok=True)
        args = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name, "--type", worker_type]
        if limit:
            args += ["--limit", str(limit)]
        if work_queue:
            args += ["--work-queue", work_queue]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                # a long client timeout: on a loaded machine a worker's "propose Pending" can time out
                # after the server applied it, and the retry is then aborted and fails the run
                # (PrefectHQ/prefect#10263); Prefect's advice is a longer PREFECT_API_REQUEST_TIMEOUT
                args, cwd=self.cwd, env={**stack.env, "PREFECT_HOME": str(home), "PREFECT_API_REQUEST_TIMEOUT": "300",
                                         **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the worker's process group (it and the flow runs it started), then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def wait_for_workers(stack: Stack, pool: str, names: set[str], timeout: float = 120) -> None:
    """Until every named worker has sent a heartbeat to the pool (so it polls for runs)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {w["name"] for w in stack.api("POST", f"/work_pools/{pool}/workers/filter", {})}
        if names <= seen:
            return
        dead = [n for n in names if n in stack.workers and not stack.workers[n].alive()]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}:\n{stack.workers[n].tail()}" for n in names if n in stack.workers)
            pytest.fail(f"workers {sorted(names - seen)} never polled pool {pool}\n{logs}")
        time.sleep(1)


def init_args() -> list[str]:
    """`prefect-ml init` options for this machine.

    With a Docker engine, the `cpu`/`gpu` blocks run the local base image, so a GPU request fails
    at container start without building the environment image first; without one, no Docker blocks.
    """
    ok, _ = docker_image_available()
    if ok:
        return ["--image", os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE]
    return [] if docker_available()[0] else ["--no-docker"]


_shared: dict[str, Stack] = {}


@pytest.fixture(scope="session")
def deploy_stack(tmp_path_factory) -> Iterator[Stack]:
    """Server + `prefect-ml init` + `prefect --no-prompt deploy --all` + one `ml-cpu` worker.

    Shared by this module and tests/integration/test_ui.py (memoised, so importing the fixture there does not
    start a second server).
    """
    if "stack" in _shared:
        yield _shared["stack"]
        return
    tmp = tmp_path_factory.mktemp("deployments")
    ml_home = tmp / "prefect-ml-home"
    client_home = tmp / "client-home"
    client_home.mkdir()
    try:
        server = prefect_server(tmp / "server-home")
        with server as api_url:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))},
                "PREFECT_API_URL": api_url,
                "PREFECT_HOME": str(client_home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_ML_HOME": str(ml_home),
                "PREFECT_ML_INFRASTRUCTURE": "process",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "1",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
            for key in ("PREFECT_ML_BASE_IMAGE", "PREFECT_ML_BUILD_CA_BUNDLE"):
                if os.environ.get(key):
                    env[key] = os.environ[key]
            stack = Stack(api_url, tmp, ml_home, env, "")
            stack.init_args = init_args()
            stack.init_output = stack.cli(BIN / "prefect-ml", "init", *stack.init_args).stdout
            stack.cli(BIN / "prefect", "--no-prompt", "deploy", "--all")
            stack.workers["cpu-1"] = Worker(stack, "ml-cpu", "cpu-1", limit=1)
            # start the run the tests look at now: it takes a minute, the cheap checks overlap it
            stack.cpu_run_id = stack.run_deployment("credit-default/cpu", "min_auc=0.6")
            _shared["stack"] = stack
            try:
                yield stack
            finally:
                _shared.pop("stack", None)
                for worker in stack.workers.values():
                    worker.stop()
    except (ServiceUnavailable, ServerError) as exc:
        skip_or_fail(f"no Prefect server: {exc}")


@pytest.fixture(scope="session")
def cpu_run(deploy_stack: Stack) -> dict:
    """The finished `credit-default/cpu` run (created by `prefect deployment run`, as a user would)."""
    return deploy_stack.wait(deploy_stack.cpu_run_id)


# --- tests --------------------------------------------------------------------------------------


def test_init_is_idempotent(deploy_stack: Stack):
    first = deploy_stack.init_output
    assert re.search(r"created\s+work pool\s+ml-cpu", first), first
    assert re.search(r"created\s+work pool\s+ml-gpu", first), first
    assert re.search(r"created\s+infrastructure block\s+process", first), first
    assert "prefect --no-prompt deploy --all" in first  # the next commands

    docker_ok = "--no-docker" not in deploy_stack.init_args
    again = deploy_stack.cli(BIN / "prefect-ml", "init", *deploy_stack.init_args).stdout
    assert "nothing to do" in again and "created" not in again, again

    assert re.search(r"created\s+work pool\s+ml-docker \(type docker\)", first), first
    pools = {p["name"]: p for p in deploy_stack.api("POST", "/work_pools/filter", {})}
    assert pools["ml-cpu"]["type"] == pools["ml-gpu"]["type"] == "process"
    assert pools["ml-docker"]["type"] == "docker"  # created with or without an engine here: it is configuration
    blocks = {b["name"]: b["block_type"]["slug"] for b in deploy_stack.api("POST", "/block_documents/filter", {})
              if not b["is_anonymous"]}
    assert blocks.get("process") == "ml-step-process-infrastructure"
    if docker_ok:
        assert blocks.get("cpu") and blocks.get("gpu"), blocks


def test_deployments_exist_with_schedule_and_parameter_schema(deploy_stack: Stack):
    cpu = deploy_stack.deployment("credit-default/cpu")
    gpu = deploy_stack.deployment("credit-default/gpu")
    pools = {cpu["work_pool_name"], gpu["work_pool_name"]}
    assert pools == {"ml-cpu", "ml-gpu"}, pools
    assert gpu["parameters"]["train_infrastructure"] == "gpu"
    # the gpu deployment trains the PyTorch model on the GPU (a missing GPU fails it, never a CPU fallback)
    assert gpu["parameters"]["trainer"] == "torch" and gpu["parameters"]["device"] == "cuda", gpu["parameters"]
    assert "trainer" not in cpu["parameters"]  # credit-default/cpu keeps the scikit-learn default
    # the pull step holds the checkout's path, recorded by the build step at deploy time
    (pull,) = cpu["pull_steps"]
    directory = pull["prefect.deployments.steps.set_working_directory"]["directory"]
    assert Path(directory).resolve() == REPO, directory
    schema = cpu["parameter_openapi_schema"]["properties"]
    assert schema["min_auc"]["type"] == "number" and schema["min_auc"]["maximum"] == 1.0
    assert schema["n_estimators"]["type"] == "integer"

    assert [s["schedule"].get("cron") for s in cpu["schedules"]] == ["0 6 * * *"]
    assert cpu["schedules"][0]["active"]
    # the server's scheduler creates the upcoming runs of the cron schedule
    deadline = time.monotonic() + 120
    while True:
        scheduled = [r for r in deploy_stack.api("POST", "/flow_runs/filter", {"flow_runs": {
            "deployment_id": {"any_": [cpu["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}},
        }}) if r["auto_scheduled"]]
        if scheduled or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert scheduled, "the server created no scheduled runs for credit-default/cpu"
    for run in scheduled:
        assert run["expected_start_time"].endswith(("06:00:00Z", "06:00:00+00:00")), run["expected_start_time"]


def test_parameters_have_descriptions_for_the_run_form(deploy_stack: Stack):
    """The UI's Run form shows each parameter's description (Prefect reads them from the docstring's Args)."""
    schema = deploy_stack.deployment("credit-default/cpu")["parameter_openapi_schema"]["properties"]
    missing = [name for name, prop in schema.items() if not prop.get("description")]
    assert not missing, f"parameters without a description in the deployment schema: {missing}"


def test_invalid_parameter_is_refused(deploy_stack: Stack):
    proc = deploy_stack.cli(BIN / "prefect", "deployment", "run", "credit-default/cpu",
                            "--param", "min_auc=1.5", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "min_auc" in out and "1.5" in out, out


def test_cpu_deployment_run_completes(deploy_stack: Stack, cpu_run: dict):
    stack = deploy_stack
    run_id = cpu_run["id"]
    assert cpu_run["state"]["type"] == "COMPLETED", f"{cpu_run['state']}\n{stack.workers['cpu-1'].tail()}"
    assert cpu_run["parameters"]["min_auc"] == 0.6

    tasks = {t["name"]: t for t in stack.task_runs(run_id)}
    for name in STEP_NAMES:
        assert name in tasks, sorted(tasks)
    gate = [n for n in tasks if n.startswith("gate")]
    register = [n for n in tasks if n.startswith("register")]
    assert gate and register, sorted(tasks)
    for name in (*STEP_NAMES, gate[0], register[0]):
        assert tasks[name]["state"]["type"] == "COMPLETED", (name, tasks[name]["state"])
    # each step's own output is in its task run's logs
    logs = stack.logs(run_id)
    assert "train accuracy" in logs and "running on process" in logs

    artifacts = stack.artifacts(run_id)
    summary = artifacts["pipeline-credit-default"]
    assert summary["type"] == "table"
    rows = json.loads(summary["data"]) if isinstance(summary["data"], str) else summary["data"]
    assert [r["step"] for r in rows] == list(STEP_NAMES)
    for row in rows:
        assert row["cache"] in ("hit", "miss") and row["duration_s"] >= 0
        for uri in re.findall(r"=(\S+?)(?:,|$)", row["outputs"]):
            assert Path(uri.removeprefix("file://")).exists(), uri
    metrics = artifacts["metrics-credit-default"]
    metric_rows = json.loads(metrics["data"]) if isinstance(metrics["data"], str) else metrics["data"]
    auc = [r for r in metric_rows if r["metric"] == "auc"]
    assert auc and 0.6 <= auc[0]["value"] <= 1.0
    assert artifacts["gate-auc"]["type"] == "markdown" and "PASSED" in artifacts["gate-auc"]["data"]
    model_md = artifacts["model-credit-defaults-model"]["data"]
    assert "models:/credit_defaults_model@candidate" in model_md

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{stack.ml_home / 'mlflow.db'}")
    version = client.get_model_version_by_alias("credit_defaults_model", "candidate")
    assert version.tags.get("prefect_ml.flow_run_id") == run_id


def test_gpu_deployment_fails_clearly_without_gpu(deploy_stack: Stack, cpu_run: dict):
    """On this machine (no GPU) the train_torch step on the `gpu` block fails fast, before its image is built,
    with a message that names what is missing."""
    docker_ok, reason = docker_image_available()
    if not docker_ok or "--image" not in deploy_stack.init_args:
        skip_or_fail(f"the gpu deployment needs the Docker block, an engine and the base image: {reason}")
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU: the no-GPU failure cannot be shown here")
    stack = deploy_stack
    from docker.client import from_env

    def gpu_images() -> set[str]:
        engine = from_env()
        try:
            return {i.id for i in engine.images.list(name="prefect-ml/pytorch-gpu")}
        finally:
            engine.close()

    before = gpu_images()
    worker = stack.workers["gpu-1"] = Worker(stack, "ml-gpu", "gpu-1", limit=1)
    try:
        # a new epoch count: the train step must run (a cache hit would need no GPU at all)
        run_id = stack.run_deployment("credit-default/gpu", "min_auc=0.6", "epochs=7")
        run = stack.wait(run_id)
        assert run["state"]["type"] == "FAILED", run["state"]
        tasks = {t["name"]: t for t in stack.task_runs(run_id)}
        assert tasks["train_torch"]["state"]["type"] == "FAILED", tasks["train_torch"]["state"]
        message = (tasks["train_torch"]["state"]["message"] or "") + "\n" + stack.logs(run_id)
        assert "GPU" in message, message[-3000:]
        assert "evaluate" not in tasks or tasks["evaluate"]["state"]["type"] != "COMPLETED"
        assert worker.alive(), f"the worker died:\n{worker.tail()}"
        assert gpu_images() == before  # the check ran before the (large) pytorch-gpu image was built
    finally:
        worker.stop()
        stack.workers.pop("gpu-1", None)


def test_two_workers_share_runs(deploy_stack: Stack, cpu_run: dict):
    """Two workers on ml-cpu (one run at a time each) share three runs; all complete, outputs intact.

    The runs have the same (new) parameters: the first two start together on the two workers and
    compute the same steps at the same time (both publish under one cache key); the third reuses them.
    """
    stack = deploy_stack
    second = stack.workers["cpu-2"] = Worker(stack, "ml-cpu", "cpu-2", limit=1)
    try:
        wait_for_workers(stack, "ml-cpu", {"cpu-1", "cpu-2"})
        cpu = stack.deployment("credit-default/cpu")
        run_ids = []
        for i in range(3):  # new train/evaluate keys; data_prep is a cache hit from the first run
            run = stack.api("POST", f"/deployments/{cpu['id']}/create_flow_run", {
                "parameters": {"min_auc": 0.6, "learning_rate": 0.05, "n_estimators": 20},
                "idempotency_key": f"two-workers-{i}",  # a retried request creates no second run
            })
            run_ids.append(run["id"])
        runs = [stack.wait(rid, timeout=2 * RUN_TIMEOUT) for rid in run_ids]
        for run in runs:
            assert run["state"]["type"] == "COMPLETED", (run["id"], run["state"], second.tail())

        # each run went to exactly one worker, and both workers took part
        texts = {name: stack.workers[name].text() for name in ("cpu-1", "cpu-2")}
        for rid in run_ids:
            # a worker may start to submit a run another worker already took: the server then sends
            # it an abort ("Aborted submission of flow run ..."), and only one worker runs it
            takers = [n for n, t in texts.items() if f"submitting flow run '{rid}'" in t
                      and f"Aborted submission of flow run '{rid}'" not in t]
            assert len(takers) == 1, (rid, takers)
        assert all(any(f"submitting flow run '{rid}'" in t for rid in run_ids) for t in texts.values())

        # outputs intact: every output of every run is published (completion marker) and readable
        keys = set()
        for rid in run_ids:
            summary = stack.artifacts(rid)["pipeline-credit-default"]
            rows = json.loads(summary["data"]) if isinstance(summary["data"], str) else summary["data"]
            for row in rows:
                keys.add(row["cache_key"])
                marker = stack.ml_home / "artifacts" / "steps" / row["cache_key"] / "_COMPLETE.json"
                assert json.loads(marker.read_text())
                for uri in re.findall(r"=(\S+?)(?:,|$)", row["outputs"]):
                    assert Path(uri.removeprefix("file://")).exists(), uri
            metric_rows = stack.artifacts(rid)["metrics-credit-default"]["data"]
            metric_rows = json.loads(metric_rows) if isinstance(metric_rows, str) else metric_rows
            assert any(r["metric"] == "auc" for r in metric_rows)
        assert len(keys) == 3  # data_prep, train, evaluate: the same keys in all three runs

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{stack.ml_home / 'mlflow.db'}")
        versions = client.search_model_versions("name='credit_defaults_model'")
        # the three runs trained the same model (same train key): a run that registers after another
        # points the alias at that version instead of adding a duplicate (two runs registering at the
        # same instant can still both add one: the check is not a lock; see docs/models.md)
        same = [v for v in versions if v.tags.get("prefect_ml.source_cache_key") in keys]
        assert 1 <= len(same) <= len(run_ids)
        assert all(v.tags.get("prefect_ml.flow_run_id") in run_ids for v in same)
        assert len({v.version for v in versions}) == len(versions)
    finally:
        second.stop()
        stack.workers.pop("cpu-2", None)
