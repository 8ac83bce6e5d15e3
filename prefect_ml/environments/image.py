"""An environment's Docker image: Dockerfile, build context, the content-hash tag, and the build.

The image is tagged `prefect-ml/<name>:<image hash[:16]>`, where the image hash covers the spec hash,
the base image's id and the build recipe (`image_hash`). If that tag exists, nothing is built: an
unchanged environment is never rebuilt, and a new base image id gives a new tag.

CA bundle for builds (TLS-inspecting proxies). The bundle named by the PREFECT_ML_BUILD_CA_BUNDLE
setting, else the host's `/etc/ssl/certs/ca-certificates.crt` when it exists, is copied into the build
context (never into the repository) and used by pip and apt through `PIP_CERT` during the build only.
PREFECT_ML_BUILD_CA_BUNDLE=none turns this off. The bundle is build plumbing, not content: it is not
part of the hash.

A `build:` environment (a Dockerfile and its build context, Azure ML's `build:`) is built as it is:
its context and Dockerfile go to the engine unchanged (network mode host, no pull, no build
arguments, no CA bundle added), and the result is the environment's image; prefect-ml layers nothing
on it. Its base image (for the hash and the pull policy) is the image its final stage starts FROM,
and its spec hash covers every file of the context, so the same rule holds: an unchanged context
reuses the tag, a changed Dockerfile or context file builds a new one.

docker-py is imported inside the functions, so importing this module costs nothing without Docker.
Every function that talks to the engine takes a docker-py client: the caller makes it (with
`prefect_ml.infrastructure.docker_client`, a layer above this one) and closes it.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect_ml.environments.spec import SKIP_FILES, Environment, image_content_hash, load_environment
from prefect_ml.errors import EnvironmentSpecError
from prefect_ml.settings import get_settings

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_BUNDLE_OFF = ("none", "off", "false", "0")
IMAGE_REPO = "prefect-ml"
VENV_PATH = "/opt/venv"
PULL_POLICIES = ("if_not_present", "always", "never")

Log = Callable[[str], None]


def ca_bundle(*, explicit_only: bool = False) -> Path | None:
    """The CA bundle from the PREFECT_ML_BUILD_CA_BUNDLE setting, else the host's; None when off or absent.

    `explicit_only`: only a bundle the setting names (what step containers mount at run time).
    """
    value = (get_settings().build_ca_bundle or "").strip()
    if value.lower() in CA_BUNDLE_OFF:
        return None
    if value:
        path = Path(value).expanduser()
        if not path.is_file():
            fix = "" if explicit_only else ", or set it to 'none' to build without an extra bundle"
            raise EnvironmentSpecError(
                f"PREFECT_ML_BUILD_CA_BUNDLE={value!r} is not a file; point it at a PEM CA bundle{fix}."
            )
        return path
    if explicit_only:
        return None
    return HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None


@contextmanager
def build_lock(key: str) -> Iterator[None]:
    """Serialise builds of one key across threads and processes (a second builder then finds it done)."""
    lock_dir = get_settings().home_path / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- what the image is: recipe, hash, tag ------------------------------------------------------------


def dockerfile(env: Environment, base: str, with_ca: bool) -> str:
    """The Dockerfile for an environment (legacy builder: no BuildKit features)."""
    # pip reads PIP_CERT; uv reads SSL_CERT_FILE
    cert = "PIP_CERT=/tmp/prefect-ml/ca-bundle.crt SSL_CERT_FILE=/tmp/prefect-ml/ca-bundle.crt " if with_ca else ""
    lines = [
        f"FROM {base}",
        "COPY . /tmp/prefect-ml/",
    ]
    if env.apt:
        apt_ca = ("-o Acquire::https::CAInfo=/tmp/prefect-ml/ca-bundle.crt " if with_ca else "")
        lines.append(
            "RUN apt-get " + apt_ca + "update && DEBIAN_FRONTEND=noninteractive apt-get " + apt_ca
            + "install -y --no-install-recommends " + " ".join(env.apt) + " && rm -rf /var/lib/apt/lists/*"
        )
    lines += [
        f"RUN {cert}PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore UV_NO_CACHE=1 "
        "sh /tmp/prefect-ml/install.sh && rm -rf /tmp/prefect-ml",
        f"ENV VIRTUAL_ENV={VENV_PATH} PATH={VENV_PATH}/bin:$PATH PYTHONUNBUFFERED=1",
    ]
    return "\n".join(lines) + "\n"


INSTALL_SH = """\
set -eu
cd /tmp/prefect-ml/env
if [ -f /tmp/prefect-ml/conda.yaml ] && command -v conda >/dev/null 2>&1; then
    # the base image has conda: it installs the whole conda file into its base env
    conda env update -n base -f /tmp/prefect-ml/conda.yaml
    PY="$(command -v python)"
    CONDA_PIP=
