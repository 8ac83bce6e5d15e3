"""Run a step in a Docker container built from its environment (the process infrastructure's twin).

What the container sees (the step contract):
    /prefect-ml/code              the component's code dir, read-only, the working directory
    /prefect-ml/inputs/<name>     each data input, read-only (a local input is bind-mounted where it
                                  lives, never copied; a file keeps its name: .../<name>/<file>)
    /prefect-ml/outputs/<output>  the attempt's staging dir, read-write (outputs that do not exist yet,
                                  such as an mlflow_model dir, can be created there)
    the MLflow SQLite store       when MLFLOW_TRACKING_URI is sqlite:///..., its directory at the same path
Placeholders render to these paths. The container runs with network mode `host` and, by default,
as the host's uid:gid, so the outputs belong to the user who runs the pipeline.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Union

from pydantic import Field, field_validator
from prefect.blocks.core import Block
from prefect_docker import DockerHost, DockerRegistryCredentials

from prefect_ml.errors import EnvironmentSpecError, InfrastructureError
from prefect_ml.infrastructure.base import LineTail, StepInfrastructure, StepJob, StepOutcome

CODE_DIR = "/prefect-ml/code"
INPUTS_DIR = "/prefect-ml/inputs"
OUTPUTS_DIR = "/prefect-ml/outputs"
CA_PATH = "/etc/prefect-ml/ca-bundle.crt"
MANAGED_LABEL = "prefect-ml.managed"
GPU_DRIVER_ERROR = "could not select device driver"

GpuRequest = Union[int, str, List[str], None]

# Containers this process started and has not removed yet: removed at interpreter exit too, so a
# SIGINT/SIGTERM that ends the process between our `finally` blocks leaves nothing behind.
_live: dict[str, Any] = {}
_live_lock = threading.Lock()


def _remove_live_containers() -> None:
    with _live_lock:
        items = list(_live.items())
        _live.clear()
    for cid, client in items:
        try:
            client.api.remove_container(cid, force=True)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(_remove_live_containers)


def parse_gpus(value: GpuRequest) -> Optional[dict]:
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
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/14a315b79990200db7341e42553e23650b34bb96-250x250.png"
    _description = "Runs prefect-ml steps in Docker containers built from versioned environments (GPU, limits, mounts)."

    docker_host: Optional[DockerHost] = Field(
        default=None, description="The Docker engine to use. Default: the environment's (DOCKER_HOST or the local socket)."
    )
    image: Optional[str] = Field(
        default=None,
        description="Run every step in this image instead of its environment's image (it must have the step's dependencies).",
    )
    network_mode: str = Field(default="host", description="Docker network mode of step containers.")
    gpus: GpuRequest = Field(
        default=None,
        description="GPUs for the step: none (unset), 'all', a count such as 1, or device ids such as ['0'] / '0,1'.",
        examples=["all", 1, ["0"]],
    )
    mem_limit: Optional[str] = Field(
        default=None, description="Memory limit such as '512m' or '4g' (swap is not added on top).", examples=["4g"]
    )
    cpus: Optional[float] = Field(default=None, gt=0, description="CPU limit in cores, such as 1.5.")
    shm_size: Optional[str] = Field(default=None, description="Size of /dev/shm, such as '2g' (PyTorch data loaders need more than 64m).")
    user: Optional[str] = Field(
        default=None,
        description="User (uid[:gid]) in the container. Default: the host user running the pipeline, so outputs are theirs.",
    )
    env: Dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the step.")
    volumes: List[str] = Field(
        default_factory=list, description="Extra bind mounts: '/host/path:/container/path[:ro]'.", examples=[["/data:/data:ro"]]
    )
    pull_policy: Literal["if_not_present", "always", "never"] = Field(
        default="if_not_present",
        description="When to pull the base image (or `image`): if_not_present, always, or never (hosts with no registry).",
    )
    registry_credentials: Optional[DockerRegistryCredentials] = Field(
        default=None, description="Credentials for pulling from a private registry."
    )
    stop_timeout: int = Field(default=5, ge=0, description="Seconds between SIGTERM and SIGKILL when a step is stopped.")
    poll_interval: float = Field(default=0.1, gt=0, description="Seconds between checks for the end of the container.")

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
        from docker.utils import parse_bytes
        from docker.errors import DockerException

        try:
            parse_bytes(value)
        except DockerException:
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
            raise ValueError("network_mode 'bridge' is not supported: steps use the host network ('host').")
        return value

    # --- the executor interface -------------------------------------------------------------------
    def describe(self) -> str:
        name = getattr(self, "_block_document_name", None)
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
            return f"{env.name}@{env.image_hash(base_id)}"
        finally:
            client.close()

    def run(self, job: StepJob, log: Callable[[str], None]) -> StepOutcome:
        client = self._client()
        try:
            image = self._image(job, client, log)
            mounts, path_map = self._mounts(job)
            argv = job.argv(path_map)
            log(f"command: {shlex.join(argv)} (image {image})")
            env = self._environment(job)
            return self._run_container(job, client, image, argv, env, mounts, log)
        finally:
            client.close()

    # --- parts ---------------------------------------------------------------------------------
    def _block_label(self) -> str:
        name = getattr(self, "_block_document_name", None)
        return f"infrastructure block '{name}' ({type(self).__name__})" if name else f"{type(self).__name__}"

    def _client(self):
        import docker

        where = (self.docker_host.base_url if self.docker_host and self.docker_host.base_url else
                 os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
        try:
            client = self.docker_host.get_client() if self.docker_host else docker.from_env()
            client.ping()
            return client
        except Exception as exc:  # DockerException, requests' ConnectionError, PermissionError
            raise InfrastructureError(
                f"{self._block_label()}: cannot reach the Docker engine at {where} ({_short(exc)}). Start the engine "
                "(e.g. `dockerd`), check permissions on its socket, or point docker_host / DOCKER_HOST at a running one."
            ) from None

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

    def _mounts(self, job: StepJob):
        from docker.types import Mount

        mounts: list = [Mount(CODE_DIR, str(Path(job.code_dir).resolve()), type="bind", read_only=True)]
        path_map: dict[str, str] = {}
        for name, host in job.data_inputs.items():
            host = Path(host).resolve()
            if not host.exists():
                raise InfrastructureError(f"step '{job.step_name}': input '{name}' does not exist at {host}.")
            target = f"{INPUTS_DIR}/{name}"
            if host.is_file():
                target = f"{target}/{host.name}"
            mounts.append(Mount(target, str(host), type="bind", read_only=True))
            path_map[str(host)] = target
        parents = sorted({str(Path(p).resolve().parent) for p in job.outputs.values()})
        for i, parent in enumerate(parents):
            target = OUTPUTS_DIR if len(parents) == 1 else f"{OUTPUTS_DIR}/{i}"
            Path(parent).mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(target, parent, type="bind", read_only=False))
            for p in job.outputs.values():
                rp = Path(p).resolve()
                if str(rp.parent) == parent:
                    path_map[str(rp)] = f"{target}/{rp.name}"
        uri = job.env.get("MLFLOW_TRACKING_URI", "")
        if uri.startswith("sqlite:///"):
            # the store is a file on the host: the container uses it at the same path
            db_dir = Path(uri.removeprefix("sqlite:///")).parent
            db_dir.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(str(db_dir), str(db_dir), type="bind", read_only=False))
        for spec in self.volumes:
            src, dst, ro = parse_volume(spec)
            mounts.append(Mount(dst, src, type="bind", read_only=ro))
        bundle = _runtime_ca_bundle()
        if bundle:
            mounts.append(Mount(CA_PATH, str(bundle), type="bind", read_only=True))

        def to_container(p: Path) -> str:
            return path_map.get(str(Path(p).resolve()), str(p))

        return mounts, to_container

    def _user(self) -> str:
        return self.user or f"{os.getuid()}:{os.getgid()}"

    def _environment(self, job: StepJob) -> dict[str, str]:
        env = {**self.env, **job.env, "PYTHONUNBUFFERED": "1"}
        if not self._user().split(":")[0] in ("0", "root"):
            env.setdefault("HOME", "/tmp")  # a host uid has no home in the image; libraries want a writable one
        if _runtime_ca_bundle():
            for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
                env.setdefault(var, CA_PATH)
        return env

    def _run_container(self, job, client, image, argv, env, mounts, log) -> StepOutcome:
        import docker.errors
        from docker.types import DeviceRequest

        gpu = parse_gpus(self.gpus)
        kwargs: dict[str, Any] = dict(
            image=image, command=argv, working_dir=CODE_DIR, environment=env, mounts=mounts,
            labels={**job.labels, MANAGED_LABEL: "true"}, network_mode=self.network_mode, user=self._user(),
            detach=True, stdin_open=False, tty=False,
            init=True,  # docker-init as PID 1: forwards SIGTERM to the command, reaps zombies
        )
        if self.mem_limit:
            kwargs.update(mem_limit=self.mem_limit, memswap_limit=self.mem_limit)
        if self.cpus:
            kwargs["nano_cpus"] = int(self.cpus * 1e9)
        if self.shm_size:
            kwargs["shm_size"] = self.shm_size
        if gpu:
            kwargs["device_requests"] = [DeviceRequest(**gpu)]
        try:
            container = client.containers.create(**kwargs)
        except docker.errors.ImageNotFound:
            raise InfrastructureError(f"{self._block_label()}: image {image!r} does not exist locally.") from None
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"{self._block_label()}: cannot create the step container: {_short(exc)}") from None
        with _live_lock:
            _live[container.id] = client
        tail = LineTail()
        reader: Optional[threading.Thread] = None
        cancelled = _cancel_event()
        try:
            try:
                container.start()
            except docker.errors.APIError as exc:
                raise self._start_error(exc) from None
            reader = threading.Thread(target=_stream_logs, args=(container, log, tail), daemon=True)
            reader.start()
            deadline = time.monotonic() + job.timeout if job.timeout else None
            # join with a timeout instead of a blocking wait, so Prefect's timeout/cancellation can interrupt
            while reader.is_alive():
                reader.join(self.poll_interval)
                if deadline and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"step '{job.step_name}' timed out after {job.timeout} s; its container was stopped and removed."
                    )
                if cancelled is not None and cancelled.is_set():
                    raise InfrastructureError(f"step '{job.step_name}' was cancelled; its container was stopped and removed.")
            state = self._final_state(client, container.id)
            code = int(state.get("ExitCode", -1))
            reason = None
            if state.get("OOMKilled"):
                limit = self.mem_limit or "no limit set: the host ran out of memory"
                reason = (f"killed: out of memory (mem_limit {limit}); raise mem_limit on {self._block_label()} "
                          "or use less memory")
            elif code == 137:
                reason = "killed (SIGKILL)"
            self._fix_ownership(client, image, mounts)
            return StepOutcome(exit_code=code, last_lines=list(tail), reason=reason)
        finally:
            self._remove(container, client, stop=True)
            if reader is not None:
                reader.join(timeout=5)

    def _start_error(self, exc) -> InfrastructureError:
        msg = _short(exc)
        if GPU_DRIVER_ERROR in msg:
            return InfrastructureError(
                f"{self._block_label()} requests GPUs (gpus={self.gpus!r}) but the Docker engine has no GPU support "
                f"({msg}): the NVIDIA driver and the NVIDIA Container Toolkit (nvidia-container-runtime) are not "
                "installed on this host. Run the step on a GPU host, or on a block without gpus."
            )
        return InfrastructureError(f"{self._block_label()}: the step container did not start: {msg}")

    def _final_state(self, client, cid: str) -> dict:
        # the log stream ended: the container has stopped, or is about to
        while True:
            state = client.api.inspect_container(cid)["State"]
            if not state.get("Running"):
                return state
            time.sleep(self.poll_interval)

    def _remove(self, container, client, stop: bool) -> None:
        try:
            try:
                container.reload()
                if container.status == "running":
                    container.stop(timeout=self.stop_timeout)
            except Exception:  # noqa: BLE001 - removal below is what matters
                pass
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone, or the engine went away
            pass
        finally:
            with _live_lock:
                _live.pop(container.id, None)

    def _fix_ownership(self, client, image: str, mounts: list) -> None:
        """With a custom `user`, hand the outputs back to the host user (a short root container)."""
        host_uid = os.getuid()
        if not self.user or host_uid == 0 or self.user.split(":")[0] == str(host_uid):
            return
        from docker.types import Mount

        targets = [m for m in mounts if m["Target"].startswith(OUTPUTS_DIR)]
        if not targets:
            return
        fix = [Mount(m["Target"], m["Source"], type="bind") for m in targets]
        try:
            client.containers.run(
                image, ["chown", "-R", f"{host_uid}:{os.getgid()}", *[m["Target"] for m in targets]],
                mounts=fix, user="0", network_mode=self.network_mode, remove=True,
                labels={MANAGED_LABEL: "true"},
            )
        except Exception as exc:  # noqa: BLE001
            raise InfrastructureError(f"{self._block_label()}: could not give the outputs back to uid {host_uid}: {_short(exc)}") from None


def _stream_logs(container, log: Callable[[str], None], tail: LineTail) -> None:
    """Forward the container's output line by line as it arrives (docker frames are not lines)."""
    buf = b""
    try:
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                tail.add(line)
                log(line)
    except Exception:  # noqa: BLE001 - the container was removed under us (timeout, cancel)
        pass
    if buf:
        line = buf.decode("utf-8", "replace").rstrip("\r")
        tail.add(line)
        log(line)


