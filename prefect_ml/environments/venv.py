"""An environment's local venv, for the process infrastructure.

The venv lives in `<PREFECT_ML_HOME>/venvs/<name>-py<XY>-<key>`, where the key covers the spec hash and
the host interpreter (a venv has no base image; it is tied to the interpreter that made it). It is
built once per key: a marker file says it is complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prefect_ml._util import atomic_write_text
from prefect_ml.environments.image import Log, build_lock
from prefect_ml.environments.spec import Environment, load_environment, refuse_on_process
from prefect_ml.errors import EnvironmentSpecError
from prefect_ml.settings import get_settings

COMPLETE_MARKER = ".prefect-ml-complete"


def venv_path(env: Environment) -> Path:
    """Where the environment's venv for the running interpreter lives (built or not)."""
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    key = hashlib.sha256(f"{env.spec_hash()}\0{sys.executable}\0{sys.version}".encode()).hexdigest()[:16]
    return get_settings().home_path / "venvs" / f"{env.name}-{py}-{key}"


def ensure_venv(name_or_env: str | Environment, *, start: Path | None = None, log: Log | None = None) -> Path:
    """A venv with the environment's requirements, built once per spec hash; returns its root.

    The venv layers on the running interpreter: it sees the packages of the interpreter running the
    pipeline (a `.pth` file, so this works from inside a venv too, unlike --system-site-packages)
    and pip-installs the environment's requirements into itself; requirements the running
    interpreter already satisfies cost nothing. apt packages and `base_image` do not apply to a venv;
    a `build:` (Dockerfile) environment has no venv: it raises `EnvironmentSpecError` saying what to use.
    """
    env = name_or_env if isinstance(name_or_env, Environment) else load_environment(name_or_env, start=start)
    refuse_on_process(env)
    log = log or (lambda line: None)
    root = venv_path(env)
    marker = root / COMPLETE_MARKER
    if marker.is_file():
        return root
    with build_lock(root.name):
        if marker.is_file():
            return root
        if root.exists():
            shutil.rmtree(root)  # a half-built venv from an interrupted build
        started = time.monotonic()
        log(f"building venv {root} for environment '{env.name}' ...")
        try:
            _build_venv(env, root, log)
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise EnvironmentSpecError(
                f"could not create a venv for environment '{env.name}' with {sys.executable}: {exc.stderr or exc}"
            ) from exc
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        atomic_write_text(marker, json.dumps({"environment": env.name, "spec_hash": env.spec_hash()}))
        log(f"built venv {root} in {time.monotonic() - started:.1f} s")
    return root


def _build_venv(env: Environment, root: Path, log: Log) -> None:
    import sysconfig

    # no pip inside (ensurepip costs 5-20 s): uv or the running interpreter's pip install into it (`--python`)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True,
                   text=True)
    py = root / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # addsitedir (not a plain path line) so the parent's own .pth files (editable installs) apply too
    (Path(site) / "_prefect_ml_parent.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    )
    files: list[Path] = []
    if env.conda_pip:
        pip_file = root / "conda-pip.txt"
        pip_file.write_text("\n".join(env.conda_pip) + "\n")
        files.append(pip_file)
    if env.requirements:
        files.append(env.directory / env.requirements)
    for file in files:
        missing = unsatisfied(file)
        if missing is not None and not missing:
            log(f"{file.name}: every requirement is met by {sys.executable}; nothing to install")
            continue
        # only what the running interpreter lacks (or the whole file when it cannot be read line by line)
        args = ["-r", str(file)] if missing is None else missing
        _install(env, py, args, log)


def unsatisfied(requirements: Path) -> list[str] | None:
    """The requirement lines of `requirements` that the running interpreter does not satisfy, or None
    when the file has anything but plain requirement lines (options, URLs, includes, extras) and must
    go to the installer whole. The venv sees the running interpreter's packages (the `.pth` above)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        return None
    missing: list[str] = []
    for raw in requirements.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            return None
        try:
            req = Requirement(line)
        except InvalidRequirement:
            return None
        if req.url or req.extras:
            return None
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            missing.append(line)
            continue
        if not req.specifier.contains(have, prereleases=True):
            missing.append(line)
    return missing


def _pip(py: Path) -> list[str]:
    """pip for the venv: the running interpreter's (`pip --python VENV`, pip >= 22.3), else pip put into
    the venv with ensurepip."""
    import importlib.util

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "--python", str(py), "install", "--disable-pip-version-check"]
    subprocess.run([str(py), "-m", "ensurepip", "--upgrade"], check=True, capture_output=True, text=True)
    return [str(py), "-m", "pip", "install", "--disable-pip-version-check"]


def _installer(py: Path) -> tuple[list[str], str]:
    """uv (`uv pip install --python VENV`) when the setting says uv and uv runs here, else pip."""
    if get_settings().installer.strip().lower() == "uv":
        beside = Path(sys.executable).parent / "uv"
        uv = shutil.which("uv") or (str(beside) if beside.is_file() else None)
        if uv:
            return [uv, "pip", "install", "--python", str(py)], "uv"
    return _pip(py), "pip"


def _install(env: Environment, py: Path, args: list[str], log: Log) -> None:
    cmd, name = _installer(py)
    proc = subprocess.run([*cmd, *args], cwd=env.directory, capture_output=True, text=True, check=False)
    if proc.returncode != 0 and name == "uv":  # pip is the fallback
        log(f"uv failed ({proc.stderr.strip()[-300:]}); installing with pip")
        cmd, name = _pip(py), "pip"
        proc = subprocess.run([*cmd, *args], cwd=env.directory, capture_output=True, text=True, check=False)
    for line in (proc.stdout + proc.stderr if name == "uv" else proc.stdout).splitlines():
        log(line)
    if proc.returncode != 0:
        raise EnvironmentSpecError(
            f"building the venv of environment '{env.name}' ({env.spec_file}) failed: {name} exited "
            f"{proc.returncode}:\n{proc.stderr[-2000:]}\nFix the requirements named above."
        )