else
    if command -v python3 >/dev/null 2>&1; then SYS_PY=python3; else SYS_PY=python; fi
    "$SYS_PY" -m venv {venv}
    PY={venv}/bin/python
    CONDA_PIP=/tmp/prefect-ml/conda-pip.txt
fi
{installer}
if [ -n "$CONDA_PIP" ] && [ -f "$CONDA_PIP" ]; then install -r "$CONDA_PIP"; fi
if [ -n "${{REQUIREMENTS:-}}" ]; then install -r "$REQUIREMENTS"; fi
{cleanup}
"""

# uv resolves and installs in seconds what pip takes minutes for (mlflow-skinny's dependencies);
# it is installed into the image's venv with pip, used, and removed again. pip stays the fallback.
_UV_INSTALLER = """\
USE_UV=
if "$PY" -m pip install -q uv >/dev/null 2>&1 && "$PY" -m uv --version >/dev/null 2>&1; then USE_UV=1; fi
install() {{
    if [ -n "$USE_UV" ]; then "$PY" -m uv pip install --python "$PY" "$@"; else "$PY" -m pip install "$@"; fi
}}
[ -n "$USE_UV" ] || echo "prefect-ml: uv could not be installed; installing with pip" >&2"""
_UV_CLEANUP = """if [ -n "$USE_UV" ]; then "$PY" -m pip uninstall -y -q uv || true; fi"""
_PIP_INSTALLER = """install() {{ "$PY" -m pip install "$@"; }}"""


def install_script(installer: str | None = None) -> str:
    """The build's install script for `installer` (`uv` or `pip`; default: the PREFECT_ML_INSTALLER setting)."""
    installer = (installer or get_settings().installer).strip().lower()
    if installer not in ("uv", "pip"):
        raise EnvironmentSpecError(f"PREFECT_ML_INSTALLER={installer!r}: use 'uv' or 'pip'.")
    uv = installer == "uv"
    return INSTALL_SH.format(venv=VENV_PATH, installer=(_UV_INSTALLER if uv else _PIP_INSTALLER).format(),
                             cleanup=_UV_CLEANUP if uv else "")


# a Dockerfile environment's recipe is the user's Dockerfile, which the spec hash covers; this names how
# it is handed to the engine (change it when that changes, so that every such image is rebuilt)
DOCKERFILE_RECIPE = "user Dockerfile as-is: docker build --network host, no pull, no build args\n"


def image_hash(env: Environment, base_image_id: str) -> str:
    """The content hash of the environment's image: spec hash + base image id + how the image is built."""
    base = env.resolved_base_image()
    if env.dockerfile_path is not None:
        return image_content_hash(env.spec_hash(), base, base_image_id, DOCKERFILE_RECIPE)
    recipe = dockerfile(env, base, with_ca=False) + install_script()
    return image_content_hash(env.spec_hash(), base, base_image_id, recipe)


def image_tag(env: Environment, base_image_id: str) -> str:
    """`prefect-ml/<name>:<image hash[:16]>`."""
    return _tag(env, image_hash(env, base_image_id))


def _tag(env: Environment, content: str) -> str:
    return f"{IMAGE_REPO}/{env.name}:{content[:16]}"


def content_hash(env: str | Environment, base_image_id: str | None = None, start: Path | None = None) -> str:
    """The environment's content hash: with a base image id, the image's; without, the spec's."""
    env = env if isinstance(env, Environment) else load_environment(env, start=start)
    return image_hash(env, base_image_id) if base_image_id else env.spec_hash()


# --- the engine: base images, builds -----------------------------------------------------------------


