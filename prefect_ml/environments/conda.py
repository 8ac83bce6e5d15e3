"""A conda file -> pip requirements, for base images without conda.

When the base image has `conda`, `conda env update -n base -f conda.yaml` installs the whole file
(see `prefect_ml.environments.image`). When it has none (the default: python:3.11-slim or the
debootstrap base), only the pip-installable part is used, by this rule:
  - the `pip:` sub-list is installed with pip as written;
  - `python` and `pip` entries are skipped (the base image provides Python; say the version there);
  - other entries `pkg`, `pkg=1.2`, `pkg>=1.2` become pip requirements (`=` becomes `==`);
  - refused, with the entry named: build strings (`pkg=1.2=py311_0`), channel prefixes
    (`conda-forge::pkg`), and conda-only native packages (`cudatoolkit`, `cudnn`, `mkl`, ...):
    put those in a base image with conda, or replace them with their pip wheels.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect_ml._util import load_yaml_file
from prefect_ml.errors import EnvironmentSpecError

CONDA_ONLY = {
    "cudatoolkit", "cuda-toolkit", "cudnn", "nccl", "mkl", "mkl-service", "libgcc", "libgcc-ng",
    "libstdcxx-ng", "openblas", "blas", "libblas", "ca-certificates", "openssl", "tk", "zlib",
}
_DEPENDENCY = re.compile(r"^([A-Za-z0-9_.-]+)\s*(.*)$")


def conda_pip_requirements(conda_file: Path) -> list[str]:
    """The pip-installable part of a conda file (see the module docstring for the rule)."""
    where = str(conda_file)
    raw = load_yaml_file(conda_file, EnvironmentSpecError) or {}
    deps = raw.get("dependencies", []) if isinstance(raw, dict) else None
    if not isinstance(deps, list):
        raise EnvironmentSpecError(f"{where}: key 'dependencies' must be a list.")
    out: list[str] = []
    for dep in deps:
        if isinstance(dep, dict):
            pip = dep.get("pip")
            if set(dep) != {"pip"} or not isinstance(pip, list):
                raise EnvironmentSpecError(f"{where}: in 'dependencies', only a `pip:` list may be a mapping, got "
                    f"{dep!r}.")
            out += [str(p) for p in pip]
            continue
        requirement = _pip_requirement(str(dep).strip(), where)
        if requirement is not None:
            out.append(requirement)
    return out


def _pip_requirement(spec: str, where: str) -> str | None:
    """One conda dependency as a pip requirement; None for entries the base image provides."""
    if "::" in spec:
        raise EnvironmentSpecError(
            f"{where}: dependency {spec!r} names a conda channel; without conda in the base image it cannot be "
            "installed. Drop the channel prefix, or use a base image that has conda."
        )
    m = _DEPENDENCY.match(spec)
    if not m:
        raise EnvironmentSpecError(f"{where}: cannot read dependency {spec!r}; write `name`, `name=1.2` or "
            "`name>=1.2`.")
    pkg, rest = m.group(1), m.group(2).strip()
    if pkg.lower() in ("python", "pip"):
        return None
    if pkg.lower() in CONDA_ONLY:
        raise EnvironmentSpecError(
            f"{where}: dependency {spec!r} is a conda-only native package; it cannot be installed with pip. "
            "Use a base image that has conda (and it), or remove it."
        )
    if rest.startswith("=") and not rest.startswith("=="):
        rest = rest[1:]
        if "=" in rest:
            raise EnvironmentSpecError(
                f"{where}: dependency {spec!r} has a conda build string; pip cannot install it. Write "
                    f"`{pkg}={rest.split('=')[0]}`."
            )
        return f"{pkg}=={rest}"
    if rest and rest[0] not in "<>=!~":  # `pkg 1.2`: conda's space form of a version
        return f"{pkg}=={rest}"
    return f"{pkg}{rest}"
