"""The block types prefect-ml adds to Prefect (the `prefect.collections` entry point loads this).

Importing it defines `ProcessStepInfrastructure` and `DockerStepInfrastructure`, which is how a
Prefect server or client started where prefect-ml is installed registers and loads them by slug.
"""

from prefect_ml.infrastructure.docker import DockerStepInfrastructure
from prefect_ml.infrastructure.process import ProcessStepInfrastructure

__all__ = ["DockerStepInfrastructure", "ProcessStepInfrastructure"]
