"""Environments: `environments/<name>/environment.yaml` -> content hash -> Docker image or local venv.

An environment is a named, versioned runtime (Azure ML's Environment, SageMaker's image_uri):

    name: sklearn-cpu
    version: "1"
    base_image: null             # null: the PREFECT_ML_BASE_IMAGE setting (default python:3.11-slim)
    requirements: requirements.txt
    conda: conda.yaml            # optional; see "conda files" below
    apt: [libgomp1]              # optional Debian packages (apt-get install in the image)
    gpu: false                   # true: steps need a GPU (the infrastructure block must request one)

Content hash. `spec_hash` is sha256 over the parsed spec and every file in the environment's dir
(so `-r other.txt` includes are covered); `image_hash` adds the base image's id. The image is tagged
`prefect-ml/<name>:<image_hash[:16]>`: if that tag exists, nothing is built (an unchanged environment
is never rebuilt; a new base image id gives a new tag). The venv for the process infrastructure lives
in `<PREFECT_ML_HOME>/venvs/<name>-<spec_hash[:16]>` (a venv has no base image; it is tied to the
host interpreter, whose version is part of the venv's key too).

Conda files. When the base image has `conda`, `conda env update -n base -f conda.yaml` installs it.
When it has none (the default: python:3.11-slim or the debootstrap base), only the pip-installable
part is used, by this rule:
  - the `pip:` sub-list is installed with pip as written;
  - `python` and `pip` entries are skipped (the base image provides Python; say the version there);
  - other entries `pkg`, `pkg=1.2`, `pkg>=1.2` become pip requirements (`=` becomes `==`);
  - refused, with the entry named: build strings (`pkg=1.2=py311_0`), channel prefixes
    (`conda-forge::pkg`), and conda-only native packages (`cudatoolkit`, `cudnn`, `mkl`, ...):
    put those in a base image with conda, or replace them with their pip wheels.

CA bundle for builds (TLS-inspecting proxies). The bundle named by PREFECT_ML_BUILD_CA_BUNDLE, else
the host's `/etc/ssl/certs/ca-certificates.crt` when it exists, is copied into the build context
(never into the repository) and used by pip and apt through `PIP_CERT` during the build only.
PREFECT_ML_BUILD_CA_BUNDLE=none turns this off. The bundle is build plumbing, not content: it is not
part of the hash.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import yaml

from prefect_ml.errors import EnvironmentSpecError

SPEC_FILE = "environment.yaml"
ENV_DIRS_VAR = "PREFECT_ML_ENVIRONMENTS_DIR"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_REPO = "prefect-ml"
VENV_PATH = "/opt/venv"
PULL_POLICIES = ("if_not_present", "always", "never")
HASH_VERSION = "1"
SPEC_KEYS = {"name", "version", "description", "base_image", "requirements", "conda", "apt", "gpu"}
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:-]+)?$")
CONDA_ONLY = {
    "cudatoolkit", "cuda-toolkit", "cudnn", "nccl", "mkl", "mkl-service", "libgcc", "libgcc-ng",
    "libstdcxx-ng", "openblas", "blas", "libblas", "ca-certificates", "openssl", "tk", "zlib",
}
SKIP_FILES = {"__pycache__", ".DS_Store"}

Log = Callable[[str], None]


@dataclass(frozen=True)
class Environment:
    """A loaded environment spec. Build it with `ensure_image` (Docker) or `ensure_venv` (process)."""

    name: str
    version: str
    directory: Path
    base_image: Optional[str] = None  # None: the PREFECT_ML_BASE_IMAGE setting
    requirements: Optional[str] = None  # file name inside `directory`
    conda: Optional[str] = None
    apt: tuple[str, ...] = ()
    gpu: bool = False
    description: str = ""
    conda_pip: tuple[str, ...] = field(default=(), compare=False)  # pip part of the conda file

    @property
    def spec_file(self) -> Path:
        return self.directory / SPEC_FILE

    def resolved_base_image(self) -> str:
        return self.base_image or base_image_setting()

    def spec_hash(self) -> str:
        """sha256 over the spec and the files of the environment dir (not the base image id)."""
        h = hashlib.sha256()
        spec = {
            "v": HASH_VERSION, "name": self.name, "version": self.version, "base_image": self.base_image,
            "requirements": self.requirements, "conda": self.conda, "apt": list(self.apt), "gpu": self.gpu,
        }
        h.update(json.dumps(spec, sort_keys=True).encode())
        for path in _env_files(self.directory):
            h.update(b"\0" + str(path.relative_to(self.directory)).encode() + b"\0" + path.read_bytes())
        return h.hexdigest()

    def image_hash(self, base_image_id: str) -> str:
        """The content hash of the image: spec hash + base image id + how the image is built."""
        recipe = dockerfile(self, self.resolved_base_image(), with_ca=False) + INSTALL_SH
        blob = f"{self.spec_hash()}\0{self.resolved_base_image()}\0{base_image_id}\0{recipe}"
        return hashlib.sha256(blob.encode()).hexdigest()

    def image_tag(self, base_image_id: str) -> str:
        return f"{IMAGE_REPO}/{self.name}:{self.image_hash(base_image_id)[:16]}"


def content_hash(env: Union[str, Environment], base_image_id: Optional[str] = None, start: Optional[Path] = None) -> str:
    """The environment's content hash: with a base image id, the image's; without, the spec's."""
    env = env if isinstance(env, Environment) else load_environment(env, start=start)
    return env.image_hash(base_image_id) if base_image_id else env.spec_hash()


