"""Train a PyTorch MLP on the credit-default train folder; save it as a scikit-learn MLflow model.

    python train_torch.py --train_data DIR --model OUT [--epochs 200] [--device auto|cuda|cpu] ...

What it does: reads `<train_data>/data.csv` (the data_prep output), fills missing values with the
column means and standardises the features (statistics over the whole train split), trains an MLP
(`--layers` ReLU layers of `--hidden` units, one logit out) with BCE loss and Adam, seeded.

The model it saves is a scikit-learn `Pipeline(SimpleImputer, StandardScaler, MLPClassifier)`
holding the trained weights (`mlflow.sklearn`, skops format). Why not a torch model: the evaluate
component loads models with `mlflow.sklearn.load_model(...).predict_proba` and runs in the
`sklearn-cpu` environment, which has no torch; a sklearn MLP with the same weights computes the same
function (ReLU layers, logistic output) in numpy, so evaluate, batch scoring and
`mlflow.pyfunc.load_model` work unchanged, anywhere, with no GPU and no torch.

Device: `--device auto` uses CUDA when torch sees a GPU, else the CPU; `--device cuda` without CUDA
exits with status 2 and one line saying why.

Distributed (DistributedDataParallel): under `torchrun` (WORLD_SIZE > 1) every process joins a
process group (nccl on CUDA, gloo on CPU), trains on rows r, r+W, ... of the train split, and DDP
averages the gradients. GPU: each rank takes the GPU of its index among the ranks on its host (RANK
when MASTER_ADDR is a loopback address, i.e. every rank runs on this host, as prefect-ml's process
infrastructure launches all M instances here; else LOCAL_RANK); more ranks on the host than GPUs
exits with status 2 and one line (nccl cannot share a GPU between ranks). The loss is scaled so
that a full-batch step is the same step as one process on all rows. Only rank 0 saves the model,
prints the summary and logs to MLflow. WORLD_SIZE unset or 1: one plain process.

MLflow: prefect-ml gives the step `MLFLOW_TRACKING_URI` and its run's id in `MLFLOW_RUN_ID`; rank 0
adds tags `train_torch.*` (device, device name, torch and CUDA versions, world size) and metrics
`train_seconds`, `epochs_per_second`, `train_loss` (with its curve). Without `MLFLOW_RUN_ID` (a
direct run) nothing is logged. The same figures go to stdout (the task run's log).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

TARGET = "default payment next month"
EXIT_DEVICE = 2  # `--device cuda` without CUDA


class DeviceUnavailable(RuntimeError):
    """The requested device cannot be used here (the message is the one line a user sees)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a PyTorch MLP on the credit-default train split.")
    p.add_argument("--train_data", required=True, help="folder with data.csv (data_prep's train_data)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--learning_rate", type=float, default=0.01, help="Adam learning rate")
    p.add_argument("--hidden", type=int, default=64, help="units per hidden layer")
    p.add_argument("--layers", type=int, default=2, help="hidden layers")
    p.add_argument("--batch_size", type=int, default=0, help="rows per step and process; 0 = full batch")
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--model", required=True, help="output folder for the MLflow model")
    args = p.parse_args(argv)
    for name in ("epochs", "hidden", "layers"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


# --- device and process group -------------------------------------------------------------------------

def resolve_device(requested: str, host_index: int = 0, ranks_on_host: int = 1):
    """torch.device for `--device`: auto = CUDA when available; cuda without CUDA raises DeviceUnavailable.

    `host_index` / `ranks_on_host`: this process's index among the ranks on its host and their number
    (`host_ranks()`). With CUDA each rank gets its own GPU, `cuda:<host_index>`; more ranks on the host
    than GPUs raises DeviceUnavailable (nccl refuses two ranks on one GPU: "Duplicate GPU detected").
    """
    import torch

    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if ranks_on_host > count:
            raise DeviceUnavailable(
                f"--device {requested}: {ranks_on_host} ranks run on this host but torch sees {count} GPU(s); nccl "
                "needs one GPU per rank: run at most "
                f"{count} process(es) on this host (fewer process_count_per_instance / instance_count), "
                "or use --device cpu (gloo)")
        return torch.device("cuda", host_index)
    if requested == "cuda":
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else f"torch is built for CUDA {torch.version.cuda} but sees no GPU (no NVIDIA driver, "
                    "or CUDA_VISIBLE_DEVICES hides it)")
        raise DeviceUnavailable(
            f"--device cuda: CUDA is not available ({why}; torch {torch.__version__}); run the step on a "
            "GPU host with a CUDA build of torch, or use --device auto / --device cpu")
    return torch.device("cpu")


