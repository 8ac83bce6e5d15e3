"""credit-default with trainer=torch (components/train_torch) on process infrastructure, on CPU.

- the pipeline trains the PyTorch MLP, evaluate scores it unchanged, the gate passes, the model is
  registered and loads with `mlflow.pyfunc`; the train step's MLflow run carries the device tags and
  the timing metrics;
- `device=cuda` on a machine without CUDA fails the train step with one clear line;
- the training script under torchrun (2 processes, gloo) takes the same steps as the single process
  of the pipeline run: same final loss and predictions within a tolerance; only rank 0 writes.

The three share one prefect-ml home (module fixture): the pipeline runs once, the `cuda` run reuses its
data_prep step, and the torchrun comparison trains on the pipeline's own train split. One torch thread
per process (OMP_NUM_THREADS=1): the test machine has 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


# --- helpers ------------------------------------------------------------------------------------------

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
