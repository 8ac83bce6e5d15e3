"""The environment spec: `environments/<name>/environment.yaml`, where it is found, and its content hash.

An environment is a named, versioned runtime (Azure ML's Environment, SageMaker's image_uri):

    name: sklearn-cpu
    version: "1"
    base_image: null             # null: the PREFECT_ML_BASE_IMAGE setting (default python:3.11-slim)
    requirements: requirements.txt
    conda: conda.yaml            # optional; see `prefect_ml.environments.conda`
    apt: [libgomp1]              # optional Debian packages (apt-get install in the image)
    gpu: false                   # true: steps need a GPU (the infrastructure block must request one)

or, an image built from a Dockerfile (Azure ML's `build:`; it is the whole image, so it excludes
`base_image`, `requirements`, `conda` and `apt`; the build context is relative to the environment dir):

    name: custom
    build: {path: docker-context, dockerfile_path: Dockerfile}   # dockerfile_path: in the context

Content hash. `Environment.spec_hash` is sha256 over the parsed spec and every file in the
environment's dir (so `-r other.txt` includes are covered), and for a `build:` environment what
`docker build` sends of the build context (its `.dockerignore` applied: `context_digest`). It is the
same on every infrastructure.
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
from collections.abc import Callable, Iterator, Mapping
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
SPEC_KEYS = {"name", "version", "description", "base_image", "requirements", "conda", "apt", "gpu", "build"}
BUILD_KEYS = {"path", "dockerfile_path"}
DEFAULT_DOCKERFILE = "Dockerfile"
# what a Dockerfile environment's image is made of, beyond base_image: the whole image is the user's
EXCLUSIVE_WITH_BUILD = ("base_image", "requirements", "conda", "apt")
# A build context is like a code dir: these bounds (on what Docker would send of it, `.dockerignore` applied)
# stop `path: /` (or a data folder) from hashing a disk.
MAX_CONTEXT_FILES = 20_000
MAX_CONTEXT_BYTES = 512 * 2**20
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
    build_context: Path | None = None  # `build:`: the Docker build context (absolute); the image is its Dockerfile's
    dockerfile: str | None = None  # `build:`: the Dockerfile, relative to `build_context`

    @property
    def spec_file(self) -> Path:
        return self.directory / SPEC_FILE

    @property
    def dockerfile_path(self) -> Path | None:
        """The Dockerfile of a `build:` environment (None for the others)."""
        if self.build_context is None:
            return None
        return self.build_context / (self.dockerfile or DEFAULT_DOCKERFILE)

    def resolved_base_image(self) -> str:
        """The image the environment's image is built on: `base_image` or the setting; for a `build:`
        environment, the image its Dockerfile's final stage starts FROM (read now: the file may change)."""
        if self.dockerfile_path is not None:
            return dockerfile_base(self.dockerfile_path)
        return self.base_image or base_image_setting()

    def spec_hash(self) -> str:
        """sha256 over the spec and the files of the environment dir (not the base image id)."""
        h = hashlib.sha256()
        spec: dict[str, object] = {
            "v": HASH_VERSION, "name": self.name, "version": self.version, "base_image": self.base_image,
            "requirements": self.requirements, "conda": self.conda, "apt": list(self.apt), "gpu": self.gpu,
        }
        if self.build_context is not None:  # only then: the hashes of other environments stay as they were
            # reads the whole context (up to MAX_CONTEXT_BYTES): callers compute this once per build or step
            spec["build"] = {"dockerfile_path": self.dockerfile,
                             "context": context_digest(self.build_context, self.dockerfile,
                                                       who=f"environment '{self.name}' ({self.spec_file})")}
        h.update(json.dumps(spec, sort_keys=True).encode())
        # a build context inside the environment dir (`path: ctx`, `path: .`) is covered above, as Docker sends it
        for path in env_files(self.directory, skip=self.build_context):
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


def env_files(directory: Path, skip: Path | None = None) -> list[Path]:
    """The files of an environment dir that are its content (sorted; caches and dotfiles left out; with
    `skip`, a build context, nothing of that folder: its content is hashed as Docker sends it)."""
    if skip is not None and directory.resolve().is_relative_to(skip):
        return []
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_FILES and not d.startswith(".")
                         and (skip is None or (Path(root) / d).resolve() != skip))
        for n in sorted(names):
            if n not in SKIP_FILES and not n.endswith((".pyc", ".pyo")):
                files.append(Path(root) / n)
    return files


