"""Azure ML environment references -> local environments.

Azure files name environments in forms that mean nothing on this machine. Each resolves, at load
time, to the name of a local environment (`environments/<name>/environment.yaml`):

    sklearn-cpu                                   a local environment, as always
    azureml:sklearn-cpu:1, sklearn-cpu:1          the local one, whose `version` must be "1"
    azureml:sklearn-cpu@latest                    the local one, whatever its version
    azureml://registries/azureml/environments/sklearn-1.5/labels/latest
    AzureML-sklearn-1.0-ubuntu20.04-py38-cpu@latest
                                                  through the alias map (below)
    {image: ..., conda_file: ...}                 an inline environment: written once under
    {build: {path: ./ctx, dockerfile_path: ...}}  <PREFECT_ML_HOME>/environments/inline/ (a `build:`
                                                  one names its context: see `spec.py`)

The alias map is `environments/aliases.yaml` in any environments dir that is searched (see
`spec.search_dirs`); it maps an Azure name to a local environment name:

    AzureML-sklearn-1.0-ubuntu20.04-py38-cpu: sklearn-cpu
    azureml://registries/azureml/environments/sklearn-1.5/labels/latest: sklearn-cpu
    sklearn-1.5: sklearn-cpu          # any label or version of this registry environment

A key is looked up as written, then without its `@label` / `:version` / `/labels/..` part, then
(registry references) by the environment name alone. A reference that is neither a local
environment nor in a map is an error that names the map files and the line to add.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect_ml._util import load_yaml_file
from prefect_ml.errors import EnvironmentSpecError
from prefect_ml.settings import get_settings

ALIAS_FILE = "aliases.yaml"
REGISTRY_REF = re.compile(
    r"^azureml://registries/(?P<registry>[^/]+)/environments/(?P<name>[^/]+)(?:/(?:labels|versions)/(?P<tag>[^/]+))?$"
)
WORKSPACE_REF = re.compile(r"^azureml:(?://)?(?:.*/)?environments/(?P<name>[^/]+)(?:/versions/(?P<tag>[^/]+))?$")
INLINE_KEYS = {"$schema", "name", "version", "description", "tags", "image", "conda_file", "build", "os_type",
               "inference_config", "datastore"}
IGNORED_INLINE_KEYS = {"tags", "os_type", "inference_config", "datastore", "$schema", "description"}


def alias_files(start: Path | None = None) -> list[Path]:
    """The `aliases.yaml` files of the searched environments dirs (first match wins)."""
    from prefect_ml.environments.spec import search_dirs

    return [d / ALIAS_FILE for d in search_dirs(start) if (d / ALIAS_FILE).is_file()]


def load_aliases(start: Path | None = None) -> dict[str, tuple[str, Path]]:
    """Azure name -> (local environment name, map file), from every alias map found."""
    out: dict[str, tuple[str, Path]] = {}
    for f in alias_files(start):
        raw = load_yaml_file(f, EnvironmentSpecError) or {}
        if not isinstance(raw, Mapping) or not all(isinstance(v, str) for v in raw.values()):
            raise EnvironmentSpecError(f"{f}: an alias map maps Azure environment names to local environment names "
                                       "(`AzureML-sklearn-1.0-ubuntu20.04-py38-cpu: sklearn-cpu`).")
        for k, v in raw.items():
            out.setdefault(str(k), (v, f))
    return out


def _candidates(ref: str) -> list[str]:
    """The keys an Azure reference is looked up by in the alias map, most specific first."""
    keys = [ref]
    body = ref.removeprefix("azureml:") if not ref.startswith("azureml://") else ref
    keys.append(body)
    m = REGISTRY_REF.match(ref) or WORKSPACE_REF.match(ref)
    if m:
        keys += [ref.split("/labels/")[0].split("/versions/")[0], m.group("name")]
    else:
        name = re.split(r"[@:]", body, maxsplit=1)[0]
        keys.append(name)
    return list(dict.fromkeys(keys))


def _split(ref: str) -> tuple[str, str | None]:
    """`azureml:NAME:VERSION` / `NAME@latest` / `NAME` -> (NAME, VERSION or None for latest/none)."""
    body = ref.removeprefix("azureml:")
    if "@" in body:
        name, _, label = body.partition("@")
        if label != "latest":
            raise EnvironmentSpecError(f"environment {ref!r}: label '@{label}' is not known here; only '@latest' "
                                       "means something for a local environment (or add the name to an alias map).")
        return name, None
    name, _, version = body.partition(":")
    return name, version or None


def resolve(ref: str | Mapping[str, Any], *, source: Path | None = None, start: Path | None = None) -> str:
    """The local environment name for an Azure environment reference (or inline spec); the environment
    is loaded and checked now, so a missing or invalid one fails at load, not at run time."""
    from prefect_ml.environments.spec import known_environments, load_environment

    if isinstance(ref, Mapping):
        name = materialize_inline(ref, base_dir=(source.parent if source else Path.cwd()))
        load_environment(name, start=start)
        return name
    ref = str(ref).strip()
    aliases = load_aliases(start)
    for key in _candidates(ref):
        if key in aliases:
            target, map_file = aliases[key]
            if target not in known_environments(start):
                raise EnvironmentSpecError(
                    f"environment {ref!r}: the alias map {map_file} points it at {target!r}, which is not a local "
                    f"environment; create environments/{target}/environment.yaml or fix the map."
                )
            load_environment(target, start=start)
            return target
    if ref.startswith("azureml://") or REGISTRY_REF.match(ref):
        raise _missing_alias(ref, start)
    name, version = _split(ref)
    known = known_environments(start)
    if name not in known:
        if ref.startswith("azureml:") or "@" in ref or name.lower() != name:
            raise _missing_alias(ref, start)
        load_environment(name, start=start)  # raises: unknown environment, with the known ones listed
    env = load_environment(name, start=start)
    if version is not None and env.version != version:
        raise EnvironmentSpecError(
            f"environment {ref!r}: the local environment '{name}' ({env.spec_file}) is version {env.version!r}, "
            f"not {version!r}; write azureml:{name}@latest, or :{env.version}, or set its version to {version!r}."
        )
    return name


def _missing_alias(ref: str, start: Path | None) -> EnvironmentSpecError:
    from prefect_ml.environments.spec import NAME, known_environments, search_dirs

    maps = [str(f) for f in alias_files(start)]
    target = maps[0] if maps else (str(search_dirs(start)[0] / ALIAS_FILE) if search_dirs(start)
                                   else f"environments/{ALIAS_FILE}")
    key = _candidates(ref)[-1] if ref.startswith("azureml://") else re.split(r"[@:]", ref.removeprefix("azureml:"))[0]
    create = f", or create environments/{key}/environment.yaml" if NAME.match(key) else ""
    return EnvironmentSpecError(
        f"environment {ref!r} is an Azure ML environment with no local equivalent: add a line "
        f"`{key}: <local environment>` to the alias map {target} (maps searched: {maps or 'none found'}){create}; "
        f"local environments: {sorted(known_environments(start)) or 'none'}."
    )


def materialize_inline(raw: Mapping[str, Any], base_dir: Path) -> str:
    """Write an inline Azure environment as a local environment dir and return its name.

    `image:` (+ optional `conda_file:`): named by its content. `build: {path, dockerfile_path}` (a Docker
    build context, relative to `base_dir`): named by where the context is; its content is in the spec
    hash (`Environment.spec_hash`), so an edited Dockerfile gives a new image tag, not a new name. As in
    Azure, `build` excludes `image` and `conda_file`.
    """
    unknown = sorted(set(raw) - INLINE_KEYS)
    if unknown:
        raise EnvironmentSpecError(f"inline environment: unknown key(s) {unknown}; allowed: {sorted(INLINE_KEYS)}.")
    if "build" in raw:
        return _write_inline(raw, _inline_build(raw, base_dir))
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        raise EnvironmentSpecError("inline environment: give 'image:' (a Docker image), optionally with "
                                   "'conda_file:', or 'build: {path: <folder with a Dockerfile>}'; or name an "
                                   "environment in environments/.")
    conda_text: str | None = None
    conda = raw.get("conda_file")
    if isinstance(conda, Mapping):
        import yaml

        conda_text = yaml.safe_dump(dict(conda), sort_keys=False)
    elif conda is not None:
        conda_path = (base_dir / str(conda)).resolve()
        if not conda_path.is_file():
            raise EnvironmentSpecError(f"inline environment: conda_file {str(conda)!r} does not exist ({conda_path}); "
                                       "create it or fix the path (relative to the YAML file).")
        conda_text = conda_path.read_text()
    spec: dict[str, Any] = {"base_image": image.strip(), "description": f"inline environment ({image})"}
    files = {"conda.yaml": conda_text} if conda_text is not None else {}
    if conda_text is not None:
        spec["conda"] = "conda.yaml"
    return _write_inline(raw, spec, files, digest_of=[image, conda_text])


def _inline_build(raw: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """The spec of an inline `build:` environment, its `build` checked by `spec.check_build` (relative to
    `base_dir`, the YAML file's folder); the caller adds the component file and line to the error."""
    from prefect_ml.environments.spec import check_build

    for other, fix in (("image", "keep 'build' to build the Dockerfile, or 'image' to use an image as it is"),
                       ("conda_file", "install the conda packages with RUN in the Dockerfile, or use 'image' + "
                                      "'conda_file'")):
        if raw.get(other) is not None:
            raise EnvironmentSpecError(f"inline environment: 'build' and '{other}' cannot both be given (in Azure ML "
                                       f"too): {fix}.")

    def error(message: str, *keys: str) -> EnvironmentSpecError:
        return EnvironmentSpecError(f"inline environment: key 'build': {message}")

    context, dockerfile = check_build(raw["build"], base_dir, error)
    return {"build": {"path": str(context), "dockerfile_path": dockerfile},
            "description": f"inline environment (Dockerfile {context / dockerfile})"}


def _write_inline(raw: Mapping[str, Any], spec: dict[str, Any], files: Mapping[str, str] | None = None,
                  digest_of: Any = None) -> str:
    """Write `spec` (+ `files`) as `<PREFECT_ML_HOME>/environments/inline/inline-<label>-<digest>/` once;
    the digest is over `digest_of` (default: the spec). Returns the environment's name."""
    from prefect_ml.environments.spec import SPEC_FILE, add_generated_dir

    content = spec if digest_of is None else digest_of
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
    label = re.sub(r"[^a-z0-9_.-]+", "-", str(raw.get("name") or "env").lower()).strip("-.")[:40] or "env"
    name = f"inline-{label}-{digest}"
    root = get_settings().home_path / "environments" / "inline"
    directory = root / name
    if not (directory / SPEC_FILE).is_file():
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for fname, text in (files or {}).items():
            (tmp / fname).write_text(text)
        (tmp / SPEC_FILE).write_text(json.dumps({"name": name, "version": str(raw.get("version") or "1"), **spec},
                                                indent=2) + "\n")
        try:
            tmp.rename(directory)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent load wrote the same content
    add_generated_dir(root)
    return name
