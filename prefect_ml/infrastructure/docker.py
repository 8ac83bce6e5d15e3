"""The Docker infrastructure block: where and how a step's container runs (configuration).

`DockerStepInfrastructure` holds the settings a user saves (engine, image, GPUs, limits, mounts,
registry credentials), validates them when the block is made, resolves the step's image from its
environment, and hands the rest to `prefect_ml.infrastructure.container`, which runs the container
(as prefect-docker's worker keeps its job configuration apart from the code that runs it). The step
contract (what the container sees) is described there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from prefect.blocks.core import Block
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import Field, field_validator

from prefect_ml._compat import block_document_name
from prefect_ml.infrastructure.base import StepInfrastructure, StepJob, StepOutcome
from prefect_ml.infrastructure.container import GPU_DOCS, ContainerOptions, check_gpus, run_container
from prefect_ml.infrastructure.docker_client import docker_client, engine_address, engine_is_local, engine_transfer

GpuRequest = int | str | list[str] | None


def parse_gpus(value: GpuRequest) -> dict | None:
    """`gpus` -> the keyword arguments of one `docker.types.DeviceRequest`, or None for no GPU.

    Accepted: None / "none" (no GPU), "all", a count N >= 1 (int or "2"), device ids as a list
    (["0", "GPU-3a..."]) or a comma-separated string ("0,1").
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"gpus={value!r} is not valid; use 'all', a count such as 1, or device ids such as ['0'].")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"gpus={value} is not valid; a GPU count must be >= 1 (or leave gpus unset for none).")
        return {"count": value, "capabilities": [["gpu"]]}
    if isinstance(value, str):
        v = value.strip()
        if v.lower() == "all":
            return {"count": -1, "capabilities": [["gpu"]]}
        if v.isdigit():
            return parse_gpus(int(v))
        ids = [p.strip() for p in v.split(",")]
        if all(re.fullmatch(r"(\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+)", i) for i in ids):
            return {"device_ids": ids, "capabilities": [["gpu"]]}
        raise ValueError(
            f"gpus={value!r} is not valid; use 'all', a count such as 1, or device ids such as '0,1' or ['GPU-<uuid>']."
        )
    if isinstance(value, list) and value and all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in value):
        return parse_gpus(",".join(str(i) for i in value))
    raise ValueError(f"gpus={value!r} is not valid; use 'all', a count such as 1, or device ids such as ['0'].")


def parse_volume(spec: str) -> tuple[str, str, bool]:
    """'HOST:CONTAINER[:ro|rw]' -> (host, container, read_only); both paths absolute."""
    parts = spec.split(":")
    mode = "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        mode = parts.pop()
    if len(parts) != 2 or not parts[0].startswith("/") or not parts[1].startswith("/"):
        raise ValueError(f"volume {spec!r} is not valid; write '/host/path:/container/path' with an optional ':ro'.")
    return parts[0], parts[1], mode == "ro"