def cache_identity(name: Optional[str], start: Optional[Path] = None) -> Optional[str]:
    """What a step's cache key records about its environment: `<name>@<spec hash>` (None: no environment).

    The spec hash (spec + requirement files) is the same on every infrastructure, so a step cached on
    process infrastructure is reused in Docker and back. An unknown or invalid environment raises
    `EnvironmentSpecError`, before anything runs.
    """
    if not name:
        return None
    return f"{name}@{load_environment(name, start=start).spec_hash()}"


def base_image_setting() -> str:
    from prefect_ml.settings import get_settings

    return get_settings().base_image or DEFAULT_BASE_IMAGE


def ca_bundle() -> Optional[Path]:
    """The CA bundle to use in builds: the setting, else the host's bundle; None when off or absent."""
    value = os.environ.get("PREFECT_ML_BUILD_CA_BUNDLE", "").strip()
    if value.lower() in ("none", "off", "false", "0"):
        return None
    if value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise EnvironmentSpecError(
                f"PREFECT_ML_BUILD_CA_BUNDLE={value!r} is not a file; point it at a PEM CA bundle, or set it to "
                "'none' to build without an extra bundle."
            )
        return path
    return HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None


# --- finding and loading specs --------------------------------------------------------------------


def search_dirs(start: Optional[Path] = None) -> list[Path]:
    """`environments/` dirs to search, in order: PREFECT_ML_ENVIRONMENTS_DIR, then walking up from
    `start` (a component's code dir), then walking up from the current directory."""
    dirs: list[Path] = []
    for part in os.environ.get(ENV_DIRS_VAR, "").split(os.pathsep):
        if part.strip():
            dirs.append(Path(part.strip()).expanduser().resolve())
    for origin in (start, Path.cwd()):
        if origin is None:
            continue
        p = Path(origin).resolve()
        for d in (p, *p.parents):
            candidate = d / "environments"
            if candidate.is_dir():
                dirs.append(candidate)
                break
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def known_environments(start: Optional[Path] = None) -> dict[str, Path]:
    """name -> spec file for every environment found in `search_dirs(start)` (first one wins)."""
    found: dict[str, Path] = {}
    for d in search_dirs(start):
        if not d.is_dir():
            continue
        for spec in sorted(d.glob(f"*/{SPEC_FILE}")):
            found.setdefault(spec.parent.name, spec)
    return found


