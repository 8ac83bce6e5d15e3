#!/usr/bin/env bash
# gpu-check: does this machine train credit-default's PyTorch model on its GPU, and how fast?
#
#   bash scripts/gpu-check.sh [--data CSV] [--rows N] [--epochs N] [--min-auc X] [--require-gpu]
#
# Runs the credit-default pipeline with trainer=torch on process infrastructure (no Docker), twice:
#   data_prep -> train_torch --device cuda -> evaluate -> gate -> register    (when torch sees a GPU)
#   data_prep -> train_torch --device cpu  -> evaluate -> gate -> register    (the CPU comparison)
# and prints, per run: device, its name, torch and CUDA versions, training seconds, epochs/s, test AUC
# and the registered model name/version; then the GPU's speed-up over the CPU.
#
# No GPU (torch sees no CUDA device): prints "gpu-check: no GPU: CPU path only (...)", runs the CPU
# path and exits 0; with --require-gpu it exits 3 at once instead (for a machine that must have one).
# Exit 2: the interpreter lacks a package (nothing is downloaded, ever: see docs/gpu.md);
# exit 1: a pipeline run failed.
#
# Offline by design: it installs nothing. The interpreter ($PYTHON, else .venv/bin/python, else python3)
# must import torch (a CUDA build for the GPU path), prefect, mlflow, scikit-learn, pandas, matplotlib and
# skops; prefect-ml itself comes from this checkout (it is put on PYTHONPATH). Data: --data, else the real
# UCI table at ../shared/data/credit_default.csv when present, else a synthetic sample of --rows rows
# (default 30000, the UCI table's size). Everything is written under a fresh PREFECT_ML_HOME (printed),
# with an embedded Prefect API and SQLite MLflow store unless PREFECT_API_URL / MLFLOW_TRACKING_URI are set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="" ROWS=30000 EPOCHS=400 MIN_AUC=0.5 REQUIRE_GPU=0
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) DATA="$2"; shift 2 ;;
        --rows) ROWS="$2"; shift 2 ;;
        --epochs) EPOCHS="$2"; shift 2 ;;
        --min-auc) MIN_AUC="$2"; shift 2 ;;
        --require-gpu) REQUIRE_GPU=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || true)"; fi
[[ -n "$PY" ]] || { echo "gpu-check: no python3 found (set PYTHON=/path/to/python)" >&2; exit 2; }

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
HOME_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
export PREFECT_ML_HOME="$HOME_DIR/prefect-ml-home" PREFECT_HOME="$HOME_DIR/prefect-home"
export PREFECT_ML_INFRASTRUCTURE=process
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"
export PYTHONUNBUFFERED=1 GIT_PYTHON_REFRESH=quiet

cd "$ROOT"
rc=0
"$PY" - "$DATA" "$ROWS" "$EPOCHS" "$MIN_AUC" "$REQUIRE_GPU" "$HOME_DIR" <<'PYEOF' || rc=$?
import importlib
import json
import sys
import time
from pathlib import Path

data, rows, epochs, min_auc, require_gpu, home = sys.argv[1:7]
rows, epochs, min_auc, require_gpu = int(rows), int(epochs), float(min_auc), require_gpu == "1"


def say(msg: str) -> None:
    print(f"gpu-check: {msg}", flush=True)


missing = []
for name in ("torch", "prefect", "mlflow", "sklearn", "pandas", "matplotlib", "skops", "prefect_ml"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken install
        missing.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
if missing:
    say(f"{sys.executable} cannot import: {'; '.join(missing)}. Nothing is downloaded: install them "
        "(pip install -e . and 'torch>=2.3'), or put wheels on PYTHONPATH (docs/gpu.md).")
    sys.exit(2)

import torch  # noqa: E402

say(f"python {sys.version.split()[0]} at {sys.executable}; torch {torch.__version__} (CUDA build: "
    f"{torch.version.cuda or 'none'})")
if torch.cuda.is_available():
    devices = ["cuda", "cpu"]
    say(f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible); running the GPU "
        "pipeline, then the CPU comparison")
else:
    why = "torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA device"
    if require_gpu:
        say(f"no GPU ({why}) and --require-gpu given: nothing run")
        sys.exit(3)
    devices = ["cpu"]
    say(f"no GPU: CPU path only ({why})")