class DockerStepInfrastructure(Block, StepInfrastructure):
    """Runs a step's command in a Docker container of the component's environment image.

    The image is `prefect-ml/<environment>:<content hash>`, built on first use (see
    `prefect_ml.environments`); `image` overrides it. Output streams into the task run's logs
    while the step runs; a timeout or cancellation stops and removes the container.

    Example:
        DockerStepInfrastructure(mem_limit="4g", cpus=2).save("cpu")
        DockerStepInfrastructure(gpus="all", shm_size="2g").save("gpu")
        # then: @pipeline(infrastructure="cpu"), or train(..., infrastructure="gpu")
    """

    _block_type_name = "ML Step Docker Infrastructure"
    _block_type_slug = "ml-step-docker-infrastructure"
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/14a315b79990200db7341e42553e23650b34bb96-250x250.png"  # type: ignore[assignment]  # Prefect types it HttpUrl; str is how blocks set it
    _description = "Runs prefect-ml steps in Docker containers built from versioned environments (GPU, limits, mounts)."
    # a distributed step runs torchrun with its N processes in one container; M containers are not launched
    max_instances: ClassVar[int] = 1

    docker_host: DockerHost | None = Field(
        default=None, description="The Docker engine to use. Default: the environment's (DOCKER_HOST or the local "
            "socket)."
    )
    image: str | None = Field(
        default=None,
        description="Run every step in this image instead of its environment's image (it must have the step's "
            "dependencies).",
    )
    network_mode: str = Field(
        default="none",
        description="Docker network mode of step containers: 'none' (default: no network; inputs are staged and "
            "outputs published by the host) or 'host' (the step reaches loopback services such as an unauthenticated "
            "Prefect API: see docs/docker.md before choosing it).",
        examples=["none", "host"],
    )
    gpus: GpuRequest = Field(
        default=None,
        description="GPUs for the step: none (unset), 'all', a count such as 1, or device ids such as ['0'] / '0,1'.",
        examples=["all", 1, ["0"]],
    )
    mem_limit: str | None = Field(
        default=None, description="Memory limit such as '512m' or '4g' (swap is not added on top).", examples=["4g"]
    )
    cpus: float | None = Field(default=None, gt=0, description="CPU limit in cores, such as 1.5.")
    shm_size: str | None = Field(default=None, description="Size of /dev/shm, such as '2g' (PyTorch data loaders "
        "need more than 64m).")
    user: str | None = Field(
        default=None,
        description="User (uid[:gid]) in the container. Default: the host user running the pipeline, or "
            "65534:65534 (nobody) when that is root. Outputs are handed back to the host user afterwards.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the step.")
    volumes: list[str] = Field(
        default_factory=list, description="Extra bind mounts: "
            "'/host/path:/container/path[:ro]'.", examples=[["/data:/data:ro"]]
    )
    pull_policy: Literal["if_not_present", "always", "never"] = Field(
        default="if_not_present",
        description="When to pull the base image (or `image`): if_not_present, always, or never (hosts with no "
            "registry).",
    )
    registry_credentials: DockerRegistryCredentials | None = Field(
        default=None, description="Credentials for pulling from a private registry."
    )
    stop_timeout: int = Field(default=5, ge=0, description="Seconds between SIGTERM and SIGKILL when a step is "
        "stopped.")
    poll_interval: float = Field(default=0.1, gt=0, description="Seconds between checks for the end of the container.")
    transfer: Literal["auto", "mount", "copy"] = Field(
        default="auto",
        description="How a step's code, inputs and outputs reach its container: 'mount' (bind mounts: the engine "
            "is on this machine), 'copy' (copied in and out through the Docker API: an engine on another machine), "
            "or 'auto' (default: mount for this machine's engine, copy for any other).",
    )

    @field_validator("gpus", mode="before")
    @classmethod
    def _validate_gpus(cls, value):
        parse_gpus(value)
        return value

    @field_validator("mem_limit", "shm_size")
    @classmethod
    def _validate_size(cls, value):
        if value is None:
            return value
        from docker.errors import DockerException
        from docker.utils import parse_bytes

        try:
            parse_bytes(value)
        except DockerException:
            # docker-py's own wording ("Failed converting ...") adds nothing to this message
            raise ValueError(f"{value!r} is not a size; write a number with a unit such as '512m' or '4g'.") from None
        return value

    @field_validator("volumes")
    @classmethod
    def _validate_volumes(cls, value):
        for v in value:
            parse_volume(v)
        return value

    @field_validator("network_mode")
    @classmethod
    def _validate_network(cls, value):
        if value in ("bridge", "default"):
            raise ValueError("network_mode 'bridge' is not supported: use 'none' (the default: no network) or "
                             "'host' (the step needs the network, e.g. an MLflow server or downloads).")
        return value

    # --- the executor interface -------------------------------------------------------------------
    def describe(self) -> str:
        name = block_document_name(self)
        return f"docker:{name}" if name else "docker"

    def environment_identity(self, environment: str, code_dir: Path) -> str:
        """The environment part of a step's cache key here: `<name>@<image hash>` (spec, requirement
        files and the base image's id), or `image:<image>@<id>` when `image` overrides it.

        Nothing is built; the base image must be present (or pullable, per `pull_policy`), so a
        missing base image or an unreachable engine fails here, before anything runs.
        """
        from prefect_ml import environments

        client = self._client()
        try:
            if self.image:
                image_id = environments.base_image_id(
                    client, self.image, self.pull_policy, self.registry_credentials, who=self._block_label())
                return f"image:{self.image}@{image_id}"
            env = environments.load_environment(environment, start=code_dir)
            base_id = environments.base_image_id(client, env.resolved_base_image(), self.pull_policy,
                                                 self.registry_credentials, who=f"environment '{env.name}'")
            return f"{env.name}@{environments.image_hash(env, base_id)}"
        finally:
            client.close()

    def run(self, job: StepJob, log: Callable[[str], None]) -> StepOutcome:
        """Resolve the step's image (building its environment if needed) and run it in a container."""
        client = self._client()
        try:
            if parse_gpus(self.gpus) is not None:  # before the image: a GPU image is large
                check_gpus(client, self.container_options(), engine_address(self.docker_host),
                           local=engine_is_local(client, self.docker_host))
            transfer, why = engine_transfer(client, self.transfer, self.docker_host)
            if transfer == "copy":
                log(f"the step's files are copied into and out of its container ({why})")
            image = self._image(job, client, log)
            return run_container(client, job, image, self.container_options(transfer), log)
        finally:
            client.close()

    def container_options(self, transfer: str = "mount") -> ContainerOptions:
        """This block's settings for `prefect_ml.infrastructure.container.run_container`; `transfer`:
        'mount' or 'copy', as `docker_client.engine_transfer` decides from the block's `transfer`."""
        return ContainerOptions(
            who=self._block_label(),
            network_mode=self.network_mode,
            user=self.user,
            env=dict(self.env),
            volumes=tuple(parse_volume(v) for v in self.volumes),
            mem_limit=self.mem_limit,
            cpus=self.cpus,
            shm_size=self.shm_size,
            device_request=parse_gpus(self.gpus),
            gpus=self.gpus,
            stop_timeout=self.stop_timeout,
            poll_interval=self.poll_interval,
            transfer=transfer,
        )

    # --- parts ---------------------------------------------------------------------------------
    def _block_label(self) -> str:
        name = block_document_name(self)
        return f"infrastructure block '{name}' ({type(self).__name__})" if name else f"{type(self).__name__}"

    def _client(self):
        hint = ""
        # a GPU VM without Docker is common: say what runs there (not for another machine's engine that is down)
        local = self.docker_host is None or str(self.docker_host.base_url or "unix://").startswith("unix://")
        if parse_gpus(self.gpus) is not None and local:
            hint = (f"This block requests GPUs (gpus={self.gpus!r}): a GPU machine without Docker can run the GPU "
                    f"deployment with the `process` infrastructure instead (see {GPU_DOCS}, \"A GPU host without "
                    "Docker\").")
        return docker_client(self.docker_host, who=self._block_label(), hint=hint)

    def _image(self, job: StepJob, client, log: Callable[[str], None]) -> str:
        from prefect_ml import environments

        who = self._block_label()
        if self.image:
            environments.base_image_id(client, self.image, self.pull_policy, self.registry_credentials, log, who=who)
            return self.image
        if not job.environment:
            image = environments.base_image_setting()
            environments.base_image_id(client, image, self.pull_policy, self.registry_credentials, log, who=who)
            return image
        env = environments.load_environment(job.environment, start=job.code_dir)
        if env.gpu and parse_gpus(self.gpus) is None:
            log(f"warning: environment '{env.name}' is marked gpu: true but {who} requests no GPU (set gpus)")

        def build_log(line: str) -> None:  # the summary, not every pip line
            if line.startswith(("building image", "built ", "pulling ", "Step ")):
                log(line)

        return environments.ensure_image(
            env, client, pull_policy=self.pull_policy, credentials=self.registry_credentials, log=build_log
        )
