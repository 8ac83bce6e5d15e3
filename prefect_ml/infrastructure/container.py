"""Run one step's command in a Docker container: mounts, create, start, stream, wait, clean up.

What the container sees (the step contract):
    /prefect-ml/code              the component's code dir, read-only, the working directory
    /prefect-ml/inputs/<name>     each data input, read-only (a local input is bind-mounted where it
                                  lives, never copied; a file keeps its name: .../<name>/<file>)
    /prefect-ml/outputs/<output>  the attempt's staging dir, read-write (outputs that do not exist yet,
                                  such as an mlflow_model dir, can be created there)
    the MLflow SQLite store       when MLFLOW_TRACKING_URI is sqlite:///..., its directory at the same path
Placeholders render to these paths. The container runs with network mode `host` and, by default,
as the host's uid:gid, so the outputs belong to the user who runs the pipeline.

This module is the code that runs a container; what to run it with is `ContainerOptions`, which the
block `prefect_ml.infrastructure.docker.DockerStepInfrastructure` makes from its fields (the shape of
prefect-docker's worker: job configuration apart from the code that runs it). docker-py is imported
inside the functions.
"""

from __future__ import annotations

import atexit
import os
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_ml._compat import task_cancel_event
from prefect_ml.environments import ca_bundle
from prefect_ml.errors import InfrastructureError
from prefect_ml.infrastructure.base import LineTail, StepJob, StepOutcome
from prefect_ml.infrastructure.docker_client import short_error

CODE_DIR = "/prefect-ml/code"
INPUTS_DIR = "/prefect-ml/inputs"
OUTPUTS_DIR = "/prefect-ml/outputs"
CA_PATH = "/etc/prefect-ml/ca-bundle.crt"
MANAGED_LABEL = "prefect-ml.managed"
GPU_DRIVER_ERROR = "could not select device driver"

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class ContainerOptions:
    """How to run step containers: what a `DockerStepInfrastructure` block configures, as plain data."""

    who: str  # names the configuration in messages, e.g. "infrastructure block 'cpu' (DockerStepInfrastructure)"
    network_mode: str = "host"
    user: str | None = None  # None: the host's uid:gid
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[tuple[str, str, bool], ...] = ()  # (host, container, read_only)
    mem_limit: str | None = None
    cpus: float | None = None
    shm_size: str | None = None
    device_request: dict | None = None  # keyword arguments of one docker.types.DeviceRequest
    gpus: Any = None  # the GPU request as configured, for messages
    stop_timeout: int = 5
    poll_interval: float = 0.1

    @property
    def run_as(self) -> str:
        return self.user or f"{os.getuid()}:{os.getgid()}"


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
        except Exception:
            pass


atexit.register(_remove_live_containers)


def run_container(client, job: StepJob, image: str, options: ContainerOptions, log: Log) -> StepOutcome:
    """Run `job` in a container of `image`, streaming its output to `log`; the container is removed after.

    A timeout (`job.timeout`) or a cancelled flow run stops and removes the container and raises.
    """
    bundle = ca_bundle(explicit_only=True)  # the runtime CA bundle: only an explicitly configured one
    mounts, path_map = container_mounts(job, options, bundle)
    argv = job.argv(path_map)
    log(f"command: {shlex.join(argv)} (image {image})")
    env = container_environment(job, options, bundle)
    return _run(client, job, image, argv, env, mounts, options, log)


def container_mounts(job: StepJob, options: ContainerOptions, bundle: Path | None = None):
    """The bind mounts of a step's container, and a function host path -> path in the container."""
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
    for src, dst, read_only in options.volumes:
        mounts.append(Mount(dst, src, type="bind", read_only=read_only))
    if bundle:
        mounts.append(Mount(CA_PATH, str(bundle), type="bind", read_only=True))

    def to_container(p: Path) -> str:
        return path_map.get(str(Path(p).resolve()), str(p))

    return mounts, to_container


def container_environment(job: StepJob, options: ContainerOptions, bundle: Path | None = None) -> dict[str, str]:
    """The step's environment variables in the container."""
    env = {**options.env, **job.env, "PYTHONUNBUFFERED": "1"}
    if options.run_as.split(":")[0] not in ("0", "root"):
        env.setdefault("HOME", "/tmp")  # a host uid has no home in the image; libraries want a writable one
    if bundle:
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
            env.setdefault(var, CA_PATH)
    return env


