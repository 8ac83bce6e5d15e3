"""credit-default with trainer=torch (components/train_torch) on process infrastructure, on CPU.

- the pipeline trains the PyTorch MLP, evaluate scores it unchanged, the gate passes, the model is
  registered and loads with `mlflow.pyfunc`; the train step's MLflow run carries the device tags and
  the timing metrics;
- `device=cuda` on a machine without CUDA fails the train step with one clear line;
- the training script under torchrun (2 processes, gloo) takes the same steps as the single process
  of the pipeline run: same final loss and predictions within a tolerance; only rank 0 writes;
- the train step's `train_torch:` lines (device, epochs/s, training seconds) reach its task run's
  log in the Prefect API;
- scripts/gpu-check.sh on this machine (the CPU path without a GPU), with a tiny epoch count: it
  prints the device, the timings and the registered model.

The three share one prefect-ml home (module fixture): the pipeline runs once, the `cuda` run reuses its
data_prep step, and the torchrun comparison trains on the pipeline's own train split. One torch thread
per process (OMP_NUM_THREADS=1): the test machine has 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import require, task_runs
from tests.paths import REPO

sys.path.insert(0, str(REPO / "flows"))
from credit_default import credit_default

SCRIPT = REPO / "components" / "train_torch" / "train_torch.py"
GPU_CHECK = REPO / "scripts" / "gpu-check.sh"
EPOCHS = 40
MODEL = "credit_torch"
TARGET = "default payment next month"
CUDA_LINE = "--device cuda: CUDA is not available"


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def torch_home(prefect_api, tmp_path_factory):
    """One fresh prefect-ml home for this module; one torch thread per step process."""
    require(find_spec("torch") is not None, "torch is not installed in this interpreter (pip install 'torch>=2.3')")
    home = tmp_path_factory.mktemp("train-torch") / "prefect-ml-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_ML_HOME", str(home))
        for var in ("PREFECT_ML_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI", "PREFECT_ML_INFRASTRUCTURE", "MLFLOW_RUN_ID"):
            mp.delenv(var, raising=False)
        mp.setenv("OMP_NUM_THREADS", "1")
        yield home


@pytest.fixture(scope="module")
def torch_run(torch_home):
    """credit-default with trainer=torch on the CPU, run once: (flow state, its result)."""
    state = credit_default(trainer="torch", epochs=EPOCHS, device="cpu", min_auc=0.6,
                           registered_model_name=MODEL, return_state=True)
    assert state.is_completed(), state.message
    return state, state.result()


def step_run(state, step: str):
    from prefect_ml.runtime import tracking

    runs = tracking.client().search_runs(
        [tracking.experiment_id("credit-default")],
        filter_string=f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'"
                      f" and tags.`prefect_ml.step` = '{step}'",
    )
    assert len(runs) == 1, f"expected one MLflow run of step {step}, found {len(runs)}"
    return runs[0]


def test_torch_trainer_is_scored_by_evaluate_and_registered(torch_run):
    import mlflow

    from prefect_ml.runtime import tracking

    state, out = torch_run
    metrics = json.loads(local(out["metrics"]).read_text())
    assert set(metrics) == {"auc", "accuracy", "precision", "recall", "f1"}
    assert metrics["auc"] > 0.6

    train = step_run(state, "train_torch")
    tags, logged = train.data.tags, train.data.metrics
    assert tags["train_torch.device"] == "cpu"
    if "+cpu" in version("torch"):  # the test venv's CPU build (a CUDA build reports its CUDA version)
        assert tags["train_torch.cuda_version"] == "none"
    assert tags["train_torch.torch_version"] == version("torch")  # the step ran this interpreter's torch
    assert tags["train_torch.device_name"] and tags["train_torch.world_size"] == "1"
    assert logged["train_seconds"] > 0 and logged["epochs_per_second"] > 0 and logged["train_loss"] > 0
    assert train.data.params["epochs"] == str(EPOCHS)  # the step's inputs, recorded by prefect-ml
    assert step_run(state, "evaluate").data.metrics["auc"] == pytest.approx(metrics["auc"])

    reg = out["registered"]
    assert reg and reg["version"] == 1
    mlflow.set_tracking_uri(tracking.tracking_uri())
    flavors = mlflow.models.get_model_info(f"models:/{MODEL}@candidate").flavors
    assert {"sklearn", "python_function"} <= set(flavors)  # the sklearn flavour evaluate loads
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@candidate")
    test = pd.read_csv(held_out_split(out) / "data.csv")
    scores = model.predict(test.drop(columns=[TARGET]).astype("float64"))
    assert len(scores) == len(test)


def test_train_torch_figures_reach_the_task_runs_log(torch_run):
    """What train_torch prints goes to the step's task-run log in the Prefect API (the UI's log tab):
    the device, epochs/s and the training seconds, the same figures as on its MLflow run."""
    state, _ = torch_run
    train = step_run(state, "train_torch")
    messages = task_run_log(state, "train_torch", ["train_torch summary: ", "train_torch: logged "])
    text = "\n".join(messages)
    first = next((m for m in messages if m.startswith("train_torch: ") and " rows x " in m), None)
    assert first and re.search(r"; device cpu \(.+\); torch .+, CUDA .+; world size 1$", first), text[-3000:]
    timing = next((m for m in messages if re.match(rf"train_torch: {EPOCHS} epochs in [\d.]+ s \([\d.]+ epochs/s\) "
                                                  r"on cpu; final train loss [\d.]+$", m)), None)
    assert timing, text[-3000:]
    summary = json.loads(next(m for m in messages if m.startswith("train_torch summary: "))
                         .removeprefix("train_torch summary: "))
    assert summary["device"] == "cpu" and summary["epochs"] == EPOCHS and summary["world_size"] == "1"
    assert summary["device_name"] == train.data.tags["train_torch.device_name"]
    # the log's figures are the MLflow run's (the same numbers, rounded the same way)
    assert summary["train_seconds"] > 0 and summary["epochs_per_second"] > 0
    assert summary["train_seconds"] == pytest.approx(train.data.metrics["train_seconds"])
    assert summary["epochs_per_second"] == pytest.approx(train.data.metrics["epochs_per_second"])
    assert any(m.startswith("train_torch: logged ") and m.endswith(f"to MLflow run {train.info.run_id}")
               for m in messages), text[-3000:]


def test_device_cuda_without_cuda_fails_the_step_with_one_line(torch_run):
    state = credit_default(trainer="torch", epochs=EPOCHS, device="cuda", min_auc=0.6,
                           registered_model_name=MODEL, return_state=True)
    if state.is_completed():  # (not importing torch here to ask: the step's answer is the one that counts)
        pytest.skip("this machine has CUDA: `--device cuda` succeeds here")
    assert state.is_failed()
    with pytest.raises(Exception) as err:
        state.result()
    message = str(err.value)
    assert "step 'train_torch' failed: exit code 2" in message
    line = next(ln for ln in message.splitlines() if CUDA_LINE in ln)
    assert line.startswith("error: --device cuda: CUDA is not available (")  # then: a CPU-only build, or no GPU seen
    assert "--device auto / --device cpu" in line
    assert message.count("Traceback") == 0  # one line, no stack trace
    runs = {r.name: r for r in task_runs(state, names=["data_prep", "train_torch"])}
    assert runs["data_prep"].state.name == "Cached"  # same split as the first run
    assert runs["train_torch"].state.is_failed()
    assert "evaluate" not in runs or not runs["evaluate"].state.is_completed()


def test_torchrun_two_gloo_processes_match_the_single_process_step(torch_run, tmp_path):
    """The step trained in one process (full batch); torchrun's 2 ranks each see half the rows and DDP
    averages their gradients: the same steps, so the same model up to float32 rounding."""
    import mlflow.sklearn

    _, out = torch_run
    train_dir = train_split(out)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    port = _free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), str(SCRIPT), "--train_data", str(train_dir), "--epochs", str(EPOCHS),
         "--device", "cpu", "--model", str(tmp_path / "ddp_model")],
        check=False, cwd=SCRIPT.parent, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [ln for ln in proc.stdout.splitlines() if ln.startswith("train_torch summary: ")]
    assert len(summaries) == 1  # rank 0 alone reports (and saves)
    ddp = json.loads(summaries[0].removeprefix("train_torch summary: "))
    assert ddp["world_size"] == "2" and ddp["backend"] == "gloo" and ddp["rows"] > 0

    single = mlflow.sklearn.load_model(str(local(out["model"])))
    double = mlflow.sklearn.load_model(str(tmp_path / "ddp_model"))
    assert double.named_steps["mlp"].loss_ == pytest.approx(single.named_steps["mlp"].loss_, rel=1e-3)
    test = pd.read_csv(held_out_split(out) / "data.csv")
    X, y = test.drop(columns=[TARGET]).astype("float64"), test[TARGET]
    p1, p2 = single.predict_proba(X)[:, 1], double.predict_proba(X)[:, 1]
    assert abs(p1 - p2).max() < 1e-3
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, p2) == pytest.approx(roc_auc_score(y, p1), abs=1e-3)


def test_gpu_check_script_runs_the_cpu_path_and_prints_device_timings_and_model(torch_home, tmp_path):
    """scripts/gpu-check.sh end to end with 3 epochs on a 2,000-row sample, against the session's
    Prefect API (no temporary server of its own). Without a GPU: the CPU path only; with one: both."""
    from prefect.settings import get_current_settings

    from prefect_ml.samples import credit_default_sample

    data = credit_default_sample(tmp_path / "credit.csv", rows=2000)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_ML_HOME")}
    env.update(PYTHON=sys.executable, TMPDIR=str(tmp_path), PREFECT_API_URL=str(get_current_settings().api.url))
    started = time.monotonic()
    proc = subprocess.run(["bash", str(GPU_CHECK), "--data", str(data), "--epochs", "3", "--min-auc", "0"],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    lines = proc.stdout.splitlines()
    gpu = "gpu-check: no GPU: CPU path only" not in proc.stdout
    assert f"gpu-check: data {data}; 3 epochs (full batch)" in proc.stdout
    i = next(n for n, ln in enumerate(lines) if ln.startswith("gpu-check: results (3 epochs, process infrastructure"))
    head, *rows = lines[i + 1:i + 2 + (2 if gpu else 1)]
    assert head.split() == ["device", "device", "name", "torch", "CUDA", "train", "s", "epochs/s", "AUC",
                            "pipeline", "s", "registered", "model"]
    cpu_row = rows[-1]
    assert cpu_row.startswith("cpu ") and f" {version('torch')} " in cpu_row, out[-4000:]
    numbers = re.search(r" (\d+\.\d{2})  +(\d+\.\d)  +(\d\.\d{4})  +(\d+\.\d)  +credit_gpu_check version "
                        r"(\d) \(models:/credit_gpu_check@candidate\)$", cpu_row)
    assert numbers, cpu_row
    train_s, eps, auc, pipeline_s, model_version = numbers.groups()
    assert float(train_s) > 0 and float(eps) > 0 and 0 < float(auc) <= 1 and float(pipeline_s) > float(train_s)
    assert model_version == ("2" if gpu else "1")
    (result_json,) = tmp_path.glob("gpu-check.*/gpu-check.json")
    results = json.loads(result_json.read_text())
    assert [r["device"] for r in results] == (["cuda:0", "cpu"] if gpu else ["cpu"])
    print(f"gpu-check.sh took {time.monotonic() - started:.1f} s")


# --- helpers ------------------------------------------------------------------------------------------

def task_run_log(state, step: str, wanted: list[str], within: float = 30.0) -> list[str]:
    """The messages of step `step`'s task run in the Prefect API, once a message starts with each of
    `wanted` (logs reach the API through Prefect's background log worker) or after `within` s."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    run = next(r for r in task_runs(state, names=[step]) if r.name == step)
    deadline = time.monotonic() + within
    while True:
        with get_client(sync_client=True) as c:
            logs = c.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[run.id])))
        messages = [log.message for log in logs]
        if all(any(m.startswith(w) for m in messages) for w in wanted) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def _inputs(out) -> dict:
    """The evaluate step's resolved inputs (its completion marker)."""
    return json.loads((local(out["metrics"]).parent.parent / "_COMPLETE.json").read_text())["inputs"]


def held_out_split(out) -> Path:
    return local(_inputs(out)["test_data"])


def train_split(out) -> Path:
    """data_prep's train_data: the model's input (the train step's marker sits beside its model)."""
    marker = json.loads((local(out["model"]).parent.parent / "_COMPLETE.json").read_text())
    return local(marker["inputs"]["train_data"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
