"""The environment spec: `environments/<name>/environment.yaml`, where it is found, and its content hash.

An environment is a named, versioned runtime (Azure ML's Environment, SageMaker's image_uri):

    name: sklearn-cpu
    version: "1"
    base_image: null             # null: the PREFECT_ML_BASE_IMAGE setting (default python:3.11-slim)
    requirements: requirements.txt
    conda: conda.yaml            # optional; see `prefect_ml.environments.conda`
    apt: [libgomp1]              # optional Debian packages (apt-get install in the image)
    gpu: false                   # true: steps need a GPU (the infrastructure block must request one)

Content hash. `Environment.spec_hash` is sha256 over the parsed spec and every file in the
environment's dir (so `-r other.txt` includes are covered). It is the same on every infrastructure.
The image's hash adds the base image's id and the build recipe (`image_content_hash`, called by
`prefect_ml.environments.image`); the venv's key adds the host interpreter (`...environments.venv`).

This module is plain data and files: no Docker, no subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from prefect_ml._util import load_yaml_file
from prefect_ml.environments.conda import conda_pip_requirements
from prefect_ml.errors import EnvironmentSpecError
from prefect_ml.settings import get_settings

SPEC_FILE = "environment.yaml"
ENV_DIRS_VAR = "PREFECT_ML_ENVIRONMENTS_DIR"  # the setting `environments_dir`, named in messages
DEFAULT_BASE_IMAGE = "python:3.11-slim"
HASH_VERSION = "1"
SPEC_KEYS = {"name", "version", "description", "base_image", "requirements", "conda", "apt", "gpu"}
# An environment's name becomes a Docker image repository, so it follows Docker's rule (lowercase),
# not the general `prefect_ml._util.NAME_PATTERN`.
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:-]+)?$")
SKIP_FILES = {"__pycache__", ".DS_Store"}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Environment:
    """A loaded environment spec. Build it with `ensure_image` (Docker) or `ensure_venv` (process)."""

    name: str
    version: str
    directory: Path
    base_image: str | None = None  # None: the PREFECT_ML_BASE_IMAGE setting
    requirements: str | None = None  # file name inside `directory`
    conda: str | None = None
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
        for path in env_files(self.directory):
            h.update(b"\0" + str(path.relative_to(self.directory)).encode() + b"\0" + path.read_bytes())
        return h.hexdigest()


def image_content_hash(spec_hash: str, base_image: str, base_image_id: str, recipe: str) -> str:
    """The content hash of an image: the spec hash, the base image (name and id) and the build recipe.

    A plain function of data: a new base image id or a changed recipe gives a new hash (a new tag).
    """
    blob = f"{spec_hash}\0{base_image}\0{base_image_id}\0{recipe}"
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_identity(name: str | None, start: Path | None = None) -> str | None:
    """What a step's cache key records about its environment: `<name>@<spec hash>` (None: no environment).

    The spec hash (spec + requirement files) is the same on every infrastructure, so a step cached on
    process infrastructure is reused in Docker and back. An unknown or invalid environment raises
    `EnvironmentSpecError`, before anything runs.
    """
    if not name:
        return None
    return f"{name}@{load_environment(name, start=start).spec_hash()}"


def base_image_setting() -> str:
    """The base image of environments that name none (the PREFECT_ML_BASE_IMAGE setting)."""
    return get_settings().base_image or DEFAULT_BASE_IMAGE


def env_files(directory: Path) -> list[Path]:
    """The files of an environment dir that are its content (sorted; caches and dotfiles left out)."""
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_FILES and not d.startswith("."))
        for n in sorted(names):
            if n not in SKIP_FILES and not n.endswith((".pyc", ".pyo")):
                files.append(Path(root) / n)
    return files


# --- finding and loading specs --------------------------------------------------------------------


# dirs of environments written inline in Azure files (see `prefect_ml.environments.aliases`); their
# names carry a content hash, so they never shadow a named environment
_generated_dirs: list[Path] = []


def add_generated_dir(directory: Path) -> None:
    """Search `directory` too (after the setting's dirs): where inline environments are written."""
    directory = directory.resolve()
    with _cache_lock:
        if directory not in _generated_dirs:
            _generated_dirs.append(directory)


def search_dirs(start: Path | None = None) -> list[Path]:
    """`environments/` dirs to search, in order: PREFECT_ML_ENVIRONMENTS_DIR, dirs of inline
    environments, then walking up from `start` (a component's code dir), then walking up from the
    current directory."""
    dirs: list[Path] = []
    for part in (get_settings().environments_dir or "").split(os.pathsep):
        if part.strip():
            dirs.append(Path(part.strip()).expanduser().resolve())
    dirs += _generated_dirs
    for origin in (start, Path.cwd()):
        if origin is None:
            continue
        p = Path(origin).resolve()
        for d in (p, *p.parents):
            candidate = d / "environments"
            if candidate.is_dir():
                dirs.append(candidate)
                break
    return list(dict.fromkeys(dirs))  # in order, each once


def known_environments(start: Path | None = None) -> dict[str, Path]:
    """name -> spec file for every environment found in `search_dirs(start)` (first one wins)."""
    found: dict[str, Path] = {}
    for d in search_dirs(start):
        if not d.is_dir():
            continue
        for spec in sorted(d.glob(f"*/{SPEC_FILE}")):
            found.setdefault(spec.parent.name, spec)
    return found


def find_environment(name: str, start: Path | None = None) -> Path:
    """The spec file of environment `name`; an unknown name lists the known ones."""
    known = known_environments(start)
    if name in known:
        return known[name]
    where = [str(d) for d in search_dirs(start)] or ["(no environments/ dir found)"]
    raise EnvironmentSpecError(
        f"unknown environment {name!r}; known environments: {sorted(known) or 'none'} (searched {', '.join(where)}). "
        f"Create environments/{name}/{SPEC_FILE}, fix the component's `environment:`, or set {ENV_DIRS_VAR}."
    )


_cache: dict[tuple, Environment] = {}


def load_environment(name_or_path: str | Path, start: Path | None = None) -> Environment:
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
    raw = load_yaml_file(spec_file, EnvironmentSpecError)
    if not isinstance(raw, dict):
        raise EnvironmentSpecError(f"{where}: expected a mapping with keys {sorted(SPEC_KEYS)}, got "
            f"{type(raw).__name__}.")
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
    # neither requirements nor conda is allowed: a bare base image (a prebuilt image that has everything)
    requirements = _file_key(raw, "requirements", directory, where)
    conda = _file_key(raw, "conda", directory, where)
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


def _file_key(raw: dict, key: str, directory: Path, where: str) -> str | None:
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
