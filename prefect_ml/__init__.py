"""prefect-ml: Azure ML / SageMaker-style ML pipelines as a Prefect plugin.

Components are typed steps; `@pipeline` makes a Prefect flow of them; steps run on infrastructure
blocks (a local process or a Docker container); data moves as fsspec URIs; MLflow tracks runs and
a gate decides what is registered.
"""

from prefect_ml.assets import data_asset
from prefect_ml.component import Component, Input, Output, command, load_component
from prefect_ml.gate import gate, register_model
from prefect_ml.infrastructure import ProcessStepInfrastructure
from prefect_ml.pipeline import OutputRef, Step, pipeline

try:  # Docker support needs prefect-docker (a dependency); keep the core importable without it
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure  # noqa: F401
except ImportError:  # pragma: no cover
    pass

__all__ = [
    "Component", "Input", "Output", "OutputRef", "Step", "command", "data_asset", "gate",
    "load_component", "pipeline", "register_model", "ProcessStepInfrastructure", "DockerStepInfrastructure",
]
__version__ = "0.1.0"
