"""Run one step's command in a Docker container: mounts, create, start, stream, wait, clean up.

What the container sees (the step contract; docs/docker.md lists the same):
    /prefect-ml/code              the component's code dir, read-only, the working directory
    /prefect-ml/inputs/<name>     each data input, read-only (a local input is bind-mounted where it
                                  lives, never copied; a file keeps its name: .../<name>/<file>)
    /prefect-ml/outputs/<output>  the attempt's staging dir, read-write (outputs that do not exist yet,
                                  such as an mlflow_model dir, can be created there)
    /prefect-ml/mlruns            a fresh, private MLflow file store for this step (read-write; the
                                  "relay"): what the step logs there is copied into the step's real
                                  MLflow run by the host afterwards, and the dir is then deleted
Nothing else of the host is mounted: not PREFECT_ML_HOME, not the artifact root, not the MLflow store.
On an engine on another machine (`ContainerOptions.transfer == "copy"`, decided by
`docker_client.engine_transfer`) the same paths are copied in before the start and the read-write ones
copied back after the exit, through the Docker API (`prefect_ml.infrastructure.archive`): no bind mount.
Containers run with network mode `none` and, by default, as a non-root user (the host's uid:gid, or
65534:65534 "nobody" when the pipeline runs as root); the output dirs are handed to that user before
the run and back to the host user after it. A block can opt into `network_mode="host"` (then an
http(s) MLflow tracking URI is passed through unchanged) and another `user`.

Every container carries the labels `prefect-ml.managed=true` and `prefect-ml.owner=<host>:<pid>:<start>`
(the pipeline process); a later run's first Docker step (and `prefect-ml gc`) removes containers whose
owner process has ended: those a `kill -9` of a pipeline left behind.

This module is the code that runs a container; what to run it with is `ContainerOptions`, which the
block `prefect_ml.infrastructure.docker.DockerStepInfrastructure` makes from its fields (the shape of
prefect-docker's worker: job configuration apart from the code that runs it). docker-py is imported
inside the functions.
"""

from __future__ import annotations

import atexit
import glob
import json
import math
import os
import shlex
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from prefect_ml._compat import task_cancel_event
from prefect_ml.environments import ca_bundle
from prefect_ml.errors import InfrastructureError
from prefect_ml.infrastructure.archive import Place, pack, unpack
from prefect_ml.infrastructure.base import LineTail, StepJob, StepOutcome
from prefect_ml.infrastructure.docker_client import short_error

CODE_DIR = "/prefect-ml/code"
INPUTS_DIR = "/prefect-ml/inputs"
OUTPUTS_DIR = "/prefect-ml/outputs"
RELAY_DIR = "/prefect-ml/mlruns"
CA_PATH = "/etc/prefect-ml/ca-bundle.crt"
MANAGED_LABEL = "prefect-ml.managed"
OWNER_LABEL = "prefect-ml.owner"
FLOW_RUN_LABEL = "prefect-ml.flow-run-id"
NOBODY = "65534:65534"  # Debian's nobody:nogroup; the default user when the pipeline runs as root
DEFAULT_NETWORK = "none"
GPU_DRIVER_ERROR = "could not select device driver"

Log = Callable[[str], None]


def default_user() -> str:
    """The container user when a block sets none: the host's uid:gid, or nobody when that is root."""
    uid = os.getuid()
    return NOBODY if uid == 0 else f"{uid}:{os.getgid()}"


@dataclass(frozen=True, kw_only=True)
class ContainerOptions:
    """How to run step containers: what a `DockerStepInfrastructure` block configures, as plain data."""

    who: str  # names the configuration in messages, e.g. "infrastructure block 'cpu' (DockerStepInfrastructure)"
    network_mode: str = DEFAULT_NETWORK
    user: str | None = None  # None: `default_user()`
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[tuple[str, str, bool], ...] = ()  # (host, container, read_only)
    mem_limit: str | None = None
    cpus: float | None = None
    shm_size: str | None = None
    device_request: dict | None = None  # keyword arguments of one docker.types.DeviceRequest
    gpus: Any = None  # the GPU request as configured, for messages
    stop_timeout: int = 5
    poll_interval: float = 0.1
    # how the step's files reach the container: bind mounts ("mount": the engine is on this machine)
    # or copies through the Docker API ("copy": a remote engine; prefect_ml.infrastructure.archive)
    transfer: str = "mount"

    @property
    def run_as(self) -> str:
        return self.user or default_user()