def device_info(device) -> dict[str, str]:
    """Tags describing where training ran."""
    import platform

    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_model() or platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return {
        "device": str(device),
        "device_name": name,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "none",
    }


def _cpu_model() -> str:
    """The CPU's model name on Linux ('' elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def dist_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world


LOOPBACK_NAMES = ("localhost", "::1", "ip6-localhost")


def host_ranks() -> tuple[int, int]:
    """(this process's index among the ranks on its host, the number of ranks on its host).

    torchrun's LOCAL_RANK / LOCAL_WORLD_SIZE count the ranks of one launcher instance. That is the
    host's count when each instance has a host to itself (Azure ML: one instance per node), but
    prefect-ml's process infrastructure starts all M instances on one host, where LOCAL_RANK repeats
    (0, 1, 0, 1 for 2 x 2) and two ranks would pick the same GPU. A rendezvous on a loopback
    MASTER_ADDR means every rank runs on this host (prefect-ml always uses 127.0.0.1): then the index
    is RANK and the count WORLD_SIZE. (0, 1) for a plain process.
    """
    rank, local_rank, world = dist_env()
    if world <= 1:
        return 0, 1
    master = os.environ.get("MASTER_ADDR", "").strip().lower()
    if master.startswith("127.") or master in LOOPBACK_NAMES:
        return rank, world
    return local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or local_rank + 1


# --- data and model ------------------------------------------------------------------------------------

def load_train(train_dir: str):
    """(features as a float64 DataFrame, labels as an int array) from `<train_dir>/data.csv`."""
    import pandas as pd

    path = Path(train_dir) / "data.csv"
    if not path.is_file():
        raise SystemExit(f"error: no training data at {path} (expected data_prep's train_data folder)")
    df = pd.read_csv(path)
    if TARGET not in df.columns:
        raise SystemExit(f"error: {path} has no target column {TARGET!r}")
    y = df[TARGET].to_numpy().astype("int64")
    if len(set(y.tolist())) != 2:
        raise SystemExit(f"error: {path}: the target {TARGET!r} must have two classes (0 and 1), "
                         f"found {sorted(set(y.tolist()))[:10]}")
    return df.drop(columns=[TARGET]).astype("float64"), y


def fit_preprocessing(X):
    """Mean imputation + standardisation, fitted on the whole train split (every rank gets the same)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler()).fit(X)


def build_mlp(n_in: int, hidden: int, layers: int):
    from torch import nn

    mods: list = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods)