def base_image_id(client, image: str, pull_policy: str = "if_not_present", credentials=None,
                  log: Log | None = None, who: str = "environment") -> str:
    """The local id of `image`, pulling it according to `pull_policy`; a clear error when it cannot be had."""
    import docker.errors

    if pull_policy not in PULL_POLICIES:
        raise EnvironmentSpecError(f"{who}: pull policy {pull_policy!r} is not one of {list(PULL_POLICIES)}.")
    local = None
    if pull_policy != "always":
        try:
            local = client.images.get(image)
        except docker.errors.ImageNotFound:
            local = None
    if local is not None:
        return local.id
    if pull_policy == "never":
        raise EnvironmentSpecError(
            f"{who}: image {image!r} does not exist locally and the pull policy is 'never'. Build it locally "
            f"(`prefect-ml env base-image --name {image}` makes a Debian base image without a registry), "
            "set PREFECT_ML_BASE_IMAGE / the environment's base_image (or its Dockerfile's FROM) to an image you "
            "have, or allow pulling."
        )
    if log:
        log(f"pulling {image} ...")
    try:
        if credentials is not None:
            client.login(username=credentials.username, password=credentials.password.get_secret_value(),
                         registry=credentials.registry_url, reauth=credentials.reauth)
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        return client.images.pull(repo, tag=tag or "latest").id
    except docker.errors.APIError as exc:
        raise EnvironmentSpecError(
            f"{who}: image {image!r} is not present locally and could not be pulled ({_api_message(exc)}). "
            f"Without a registry, build it locally (`prefect-ml env base-image --name {image}`) and use pull "
            "policy 'never', or fix the image name / registry credentials."
        ) from exc


def _api_message(exc) -> str:
    msg = getattr(exc, "explanation", None) or str(exc)
    return str(msg).strip()[:300]


def _build_context(env: Environment, base: str, ctx: Path) -> None:
    shutil.copytree(env.directory, ctx / "env", ignore=shutil.ignore_patterns(*SKIP_FILES, "*.pyc"))
    bundle = ca_bundle()
    if bundle:
        shutil.copyfile(bundle, ctx / "ca-bundle.crt")
    if env.conda:
        shutil.copyfile(env.directory / env.conda, ctx / "conda.yaml")
        (ctx / "conda-pip.txt").write_text("\n".join(env.conda_pip) + "\n")
    script = install_script()
    if env.requirements:
        script = f"REQUIREMENTS={json.dumps(env.requirements)}\n" + script
    (ctx / "install.sh").write_text(script)
    (ctx / "Dockerfile").write_text(dockerfile(env, base, with_ca=bundle is not None))
    # keep the Dockerfile out of `COPY .`, so rewording it does not invalidate the install layer's cache
    (ctx / ".dockerignore").write_text("Dockerfile\n.dockerignore\n")


def ensure_image(
    env: str | Environment,
    client,
    *,
    start: Path | None = None,
    pull_policy: str = "if_not_present",
    credentials=None,
    log: Log | None = None,
) -> str:
    """The tag of the environment's image, building it only when that tag does not exist yet.

    Args:
        env: an environment name (looked up from `start`) or a loaded `Environment`.
        client: a docker-py client; the caller makes it (`prefect_ml.infrastructure.docker_client`) and
            closes it.
        pull_policy: for the base image: `if_not_present`, `always` or `never`.
        credentials: prefect-docker `DockerRegistryCredentials` for pulling the base image.
        log: called with each build output line.

    Example:
        client = docker_client(who="me")     # prefect_ml.infrastructure.docker_client
        tag = ensure_image("sklearn-cpu", client)   # 'prefect-ml/sklearn-cpu:3f2a...'
    """
    env = env if isinstance(env, Environment) else load_environment(env, start=start)
    log = log or (lambda line: None)
    base = env.resolved_base_image()
    base_id = base_image_id(client, base, pull_policy, credentials, log, who=f"environment '{env.name}'")
    content = image_hash(env, base_id)  # once: for a `build:` environment it reads the whole build context
    tag = _tag(env, content)
    if _image_exists(client, tag):
        return tag
    with build_lock(tag):
        if _image_exists(client, tag):  # built meanwhile by another step or process
            return tag
        _build(client, env, base, content, base_id, log)
    return tag