def _ids(user: str) -> tuple[int | None, int | None]:
    """(uid, gid) of a `uid[:gid]` user; None for a part that is a name (resolved only in the image)."""
    uid_s, _, gid_s = user.partition(":")
    uid = int(uid_s) if uid_s.isdigit() else (0 if uid_s == "root" else None)
    gid = int(gid_s) if gid_s.isdigit() else (0 if gid_s == "root" else None)
    return uid, gid


# --- who owns a container: the pipeline process (for sweeping what a kill -9 left behind) ------------


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat): with the pid
    it names one process, even after the pid is reused. None when the process does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name in (...) may hold spaces
    return fields[19] if len(fields) > 19 else None


def owner_label() -> str:
    """`<hostname>:<pid>:<start time>` of this process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process named by an owner label still runs; None when it is another host's."""
    try:
        host, pid_s, start = owner.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    return _start_time(pid) == start


def orphaned_containers(client, *, unowned_older_than: float | None = None) -> list:
    """Step containers whose pipeline process has ended (on this host): left behind by a kill -9.

    Containers of another host's pipelines are never listed. A container without an owner label
    (made by an older prefect-ml) is listed only with `unowned_older_than` (seconds), once it has
    stopped and been created that long ago (`prefect-ml gc`): its owner cannot be checked.
    """
    found = []
    now = time.time()
    for c in client.containers.list(all=True, filters={"label": [MANAGED_LABEL]}):
        owner = (c.labels or {}).get(OWNER_LABEL)
        if owner is None:
            if unowned_older_than is not None and c.status in ("exited", "dead", "created"):
                created = _created_at(c.attrs.get("Created", ""))
                if created is not None and now - created > unowned_older_than:
                    found.append(c)
        elif owner_alive(owner) is False:
            found.append(c)
    return found