def dockerignore_patterns(context: Path) -> list[str]:
    """The patterns of the context's `.dockerignore`, read as docker-py's `APIClient.build` reads them
    (each line stripped; blank lines and `#` comments dropped); [] without the file."""
    f = os.path.join(context, ".dockerignore")
    if not os.path.exists(f):
        return []
    try:
        with open(f) as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvironmentSpecError(f"the .dockerignore of the build context {context} cannot be read ({exc}); fix or "
                                   "remove it.") from None
    return [line for line in (raw.strip() for raw in lines) if line and line[0] != "#"]


def context_files(context: Path, dockerfile: str | None = None, *, who: str | None = None) -> list[tuple[str, str]]:
    """What `docker build` sends of a build context, sorted: (path relative to the context, kind), kind
    'dir', 'link' or 'file'. No file is read: this is the load-time check, and what `context_digest` hashes.

    The context's `.dockerignore` applies with Docker's rules (docker-py's own matcher), and the Dockerfile
    and `.dockerignore` are always sent, as docker-py does. Bounded like a code dir (the files and links
    sent; an ignored folder is not even walked). A symlink is sent as a link (a folder link is not
    entered); one that leads out of the context is an error, since the image would not hold what it
    points at. Special files (FIFOs, devices, sockets) are refused, so hashing never blocks.
    """
    import stat

    prefix = f"{who}: " if who else ""
    context = Path(context)
    if not context.is_dir():
        raise EnvironmentSpecError(f"{prefix}the build context {context} is not a folder (any more); create it or fix "
                                   "build.path.")
    root = context.resolve()
    entries: list[tuple[str, str]] = []
    n_files = n_bytes = 0
    try:
        for rel in _sent_paths(root, dockerfile):
            p = root / rel
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                entries.append((rel, "dir"))
                continue
            if stat.S_ISLNK(st.st_mode):
                target = Path(os.path.realpath(p))  # no error for a dangling link or a loop
                if not target.is_relative_to(root):
                    raise EnvironmentSpecError(
                        f"{prefix}{rel!r} in the build context {context} links to {str(target)!r}, outside the "
                        "context; copy it into the context (Docker sends the link, not what it points at), or list "
                        "it in the context's .dockerignore."
                    )
                entries.append((rel, "link"))
            elif stat.S_ISREG(st.st_mode):
                n_bytes += st.st_size
                entries.append((rel, "file"))
            else:
                raise EnvironmentSpecError(f"{prefix}{rel!r} in the build context {context} is not a regular file "
                                           "(a FIFO, socket or device); remove it from the context or list it in "
                                           "its .dockerignore.")
            n_files += 1
            if n_files > MAX_CONTEXT_FILES or n_bytes > MAX_CONTEXT_BYTES:
                raise EnvironmentSpecError(
                    f"{prefix}the build context {context} holds more than {MAX_CONTEXT_FILES} files or "
                    f"{MAX_CONTEXT_BYTES // 2**20} MiB that Docker would send; list data and output folders in its "
                    ".dockerignore, or point build.path at a folder with the Dockerfile and what it COPYs, not at a "
                    "data or home folder."
                )
    except OSError as exc:
        raise EnvironmentSpecError(f"{prefix}the build context {context} cannot be read ({exc}); fix its permissions "
                                   "or list the path in its .dockerignore.") from None
    return sorted(entries)


def _sent_paths(root: Path, dockerfile: str | None) -> Iterator[str]:
    """The paths (relative to `root`, files and folders) `docker build` sends of the context, lazily."""
    patterns = dockerignore_patterns(root)
    if not patterns:  # nothing ignored: every path, folder links not entered (as docker-py), without importing it
        def fail(exc: OSError) -> None:
            raise exc

        for dirpath, dirs, names in os.walk(root, onerror=fail):
            for n in (*dirs, *names):
                yield os.path.relpath(os.path.join(dirpath, n), root)
        return
    # docker.utils.build.exclude_paths(root, patterns, dockerfile) is exactly
    # `set(PatternMatcher(patterns + ["!" + dockerfile]).walk(root))`, the list `docker build` tars (its
    # `.dockerignore` and Dockerfile always sent); its generator is used so that the bounds stop early
    from docker.utils.build import PatternMatcher

    yield from PatternMatcher([*patterns, f"!{dockerfile or DEFAULT_DOCKERFILE}"]).walk(str(root))


