"""prefect-ml: Azure ML / SageMaker-style ML pipelines as a Prefect plugin.

Components are typed steps; `@pipeline` makes a Prefect flow of them; steps run on infrastructure
blocks (a local process or a Docker container); data moves as fsspec URIs; MLflow tracks runs and
a gate decides what is registered.

The public names below are imported on first use (PEP 562), so `import prefect_ml` and the
`prefect-ml` CLI do not pay for Prefect, MLflow or Docker until something needs them.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "Component": "prefect_ml.dsl.component",
    "Input": "prefect_ml.dsl.component",
    "Output": "prefect_ml.dsl.component",
    "command": "prefect_ml.dsl.component",
    "load_component": "prefect_ml.dsl.component",
    "component": "prefect_ml.dsl.function",
    "load_function_component": "prefect_ml.dsl.function",
    "load_pipeline_yaml": "prefect_ml.dsl.azure_pipeline",
    "FunctionComponent": "prefect_ml.dsl.function",
    "sweep": "prefect_ml.dsl.sweep",
    "fail": "prefect_ml.dsl.fail",
    "OutputRef": "prefect_ml.dsl.step",
    "Step": "prefect_ml.dsl.step",
    "pipeline": "prefect_ml.dsl.pipeline",
    "gate": "prefect_ml.dsl.gate",
    "register_model": "prefect_ml.dsl.model",
    "data_asset": "prefect_ml.assets",
    "ProcessStepInfrastructure": "prefect_ml.infrastructure.process",
    "DockerStepInfrastructure": "prefect_ml.infrastructure.docker",
}

__all__ = [
    "Component",
    "DockerStepInfrastructure",
    "FunctionComponent",
    "Input",
    "Output",
    "OutputRef",
    "ProcessStepInfrastructure",
    "Step",
    "command",
    "component",
    "data_asset",
    "fail",
    "gate",
    "load_component",
    "load_function_component",
    "load_pipeline_yaml",
    "pipeline",
    "register_model",
    "sweep",
]

if TYPE_CHECKING:
    from prefect_ml.assets import data_asset
    from prefect_ml.dsl.azure_pipeline import load_pipeline_yaml
    from prefect_ml.dsl.component import Component, Input, Output, command, load_component
    from prefect_ml.dsl.fail import fail
    from prefect_ml.dsl.function import FunctionComponent, component, load_function_component
    from prefect_ml.dsl.gate import gate
    from prefect_ml.dsl.model import register_model
    from prefect_ml.dsl.pipeline import pipeline
    from prefect_ml.dsl.step import OutputRef, Step
    from prefect_ml.dsl.sweep import sweep
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure
    from prefect_ml.infrastructure.process import ProcessStepInfrastructure


def _version() -> str:
    """The installed distribution's version: one version source, pyproject.toml."""
    try:
        return version("prefect-ml")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use: the metadata lookup costs 0.1-0.3 s per command
        value = globals()["__version__"] = _version()
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_ml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
