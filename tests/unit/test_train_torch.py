"""components/train_torch/train_torch.py without a pipeline: the device choice, torchrun's variables,
and the export of the trained torch MLP into the scikit-learn model that evaluate loads.

The pipeline, MLflow logging and a real torchrun run are in tests/integration/test_train_torch.py.
"""

from __future__ import annotations

import argparse
import importlib.util
from importlib.util import find_spec

import numpy as np
import pandas as pd
import pytest

from tests.conftest import require
from tests.paths import REPO

SCRIPT = REPO / "components" / "train_torch" / "train_torch.py"
DDP_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")


@pytest.fixture(scope="module")
def torch():
    """torch, or a skip (a failure under CI, which installs it: scripts/bootstrap.sh)."""
    require(find_spec("torch") is not None, "torch is not installed (pip install 'torch>=2.3')")
    import torch

    return torch


@pytest.fixture(scope="module")
def tt(torch):
    spec = importlib.util.spec_from_file_location("train_torch_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_cuda_without_cuda_exits_2_with_one_line(tt, torch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = tt.main(["--train_data", "/nonexistent", "--model", "/nonexistent/model", "--device", "cuda"])
    assert code == tt.EXIT_DEVICE == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: --device cuda: CUDA is not available (this torch is a CPU-only build; torch ")
    assert err.rstrip().endswith("or use --device auto / --device cpu")


def test_auto_falls_back_to_cpu_and_cpu_is_cpu(tt, torch):
    assert tt.resolve_device("cpu").type == "cpu"
    assert tt.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    info = tt.device_info(torch.device("cpu"))
    assert info["device"] == "cpu" and info["torch_version"] == torch.__version__
    assert info["cuda_version"] == (torch.version.cuda or "none")


def test_dist_env_reads_torchrun_variables(tt, monkeypatch):
    for var in DDP_VARS:
        monkeypatch.delenv(var, raising=False)
    assert tt.dist_env() == (0, 0, 1)  # a plain process
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert tt.dist_env() == (0, 0, 1)  # torchrun with one process: no process group
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert tt.dist_env() == (3, 1, 4)


def fake_gpus(monkeypatch, torch, count: int) -> None:
    """torch sees `count` CUDA devices (none of this touches a real GPU: torch.device is plain data)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def ddp(monkeypatch, *, rank: int, local_rank: int, world: int, local_world: int, master: str) -> None:
    for var in DDP_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setenv("MASTER_ADDR", master)


def test_host_ranks_use_rank_when_every_rank_is_on_this_host(tt, monkeypatch):
    for var in DDP_VARS:
        monkeypatch.delenv(var, raising=False)
    assert tt.host_ranks() == (0, 1)  # a plain process
    # prefect-ml's process infrastructure, 2 x 2: both instances on this host, LOCAL_RANK repeats
    seen = []
    for rank in range(4):
        ddp(monkeypatch, rank=rank, local_rank=rank % 2, world=4, local_world=2, master="127.0.0.1")
        seen.append(tt.host_ranks())
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    ddp(monkeypatch, rank=3, local_rank=1, world=4, local_world=2, master="localhost")
    assert tt.host_ranks() == (3, 4)
    # a cluster (Azure ML: one instance per node, the master on another host): the node's own ranks
    ddp(monkeypatch, rank=3, local_rank=1, world=4, local_world=2, master="10.0.0.4")
    assert tt.host_ranks() == (1, 2)


def test_distinct_ranks_on_one_host_get_distinct_gpus(tt, torch, monkeypatch):
    """2 x 2 on one host with 4 GPUs: cuda:0..3, not LOCAL_RANK's cuda:0, cuda:1, cuda:0, cuda:1
    (nccl: "Duplicate GPU detected")."""
    fake_gpus(monkeypatch, torch, 4)
    devices = []
    for rank in range(4):
        ddp(monkeypatch, rank=rank, local_rank=rank % 2, world=4, local_world=2, master="127.0.0.1")
        devices.append(tt.resolve_device("cuda", *tt.host_ranks()))
    assert [str(d) for d in devices] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert tt.resolve_device("auto", *tt.host_ranks()) == torch.device("cuda", 3)
    assert tt.resolve_device("auto") == torch.device("cuda", 0)  # one plain process
    assert tt.resolve_device("cpu", 3, 4).type == "cpu"  # gloo: any number of ranks


@pytest.mark.parametrize("requested", ["cuda", "auto"])
def test_more_ranks_on_the_host_than_gpus_exits_2_with_one_line(tt, torch, monkeypatch, capsys, requested):
    """1 x 2 on a one-GPU host (or 2 x 1 through loopback): nccl would put both ranks on cuda:0."""
    fake_gpus(monkeypatch, torch, 1)
    with pytest.raises(tt.DeviceUnavailable) as err:
        tt.resolve_device(requested, 1, 2)
    msg = str(err.value)
    assert msg.startswith(f"--device {requested}: 2 ranks run on this host but torch sees 1 GPU(s); nccl needs "
                          "one GPU per rank")
    assert "run at most 1 process(es) on this host" in msg and msg.endswith("or use --device cpu (gloo)")

    # through main: before any data is read or a process group is joined, every rank says it and exits 2
    ddp(monkeypatch, rank=1, local_rank=0, world=2, local_world=1, master="127.0.0.1")
    code = tt.main(["--train_data", "/nonexistent", "--model", "/nonexistent/model", "--device", requested])
    assert code == tt.EXIT_DEVICE == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and err_text.startswith(f"error: --device {requested}: 2 ranks run on this host")


def test_cuda_build_that_sees_no_gpu_says_so(tt, torch, monkeypatch, capsys):
    """A CUDA build of torch on a host without a driver (or with CUDA_VISIBLE_DEVICES hiding the GPUs)."""
    for var in DDP_VARS:
        monkeypatch.delenv(var, raising=False)
    fake_gpus(monkeypatch, torch, 0)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(tt.DeviceUnavailable) as err:
        tt.resolve_device("cuda")
    assert str(err.value).startswith(
        "--device cuda: CUDA is not available (torch is built for CUDA 12.8 but sees no GPU (no NVIDIA driver, "
        "or CUDA_VISIBLE_DEVICES hides it); torch ")
    assert tt.resolve_device("auto").type == "cpu"  # auto falls back quietly
    assert tt.main(["--train_data", "/nonexistent", "--model", "/nonexistent/model", "--device", "cuda"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and "built for CUDA 12.8 but sees no GPU" in err_text


def test_arguments_are_checked(tt):
    with pytest.raises(SystemExit):
        tt.parse_args(["--train_data", "d", "--model", "m", "--epochs", "0"])
    with pytest.raises(SystemExit):
        tt.parse_args(["--train_data", "d", "--model", "m", "--device", "tpu"])


def test_sklearn_export_computes_the_torch_function_and_loads_with_skops(tt, torch):
    """The saved Pipeline(imputer, scaler, MLPClassifier) gives the torch network's probabilities."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(300, 6)) * [1, 10, 100, 1, 5, 0.1] + 3, columns=[f"f{i}" for i in range(6)])
    X.iloc[::17, 2] = np.nan  # a missing value is imputed with the train mean, as in training
    y = (X["f0"] + rng.normal(size=300) > 3).astype("int64").to_numpy()
    args = argparse.Namespace(hidden=8, layers=3, learning_rate=0.01, weight_decay=0.0, seed=0, epochs=5)
    pre = tt.fit_preprocessing(X)
    Xs = pre.transform(X)
    torch.manual_seed(1)
    net = tt.build_mlp(Xs.shape[1], args.hidden, args.layers)
    model = tt.to_sklearn(pre, net, Xs, y, args, [0.7, 0.6, 0.5, 0.45, 0.4])

    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(Xs.astype(np.float32))).squeeze(1)).numpy()
    proba = model.predict_proba(X)
    assert proba.shape == (300, 2)
    np.testing.assert_allclose(proba[:, 1], expected, atol=1e-5)
    assert model.named_steps["mlp"].loss_ == pytest.approx(0.4)

    import skops.io

    # what mlflow.sklearn saves and evaluate loads: nothing beyond the types train_torch trusts
    loaded = skops.io.loads(skops.io.dumps(model), trusted=["numpy.dtype"])
    np.testing.assert_allclose(loaded.predict_proba(X), proba)


def test_gpu_check_require_gpu_on_a_machine_without_one_exits_3_before_running_anything(torch, tmp_path):
    """scripts/gpu-check.sh --require-gpu: no GPU here, so it says so and exits 3 (no server, no
    pipeline run) and leaves no temporary home behind."""
    import os
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --require-gpu would run the pipelines")
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--require-gpu"], check=False,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    why = "torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA device"
    assert f"gpu-check: no GPU ({why}) and --require-gpu given: nothing run" in proc.stdout
    assert "pipeline with train_torch" not in proc.stdout and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # its temporary PREFECT_ML_HOME was removed