def _run(client, job: StepJob, image: str, argv: list[str], env: dict[str, str], mounts: list,
         options: ContainerOptions, log: Log) -> StepOutcome:
    import docker.errors
    from docker.types import DeviceRequest

    kwargs: dict[str, Any] = dict(
        image=image, command=argv, working_dir=CODE_DIR, environment=env, mounts=mounts,
        labels={**job.labels, MANAGED_LABEL: "true"}, network_mode=options.network_mode, user=options.run_as,
        detach=True, stdin_open=False, tty=False,
        init=True,  # docker-init as PID 1: forwards SIGTERM to the command, reaps zombies
    )
    if options.mem_limit:
        kwargs.update(mem_limit=options.mem_limit, memswap_limit=options.mem_limit)
    if options.cpus:
        kwargs["nano_cpus"] = int(options.cpus * 1e9)
    if options.shm_size:
        kwargs["shm_size"] = options.shm_size
    if options.device_request:
        kwargs["device_requests"] = [DeviceRequest(**options.device_request)]
    try:
        container = client.containers.create(**kwargs)
    except docker.errors.ImageNotFound:
        # the message says all there is to say; docker-py's 404 adds nothing
        raise InfrastructureError(f"{options.who}: image {image!r} does not exist locally.") from None
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"{options.who}: cannot create the step container: {short_error(exc)}") from exc
    with _live_lock:
        _live[container.id] = client
    tail = LineTail()
    reader: threading.Thread | None = None
    cancelled = task_cancel_event()
    try:
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise _start_error(exc, options) from exc
        reader = threading.Thread(target=_stream_logs, args=(container, log, tail), daemon=True)
        reader.start()
        deadline = time.monotonic() + job.timeout if job.timeout else None
        # join with a timeout instead of a blocking wait, so Prefect's timeout/cancellation can interrupt
        while reader.is_alive():
            reader.join(options.poll_interval)
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(
                    f"step '{job.step_name}' timed out after {job.timeout} s; its container was stopped and removed."
                )
            if cancelled is not None and cancelled.is_set():
                raise InfrastructureError(f"step '{job.step_name}' was cancelled; its container was stopped and "
                    "removed.")
        state = _final_state(client, container.id, options.poll_interval)
        code = int(state.get("ExitCode", -1))
        reason = None
        if state.get("OOMKilled"):
            limit = options.mem_limit or "no limit set: the host ran out of memory"
            reason = (f"killed: out of memory (mem_limit {limit}); raise mem_limit on {options.who} "
                      "or use less memory")
        elif code == 137:
            reason = "killed (SIGKILL)"
        _fix_ownership(client, image, mounts, options)
        return StepOutcome(exit_code=code, last_lines=list(tail), reason=reason)
    finally:
        _remove(container, options.stop_timeout)
        if reader is not None:
            reader.join(timeout=5)


def _start_error(exc, options: ContainerOptions) -> InfrastructureError:
    msg = short_error(exc)
    if GPU_DRIVER_ERROR in msg:
        return InfrastructureError(
            f"{options.who} requests GPUs (gpus={options.gpus!r}) but the Docker engine has no GPU support "
            f"({msg}): the NVIDIA driver and the NVIDIA Container Toolkit (nvidia-container-runtime) are not "
            "installed on this host. Run the step on a GPU host, or on a block without gpus."
        )
    return InfrastructureError(f"{options.who}: the step container did not start: {msg}")


def _final_state(client, cid: str, poll_interval: float) -> dict:
    # the log stream ended: the container has stopped, or is about to
    while True:
        state = client.api.inspect_container(cid)["State"]
        if not state.get("Running"):
            return state
        time.sleep(poll_interval)


def _remove(container, stop_timeout: int) -> None:
    try:
        try:
            container.reload()
            if container.status == "running":
                container.stop(timeout=stop_timeout)
        except Exception:
            pass
        container.remove(force=True)
    except Exception:
        pass
    finally:
        with _live_lock:
            _live.pop(container.id, None)


def _fix_ownership(client, image: str, mounts: list, options: ContainerOptions) -> None:
    """With a custom `user`, hand the outputs back to the host user (a short root container)."""
    host_uid = os.getuid()
    if not options.user or host_uid == 0 or options.user.split(":")[0] == str(host_uid):
        return
    from docker.types import Mount

    targets = [m for m in mounts if m["Target"].startswith(OUTPUTS_DIR)]
    if not targets:
        return
    fix = [Mount(m["Target"], m["Source"], type="bind") for m in targets]
    try:
        client.containers.run(
            image, ["chown", "-R", f"{host_uid}:{os.getgid()}", *[m["Target"] for m in targets]],
            mounts=fix, user="0", network_mode=options.network_mode, remove=True,
            labels={MANAGED_LABEL: "true"},
        )
    except Exception as exc:
        raise InfrastructureError(
            f"{options.who}: could not give the outputs back to uid {host_uid}: {short_error(exc)}"
        ) from exc


def _stream_logs(container, log: Log, tail: LineTail) -> None:
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
    except Exception:
        pass
    if buf:
        line = buf.decode("utf-8", "replace").rstrip("\r")
        tail.add(line)
        log(line)
