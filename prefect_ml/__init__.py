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

try:
    __version__ = version("prefect-ml")  # one version source: pyproject.toml
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"

# public name -> module that defines it
_EXPORTS = {
    "Component": "prefect_ml.dsl.component",
    "Input": "prefect_ml.dsl.component",
    "Output": "prefect_ml.dsl.component",
    "command": "prefect_ml.dsl.component",
    "load_component": "prefect_ml.dsl.component",
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
    "Input",
    "Output",
    "OutputRef",
    "ProcessStepInfrastructure",
    "Step",
    "command",
    "data_asset",
    "gate",
    "load_component",
    "pipeline",
    "register_model",
]

if TYPE_CHECKING:
    from prefect_ml.assets import data_asset
    from prefect_ml.dsl.component import Component, Input, Output, command, load_component
    from prefect_ml.dsl.gate import gate
    from prefect_ml.dsl.model import register_model
    from prefect_ml.dsl.pipeline import pipeline
    from prefect_ml.dsl.step import OutputRef, Step
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure
    from prefect_ml.infrastructure.process import ProcessStepInfrastructure


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_ml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