def train(Xs, y, args, device, rank: int = 0, world: int = 1) -> tuple[object, list[float], float]:
    """Train on this rank's shard; return (the plain MLP, global train loss per epoch, seconds).

    Full batch: the loss is sum(BCE over the shard) * world / N, so DDP's gradient average equals the
    gradient of the mean BCE over all N rows: W processes take the same steps as one.
    Mini-batches (`--batch_size`): every rank takes the same number of steps per epoch (DDP needs it).
    """
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(args.seed)  # same initial weights in every process (DDP also broadcasts rank 0's)
    net = build_mlp(Xs.shape[1], args.hidden, args.layers).to(device)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    n_total = len(y)
    shard = np.arange(rank, n_total, world)
    Xt = torch.from_numpy(np.ascontiguousarray(Xs[shard], dtype=np.float32)).to(device)
    yt = torch.from_numpy(y[shard].astype(np.float32)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    if args.batch_size > 0:
        per_rank = -(-n_total // world)  # ceil(N / W): the largest shard
        steps = -(-per_rank // args.batch_size)
        gen = torch.Generator().manual_seed(args.seed + rank)
    else:
        steps, gen = 1, None
    losses = torch.zeros(args.epochs, device=device)  # read once at the end: no sync per epoch
    _sync(device)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        if gen is None:
            batches = [None]
        else:
            batches = torch.tensor_split(torch.randperm(len(yt), generator=gen).to(device), steps)
        for idx in batches:
            xb, yb = (Xt, yt) if idx is None else (Xt[idx], yt[idx])
            scale = world / n_total if idx is None else 1.0 / max(1, len(yb))
            opt.zero_grad(set_to_none=True)
            loss = bce(model(xb).squeeze(1), yb) * scale
            loss.backward()
            opt.step()
            losses[epoch] += loss.detach() / steps
    _sync(device)
    seconds = time.perf_counter() - start
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(losses)  # full batch: sum over ranks of (shard sum * W / N), so / W = global mean
        losses /= world
    return net, losses.cpu().tolist(), seconds


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def to_sklearn(preprocessing, net, Xs, y, args, losses: list[float]):
    """A fitted sklearn Pipeline(imputer, scaler, MLPClassifier) carrying the trained torch weights.

    The MLPClassifier is initialised by a one-iteration fit on a few rows of each class (so every
    fitted attribute sklearn's predict needs exists), then its `coefs_`/`intercepts_` are replaced by
    the torch layers' (float64, transposed: torch stores (out, in)).
    """
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from torch import nn

    few = np.concatenate([np.flatnonzero(y == c)[:8] for c in np.unique(y)])
    clf = MLPClassifier(hidden_layer_sizes=(args.hidden,) * args.layers, activation="relu", max_iter=1,
                        learning_rate_init=args.learning_rate, alpha=args.weight_decay, random_state=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xs[few], y[few])
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    clf.coefs_ = [m.weight.detach().cpu().double().numpy().T.copy() for m in linears]
    clf.intercepts_ = [m.bias.detach().cpu().double().numpy().copy() for m in linears]
    clf.n_iter_ = args.epochs
    clf.loss_ = float(losses[-1])
    clf.loss_curve_ = [float(v) for v in losses]
    clf.best_loss_ = float(min(losses))
    for attr in ("_optimizer", "_best_coefs", "_best_intercepts"):  # optimizer state of the 1-step fit
        if hasattr(clf, attr):
            delattr(clf, attr)
    steps = list(preprocessing.steps)  # already fitted: a Pipeline of fitted steps needs no refit
    return Pipeline([("impute", steps[0][1]), ("scale", steps[1][1]), ("mlp", clf)])


def save_model(sk_model, X, path: str) -> None:
    import logging

    import mlflow
    import mlflow.sklearn
    import sklearn
    from mlflow.models import infer_signature

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    sample = X.head(50)
    try:
        import skops

        reqs = [f"skops=={skops.__version__}"]
    except ImportError:  # pragma: no cover - mlflow's skops format needs it; the environment lists it
        reqs = []
    mlflow.sklearn.save_model(
        sk_model, path,
        signature=infer_signature(sample, sk_model.predict_proba(sample)[:, 1]),
        # explicit requirements: inference would take seconds; the model needs no torch at all
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"mlflow=={mlflow.__version__}", *reqs],
        serialization_format="skops",
        skops_trusted_types=["numpy.dtype"],  # the imputer keeps its fit dtype; a dtype is inert data
    )


def log_to_mlflow(tags: dict[str, str], metrics: dict[str, float], curve: list[float]) -> None:
    """Tags and metrics on the step's MLflow run (MLFLOW_RUN_ID); a failure is a warning, not a failed step."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        print("train_torch: MLFLOW_RUN_ID not set (not run by prefect-ml): nothing logged to MLflow")
        return
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    every = max(1, len(curve) // 200)  # the loss curve, at most ~200 points
    points = [Metric("train_loss", float(v), now, i) for i, v in enumerate(curve)
              if i % every == 0 or i == len(curve) - 1]
    batch_metrics = [Metric(k, float(v), now, 0) for k, v in metrics.items() if k != "train_loss"] + points
    batch_tags = [RunTag(f"train_torch.{k}", str(v)) for k, v in tags.items()]
    error: Exception | None = None
    for attempt in range(3):  # the pipeline writes to the same store (a SQLite file may be locked a moment)
        try:
            client = MlflowClient()
            client.log_batch(run_id, metrics=batch_metrics[:1000], tags=batch_tags)
            print(f"train_torch: logged {len(batch_tags)} tags and {len(batch_metrics)} metric values "
                  f"to MLflow run {run_id}")
            return
        except Exception as exc:  # any tracking failure is reported: training succeeded
            error = exc
            time.sleep(1 + attempt)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    print(f"train_torch: warning: could not log to MLflow run {run_id}: {type(error).__name__}: {first}")


# --- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, _, world = dist_env()
    try:
        device = resolve_device(args.device, *host_ranks())
    except DeviceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_DEVICE
    import torch

    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    else:
        backend = "none"
    failed = False
    try:
        X, y = load_train(args.train_data)
        preprocessing = fit_preprocessing(X)
        Xs = preprocessing.transform(X)
        info = {**device_info(device), "world_size": str(world), "backend": backend}
        if rank == 0:
            print(f"train_torch: {len(y)} rows x {X.shape[1]} features; device {info['device']} "
                  f"({info['device_name']}); torch {info['torch_version']}, CUDA {info['cuda_version']}; "
                  f"world size {world}" + (f" ({backend})" if world > 1 else ""), flush=True)
            print(f"train_torch: MLP {args.layers}x{args.hidden} ReLU, Adam lr={args.learning_rate}, "
                  f"{args.epochs} epochs, batch={'full' if args.batch_size <= 0 else args.batch_size}, "
                  f"seed={args.seed}", flush=True)
        net, curve, seconds = train(Xs, y, args, device, rank, world)
        if rank != 0:
            return 0
        eps = args.epochs / seconds if seconds > 0 else float("inf")
        metrics = {"train_seconds": round(seconds, 4), "epochs_per_second": round(eps, 2), "train_loss": curve[-1]}
        print(f"train_torch: {args.epochs} epochs in {seconds:.2f} s ({eps:.1f} epochs/s) on {info['device']}; "
              f"final train loss {curve[-1]:.4f}", flush=True)
        sk_model = to_sklearn(preprocessing, net, Xs, y, args, curve)
        save_model(sk_model, X, args.model)
        print(f"train_torch: saved MLflow model (scikit-learn flavour, no torch needed to load) to {args.model}")
        print("train_torch summary: " + json.dumps({**info, **metrics, "epochs": args.epochs, "rows": len(y)}),
              flush=True)
        log_to_mlflow(info, metrics, curve)
        return 0
    except BaseException:
        failed = True
        raise
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                if failed:  # no rank waits: the launcher stops the others
                    dist.destroy_process_group()
                else:
                    # every rank waits for rank 0 to finish saving and logging, then leaves at once: gloo's
                    # teardown (destroy_process_group, or its threads at interpreter exit) can abort a rank
                    # with "terminate called without an active exception" although all its work is done
                    # (seen in ~1 of 4 2x2 runs without the barrier; once in 4 CI runs with it and a
                    # destroy). Everything is written by now (the model files, a synchronous MLflow batch).
                    dist.barrier()
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