repo = Path.cwd()
if not data:
    real = repo.parent / "shared" / "data" / "credit_default.csv"
    if real.is_file():
        data = str(real)
    else:
        from prefect_ml.samples import credit_default_sample

        data = str(credit_default_sample(Path(home) / f"credit_default_synthetic_{rows}.csv", rows=rows))
        say(f"synthetic credit-default sample of {rows} rows (no --data, no ../shared/data table)")
say(f"data {data}; {epochs} epochs (full batch); artifacts and MLflow under {home}/prefect-ml-home")

sys.path.insert(0, str(repo / "flows"))
from credit_default import credit_default  # noqa: E402

from prefect_ml.runtime import tracking  # noqa: E402

MODEL = "credit_gpu_check"
results, failed = [], False
for device in devices:
    say(f"--- pipeline with train_torch --device {device} ---")
    t0 = time.perf_counter()
    state = credit_default(data=data, trainer="torch", device=device, epochs=epochs, min_auc=min_auc,
                           registered_model_name=MODEL, train_infrastructure="process", return_state=True)
    wall = time.perf_counter() - t0
    if not state.is_completed():
        failed = True
        say(f"the {device} pipeline run failed: {state.message}")
        results.append({"device": device, "failed": state.message})
        continue
    out = state.result()
    runs = {}
    for step in ("train_torch", "evaluate"):
        found = tracking.client().search_runs(
            [tracking.experiment_id("credit-default")],
            filter_string=f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}' "
                          f"and tags.`prefect_ml.step` = '{step}'")
        runs[step] = found[0].data if found else None
    tr, ev = runs["train_torch"], runs["evaluate"]
    tags = tr.tags if tr else {}
    reg = out.get("registered")
    results.append({
        "device": tags.get("train_torch.device", device), "device_name": tags.get("train_torch.device_name", "?"),
        "torch": tags.get("train_torch.torch_version", "?"), "cuda": tags.get("train_torch.cuda_version", "?"),
        "train_seconds": tr.metrics.get("train_seconds") if tr else None,
        "epochs_per_second": tr.metrics.get("epochs_per_second") if tr else None,
        "auc": ev.metrics.get("auc") if ev else None, "pipeline_seconds": round(wall, 1),
        "registered": f"{MODEL} version {reg['version']} ({reg['uri']})" if reg else f"not registered (auc < {min_auc})",
    })

Path(home, "gpu-check.json").write_text(json.dumps(results, indent=2))
print()
say(f"results ({epochs} epochs, process infrastructure; JSON in {home}/gpu-check.json)")
head = ("device", "device name", "torch", "CUDA", "train s", "epochs/s", "AUC", "pipeline s", "registered model")
table = [head]
for r in results:
    if "failed" in r:
        table.append((r["device"], "FAILED", "", "", "", "", "", "", ""))
        continue
    fmt = lambda v, f: "?" if v is None else format(v, f)  # noqa: E731
    table.append((r["device"], r["device_name"], r["torch"], r["cuda"], fmt(r["train_seconds"], ".2f"),
                  fmt(r["epochs_per_second"], ".1f"), fmt(r["auc"], ".4f"), fmt(r["pipeline_seconds"], ".1f"),
                  r["registered"]))
widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
for row in table:
    print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
ok = [r for r in results if "failed" not in r and r["train_seconds"]]
gpu = [r for r in ok if r["device"].startswith("cuda")]
cpu = [r for r in ok if r["device"] == "cpu"]
if gpu and cpu:
    say(f"GPU training {cpu[0]['train_seconds'] / gpu[0]['train_seconds']:.1f}x faster than CPU "
        f"({gpu[0]['train_seconds']:.2f} s vs {cpu[0]['train_seconds']:.2f} s)")
elif not gpu:
    say("no GPU: CPU path only")
sys.exit(1 if failed else 0)
PYEOF
# nothing was run (a missing package, or no GPU with --require-gpu): leave no empty home behind
if [[ $rc -eq 2 || $rc -eq 3 ]]; then rm -rf "$HOME_DIR"; fi
exit "$rc"