def context_digest(context: Path, dockerfile: str | None = None, *, who: str | None = None) -> str:
    """sha256 over exactly what `docker build` sends of a build context (`context_files`): each path,
    a folder as such, a link as its target text, a file as its executable bit, size and bytes.

    This reads every file sent (up to `MAX_CONTEXT_BYTES`): `Environment.spec_hash` calls it once per call.
    """
    h = hashlib.sha256()
    root = Path(context).resolve()
    prefix = f"{who}: " if who else ""
    for rel, kind in context_files(context, dockerfile, who=who):
        p = root / rel
        try:
            if kind == "dir":
                h.update(b"D\0" + rel.encode() + b"\0")
            elif kind == "link":
                h.update(b"L\0" + rel.encode() + b"\0" + os.readlink(p).encode() + b"\0")
            else:
                with open(p, "rb") as f:
                    st = os.fstat(f.fileno())
                    h.update(f"F\0{rel}\0{'x' if st.st_mode & 0o111 else '-'}\0{st.st_size}\0".encode())
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        except OSError as exc:
            raise EnvironmentSpecError(f"{prefix}{rel!r} in the build context {context} cannot be read ({exc}); it "
                                       "may have changed meanwhile: run again.") from None
    return h.hexdigest()


_ARG_REF = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def dockerfile_base(dockerfile: Path) -> str:
    """The image a Dockerfile's final stage starts FROM (following `FROM <earlier stage>`), with `ARG`
    defaults declared before the first FROM substituted. prefect-ml passes no build arguments, so a
    FROM that still names one, a file without FROM and `FROM scratch` (no Python) are errors."""
    try:
        text = dockerfile.read_text(errors="replace")
    except OSError as exc:
        raise EnvironmentSpecError(f"Dockerfile {dockerfile} cannot be read ({exc.strerror}); create it or fix "
                                   "build.dockerfile_path.") from None
    escape = "\\"
    for raw in text.splitlines():  # parser directives come first
        m = re.match(r"^#\s*escape\s*=\s*(\S)\s*$", raw.strip())
        if m:
            escape = m.group(1)
        elif not re.match(r"^#\s*\w+\s*=", raw.strip()):
            break
    instructions: list[tuple[int, str]] = []
    buf, first = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not buf:
            first = n
        if line.endswith(escape):
            buf += line[: -len(escape)] + " "
            continue
        instructions.append((first, buf + line))
        buf = ""
    if buf:
        instructions.append((first, buf))
    args: dict[str, str] = {}
    stages: dict[str, str] = {}
    final: tuple[int, str] | None = None
    for n, ins in instructions:
        word, rest = [*ins.split(None, 1), ""][:2]
        if word.upper() == "ARG" and final is None:
            for token in rest.split():
                key, eq, default = token.partition("=")
                if eq:
                    args[key] = default.strip("\"'")
        elif word.upper() == "FROM":
            tokens = [t for t in rest.split() if not t.startswith("--")]
            if not tokens:
                raise EnvironmentSpecError(f"{dockerfile} line {n}: FROM names no image; write FROM <image>.")
            image = _ARG_REF.sub(lambda m: args.get(m.group(1) or m.group(3), m.group(2) or m.group(0)), tokens[0])
            if "$" in image:
                raise EnvironmentSpecError(
                    f"{dockerfile} line {n}: FROM {tokens[0]} uses a build argument without a default, and prefect-ml "
                    "passes none; write the image name, or give the ARG a default before the first FROM."
                )
            root = stages.get(image.lower(), image)
            if len(tokens) >= 3 and tokens[1].lower() == "as":
                stages[tokens[2].lower()] = root
            final = (n, root)
    if final is None:
        raise EnvironmentSpecError(f"{dockerfile}: no FROM line; start the Dockerfile FROM a local image with Python "
                                   "(e.g. FROM prefect-ml/base:bookworm).")
    if final[1].lower() == "scratch":
        raise EnvironmentSpecError(f"{dockerfile} line {final[0]}: the image is FROM scratch, which has no Python to "
                                   "run a step with; start FROM an image with Python (e.g. prefect-ml/base:bookworm).")
    return final[1]


