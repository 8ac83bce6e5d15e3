"""The one place that makes a docker-py client (like prefect-docker's `DockerHost.get_client()`).

`docker_client()` builds the client from a prefect-docker `DockerHost` block when one is given, else
from the environment (DOCKER_HOST or the local socket), and pings it, so an engine that is not there
is one readable error (`InfrastructureError`) instead of a traceback from deep in docker-py.

docker-py is imported inside the function: importing this module does not import it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prefect_ml.errors import InfrastructureError

if TYPE_CHECKING:  # pragma: no cover
    from prefect_docker import DockerHost

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def docker_client(docker_host: DockerHost | None = None, *, who: str, timeout: float | None = None) -> Any:
    """A docker-py client that answered a ping; the caller closes it.

    Args:
        docker_host: a prefect-docker `DockerHost` block (its own settings, timeout included, apply);
            None: DOCKER_HOST or the local socket.
        who: what needs the engine, named first in the error (e.g. "infrastructure block 'cpu' (...)").
        timeout: seconds for each API call of a client made from the environment (docker-py's default
            when None).

    Raises:
        InfrastructureError: the engine does not answer; the message names where it was looked for.

    Example:
        client = docker_client(who="prefect-ml env")
        try:
            client.images.list()
        finally:
            client.close()
    """
    import docker

    where = engine_address(docker_host)
    client = None
    try:
        if docker_host is not None:
            client = docker_host.get_client()
        else:
            client = docker.from_env(timeout=timeout) if timeout is not None else docker.from_env()
        client.ping()
        return client
    except Exception as exc:  # DockerException, requests' ConnectionError, PermissionError
        if client is not None:
            client.close()
        # the cause is docker-py/requests internals; the message below carries its one useful line
        raise InfrastructureError(
            f"{who}: cannot reach the Docker engine at {where} ({short_error(exc)}). Start the engine "
            "(e.g. `dockerd`), check permissions on its socket, or point docker_host / DOCKER_HOST at a running one."
        ) from None


def engine_address(docker_host: DockerHost | None = None) -> str:
    """Where the engine is looked for: the block's base_url, else DOCKER_HOST, else the local socket."""
    if docker_host is not None and docker_host.base_url:
        return docker_host.base_url
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def short_error(exc: BaseException) -> str:
    """The first line of a docker-py error (its `explanation` when it has one), at most 300 characters."""
    msg = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    msg = str(msg).strip().splitlines()[0] if str(msg).strip() else type(exc).__name__
    return msg[:300]
