"""A step's outputs: where each lives inside an attempt, what a complete one looks like, metrics files."""

from __future__ import annotations

import json
import math
import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_ml import storage
from prefect_ml.errors import StepFailed

if TYPE_CHECKING:
    from prefect_ml.dsl.component import Component, Output


def output_rel_path(name: str, output: Output) -> str:
    """Where an output lives inside an attempt: folders as `<name>/`, metrics as `<name>.json`."""
    return f"{name}.json" if output.type == "metrics" else name


# A metrics output is a summary (auc, loss, ...), not a data set: bounded so that a runaway step
# cannot fill the tracking store and the registry (a 4-million-key file once took 35 minutes).
MAX_METRICS = 1000
MAX_METRICS_BYTES = 1024 * 1024
# What MLflow accepts as a metric name (mlflow.utils.validation), checked before publishing so a
# step never publishes metrics that every later cache hit would fail to log.
METRIC_NAME = re.compile(r"^[/\w.\- :]{1,250}$")


def _metric_name_problem(name: str) -> str | None:
    if not METRIC_NAME.match(name):
        return ("names may only contain letters, digits, '_', '-', '.', ' ', ':' and '/' "
                "(1 to 250 characters)")
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(("..", "/")):
        return "names must not be file-path-like ('a//b', './a', '../a', '/a', a trailing '/')"
    return None


def read_metrics(path_or_uri: str, *, where: str) -> dict[str, float]:
    """Parse a metrics output: a JSON object of at most `MAX_METRICS` finite numbers (at most
    `MAX_METRICS_BYTES`) with names MLflow accepts. Any other content is an error naming the fix."""
    fs, path = storage.filesystem(path_or_uri if "://" in path_or_uri else str(Path(path_or_uri).resolve()))
    try:
        with fs.open(path, "rb") as f:
            raw = f.read(MAX_METRICS_BYTES + 1)
    except FileNotFoundError:
        raise StepFailed(f"{where}: metrics file {path_or_uri!r} was not written.") from None
    if len(raw) > MAX_METRICS_BYTES:
        raise StepFailed(
            f"{where}: metrics file is over {MAX_METRICS_BYTES // 1024} KiB; a metrics output holds summary "
            f"numbers (at most {MAX_METRICS}). Write per-sample values to a uri_file/uri_folder output instead."
        )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise StepFailed(
            f"{where}: metrics file is not valid JSON ({reason}); write a JSON object of name -> number."
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()
    ):
        raise StepFailed(f"{where}: metrics must be a JSON object of name -> number, got {str(data)[:200]}.")
    if len(data) > MAX_METRICS:
        raise StepFailed(
            f"{where}: metrics file has {len(data)} numbers, more than the {MAX_METRICS} a metrics output may "
            "hold; keep summary numbers there and write the rest to a uri_file/uri_folder output."
        )
    for name, value in data.items():
        problem = _metric_name_problem(name)
        if problem:
            raise StepFailed(f"{where}: metric name {name[:100]!r} is refused by MLflow: {problem}; rename it.")
        if not math.isfinite(value):
            raise StepFailed(
                f"{where}: metric '{name}' is {value} (not a finite number); a gate or the registry cannot "
                "compare it. Fix the computation, or leave the metric out."
            )
    return {k: float(v) for k, v in data.items()}


def prepare(component: Component, staging: Path) -> dict[str, Path]:
    """The local path each output is written to inside an attempt's staging dir."""
    paths: dict[str, Path] = {}
    for name, out in component.outputs.items():
        p = staging / output_rel_path(name, out)
        if out.type == "uri_folder":  # a folder output exists, as in Azure ML; an mlflow_model path
            p.mkdir(parents=True)     # must not: mlflow's save_model() refuses an existing dir
        paths[name] = p
    return paths


def _check_tree(output: Path, step: str, name: str) -> None:
    """Refuse what must never be published: a symlink that leads outside the output (its target's
    bytes would be copied from the host into the artifact root and the registry) and special files
    (FIFOs, devices: reading one can block forever)."""
    import os
    import stat

    root = output.resolve() if output.is_dir() and not output.is_symlink() else output.parent.resolve()
    entries = [output] if not output.is_dir() or output.is_symlink() else [
        Path(d) / n for d, dirs, files in os.walk(output) for n in [*dirs, *files]]
    for entry in entries:
        rel = entry.relative_to(output.parent)
        if entry.is_symlink():
            target = entry.resolve()
            if entry == output or not target.is_relative_to(root):
                raise StepFailed(
                    f"step '{step}': output '{name}' contains a symlink {str(rel)!r} -> {os.readlink(entry)!r} that "
                    "points outside the output; nothing was published. Copy the file into the output instead "
                    "(links are kept only when they point inside the output)."
                )
            continue
        mode = entry.lstat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise StepFailed(
                f"step '{step}': output '{name}' contains {str(rel)!r}, which is not a regular file or folder "
                "(a FIFO, socket or device); nothing was published. Write regular files only."
            )


def verify(component: Component, paths: dict[str, Path], step: str) -> dict[str, float]:
    """Check that every output was written in its declared form and holds only regular files and
    inward links; return the metrics they hold."""
    metrics: dict[str, float] = {}
    for name, out in component.outputs.items():
        p = paths[name]
        if p.is_symlink() or p.exists():
            _check_tree(p, step, name)
        if out.type in ("uri_folder", "mlflow_model"):
            if not p.is_dir():
                raise StepFailed(f"step '{step}': output '{name}' ({out.type}) is not a folder at {p}.")
            if out.type == "mlflow_model" and not (p / "MLmodel").is_file():
                raise StepFailed(
                    f"step '{step}': output '{name}' is an mlflow_model but has no MLmodel file; save it with "
                    "mlflow.<flavor>.save_model(model, path) into ${{outputs." + name + "}}."
                )
        elif not p.is_file():
            raise StepFailed(
                f"step '{step}': output '{name}' ({out.type}) was not written; write a file at ${{{{outputs.{name}}}}}."
            )
        if out.type == "metrics":
            metrics.update(read_metrics(str(p), where=f"step '{step}', output '{name}'"))
    return metrics


def published_metrics(component: Component, outputs: dict[str, str], step: str) -> dict[str, float]:
    """The metrics of a reused step, read back from its published `metrics` outputs."""
    metrics: dict[str, float] = {}
    for name, out in component.outputs.items():
        if out.type == "metrics":
            metrics.update(read_metrics(outputs[name], where=f"step '{step}', output '{name}'"))
    return metrics
