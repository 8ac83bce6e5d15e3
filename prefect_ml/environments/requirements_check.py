"""Does the running interpreter satisfy an environment's requirements? (process steps without a venv)

A step on process infrastructure runs with the interpreter that runs the pipeline unless the block
builds the environment's venv. When that interpreter lacks a package the environment asks for, the
step would start and fail on an import, 30 s later, once per step. `check_interpreter` answers
first, cheaply (`importlib.metadata` against the requirement specifiers; no pip, no network), and
its error names the missing packages and the two ways out.

Only what can be checked exactly is checked: `name[extras] <specifier> ; marker` lines of the
requirements file (and `-r` includes) and the pip part of a conda file. URLs, `-e`, paths and
options are skipped (pip decides those).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from prefect_ml.environments.spec import Environment, load_environment, refuse_on_process
from prefect_ml.errors import EnvironmentSpecError


def requirement_lines(env: Environment) -> list[str]:
    """The requirement strings of an environment: its requirements file (with `-r` includes) and
    the pip part of its conda file."""
    lines: list[str] = []
    if env.requirements:
        lines += _read(env.directory / env.requirements, set())
    lines += list(env.conda_pip)
    return lines


def _read(path: Path, seen: set[Path]) -> list[str]:
    path = path.resolve()
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    out: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += _read(path.parent / line.split(None, 1)[1], seen)
            continue
        out.append(line)
    return out


def unmet(lines: list[str]) -> list[str]:
    """The requirements the running interpreter does not satisfy: `name (wanted spec, installed X)`."""
    from packaging.requirements import InvalidRequirement, Requirement

    missing: list[str] = []
    for line in lines:
        if line.startswith("-") or "://" in line or line.startswith((".", "/")):
            continue  # options, URLs and paths: pip's business
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{req.name} (not installed; wanted {line})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            missing.append(f"{req.name} (installed {installed}; wanted {line})")
    return missing


def check_interpreter(environment: str, start: Path | None = None) -> None:
    """Raise `EnvironmentSpecError` before a process step starts if the running interpreter lacks
    packages that environment `environment` requires, or if it is a `build:` (Dockerfile) environment,
    which a process step cannot honour."""
    env = load_environment(environment, start=start)
    refuse_on_process(env)
    missing = unmet(requirement_lines(env))
    if missing:
        raise EnvironmentSpecError(
            f"environment '{env.name}' ({env.spec_file}) needs packages this interpreter does not have: "
            f"{'; '.join(missing)}. Either build the environment's venv (`prefect-ml env build {env.name} --venv`, "
            "and set use_environment_venv on the process infrastructure block) or install them into this "
            f"interpreter (`pip install {' '.join(_quote(m) for m in missing)}`)."
        )


def _quote(entry: str) -> str:
    wanted = entry.split("wanted ", 1)[1].rstrip(")")
    return f"'{wanted}'" if any(c in wanted for c in "<>=!~;[ ") else wanted
