"""`prefect-ml init`: block types, work pools and default infrastructure blocks (idempotent).

What it creates on the Prefect API that `PREFECT_API_URL` points at, each only if missing:

- the block types of prefect-ml (so they show in the UI's block catalogue);
- process work pools `ml-cpu` and `ml-gpu` (workers run on machines with a Docker engine);
- a Docker work pool `ml-docker` (a Docker worker runs each flow run in the flow image);
- with `--git-repository URL` (`--git-branch NAME`): the Prefect variables the `credit-default/git`
  deployment's `git_clone` pull step reads (`prefect_ml_git_repository`, `prefect_ml_git_branch`);
- infrastructure blocks `process` (a local subprocess), `cpu` (a Docker container) and
  `gpu` (a Docker container that requests all GPUs).

Nothing that exists is changed, so running it again reports "unchanged" for every item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from prefect.blocks.core import Block

CPU_POOL = "ml-cpu"
GPU_POOL = "ml-gpu"
DOCKER_POOL = "ml-docker"
POOL_TYPE = "process"
GIT_REPOSITORY_VARIABLE = "prefect_ml_git_repository"  # read by prefect.yaml's credit-default/git pull step
GIT_BRANCH_VARIABLE = "prefect_ml_git_branch"


@dataclass
class Item:
    """One thing init looked at, and what it did."""

    kind: str
    name: str
    action: str  # "created", "exists", "registered", "skipped"
    detail: str = ""

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"  {self.action:<10} {self.kind:<22} {self.name}{detail}"


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "(ephemeral: no PREFECT_API_URL set)"


def register_block_types(types: list[type[Block]]) -> list[Item]:
    """Register prefect-ml's block types and their current schemas, unless the API has them."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from prefect_ml._compat import block_schema_checksum

    items = []
    for block_type in types:
        slug = block_type.get_block_type_slug()
        with get_client(sync_client=True) as client:
            try:
                client.read_block_type_by_slug(slug)
                client.read_block_schema_by_checksum(block_schema_checksum(block_type))
                items.append(Item("block type", slug, "exists"))
                continue
            except ObjectNotFound:
                pass
        block_type.register_type_and_schema()
        items.append(Item("block type", slug, "registered"))
    return items


def ensure_work_pool(name: str, description: str, pool_type: str = POOL_TYPE) -> Item:
    """Create a work pool with its worker type's default job template (process or docker), unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if pool_type == "docker":
        from prefect_docker.worker import DockerWorker as worker_type  # a dependency of prefect-ml
    else:
        from prefect.workers.process import ProcessWorker as worker_type

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
            return Item("work pool", name, "exists", f"type {pool.type}")
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(
                name=name, type=pool_type, description=description,
                base_job_template=worker_type.get_default_base_job_template(),
            ))
        except ObjectAlreadyExists:  # created by a concurrent init
            return Item("work pool", name, "exists", f"type {pool_type}")
    return Item("work pool", name, "created", f"type {pool_type}")


def ensure_variable(name: str, value: str) -> Item:
    """Create Prefect variable `name` = `value` unless it exists (an existing value is left as it is)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        existing = client.read_variable_by_name(name)
        if existing is not None:
            if existing.value == value:
                return Item("variable", name, "exists")
            return Item("variable", name, "exists", f"keeps {existing.value!r}; change it with "
                        f"`prefect variable set {name} VALUE --overwrite`")
        try:
            client.create_variable(VariableCreate(name=name, value=value))
        except ObjectAlreadyExists:
            return Item("variable", name, "exists")
    return Item("variable", name, "created", repr(value))