def _created_at(value: str) -> float | None:
    """Seconds since the epoch of Docker's `Created` timestamp (RFC 3339 with nanoseconds)."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(value[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return None


_swept: set[str] = set()
_swept_lock = threading.Lock()


def sweep_orphans(client, log: Log) -> int:
    """Once per process and engine: remove the step containers of pipeline processes that have ended."""
    engine = str(getattr(client.api, "base_url", ""))
    with _swept_lock:
        if engine in _swept:
            return 0
        _swept.add(engine)
    removed = 0
    try:
        for c in orphaned_containers(client):
            try:
                c.remove(force=True)
                removed += 1
            except Exception:
                pass
    except Exception:
        return removed
    if removed:
        log(f"removed {removed} leftover step container(s) of pipeline processes that ended without cleaning up")
    return removed


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
    sweep_orphans(client, log)
    bundle = ca_bundle(explicit_only=True)  # the runtime CA bundle: only an explicitly configured one
    with mlflow_relay(job, options, log) as relay:
        if options.transfer == "copy":
            places, path_map = step_places(job, options, bundle, relay=relay)
            mounts = _volume_mounts(options)
        else:
            places = []
            mounts, path_map = container_mounts(job, options, bundle, relay=relay)
        env = container_environment(job, options, bundle, relay=relay)
        argv = job.argv(path_map, env)
        if job.distribution is not None:  # N processes in this one container (the block's max_instances is 1)
            from prefect_ml.infrastructure import distributed

            # free on this loopback: with network mode host the container shares it; otherwise (none) it
            # has a loopback of its own, where every port is free
            port = distributed.free_port()
            env = distributed.instance_env(env, job.distribution, node_rank=0, master_port=port)
            argv = distributed.launcher_argv("python", job.distribution, argv, node_rank=0, master_port=port)
            log(distributed.describe(job.distribution))
        log(f"command: {shlex.join(argv)} (image {image}, user {options.run_as}, network {options.network_mode}"
            f"{', files copied: the engine is not on this machine' if options.transfer == 'copy' else ''})")
        return _run(client, job, image, argv, env, mounts, options, log, copied=places)


def _readable_by(path: Path, uid: int, gid: int | None, *, directory: bool) -> bool:
    """Whether `uid`/`gid` may read `path` (and enter it, for a directory), from its mode bits alone."""
    st = path.stat()
    need = 0o5 if directory else 0o4
    if uid == 0:
        return True
    if st.st_uid == uid:
        return (st.st_mode >> 6) & need == need
    if gid is not None and st.st_gid == gid:
        return (st.st_mode >> 3) & need == need
    return st.st_mode & need == need


def _check_readable(job: StepJob, options: ContainerOptions, what: str, path: Path) -> None:
    """Fail before anything starts when the container user cannot read a mounted code dir or input
    (e.g. `--param data=file:///etc/shadow`, or a 0700 dir): say why and what to do."""
    uid, gid = _ids(options.run_as)
    if uid is None:  # a user name: only the image knows its uid
        return
    if _readable_by(path, uid, gid, directory=path.is_dir()):
        return
    st = path.stat()
    raise InfrastructureError(
        f"step '{job.step_name}': {what} {path} is not readable by the container user {options.run_as} "
        f"(mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}); steps in Docker run as a non-root user. "
        "Make it readable (e.g. chmod o+rX), or set `user` on the infrastructure block to a user that may read it."
    )


def step_places(job: StepJob, options: ContainerOptions, bundle: Path | None = None, *,
                relay: Path | None = None) -> tuple[list[Place], Callable[[Path], str]]:
    """What of this machine the step's container sees, and where (bind mounts, or copies on a remote
    engine: `prefect_ml.infrastructure.archive`), and a function host path -> path in the container."""
    code = Path(job.code_dir).resolve()
    _check_readable(job, options, "the code dir", code)
    places: list[Place] = [Place(code, CODE_DIR)]
    path_map: dict[str, str] = {}
    for name, host in job.data_inputs.items():
        host = Path(host).resolve()
        if not host.exists():
            raise InfrastructureError(f"step '{job.step_name}': input '{name}' does not exist at {host}.")
        _check_readable(job, options, f"input '{name}'", host)
        target = f"{INPUTS_DIR}/{name}"
        if host.is_file():
            target = f"{target}/{host.name}"
        places.append(Place(host, target))
        path_map[str(host)] = target
    parents = sorted({str(Path(p).resolve().parent) for p in job.outputs.values()})
    for i, parent in enumerate(parents):
        target = OUTPUTS_DIR if len(parents) == 1 else f"{OUTPUTS_DIR}/{i}"
        Path(parent).mkdir(parents=True, exist_ok=True)
        places.append(Place(Path(parent), target, writable=True))
        for p in job.outputs.values():
            rp = Path(p).resolve()
            if str(rp.parent) == parent:
                path_map[str(rp)] = f"{target}/{rp.name}"
    if relay is not None:
        places.append(Place(relay, RELAY_DIR, writable=True))
    if bundle:
        places.append(Place(Path(bundle), CA_PATH))

    def to_container(p: Path) -> str:
        return path_map.get(str(Path(p).resolve()), str(p))

    return places, to_container


def container_mounts(job: StepJob, options: ContainerOptions, bundle: Path | None = None, *,
                     relay: Path | None = None):
    """The bind mounts of a step's container, and a function host path -> path in the container."""
    from docker.types import Mount

    places, to_container = step_places(job, options, bundle, relay=relay)
    mounts = [Mount(p.target, str(p.host), type="bind", read_only=not p.writable) for p in places]
    return mounts + _volume_mounts(options), to_container


