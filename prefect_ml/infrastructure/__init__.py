"""Infrastructure: where a step runs, behind one interface, `run(job, log) -> StepOutcome` (base.py).

`process.py` and `docker.py` are Prefect blocks; `container.py` runs a Docker container for the
Docker block; `docker_client.py` is the one place a Docker client is made; `resolve.py` turns a
name into a block. Names are imported on first use, so importing one module pulls in no others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "StepInfrastructure": "prefect_ml.infrastructure.base",
    "StepJob": "prefect_ml.infrastructure.base",
    "StepOutcome": "prefect_ml.infrastructure.base",
    "ProcessStepInfrastructure": "prefect_ml.infrastructure.process",
    "DockerStepInfrastructure": "prefect_ml.infrastructure.docker",
    "resolve_infrastructure": "prefect_ml.infrastructure.resolve",
}
__all__ = [
    "DockerStepInfrastructure",
    "ProcessStepInfrastructure",
    "StepInfrastructure",
    "StepJob",
    "StepOutcome",
    "resolve_infrastructure",
]

if TYPE_CHECKING:
    from prefect_ml.infrastructure.base import StepInfrastructure, StepJob, StepOutcome
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure
    from prefect_ml.infrastructure.process import ProcessStepInfrastructure
    from prefect_ml.infrastructure.resolve import resolve_infrastructure


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_ml.infrastructure' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
