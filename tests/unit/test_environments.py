"""Environments: spec validation, content hash, conda files without conda, venvs for the process
infrastructure, the CLI (image builds against the real engine: tests/integration/test_environments_docker.py)."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests.conftest import make_env
from tests.paths import REPO

# --- spec errors: the file, the key and the fix -----------------------------------------------


def test_unknown_environment_lists_the_known_ones(envs):
    from prefect_ml.environments import load_environment
    from prefect_ml.errors import EnvironmentSpecError

    make_env(envs, "alpha", "name: alpha\nrequirements: null\n")
    with pytest.raises(EnvironmentSpecError, match=r"unknown environment 'nope'; known environments: \['alpha'.*"
                                                   r"Create environments/nope/environment.yaml"):
        load_environment("nope")


def test_missing_requirements_file_names_file_key_and_fix(envs):
    from prefect_ml.environments import load_environment
    from prefect_ml.errors import EnvironmentSpecError

    d = make_env(envs, "broken", "name: broken\nrequirements: requirements.txt\n")
    with pytest.raises(EnvironmentSpecError) as err:
        load_environment("broken")
    msg = str(err.value)
    assert str(d / "environment.yaml") in msg and "key 'requirements'" in msg and "'requirements.txt'" in msg
    assert "does not exist" in msg and "create the file or fix the key" in msg


def test_bad_yaml_and_unknown_keys_name_the_file(envs):
    from prefect_ml.environments import load_environment
    from prefect_ml.errors import EnvironmentSpecError

    make_env(envs, "badyaml", "name: badyaml\nrequirements: [unclosed\n")
    with pytest.raises(EnvironmentSpecError, match=r"badyaml/environment.yaml: line \d+, column \d+: invalid YAML"):
        load_environment("badyaml")
    make_env(envs, "typo", "name: typo\nrequirement: requirements.txt\n")
    with pytest.raises(EnvironmentSpecError, match=r"unknown key\(s\) \['requirement'\]; allowed keys are"):
        load_environment("typo")
    make_env(envs, "wrongname", "name: other\n")
    with pytest.raises(EnvironmentSpecError, match=r"key 'name' is 'other' but the directory is 'wrongname'"):
        load_environment("wrongname")


def test_conda_file_pip_rule(envs):
    from prefect_ml.environments import conda_pip_requirements
    from prefect_ml.errors import EnvironmentSpecError

    ok = make_env(envs, "condaok", "name: condaok\nconda: conda.yaml\n", {"conda.yaml": """
        name: x
        channels: [conda-forge]
        dependencies:
          - python=3.11
          - pip
          - numpy=1.26
          - pandas>=2.1
          - scipy 1.11
          - requests
          - pip: ["six==1.17.0", "idna"]
    """})
    assert conda_pip_requirements(ok / "conda.yaml") == [
        "numpy==1.26", "pandas>=2.1", "scipy==1.11", "requests", "six==1.17.0", "idna"]
    for bad, why in [("conda-forge::numpy", "names a conda channel"), ("numpy=1.26=py311_0", "build string"),
                     ("cudatoolkit=11.8", "conda-only native package")]:
        d = make_env(envs, f"c{uuid.uuid4().hex[:6]}", "conda: conda.yaml\n",
                     {"conda.yaml": f"dependencies: ['{bad}']\n"})
        with pytest.raises(EnvironmentSpecError, match=why):
            conda_pip_requirements(d / "conda.yaml")


def test_content_hash_follows_spec_files_and_base_image(envs):
    from prefect_ml.environments import content_hash, image_hash, image_tag, load_environment

    d = make_env(envs, "hashy", "name: hashy\nrequirements: requirements.txt\n", {"requirements.txt": "six\n"})
    env = load_environment("hashy")
    assert content_hash(env) == load_environment("hashy").spec_hash()
    assert content_hash(env, "sha256:aaa") == image_hash(env, "sha256:aaa") != env.spec_hash()
    assert image_tag(env, "sha256:aaa") == image_tag(env, "sha256:aaa")
    assert image_tag(env, "sha256:aaa") != image_tag(env, "sha256:bbb")  # a new base image id -> a new image
    assert image_tag(env, "sha256:aaa").startswith("prefect-ml/hashy:")
    before = env.spec_hash()
    time.sleep(0.01)
    (d / "requirements.txt").write_text("six==1.17.0\n")
    assert load_environment("hashy").spec_hash() != before


def test_repository_environments_load(monkeypatch):
    from prefect_ml.environments import load_environment

    monkeypatch.delenv("PREFECT_ML_ENVIRONMENTS_DIR", raising=False)
    gpu = load_environment("pytorch-gpu", start=REPO / "components" / "train")
    assert gpu.gpu and gpu.requirements == "requirements.txt"
    cpu = load_environment("sklearn-cpu", start=REPO / "components" / "train")
    assert not cpu.gpu


# --- venvs (process infrastructure) -----------------------------------------------------------


def test_process_infrastructure_runs_in_the_environment_venv(envs, tmp_path):
    from prefect_ml.environments import ensure_venv, load_environment
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.process import ProcessStepInfrastructure

    # pyyaml is in the running interpreter already: the venv layers on it, so nothing is downloaded
    make_env(envs, "local", "name: local\nrequirements: requirements.txt\n", {"requirements.txt": "pyyaml\n"})
    root = ensure_venv("local")
    assert (root / ".prefect-ml-complete").is_file()
    assert ensure_venv(load_environment("local")) == root  # keyed by the spec hash: built once
    job = StepJob("v", "python -c 'import sys, yaml, prefect_ml; print(sys.prefix)'", tmp_path, {}, {}, {},
                  environment="local")
    lines: list[str] = []
    outcome = ProcessStepInfrastructure(use_environment_venv=True).run(job, lines.append)
    assert outcome.exit_code == 0, lines
    assert lines[-1] == str(root)


# --- CLI --------------------------------------------------------------------------------------


def test_env_list_and_build_cli(monkeypatch, ml_home):
    from typer.testing import CliRunner

    from prefect_ml.cli import app

    monkeypatch.delenv("PREFECT_ML_ENVIRONMENTS_DIR", raising=False)
    monkeypatch.chdir(REPO)
    runner = CliRunner()
    res = runner.invoke(app, ["env", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert {"sklearn-cpu", "pytorch-gpu"} <= {row["name"] for row in __import__("json").loads(res.output)}
    res = runner.invoke(app, ["env", "build", "no-such-env"])
    assert res.exit_code == 1 and "unknown environment 'no-such-env'" in res.output


def test_base_image_script_ships_inside_the_package():
    """`prefect-ml env base-image` runs the script from the package (a wheel install has no scripts/);
    scripts/make-base-image.sh, which setup-test-services.sh calls, runs the same file."""
    from importlib import resources

    script = resources.files("prefect_ml.environments").joinpath("make-base-image.sh")
    assert script.is_file() and "docker import" in script.read_text()
    wrapper = (REPO / "scripts" / "make-base-image.sh").read_text()
    assert "prefect_ml/environments/make-base-image.sh" in wrapper
    res = subprocess.run(["bash", "-n", str(REPO / "prefect_ml" / "environments" / "make-base-image.sh")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_build_ca_bundle_setting_that_is_not_a_file_is_named(monkeypatch, tmp_path):
    from prefect_ml.environments import ca_bundle
    from prefect_ml.errors import EnvironmentSpecError

    missing = tmp_path / "no-bundle.pem"
    monkeypatch.setenv("PREFECT_ML_BUILD_CA_BUNDLE", str(missing))
    with pytest.raises(EnvironmentSpecError,
                       match=r"PREFECT_ML_BUILD_CA_BUNDLE=.*no-bundle.pem.* is not a file; .*'none'"):
        ca_bundle()
    with pytest.raises(EnvironmentSpecError, match=r"is not a file; point it at a PEM CA bundle\.$"):
        ca_bundle(explicit_only=True)  # what step containers mount
    monkeypatch.setenv("PREFECT_ML_BUILD_CA_BUNDLE", "none")
    assert ca_bundle() is None and ca_bundle(explicit_only=True) is None
    monkeypatch.delenv("PREFECT_ML_BUILD_CA_BUNDLE")
    assert ca_bundle(explicit_only=True) is None  # the host's bundle is for builds only


def test_env_build_without_an_engine_is_one_line(monkeypatch, ml_home, tmp_path):
    from typer.testing import CliRunner

    from prefect_ml.cli import app

    monkeypatch.delenv("PREFECT_ML_ENVIRONMENTS_DIR", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.chdir(REPO)
    res = CliRunner().invoke(app, ["env", "build", "sklearn-cpu"])
    assert res.exit_code == 1, res.output
    assert "prefect-ml env: cannot reach the Docker engine at unix://" in res.output
    assert "Start the engine" in res.output
    assert "Traceback" not in res.output
