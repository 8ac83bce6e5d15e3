"""A step's outputs: where each lives inside an attempt, what a complete one looks like, metrics files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_ml import storage
from prefect_ml.errors import StepFailed

if TYPE_CHECKING:
    from prefect_ml.dsl.component import Component, Output


def output_rel_path(name: str, output: Output) -> str:
    """Where an output lives inside an attempt: folders as `<name>/`, metrics as `<name>.json`."""
    return f"{name}.json" if output.type == "metrics" else name


def read_metrics(path_or_uri: str, *, where: str) -> dict[str, float]:
    """Parse a metrics output: a JSON object of name -> number."""
    fs, path = storage.filesystem(path_or_uri if "://" in path_or_uri else str(Path(path_or_uri).resolve()))
    try:
        with fs.open(path, "r") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise StepFailed(f"{where}: metrics file {path_or_uri!r} was not written.") from None
    except json.JSONDecodeError as exc:
        raise StepFailed(
            f"{where}: metrics file is not valid JSON ({exc.msg}); write a JSON object of name -> number."
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()
    ):
        raise StepFailed(f"{where}: metrics must be a JSON object of name -> number, got {str(data)[:200]}.")
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


def verify(component: Component, paths: dict[str, Path], step: str) -> dict[str, float]:
    """Check that every output was written in its declared form; return the metrics they hold."""
    metrics: dict[str, float] = {}
    for name, out in component.outputs.items():
        p = paths[name]
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