def refuse_on_process(env: Environment) -> None:
    """Raise for a `build:` (Dockerfile) environment: a process step runs on this machine's Python and
    cannot honour a Dockerfile. Called before a process step starts (venv or interpreter check)."""
    if env.dockerfile_path is not None:
        raise EnvironmentSpecError(
            f"environment '{env.name}' ({env.spec_file}) is an image built from the Dockerfile {env.dockerfile_path}, "
            "which process infrastructure cannot run a step in: run the step on Docker infrastructure "
            "(infrastructure='docker' or a Docker infrastructure block), or give it an environment with "
            "`requirements` (or `conda`) instead."
        )


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
    environments (those written by this process, and `<PREFECT_ML_HOME>/environments/inline`), then
    walking up from `start` (a component's code dir), then walking up from the current directory."""
    dirs: list[Path] = []
    for part in (get_settings().environments_dir or "").split(os.pathsep):
        if part.strip():
            dirs.append(Path(part.strip()).expanduser().resolve())
    dirs += _generated_dirs
    # this home's inline environments, also those another process wrote (a Dask worker sharing the home)
    inline = get_settings().home_path / "environments" / "inline"
    if inline.is_dir():
        dirs.append(inline.resolve())
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

    def at(key: str) -> str:  # the file and the key's line, computed only for an error
        return f"{where}{_key_line(spec_file, key)}"

    if not isinstance(raw, dict):
        raise EnvironmentSpecError(f"{where}: expected a mapping with keys {sorted(SPEC_KEYS)}, got "
            f"{type(raw).__name__}.")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise EnvironmentSpecError(f"{at(unknown[0])}: unknown key(s) {unknown}; allowed keys are {sorted(SPEC_KEYS)}.")
    directory = spec_file.parent
    name = raw.get("name", directory.name)
    if not isinstance(name, str) or not NAME.match(name):
        raise EnvironmentSpecError(
            f"{at('name')}: key 'name' must be lowercase letters, digits, '.', '_' or '-' (a Docker tag), got {name!r}."
        )
    if name != directory.name:
        raise EnvironmentSpecError(
            f"{at('name')}: key 'name' is {name!r} but the directory is {directory.name!r}; make them the same "
            "(components find environments by directory name)."
        )
    version = raw.get("version", "1")
    if not isinstance(version, (str, int, float)) or isinstance(version, bool):
        raise EnvironmentSpecError(f"{at('version')}: key 'version' must be a string such as \"1\", got {version!r}.")
    base_image = raw.get("base_image")
    if base_image is not None and (not isinstance(base_image, str) or not base_image.strip()):
        raise EnvironmentSpecError(f"{at('base_image')}: key 'base_image' must be an image name or null, "
                                   f"got {base_image!r}.")
    # neither requirements nor conda is allowed: a bare base image (a prebuilt image that has everything)
    # `build` first: with it, a `requirements` key is an error of its own, whether its file exists or not
    context, dockerfile = _build_key(raw, spec_file, where) if "build" in raw else (None, None)
    requirements = _file_key(raw, "requirements", spec_file)
    conda = _file_key(raw, "conda", spec_file)
    apt = raw.get("apt") or []
    if not isinstance(apt, list) or not all(isinstance(a, str) and APT_NAME.match(a) for a in apt):
        raise EnvironmentSpecError(
            f"{at('apt')}: key 'apt' must be a list of Debian package names (e.g. [libgomp1]), got {apt!r}."
        )
    gpu = raw.get("gpu", False)
    if not isinstance(gpu, bool):
        raise EnvironmentSpecError(f"{at('gpu')}: key 'gpu' must be true or false, got {gpu!r}.")
    conda_pip: tuple[str, ...] = ()
    if conda:
        conda_pip = tuple(conda_pip_requirements(directory / conda))
    return Environment(
        name=name, version=str(version), directory=directory, base_image=base_image, requirements=requirements,
        conda=conda, apt=tuple(apt), gpu=gpu, description=str(raw.get("description") or ""), conda_pip=conda_pip,
        build_context=context, dockerfile=dockerfile,
    )


def _key_line(spec_file: Path, *keys: str) -> str:
    """' line N' of the deepest of `keys` (a key path) found in a YAML mapping file, else ''."""
    import yaml

    try:
        node = yaml.compose(spec_file.read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return ""
    found = ""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if str(k.value) == key), None)
        if match is None:
            break
        found, node = f" line {match[0].start_mark.line + 1}", match[1]
    return found


