"""Resolve where a step runs: a block instance, a built-in name (`process`, `docker`) or a saved block."""

from __future__ import annotations

from prefect.blocks.core import Block

from prefect_ml.errors import InfrastructureError
from prefect_ml.infrastructure.base import StepInfrastructure
from prefect_ml.infrastructure.process import ProcessStepInfrastructure

BUILTINS = ("process", "docker")
# DockerStepInfrastructure's block type slug, known without importing it (prefect-docker takes ~0.4 s
# to import: a run on process infrastructure should not pay it); a unit test keeps the two equal
DOCKER_BLOCK_SLUG = "ml-step-docker-infrastructure"


def block_types() -> list[type[Block]]:
    """Every prefect-ml infrastructure block type (imports the Docker block, so: not on a run's path)."""
    try:
        from prefect_ml.infrastructure.docker import DockerStepInfrastructure
    except ImportError:  # pragma: no cover - docker support is optional at import time
        return [ProcessStepInfrastructure]
    return [ProcessStepInfrastructure, DockerStepInfrastructure]


def _load_saved(name: str) -> StepInfrastructure | None:
    """The saved block `name` of a prefect-ml type, or None. The Docker type is imported only when a
    Docker block of that name is saved."""
    block = _load(ProcessStepInfrastructure, name)
    if block is not None or not _maybe_saved(name, DOCKER_BLOCK_SLUG):
        return block
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    return _load(DockerStepInfrastructure, name)


def _load(block_type: type[Block], name: str) -> StepInfrastructure | None:
    try:
        block = block_type.load(name)
    except Exception:
        return None
    return block if isinstance(block, StepInfrastructure) else None  # a sync load returns the block itself


def _maybe_saved(name: str, slug: str) -> bool:
    """False only when the API says there is no block `name` of type `slug`."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_block_document_by_name(name, slug, include_secrets=False)
    except ObjectNotFound:
        return False
    except Exception:
        return True  # let the load itself say what is wrong
    return True


def saved_names() -> list[str]:
    """Names of saved infrastructure blocks of every prefect-ml type."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    names: list[str] = []
    with get_client(sync_client=True) as client:
        for t in block_types():
            try:
                docs = client.read_block_documents_by_type(t.get_block_type_slug(), include_secrets=False)
            except ObjectNotFound:  # type not registered on this server yet
                docs = []
            except Exception as exc:
                if getattr(getattr(exc, "response", None), "status_code", None) != 404:
                    raise
                docs = []
            names += [d.name for d in docs if d.name and not d.is_anonymous]
    return sorted(set(names))


def _api_available() -> bool:
    """Inside a flow or task run the Prefect API is up; elsewhere (e.g. `prefect-ml plan`) loading a
    block could start a temporary server, so only built-ins and explicit API URLs are used."""
    import os

    from prefect.context import FlowRunContext, TaskRunContext

    return bool(FlowRunContext.get() or TaskRunContext.get() or os.environ.get("PREFECT_API_URL"))


def resolve_infrastructure(value: str | StepInfrastructure | None) -> StepInfrastructure:
    """A block instance, a built-in name (`process`, `docker`), or the name of a saved block."""
    from prefect_ml.settings import get_settings

    if isinstance(value, StepInfrastructure):
        return value
    name = value or get_settings().infrastructure
    # a saved block wins over a built-in of the same name (`prefect-ml init` saves `process`)
    if name not in BUILTINS or _api_available():
        block = _load_saved(name)
        if block is not None:
            return block
    if name == "process":
        return ProcessStepInfrastructure()
    if name == "docker":
        from prefect_ml.infrastructure.docker import DockerStepInfrastructure

        return DockerStepInfrastructure()
    try:
        known = saved_names()
    except Exception:
        known = []
    raise InfrastructureError(
        f"unknown infrastructure {name!r}; saved infrastructure blocks: {known or 'none'}; built-ins: "
        f"{list(BUILTINS)}. Save one (e.g. `prefect-ml init`) or fix the name."
    )