def _cancel_event() -> Optional[threading.Event]:
    """The event Prefect's thread-pool task runner sets when the flow run is cancelled (or terminated).

    Prefect sets it from `cancel_all()` and then waits for the task's thread; without watching it a
    step would run to completion after a cancel. Not public API: None when it cannot be found.
    """
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        flow_ctx, task_ctx = FlowRunContext.get(), TaskRunContext.get()
        if not flow_ctx or not task_ctx:
            return None
        events = getattr(flow_ctx.task_runner, "_cancel_events", None) or {}
        event = events.get(task_ctx.task_run.id)
        return event if isinstance(event, threading.Event) else None
    except Exception:  # noqa: BLE001
        return None


def _runtime_ca_bundle() -> Optional[Path]:
    """The extra CA bundle to mount into step containers: only an explicitly configured one."""
    value = os.environ.get("PREFECT_ML_BUILD_CA_BUNDLE", "").strip()
    if not value or value.lower() in ("none", "off", "false", "0"):
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise EnvironmentSpecError(f"PREFECT_ML_BUILD_CA_BUNDLE={value!r} is not a file; point it at a PEM CA bundle.")
    return path


def _short(exc: BaseException) -> str:
    msg = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    msg = str(msg).strip().splitlines()[0] if str(msg).strip() else type(exc).__name__
    return msg[:300]