def find_environment(name: str, start: Optional[Path] = None) -> Path:
    """The spec file of environment `name`; an unknown name lists the known ones."""
    known = known_environments(start)
    if name in known:
        return known[name]
    where = [str(d) for d in search_dirs(start)] or ["(no environments/ dir found)"]
    raise EnvironmentSpecError(
        f"unknown environment {name!r}; known environments: {sorted(known) or 'none'} (searched {', '.join(where)}). "
        f"Create environments/{name}/{SPEC_FILE}, fix the component's `environment:`, or set {ENV_DIRS_VAR}."
    )


_cache_lock = threading.Lock()
_cache: dict[tuple, Environment] = {}


def load_environment(name_or_path: Union[str, Path], start: Optional[Path] = None) -> Environment:
    """Load an environment by name (searched as in `search_dirs`) or by the path of its spec/dir."""
    p = Path(name_or_path)
    if isinstance(name_or_path, Path) or os.sep in str(name_or_path) or str(name_or_path).endswith(".yaml"):
        spec_file = p / SPEC_FILE if p.is_dir() else p
        if not spec_file.is_file():
            raise EnvironmentSpecError(f"environment spec {spec_file} does not exist; create it or fix the path.")
    else:
        spec_file = find_environment(str(name_or_path), start)
    spec_file = spec_file.resolve()
    st = spec_file.stat()
    key = (spec_file, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    env = parse_spec(spec_file)
    with _cache_lock:
        _cache[key] = env
    return env


def parse_spec(spec_file: Path) -> Environment:
    """Validate one environment.yaml; every error names the file, the key and the fix."""
    where = str(spec_file)
    try:
        raw = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EnvironmentSpecError(f"{where}: invalid YAML{at} ({getattr(exc, 'problem', exc)}); fix the syntax.") from None
    if not isinstance(raw, dict):
        raise EnvironmentSpecError(f"{where}: expected a mapping with keys {sorted(SPEC_KEYS)}, got {type(raw).__name__}.")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise EnvironmentSpecError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(SPEC_KEYS)}.")
    directory = spec_file.parent
    name = raw.get("name", directory.name)
    if not isinstance(name, str) or not NAME.match(name):
        raise EnvironmentSpecError(
            f"{where}: key 'name' must be lowercase letters, digits, '.', '_' or '-' (a Docker tag), got {name!r}."
        )
    if name != directory.name:
        raise EnvironmentSpecError(
            f"{where}: key 'name' is {name!r} but the directory is {directory.name!r}; make them the same "
            "(components find environments by directory name)."
        )
    version = raw.get("version", "1")
    if not isinstance(version, (str, int, float)) or isinstance(version, bool):
        raise EnvironmentSpecError(f"{where}: key 'version' must be a string such as \"1\", got {version!r}.")
    base_image = raw.get("base_image")
    if base_image is not None and (not isinstance(base_image, str) or not base_image.strip()):
        raise EnvironmentSpecError(f"{where}: key 'base_image' must be an image name or null, got {base_image!r}.")
    requirements = _file_key(raw, "requirements", directory, where)
    conda = _file_key(raw, "conda", directory, where)
    if requirements is None and conda is None:
        # allowed: a bare base image (e.g. a prebuilt image that already has everything)
        pass
    apt = raw.get("apt") or []
    if not isinstance(apt, list) or not all(isinstance(a, str) and APT_NAME.match(a) for a in apt):
        raise EnvironmentSpecError(
            f"{where}: key 'apt' must be a list of Debian package names (e.g. [libgomp1]), got {apt!r}."
        )
    gpu = raw.get("gpu", False)
    if not isinstance(gpu, bool):
        raise EnvironmentSpecError(f"{where}: key 'gpu' must be true or false, got {gpu!r}.")
    conda_pip: tuple[str, ...] = ()
    if conda:
        conda_pip = tuple(conda_pip_requirements(directory / conda))
    return Environment(
        name=name, version=str(version), directory=directory, base_image=base_image, requirements=requirements,
        conda=conda, apt=tuple(apt), gpu=gpu, description=str(raw.get("description") or ""), conda_pip=conda_pip,
    )