def _build_key(raw: dict, spec_file: Path, where: str) -> tuple[Path, str]:
    """Validate `build:` of an environment.yaml (`check_build`), errors naming the file and the key's line."""
    both = [k for k in EXCLUSIVE_WITH_BUILD if raw.get(k) not in (None, [], "")]
    if both:
        raise EnvironmentSpecError(
            f"{where}{_key_line(spec_file, both[0])}: keys 'build' and '{both[0]}' cannot be combined: the Dockerfile "
            f"is the whole image (its FROM is the base image; install packages with RUN in it); drop '{both[0]}' or "
            "drop 'build'."
        )

    def error(message: str, *keys: str) -> EnvironmentSpecError:
        return EnvironmentSpecError(f"{where}{_key_line(spec_file, 'build', *keys)}: key 'build': {message}")

    return check_build(raw["build"], spec_file.parent, error)


def check_build(build: object, base_dir: Path, error: Callable[..., EnvironmentSpecError]) -> tuple[Path, str]:
    """Validate a `build: {path, dockerfile_path}` mapping (environment.yaml's or an inline Azure one's):
    returns (the build context, absolute; the Dockerfile, relative to it).

    `base_dir` is what `path` is relative to. `error(message, *keys)` makes the caller's error: it adds
    where (the file and the line of `build` / `build.<key>`). Checked here: the keys, a local folder, the
    Dockerfile in it, its FROM (`dockerfile_base`) and what Docker would send of the context
    (`context_files`: bounds, links out, special files; no file is read). The content hash is
    `context_digest`, computed by `Environment.spec_hash`, not here.
    """
    if not isinstance(build, Mapping):
        raise error(f"must be a mapping `{{path: <folder with a Dockerfile>, dockerfile_path: Dockerfile}}`, got "
                    f"{build!r}.")
    unknown = sorted(set(build) - BUILD_KEYS)
    if unknown:
        raise error(f"unknown key(s) {unknown}; allowed: {sorted(BUILD_KEYS)}.", unknown[0])
    path = build.get("path")
    if not isinstance(path, str) or not path.strip():
        raise error(f"'path' must be the folder of the Docker build context (relative to {base_dir}), got {path!r}.",
                    "path")
    if "://" in path or path.startswith("git@"):
        raise error(f"path {path!r} is not a local folder; only a local build context is built here (clone it and "
                    "point build.path at the folder).", "path")
    context = (base_dir / Path(path).expanduser()).resolve()
    if not context.is_dir():
        raise error(f"path {path!r} is not a folder ({context}); create the build context there or fix build.path.",
                    "path")
    dockerfile = build.get("dockerfile_path", DEFAULT_DOCKERFILE)
    if not isinstance(dockerfile, str) or not dockerfile.strip() or Path(dockerfile).is_absolute():
        raise error(f"'dockerfile_path' must be a file name relative to the build context, got {dockerfile!r}.",
                    "dockerfile_path")
    file = (context / dockerfile).resolve()
    if not file.is_relative_to(context):
        raise error(f"dockerfile_path {dockerfile!r} is outside the build context {context}; keep the Dockerfile "
                    "in it.", "dockerfile_path")
    if not file.is_file():
        raise error(f"the Dockerfile {dockerfile!r} does not exist in the build context ({context / dockerfile}); "
                    "create it or fix build.dockerfile_path.", "dockerfile_path" if "dockerfile_path" in build
                    else "path")
    try:  # at load: a FROM prefect-ml cannot use; a link out of the context, a context too big (no file read)
        dockerfile_base(file)
        context_files(context, dockerfile)
    except EnvironmentSpecError as exc:
        raise error(str(exc)) from None
    return context, dockerfile


def _file_key(raw: dict, key: str, spec_file: Path) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    directory = spec_file.parent

    def where() -> str:  # the file and the key's line, composed only for an error
        return f"{spec_file}{_key_line(spec_file, key)}"

    if not isinstance(value, str) or not value.strip():
        raise EnvironmentSpecError(f"{where()}: key '{key}' must be a file name relative to {directory}, "
                                   f"got {value!r}.")
    path = (directory / value).resolve()
    if directory.resolve() not in path.parents:
        raise EnvironmentSpecError(
            f"{where()}: key '{key}' points outside the environment dir ({value}); keep the file in {directory}."
        )
    if not path.is_file():
        raise EnvironmentSpecError(
            f"{where()}: key '{key}' names {value!r}, which does not exist ({path}); create the file or fix the key."
        )
    return value