def _volume_mounts(options: ContainerOptions) -> list:
    """The block's own `volumes`: paths on the engine's machine, mounted in either transfer mode."""
    from docker.types import Mount

    return [Mount(dst, src, type="bind", read_only=read_only) for src, dst, read_only in options.volumes]


def container_environment(job: StepJob, options: ContainerOptions, bundle: Path | None = None, *,
                          relay: Path | None = None) -> dict[str, str]:
    """The step's environment variables in the container."""
    env = {**options.env, **job.env, "PYTHONUNBUFFERED": "1"}
    if relay is not None:
        # the step logs into its private file store; the host copies it into the real run afterwards
        env.update(MLFLOW_TRACKING_URI=f"file://{RELAY_DIR}", MLFLOW_ALLOW_FILE_STORE="true")
        env.pop("MLFLOW_REGISTRY_URI", None)
        env.setdefault("GIT_PYTHON_REFRESH", "quiet")  # images have no git: mlflow warns at length
    if options.run_as.split(":")[0] not in ("0", "root"):
        env.setdefault("HOME", "/tmp")  # a host uid has no home in the image; libraries want a writable one
    if bundle:
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
            env.setdefault(var, CA_PATH)
    return env


# --- MLflow inside a step: the relay ------------------------------------------------------------------
#
# Images hold mlflow-skinny (no SQL store), and the host's store must stay out of reach of the step
# (it holds every run and the model registry). So unless the tracking URI is an http(s) server the
# container may reach (network_mode "host"), the step gets a fresh MLflow file store of its own with
# its run already in it (same run id as MLFLOW_RUN_ID, so `mlflow.start_run()` resumes it), and the
# host copies what was logged there (params, metrics with their history, tags, artifacts) into the
# real run after the step. What the container wrote is untrusted: links and special files are
# skipped, sizes are bounded.

RELAY_EXPERIMENT = "0"
RELAY_MAX_FILES = 10_000
RELAY_MAX_VALUE = 6_000  # MLflow's param value limit; tags are cut at 5000 as elsewhere
RELAY_MAX_METRIC_BYTES = 16 * 1024 * 1024


def relay_needed(job: StepJob, options: ContainerOptions) -> bool:
    """True unless the step has no MLflow run, or can reach an http(s) tracking server itself."""
    uri = job.env.get("MLFLOW_TRACKING_URI", "")
    if not uri or not job.env.get("MLFLOW_RUN_ID"):
        return False
    return not (uri.startswith(("http://", "https://")) and options.network_mode == "host")