def _file_key(raw: dict, key: str, directory: Path, where: str) -> Optional[str]:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise EnvironmentSpecError(f"{where}: key '{key}' must be a file name relative to {directory}, got {value!r}.")
    path = (directory / value).resolve()
    if directory.resolve() not in path.parents:
        raise EnvironmentSpecError(
            f"{where}: key '{key}' points outside the environment dir ({value}); keep the file in {directory}."
        )
    if not path.is_file():
        raise EnvironmentSpecError(
            f"{where}: key '{key}' names {value!r}, which does not exist ({path}); create the file or fix the key."
        )
    return value


def conda_pip_requirements(conda_file: Path) -> list[str]:
    """The pip-installable part of a conda file (see the module docstring for the rule)."""
    where = str(conda_file)
    try:
        raw = yaml.safe_load(conda_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EnvironmentSpecError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the syntax.") from None
    deps = raw.get("dependencies", []) if isinstance(raw, dict) else None
    if not isinstance(deps, list):
        raise EnvironmentSpecError(f"{where}: key 'dependencies' must be a list.")
    out: list[str] = []
    for dep in deps:
        if isinstance(dep, dict):
            pip = dep.get("pip")
            if set(dep) != {"pip"} or not isinstance(pip, list):
                raise EnvironmentSpecError(f"{where}: in 'dependencies', only a `pip:` list may be a mapping, got {dep!r}.")
            out += [str(p) for p in pip]
            continue
        spec = str(dep).strip()
        if "::" in spec:
            raise EnvironmentSpecError(
                f"{where}: dependency {spec!r} names a conda channel; without conda in the base image it cannot be "
                "installed. Drop the channel prefix, or use a base image that has conda."
            )
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", spec)
        if not m:
            raise EnvironmentSpecError(f"{where}: cannot read dependency {spec!r}; write `name`, `name=1.2` or `name>=1.2`.")
        pkg, rest = m.group(1), m.group(2).strip()
        if pkg.lower() in ("python", "pip"):
            continue
        if pkg.lower() in CONDA_ONLY:
            raise EnvironmentSpecError(
                f"{where}: dependency {spec!r} is a conda-only native package; it cannot be installed with pip. "
                "Use a base image that has conda (and it), or remove it."
            )
        if rest.startswith("=") and not rest.startswith("=="):
            rest = rest[1:]
            if "=" in rest:
                raise EnvironmentSpecError(
                    f"{where}: dependency {spec!r} has a conda build string; pip cannot install it. Write `{pkg}={rest.split('=')[0]}`."
                )
            out.append(f"{pkg}=={rest}")
        elif rest and rest[0] not in "<>=!~":  # `pkg 1.2`: conda's space form of a version
            out.append(f"{pkg}=={rest}")
        else:
            out.append(f"{pkg}{rest}")
    return out


def _env_files(directory: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_FILES and not d.startswith("."))
        for n in sorted(names):
            if n not in SKIP_FILES and not n.endswith((".pyc", ".pyo")):
                files.append(Path(root) / n)
    return files


# --- Docker images ----------------------------------------------------------------------------------


@contextmanager
def _build_lock(key: str) -> Iterator[None]:
    """Serialise builds of one key across threads and processes (a second builder then finds it done)."""
    from prefect_ml.settings import get_settings

    lock_dir = get_settings().home_path / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def base_image_id(client, image: str, pull_policy: str = "if_not_present", credentials=None,
                  log: Optional[Log] = None, who: str = "environment") -> str:
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
            "set PREFECT_ML_BASE_IMAGE / the environment's base_image to an image you have, or allow pulling."
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
        ) from None


def _api_message(exc) -> str:
    msg = getattr(exc, "explanation", None) or str(exc)
    return str(msg).strip()[:300]