def _image_exists(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _build(client, env: Environment, base: str, content: str, base_id: str, log: Log) -> None:
    """Build the image of `content` (its `image_hash`, computed by the caller) and tag it."""
    started = time.monotonic()
    tag = _tag(env, content)
    user_dockerfile = env.dockerfile_path
    what = f" from {user_dockerfile}" if user_dockerfile is not None else ""
    log(f"building image {tag} for environment '{env.name}' (version {env.version}) on {base}{what} ...")
    labels = {"prefect-ml.environment": env.name, "prefect-ml.environment-version": env.version,
              "prefect-ml.environment-hash": content, "prefect-ml.base-image": base}
    tail: list[str] = []
    with tempfile.TemporaryDirectory(prefix="prefect-ml-build-") as tmp:
        if env.build_context is not None:  # the user's context and Dockerfile, as they are
            path, docker_file = env.build_context, env.dockerfile
        else:
            path, docker_file = Path(tmp), None
            _build_context(env, base, path)
        stream = client.api.build(
            path=str(path), dockerfile=docker_file, tag=tag, rm=True, forcerm=True, pull=False,
            network_mode="host", decode=True, labels=labels,
        )
        error = None
        for chunk in stream:
            if "error" in chunk:
                error = str(chunk.get("error", "")).strip()
                continue
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    tail.append(line)
                    del tail[:-30]
                    log(line)
    if error or not _image_exists(client, tag):
        last = tail[-1].strip()[:300] if tail else ""  # the whole output went to `log` above
        why = (error or "no image was produced").strip().splitlines()[0]
        fix = (f"Fix the Dockerfile {user_dockerfile} at the step the log names; its FROM must be a local image (no "
               "pulls), and a RUN that downloads needs the network (builds use network mode host)"
               if user_dockerfile is not None else
               "Fix the requirements (or apt packages) the log names; behind a TLS-inspecting proxy set "
               "PREFECT_ML_BUILD_CA_BUNDLE to its CA bundle")
        raise EnvironmentSpecError(
            f"building environment '{env.name}' ({env.spec_file}) failed: {why}"
            + (f" (last build line: {last!r})" if last and last not in why else "")
            + f"; the build's output is in the log. {fix}."
        )
    if user_dockerfile is not None and image_hash(env, base_id) != content:
        # the context changed while it was being built: the tag would name content it was not built from
        # (the one other read of the context per build; docker-py's tar of it is the third)
        client.images.remove(tag, force=True)
        raise EnvironmentSpecError(
            f"environment '{env.name}': the build context {env.build_context} changed while its image was being "
            "built; run again (the image is built from what the context holds then)."
        )
    log(f"built {tag} in {time.monotonic() - started:.1f} s")


def image_for(env: str | Environment, client, *, start: Path | None = None) -> str | None:
    """The tag the environment's image has (or would have) now, without building; None without its base image."""
    import docker.errors

    env = env if isinstance(env, Environment) else load_environment(env, start=start)
    try:
        base_id = client.images.get(env.resolved_base_image()).id
    except docker.errors.ImageNotFound:
        return None
    return image_tag(env, base_id)


# --- a fast path without docker-py -----------------------------------------------------------------------


def _engine_get(path: str, timeout: float = 5.0) -> dict | None:
    """GET `path` from the local Docker engine over its unix socket (no docker-py: its import costs
    0.3-1 s); None when the object does not exist, when DOCKER_HOST is not a unix socket or when the
    engine does not answer (callers then take the docker-py path, which reports errors properly)."""
    import http.client
    import os
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return None

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(host.removeprefix("unix://"))

    conn = _Conn("localhost", timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return json.loads(body) if resp.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def existing_image(env: str | Environment, *, start: Path | None = None) -> tuple[str, str] | None:
    """(tag, image id) of the environment's image when it is already built, asked of the engine over its
    socket without importing docker-py; None when it must be built (or the fast path does not apply).

    `prefect-ml env build NAME` for an unchanged environment answers from this in well under a second.
    """
    from urllib.parse import quote

    env = env if isinstance(env, Environment) else load_environment(env, start=start)
    base = _engine_get(f"/images/{quote(env.resolved_base_image(), safe='')}/json")
    if not base or not base.get("Id"):
        return None
    tag = image_tag(env, str(base["Id"]))
    image = _engine_get(f"/images/{quote(tag, safe='')}/json")
    if not image or not image.get("Id"):
        return None
    return tag, str(image["Id"])