@contextmanager
def mlflow_relay(job: StepJob, options: ContainerOptions, log: Log) -> Iterator[Path | None]:
    """A private MLflow file store for the step (None when not needed), relayed into the real run after."""
    if not relay_needed(job, options):
        yield None
        return
    from prefect_ml.settings import get_settings

    base = get_settings().home_path / "staging"
    base.mkdir(parents=True, exist_ok=True)
    relay = Path(tempfile.mkdtemp(prefix="mlruns-", dir=base))
    try:
        _init_relay_store(relay, job.env["MLFLOW_RUN_ID"], job.step_name)
        _grant(relay, options, recursive=True)
        yield relay
        try:
            inputs = {**job.values, **{k: None for k in job.data_inputs}}
            n = relay_into_run(relay, job.env["MLFLOW_TRACKING_URI"], job.env["MLFLOW_RUN_ID"], log, inputs)
            if n:
                log(f"MLflow: copied {n} value(s) the step logged into its run {job.env['MLFLOW_RUN_ID']}")
        except Exception as exc:  # the step's result does not depend on its extra logging
            log(f"warning: could not copy what the step logged to MLflow into its run: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(relay, ignore_errors=True)


def _init_relay_store(relay: Path, run_id: str, run_name: str) -> None:
    """An MLflow file store holding experiment 0 and the run `run_id` (the layout mlflow's FileStore reads)."""
    now = int(time.time() * 1000)
    exp = relay / RELAY_EXPERIMENT
    run = exp / run_id
    for sub in ("metrics", "params", "tags", "artifacts"):
        (run / sub).mkdir(parents=True)
    (exp / "meta.yaml").write_text(
        f"artifact_location: file://{RELAY_DIR}/{RELAY_EXPERIMENT}\ncreation_time: {now}\n"
        f"experiment_id: '{RELAY_EXPERIMENT}'\nlast_update_time: {now}\nlifecycle_stage: active\nname: Default\n")
    (run / "meta.yaml").write_text(
        f"artifact_uri: file://{RELAY_DIR}/{RELAY_EXPERIMENT}/{run_id}/artifacts\nend_time: null\n"
        f"entry_point_name: ''\nexperiment_id: '{RELAY_EXPERIMENT}'\nlifecycle_stage: active\nrun_id: {run_id}\n"
        f"run_name: {json.dumps(run_name)}\nrun_uuid: {run_id}\nsource_name: ''\nsource_type: 4\nsource_version: ''\n"
        f"start_time: {now}\nstatus: 1\ntags: []\nuser_id: prefect-ml\n")


def _regular_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative name, path) of the regular files under `root`; links and special files are skipped."""
    if root.is_symlink() or not root.is_dir():
        return
    for dirpath, _dirs, files in os.walk(root):  # followlinks=False: a linked dir is not entered
        for name in files:
            path = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield str(path.relative_to(root)), path


def _read_small(path: Path, limit: int) -> str | None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data.decode("utf-8", "replace")


def read_relay(relay: Path) -> tuple[dict[str, str], list[tuple[str, float, int, int]], dict[str, str], list[Path]]:
    """What the step logged in its relay store: params, metrics (key, value, timestamp, step), tags
    (MLflow's own `mlflow.*` tags left out) and artifact dirs, over every run in the store."""
    params: dict[str, str] = {}
    metrics: list[tuple[str, float, int, int]] = []
    tags: dict[str, str] = {}
    artifacts: list[Path] = []
    count = 0
    for exp in sorted(p for p in relay.iterdir() if p.is_dir() and not p.is_symlink()):
        for run in sorted(p for p in exp.iterdir() if p.is_dir() and not p.is_symlink()):
            for key, path in _regular_files(run / "params"):
                count += 1
                value = _read_small(path, RELAY_MAX_VALUE)
                if value is not None and count <= RELAY_MAX_FILES:
                    params[key] = value
            for key, path in _regular_files(run / "tags"):
                count += 1
                value = _read_small(path, RELAY_MAX_VALUE)
                if value is not None and count <= RELAY_MAX_FILES and (
                        not key.startswith("mlflow.") or key == "mlflow.note.content"):
                    tags[key] = value[:5000]
            for key, path in _regular_files(run / "metrics"):
                count += 1
                text = _read_small(path, RELAY_MAX_METRIC_BYTES)
                if text is None or count > RELAY_MAX_FILES:
                    continue
                for line in text.splitlines():
                    parts = line.split()
                    try:
                        ts, number, step = int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) > 2 else 0
                    except (ValueError, IndexError):
                        continue
                    if math.isfinite(number):
                        metrics.append((key, number, ts, step))
            if (run / "artifacts").is_dir() and any(True for _ in _regular_files(run / "artifacts")):
                artifacts.append(run / "artifacts")
    return params, metrics, tags, artifacts