def dockerfile(env: Environment, base: str, with_ca: bool) -> str:
    """The Dockerfile for an environment (legacy builder: no BuildKit features)."""
    cert = "PIP_CERT=/tmp/prefect-ml/ca-bundle.crt " if with_ca else ""
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
        f"RUN {cert}PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore "
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
else
    if command -v python3 >/dev/null 2>&1; then SYS_PY=python3; else SYS_PY=python; fi
    "$SYS_PY" -m venv {venv}
    PY={venv}/bin/python
    if [ -f /tmp/prefect-ml/conda-pip.txt ]; then "$PY" -m pip install -r /tmp/prefect-ml/conda-pip.txt; fi
fi
if [ -n "${{REQUIREMENTS:-}}" ]; then "$PY" -m pip install -r "$REQUIREMENTS"; fi
"""


def _build_context(env: Environment, base: str, ctx: Path) -> None:
    shutil.copytree(env.directory, ctx / "env", ignore=shutil.ignore_patterns(*SKIP_FILES, "*.pyc"))
    bundle = ca_bundle()
    if bundle:
        shutil.copyfile(bundle, ctx / "ca-bundle.crt")
    if env.conda:
        shutil.copyfile(env.directory / env.conda, ctx / "conda.yaml")
        (ctx / "conda-pip.txt").write_text("\n".join(env.conda_pip) + "\n")
    script = INSTALL_SH.format(venv=VENV_PATH)
    if env.requirements:
        script = f"REQUIREMENTS={json.dumps(env.requirements)}\n" + script
    (ctx / "install.sh").write_text(script)
    (ctx / "Dockerfile").write_text(dockerfile(env, base, with_ca=bundle is not None))
    # keep the Dockerfile out of `COPY .`, so rewording it does not invalidate the install layer's cache
    (ctx / ".dockerignore").write_text("Dockerfile\n.dockerignore\n")


def ensure_image(
    env: Union[str, Environment],
    client=None,
    *,
    start: Optional[Path] = None,
    pull_policy: str = "if_not_present",
    credentials=None,
    log: Optional[Log] = None,
) -> str:
    """The tag of the environment's image, building it only when that tag does not exist yet.

    Args:
        env: an environment name (looked up from `start`) or a loaded `Environment`.
        client: a docker-py client (default: `docker.from_env()`).
        pull_policy: for the base image: `if_not_present`, `always` or `never`.
        credentials: prefect-docker `DockerRegistryCredentials` for pulling the base image.
        log: called with each build output line.

    Example:
        tag = ensure_image("sklearn-cpu")   # 'prefect-ml/sklearn-cpu:3f2a...'
    """
    import docker
    import docker.errors

    env = env if isinstance(env, Environment) else load_environment(env, start=start)
    log = log or (lambda line: None)
    own_client = client is None
    client = client or docker.from_env()
    try:
        base = env.resolved_base_image()
        base_id = base_image_id(client, base, pull_policy, credentials, log, who=f"environment '{env.name}'")
        tag = env.image_tag(base_id)
        if _image_exists(client, tag):
            return tag
        with _build_lock(tag):
            if _image_exists(client, tag):  # built meanwhile by another step or process
                return tag
            _build(client, env, base, tag, base_id, log)
        return tag
    finally:
        if own_client:
            client.close()


def _image_exists(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _build(client, env: Environment, base: str, tag: str, base_id: str, log: Log) -> None:
    started = time.monotonic()
    log(f"building image {tag} for environment '{env.name}' (version {env.version}) on {base} ...")
    tail: list[str] = []
    with tempfile.TemporaryDirectory(prefix="prefect-ml-build-") as tmp:
        ctx = Path(tmp)
        _build_context(env, base, ctx)
        stream = client.api.build(
            path=str(ctx), tag=tag, rm=True, forcerm=True, pull=False, network_mode="host", decode=True,
            labels={"prefect-ml.environment": env.name, "prefect-ml.environment-version": env.version,
                    "prefect-ml.environment-hash": env.image_hash(base_id), "prefect-ml.base-image": base},
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
        last = "\n".join(tail[-15:])
        raise EnvironmentSpecError(
            f"building environment '{env.name}' ({env.spec_file}) failed: {error or 'no image was produced'}\n"
            f"last build lines:\n{last}\nFix the requirements (or apt packages) named above; behind a TLS-inspecting "
            "proxy set PREFECT_ML_BUILD_CA_BUNDLE to its CA bundle."
        )
    log(f"built {tag} in {time.monotonic() - started:.1f} s")


def image_for(env: Union[str, Environment], client, *, start: Optional[Path] = None) -> Optional[str]:
    """The tag the environment's image has (or would have) now, without building; None without its base image."""
    import docker.errors

    env = env if isinstance(env, Environment) else load_environment(env, start=start)
    try:
        base_id = client.images.get(env.resolved_base_image()).id
    except docker.errors.ImageNotFound:
        return None
    return env.image_tag(base_id)


