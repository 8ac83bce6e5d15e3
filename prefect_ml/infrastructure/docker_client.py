"""The one place that makes a docker-py client (like prefect-docker's `DockerHost.get_client()`).

`docker_client()` builds the client from a prefect-docker `DockerHost` block when one is given, else
from the environment (DOCKER_HOST or the local socket), and pings it, so an engine that is not there
is one readable error (`InfrastructureError`) instead of a traceback from deep in docker-py.

It also tells whether an engine is this machine's (`engine_transfer`): then a step's files are
bind-mounted, else copied through the Docker API (docs/docker.md, "Containers on a remote Docker engine").

docker-py is imported inside the functions: importing this module does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prefect_ml.errors import InfrastructureError

if TYPE_CHECKING:  # pragma: no cover
    from prefect_docker import DockerHost

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def docker_client(docker_host: DockerHost | None = None, *, who: str, timeout: float | None = None,
                  hint: str = "", environment: Mapping[str, str] | None = None) -> Any:
    """A docker-py client that answered a ping; the caller closes it.

    Args:
        docker_host: a prefect-docker `DockerHost` block (its own settings, timeout included, apply);
            None: DOCKER_HOST or the local socket.
        who: what needs the engine, named first in the error (e.g. "infrastructure block 'cpu' (...)").
        timeout: seconds for each API call of a client made from the environment (docker-py's default
            when None).
        hint: a sentence appended to the unreachable-engine message (e.g. what a GPU block can do
            without Docker); the message stays one line.
        environment: read instead of os.environ when `docker_host` is None (DOCKER_HOST,
            DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), as docker-py's `from_env` does.

    Raises:
        InfrastructureError: the engine does not answer; the message names where it was looked for.

    Example:
        client = docker_client(who="prefect-ml env")
        try:
            client.images.list()
        finally:
            client.close()
    """
    from docker.client import from_env  # (not `docker.from_env`: a docker/ dir at the repo root shadows it for mypy)

    where = engine_address(docker_host, environment)
    client = None
    try:
        if docker_host is not None:
            client = docker_host.get_client()
        else:
            kwargs: dict[str, Any] = {"environment": dict(environment)} if environment is not None else {}
            client = from_env(timeout=timeout, **kwargs) if timeout is not None else from_env(**kwargs)
        client.ping()
        return client
    except Exception as exc:  # DockerException, requests' ConnectionError, PermissionError
        if client is not None:
            client.close()
        # the cause is docker-py/requests internals; the message below carries its one useful line
        raise InfrastructureError(
            f"{who}: cannot reach the Docker engine at {where} ({short_error(exc)}). Start the engine "
            "(e.g. `dockerd`), check permissions on its socket, or point docker_host / DOCKER_HOST at a running one."
            + (f" {hint}" if hint else "")
        ) from None


def engine_address(docker_host: DockerHost | None = None, environment: Mapping[str, str] | None = None) -> str:
    """Where the engine is looked for: the block's base_url, else DOCKER_HOST (of `environment`, default
    os.environ), else the local socket."""
    if docker_host is not None and docker_host.base_url:
        return docker_host.base_url
    return (os.environ if environment is None else environment).get("DOCKER_HOST") or DEFAULT_SOCKET


def short_error(exc: BaseException) -> str:
    """The first line of a docker-py error (its `explanation` when it has one), at most 300 characters."""
    msg = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    msg = str(msg).strip().splitlines()[0] if str(msg).strip() else type(exc).__name__
    return msg[:300]


# --- is the engine this machine's? (bind mounts or copies) ------------------------------------------

TRANSFERS = ("auto", "mount", "copy")
EngineIdentity = tuple[str, str, str]  # (engine ID, host name, Docker root dir) from `docker info`


def engine_identity(info: dict) -> EngineIdentity | None:
    """What names one engine: its ID, its host's name and its data root (from `client.info()`).

    Engine 20.10 derives its ID from /etc/docker/key.json, so two engines on one machine (or cloned
    machines) can share an ID; the host name and data root tell those apart.
    """
    ident = str(info.get("ID") or "")
    return (ident, str(info.get("Name") or ""), str(info.get("DockerRootDir") or "")) if ident else None


def local_socket() -> str:
    """This machine's engine: DOCKER_HOST when it is a unix socket, else the default socket."""
    env = os.environ.get("DOCKER_HOST") or ""
    return env if env.startswith("unix://") else DEFAULT_SOCKET


_local_identity: dict[str, EngineIdentity | None] = {}


def local_engine_identity(timeout: float = 5.0) -> EngineIdentity | None:
    """The identity of the engine behind this machine's unix socket; None when there is none (cached)."""
    sock = local_socket()
    if sock in _local_identity:
        return _local_identity[sock]
    ident = None
    if os.path.exists(sock.removeprefix("unix://")):
        from docker.client import DockerClient

        try:
            client = DockerClient(base_url=sock, timeout=int(timeout))
            try:
                ident = engine_identity(client.info())
            finally:
                client.close()
        except Exception:  # no access, not an engine: then the engine asked about is not known to be local
            ident = None
    _local_identity[sock] = ident
    return ident


def choose_transfer(setting: str, address: str, target: EngineIdentity | None,
                    local: EngineIdentity | None) -> tuple[str, str]:
    """('mount' | 'copy', why): how a step's files reach its container on the engine at `address`.

    `mount` and `copy` are taken as set. `auto`: an engine behind a unix socket (or a named pipe) runs
    on this machine, so bind mounts see this machine's files; an engine reached over tcp:// or ssh://
    does only when it is the very engine behind the local socket (same ID, host name and data root);
    any other is remote, and the files are copied through the Docker API.
    """
    if setting not in TRANSFERS:
        raise InfrastructureError(f"transfer={setting!r} is not one of {list(TRANSFERS)}.")
    if setting != "auto":
        return setting, f"transfer={setting!r} on the block"
    if address.startswith(("unix://", "npipe://")) or "://" not in address:
        return "mount", f"{address} is a local socket"
    if target is not None and local is not None and target == local:
        return "mount", f"{address} is this machine's engine (engine ID {target[0]})"
    if local is None:
        return "copy", f"{address} is not this machine's engine (no local engine to compare with)"
    return "copy", f"{address} is another engine than this machine's (engine ID {target[0] if target else '?'})"


_transfers: dict[tuple[str, str, EngineIdentity | None], tuple[str, str]] = {}


def engine_transfer(client, setting: str = "auto", docker_host: DockerHost | None = None) -> tuple[str, str]:
    """`choose_transfer` for a connected client (the engine is asked once per process and address)."""
    address = engine_address(docker_host)
    if setting != "auto" or address.startswith(("unix://", "npipe://")):
        return choose_transfer(setting, address, None, None)
    try:
        target = engine_identity(client.info())
    except Exception:
        target = None
    key = (setting, address, target)
    if key not in _transfers:
        _transfers[key] = choose_transfer(setting, address, target, local_engine_identity())
    return _transfers[key]


def engine_is_local(client, docker_host: DockerHost | None = None) -> bool:
    """Whether the engine runs on this machine (its devices, files and GPUs are this machine's)."""
    return engine_transfer(client, "auto", docker_host)[0] == "mount"