def relay_into_run(relay: Path, tracking_uri: str, run_id: str, log: Log,
                   inputs: Mapping[str, str | None] | None = None) -> int:
    """Copy what the step logged in `relay` into the run `run_id` of the real store; how many values.

    `inputs`: the step's input names (their values as text, None for data inputs): the run has them as
    params already (possibly still queued), and MLflow refuses to change a param, so a step param of
    the same name is not copied. Each kind is copied on its own: one that fails does not lose the rest.
    """
    params, metrics, tags, artifacts = read_relay(relay)
    if not (params or metrics or tags or artifacts):
        return 0
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    existing: dict[str, str | None] = {**(inputs or {})}
    if params:
        existing.update(client.get_run(run_id).data.params)
    new_params = []
    for k, v in params.items():
        if k in existing:
            if existing[k] is not None and existing[k] != v:
                log(f"warning: the step logged param {k!r}={v!r} but its run already has {k}={existing[k]!r} "
                    "(an input of the step); MLflow params cannot change, so it was not copied")
            continue
        new_params.append(Param(k, v))
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    metric_list = [Metric(k, v, ts, step) for k, v, ts, step in metrics]
    done = 0
    for kind, items, size, field_name in (("params", new_params, 100, "params"), ("tags", tag_list, 100, "tags"),
                                          ("metrics", metric_list, 1000, "metrics")):
        try:
            for i in range(0, len(items), size):
                client.log_batch(run_id, **{field_name: items[i:i + size]})  # type: ignore[arg-type]
            done += len(items)
        except Exception as exc:
            log(f"warning: could not copy the step's MLflow {kind} into its run: {type(exc).__name__}: {exc}")
    for art in artifacts:
        for rel, path in _regular_files(art):
            parent = str(Path(rel).parent)
            try:
                client.log_artifact(run_id, str(path), artifact_path=None if parent == "." else parent)
                done += 1
            except Exception as exc:
                log(f"warning: could not copy the step's MLflow artifact {rel}: {type(exc).__name__}: {exc}")
    return done


# --- ownership of the read-write dirs -----------------------------------------------------------------


def _grant(path: Path, options: ContainerOptions, *, recursive: bool = False) -> None:
    """Let the container user write into a host dir we made for it (an output staging dir, the relay)."""
    uid, gid = _ids(options.run_as)
    if uid == os.getuid() or uid == 0:
        return
    paths = [path]
    if recursive:
        paths += [Path(d) / n for d, dirs, files in os.walk(path) for n in [*dirs, *files]]
    for p in paths:
        if os.getuid() == 0 and uid is not None:
            os.lchown(p, uid, -1 if gid is None else gid)
        elif not p.is_symlink():
            p.chmod(0o777 if p.is_dir() else 0o666)  # a user name, or a non-root host: open the dir


def _give_back_in_process(paths: list[str]) -> None:
    """As root on the host: hand the container user's files back to root, never following a link."""
    uid, gid = os.getuid(), os.getgid()
    for top in paths:
        os.lchown(top, uid, gid)
        for dirpath, dirs, files in os.walk(top):
            for n in [*dirs, *files]:
                try:
                    os.lchown(os.path.join(dirpath, n), uid, gid)
                except OSError:
                    pass