def _find_block(name: str, types: list[type[Block]]) -> type[Block] | None:
    """The prefect-ml block type that has a saved block called `name`, if any."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for block_type in types:
            try:
                client.read_block_document_by_name(name, block_type.get_block_type_slug())
                return block_type
            except ObjectNotFound:
                continue
    return None


def ensure_block(name: str, make: Callable[[], Block], types: list[type[Block]]) -> Item:
    """Save `make()` as block `name` unless a prefect-ml infrastructure block has that name."""
    existing = _find_block(name, types)
    if existing is not None:
        return Item("infrastructure block", name, "exists", existing.__name__)
    block = make()
    try:
        block.save(name)
    except ValueError as exc:  # saved by a concurrent init between the check and the save
        if "already" not in str(exc).lower():
            raise
        return Item("infrastructure block", name, "exists", type(block).__name__)
    return Item("infrastructure block", name, "created", type(block).__name__)


def _docker_engine() -> tuple[bool, str]:
    """Whether a Docker engine answers here (init only warns: blocks are configuration)."""
    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure.docker_client import docker_client

    try:
        client = docker_client(who="prefect-ml init", timeout=5)
    except InfrastructureError as exc:
        return False, str(exc)
    try:
        return True, f"Docker engine {client.version().get('Version', '?')}"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        client.close()


def _docker_block(image: str | None, gpus: str | None) -> Callable[[], Block]:
    def make():
        from prefect_ml.infrastructure.docker import DockerStepInfrastructure

        fields: dict[str, Any] = {}  # network "none" (the default): a step needs no network
        if gpus:
            fields["gpus"] = gpus
        if image:
            fields["image"] = image
        known = DockerStepInfrastructure.model_fields
        return DockerStepInfrastructure(**{k: v for k, v in fields.items() if k in known})

    return make


def init(
    image: str | None = typer.Option(
        None, "--image", "--base-image",
        help="Image for the `cpu` and `gpu` Docker blocks' steps (default: each component's environment image).",
    ),
    docker: bool = typer.Option(
        True, "--docker/--no-docker",
        help="Save the Docker blocks `cpu` and `gpu`; --no-docker on machines without a Docker engine.",
    ),
    cpu_pool: str = typer.Option(CPU_POOL, help="Name of the CPU work pool."),
    gpu_pool: str = typer.Option(GPU_POOL, help="Name of the GPU work pool."),
    docker_pool: str = typer.Option(DOCKER_POOL, help="Name of the Docker work pool (flow runs in the flow image)."),
    git_repository: str | None = typer.Option(
        None, "--git-repository",
        help="Repository URL the credit-default/git deployment clones for each run (Prefect variable "
             f"{GIT_REPOSITORY_VARIABLE}).",
    ),
    git_branch: str | None = typer.Option(
        None, "--git-branch",
        help=f"Branch it clones (Prefect variable {GIT_BRANCH_VARIABLE}; default: the remote's default branch).",
    ),
) -> None:
    """Create what the deployments in prefect.yaml need; running it again changes nothing."""
    from prefect_ml.infrastructure.process import ProcessStepInfrastructure
    from prefect_ml.infrastructure.resolve import block_types

    types = block_types()
    typer.echo(f"prefect-ml init: Prefect API {_api_url()}")
    items: list[Item] = []
    try:
        items += register_block_types(types)
        items.append(ensure_work_pool(cpu_pool, "prefect-ml CPU workers (process workers on machines with Docker)."))
        items.append(ensure_work_pool(gpu_pool, "prefect-ml GPU workers (process workers on machines with Docker "
            "and GPUs)."))
        # a pool is server-side configuration: created with or without a Docker engine here
        items.append(ensure_work_pool(docker_pool, "prefect-ml flow runs in containers of the flow image "
            "(scripts/build-flow-image.sh); Docker workers: prefect worker start --type docker.", "docker"))
        if git_repository:
            items.append(ensure_variable(GIT_REPOSITORY_VARIABLE, git_repository))
        if git_branch:
            items.append(ensure_variable(GIT_BRANCH_VARIABLE, git_branch))
        items.append(ensure_block("process", ProcessStepInfrastructure, types))
        if docker:
            if not any(t.__name__ == "DockerStepInfrastructure" for t in types):
                raise RuntimeError(
                    "prefect_ml.infrastructure.docker cannot be imported (is prefect-docker installed?); "
                    "install it or run `prefect-ml init --no-docker`."
                )
            items.append(ensure_block("cpu", _docker_block(image, None), types))
            items.append(ensure_block("gpu", _docker_block(image, "all"), types))
        else:
            items += [Item("infrastructure block", n, "skipped", "--no-docker") for n in ("cpu", "gpu")]
    except Exception as exc:
        for item in items:
            typer.echo(item.line())
        typer.echo(f"prefect-ml init: error: {type(exc).__name__}: {exc}", err=True)
        if not isinstance(exc, RuntimeError):
            typer.echo("Check that the Prefect API answers (`prefect config view`, PREFECT_API_URL).", err=True)
        raise typer.Exit(1) from None

    for item in items:
        typer.echo(item.line())
    changed = [i for i in items if i.action in ("created", "registered")]
    if changed:
        typer.echo(f"created {len(changed)} item(s); running init again changes nothing.")
    else:
        typer.echo("nothing to do: everything exists (unchanged).")
    if docker:
        ok, why = _docker_engine()
        if not ok:
            typer.echo(f"note: no Docker engine answers here ({why}); steps on `cpu`/`gpu` need one on the worker's "
                "machine.")
    typer.echo("\nNext:")
    for command, why in (
        ("prefect --no-prompt deploy --all", "from the repo root: the deployments in prefect.yaml"),
        (f"prefect worker start --pool {cpu_pool}", "on a machine with this repo checked out (and Docker)"),
        (f"prefect worker start --pool {gpu_pool}", "on a machine with this repo, Docker and GPUs"),
        (f"prefect worker start --pool {docker_pool} --type docker", "after scripts/build-flow-image.sh"),
        ("prefect deployment run 'credit-default/cpu' --param min_auc=0.6", "or the Run button in the UI"),
    ):
        typer.echo(f"  {command:<66} # {why}")