# --- local venvs (process infrastructure) -----------------------------------------------------------


def venv_path(env: Environment) -> Path:
    from prefect_ml.settings import get_settings

    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    key = hashlib.sha256(f"{env.spec_hash()}\0{sys.executable}\0{sys.version}".encode()).hexdigest()[:16]
    return get_settings().home_path / "venvs" / f"{env.name}-{py}-{key}"


def ensure_venv(name_or_env: Union[str, Environment], *, start: Optional[Path] = None, log: Optional[Log] = None) -> Path:
    """A venv with the environment's requirements, built once per spec hash; returns its root.

    The venv layers on the running interpreter: it sees the packages of the interpreter running the
    pipeline (a `.pth` file, so this works from inside a venv too, unlike --system-site-packages)
    and pip-installs the environment's requirements into itself; requirements the running
    interpreter already satisfies cost nothing. apt packages and `base_image` do not apply to a venv.
    """
    env = name_or_env if isinstance(name_or_env, Environment) else load_environment(name_or_env, start=start)
    log = log or (lambda line: None)
    root = venv_path(env)
    marker = root / ".prefect-ml-complete"
    if marker.is_file():
        return root
    with _build_lock(root.name):
        if marker.is_file():
            return root
        if root.exists():
            shutil.rmtree(root)  # a half-built venv from an interrupted build
        started = time.monotonic()
        log(f"building venv {root} for environment '{env.name}' ...")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, text=True)
            py = root / "bin" / "python"
            site = subprocess.run(
                [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()
            import sysconfig

            parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
            # addsitedir (not a plain path line) so the parent's own .pth files (editable installs) apply too
            (Path(site) / "_prefect_ml_parent.pth").write_text(
                "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
            )
            reqs: list[list[str]] = []
            if env.conda_pip:
                pip_file = root / "conda-pip.txt"
                pip_file.write_text("\n".join(env.conda_pip) + "\n")
                reqs.append(["-r", str(pip_file)])
            if env.requirements:
                reqs.append(["-r", str(env.directory / env.requirements)])
            for args in reqs:
                proc = subprocess.run(
                    [str(py), "-m", "pip", "install", "--disable-pip-version-check", *args],
                    cwd=env.directory, capture_output=True, text=True,
                )
                for line in proc.stdout.splitlines():
                    log(line)
                if proc.returncode != 0:
                    raise EnvironmentSpecError(
                        f"building the venv of environment '{env.name}' ({env.spec_file}) failed: pip exited "
                        f"{proc.returncode}:\n{proc.stderr[-2000:]}\nFix the requirements named above."
                    )
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise EnvironmentSpecError(
                f"could not create a venv for environment '{env.name}' with {sys.executable}: {exc.stderr or exc}"
            ) from None
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        marker.write_text(json.dumps({"environment": env.name, "spec_hash": env.spec_hash()}))
        log(f"built venv {root} in {time.monotonic() - started:.1f} s")
    return root
