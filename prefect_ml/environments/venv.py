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
from prefect_ml.environments.spec import Environment, load_environment
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
    interpreter already satisfies cost nothing. apt packages and `base_image` do not apply to a venv.
    """
    env = name_or_env if isinstance(name_or_env, Environment) else load_environment(name_or_env, start=start)
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

    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, text=True)
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
            cwd=env.directory, capture_output=True, text=True, check=False,
        )
        for line in proc.stdout.splitlines():
            log(line)
        if proc.returncode != 0:
            raise EnvironmentSpecError(
                f"building the venv of environment '{env.name}' ({env.spec_file}) failed: pip exited "
                f"{proc.returncode}:\n{proc.stderr[-2000:]}\nFix the requirements named above."
            )
