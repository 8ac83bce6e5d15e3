"""components/train_torch/train_torch.py without a pipeline: the device choice, torchrun's variables,
and the export of the trained torch MLP into the scikit-learn model that evaluate loads.

The pipeline, MLflow logging and a real torchrun run are in tests/integration/test_train_torch.py.
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import pandas as pd
import pytest

from tests.paths import REPO

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'torch>=2.3')")

SCRIPT = REPO / "components" / "train_torch" / "train_torch.py"


@pytest.fixture(scope="module")
def tt():
    spec = importlib.util.spec_from_file_location("train_torch_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_cuda_without_cuda_exits_2_with_one_line(tt, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = tt.main(["--train_data", "/nonexistent", "--model", "/nonexistent/model", "--device", "cuda"])
    assert code == tt.EXIT_DEVICE == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: --device cuda: CUDA is not available (this torch is a CPU-only build; torch ")
    assert err.rstrip().endswith("or use --device auto / --device cpu")


def test_auto_falls_back_to_cpu_and_cpu_is_cpu(tt):
    assert tt.resolve_device("cpu").type == "cpu"
    assert tt.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    info = tt.device_info(torch.device("cpu"))
    assert info["device"] == "cpu" and info["torch_version"] == torch.__version__
    assert info["cuda_version"] == (torch.version.cuda or "none")


def test_dist_env_reads_torchrun_variables(tt, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert tt.dist_env() == (0, 0, 1)  # a plain process
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert tt.dist_env() == (0, 0, 1)  # torchrun with one process: no process group
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert tt.dist_env() == (3, 1, 4)


def test_arguments_are_checked(tt):
    with pytest.raises(SystemExit):
        tt.parse_args(["--train_data", "d", "--model", "m", "--epochs", "0"])
    with pytest.raises(SystemExit):
        tt.parse_args(["--train_data", "d", "--model", "m", "--device", "tpu"])


def test_sklearn_export_computes_the_torch_function_and_loads_with_skops(tt):
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