def _run(client, job: StepJob, image: str, argv: list[str], env: dict[str, str], mounts: list,
         options: ContainerOptions, log: Log, copied: list[Place] | None = None) -> StepOutcome:
    """Create, (copy in,) start, stream, wait, (copy out,) remove. `copied`: the places to copy in
    and out instead of mounting them (a remote engine)."""
    import docker.errors
    from docker.types import DeviceRequest

    for m in mounts:
        if not m.get("ReadOnly") and m["Target"].startswith(OUTPUTS_DIR):
            _grant(Path(m["Source"]), options, recursive=True)  # with the output folders made in it
    kwargs: dict[str, Any] = dict(
        image=image, command=argv, working_dir=CODE_DIR, environment=env, mounts=mounts,
        labels={**job.labels, MANAGED_LABEL: "true", OWNER_LABEL: owner_label()},
        network_mode=options.network_mode, user=options.run_as,
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
    started = False
    try:
        if copied:
            _copy_in(container, copied, options, log)
        try:
            container.start()
            started = True
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
        if copied:
            _copy_out(container, job, copied, outputs=code == 0 and reason is None, log=log)
        return StepOutcome(exit_code=code, last_lines=list(tail), reason=reason)
    finally:
        _remove(container, options.stop_timeout)
        if reader is not None:
            reader.join(timeout=5)
        if started:
            # also after a failure or a stop: the staging dirs are then discarded by the host
            _fix_ownership(client, image, mounts, options)


def _copy_in(container, places: list[Place], options: ContainerOptions, log: Log) -> None:
    """Put the step's files where the mounts would have put them, before the container starts."""
    import docker.errors

    uid, gid = _ids(options.run_as)
    parents: set[str] = set()
    for p in places:
        parent = PurePosixPath(p.target).parent
        while len(parent.parts) > 2 or (len(parent.parts) == 2 and str(parent) == "/prefect-ml"):
            parents.add(str(parent))  # /prefect-ml/... and e.g. /etc/prefect-ml, never /etc itself
            parent = parent.parent
    started = time.monotonic()
    try:
        archive, count, size = pack(places, uid=uid, gid=gid, dirs=sorted(parents))
    except OSError as exc:  # e.g. a file in an input dir this process may not read
        raise InfrastructureError(f"{options.who}: could not pack the step's files to copy them into its "
                                  f"container: {exc}") from None
    try:
        container.put_archive("/", archive)
    except (docker.errors.APIError, OSError) as exc:
        raise InfrastructureError(
            f"{options.who}: could not copy the step's files into its container: {short_error(exc)}") from exc
    finally:
        archive.close()
    log(f"copied {count} file(s) ({size / 1e6:.1f} MB) into the container in {time.monotonic() - started:.2f} s "
        "(the engine is not on this machine: no bind mounts)")


def _copy_out(container, job: StepJob, places: list[Place], *, outputs: bool, log: Log) -> None:
    """After the container exited: its outputs (only after a success: a failed step publishes nothing)
    and its MLflow relay store back into their host dirs."""
    import docker.errors

    started = time.monotonic()
    count = size = 0
    for p in places:
        if not p.writable:
            continue
        relay = p.target == RELAY_DIR
        if not (relay or outputs):
            continue
        try:
            stream, _ = container.get_archive(p.target)
            n, b = unpack(stream, PurePosixPath(p.target).name, p.host)
            if not relay:
                count, size = count + n, size + b
        except (docker.errors.APIError, OSError, tarfile.TarError) as exc:
            if relay:  # the step's result does not depend on its extra logging
                log(f"warning: could not copy the step's MLflow store out of its container: {short_error(exc)}")
                continue
            what = (f"it wrote a link out of its outputs ({exc})" if isinstance(exc, tarfile.FilterError)
                    else short_error(exc))
            raise InfrastructureError(
                f"step '{job.step_name}': could not copy its outputs out of the container: {what}") from None
    if outputs:
        log(f"copied {count} output file(s) ({size / 1e6:.1f} MB) out of the container in "
            f"{time.monotonic() - started:.2f} s")


# --- GPUs: checked before the image is built (a GPU image is large) ------------------------------------

GPU_DOCS = "docs/gpu.md"
GPU_HOOKS = ("nvidia-container-runtime-hook", "nvidia-container-runtime", "nvidia-ctk")


def machine_gpu() -> tuple[bool, str]:
    """(whether this machine has an NVIDIA GPU with its driver, what was seen)."""
    devices = sorted(glob.glob("/dev/nvidia[0-9]*"))
    if devices:
        return True, ", ".join(devices)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "no /dev/nvidia* device, no nvidia-smi"
    try:
        done = subprocess.run([smi, "-L"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"no /dev/nvidia* device, nvidia-smi -L failed: {exc}"
    out = (done.stdout or "").strip()
    if done.returncode == 0 and out.startswith("GPU"):
        return True, out.splitlines()[0]
    said = ((done.stderr or "").strip() or out or f"exit code {done.returncode}").splitlines()[0][:200]
    return False, f"no /dev/nvidia* device, nvidia-smi -L: {said}"


def engine_gpu_support(info: dict, *, local: bool) -> tuple[bool, str]:
    """(whether the engine can give a container NVIDIA GPUs, what was seen) from its `info()`: an
    `nvidia` runtime, CDI spec dirs (engines 25+), or, on this machine, the NVIDIA hook on the PATH
    (with it an engine selects the `nvidia` device driver without a registered runtime)."""
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    nvidia = [r for r in runtimes if "nvidia" in r]
    if nvidia:
        return True, f"runtime {nvidia[0]}"
    cdi = [str(d) for d in info.get("CDISpecDirs") or []]
    if cdi and (not local or any(Path(d).is_dir() and any(Path(d).glob("*nvidia*")) for d in cdi)):
        return True, f"CDI spec dirs {', '.join(cdi)}"
    hooks = [h for h in GPU_HOOKS if local and shutil.which(h)]
    if hooks:
        return True, f"{hooks[0]} on the PATH"
    return False, f"runtimes: {', '.join(runtimes) or 'none'}; no CDI devices"


def gpu_problem(who: str, gpus: Any, where: str, *, machine: tuple[bool, str] | None,
                engine: tuple[bool, str]) -> str | None:
    """The one-line error for a GPU block that cannot get GPUs, naming what is missing: the GPU (with
    its driver) on this machine, or the NVIDIA container runtime in the engine (or both); None when
    both are there. `machine` is None for an engine on another machine (its GPUs cannot be seen)."""
    no_gpu = machine is not None and not machine[0]
    no_runtime = not engine[0]
    if not (no_gpu or no_runtime):
        return None
    head = f"{who} requests GPUs (gpus={gpus!r}) but "
    toolkit = ("install the NVIDIA Container Toolkit on the engine's machine and register it "
               "(`nvidia-ctk runtime configure --runtime=docker`, then restart dockerd)")
    process = (f"a GPU machine without Docker can run the GPU deployment with the `process` infrastructure "
               f"block instead (see {GPU_DOCS}).")
    if no_gpu and no_runtime:
        return (f"{head}this machine has no NVIDIA GPU or driver ({machine[1] if machine else ''}) and the Docker "
                f"engine at {where} has no NVIDIA container runtime ({engine[1]}). Run the step on a GPU machine "
                f"with the NVIDIA driver and the NVIDIA Container Toolkit, or on a block without gpus; {process}")
    if no_gpu:
        return (f"{head}this machine has no NVIDIA GPU or driver ({machine[1] if machine else ''}); its Docker engine "
                f"is ready for GPUs ({engine[1]}). Run the step on a GPU machine (install the NVIDIA driver "
                f"there), or on a block without gpus; {process}")
    return (f"{head}the Docker engine at {where} has no NVIDIA container runtime ({engine[1]}): {toolkit}, "
            f"or use a block without gpus; {process}")


def check_gpus(client, options: ContainerOptions, where: str, *, local: bool) -> None:
    """Raise `InfrastructureError` when a GPU block's engine or machine cannot give the step GPUs."""
    try:
        info = client.info()
    except Exception:  # the engine answered a ping a moment ago; the start error remains the fallback
        return
    problem = gpu_problem(options.who, options.gpus, where, machine=machine_gpu() if local else None,
                          engine=engine_gpu_support(info, local=local))
    if problem:
        raise InfrastructureError(problem)


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
    """Hand what the container user wrote (outputs, the MLflow relay) back to the host user: in this
    process when it is root, else with a short root container (`chown -R -h`: links are not followed)."""
    host_uid = os.getuid()
    uid, _ = _ids(options.run_as)
    if uid == host_uid or (uid == 0 and host_uid == 0):
        return
    targets = [m for m in mounts if not m.get("ReadOnly") and m["Target"].startswith((OUTPUTS_DIR, RELAY_DIR))]
    if not targets:
        return
    if host_uid == 0:
        _give_back_in_process([m["Source"] for m in targets])
        return
    from docker.types import Mount

    fix = [Mount(m["Target"], m["Source"], type="bind") for m in targets]
    try:
        client.containers.run(
            image, ["chown", "-R", "-h", f"{host_uid}:{os.getgid()}", *[m["Target"] for m in targets]],
            mounts=fix, user="0", network_mode="none", remove=True,
            labels={MANAGED_LABEL: "true", OWNER_LABEL: owner_label()},
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
