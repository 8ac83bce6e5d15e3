"""Environments: spec validation, content hash, conda files without conda, venvs for the process
infrastructure, the CLI (image builds against the real engine: tests/integration/test_environments_docker.py)."""

from __future__ import annotations

import subprocess
import sys
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
    with pytest.raises(EnvironmentSpecError,
                       match=r"typo/environment.yaml line 2: unknown key\(s\) \['requirement'\]; allowed keys are"):
        load_environment("typo")
    make_env(envs, "wrongname", "version: '2'\nname: other\n")
    with pytest.raises(EnvironmentSpecError,
                       match=r"wrongname/environment.yaml line 2: key 'name' is 'other' but the directory"):
        load_environment("wrongname")
    make_env(envs, "nofile", "name: nofile\ngpu: false\nrequirements: missing.txt\n")
    with pytest.raises(EnvironmentSpecError, match=r"nofile/environment.yaml line 3: key 'requirements' names"):
        load_environment("nofile")


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


# --- `build:` environments: a Dockerfile and its build context ----------------------------------------


def dockerfile_env(envs, name: str, dockerfile: str = "FROM prefect-ml/base:bookworm\nCOPY hello.txt /hello.txt\n",
                   build: str = "{path: ctx}", extra: str = ""):
    """environments/<name>/ with `build:` and a build context ctx/ (Dockerfile + hello.txt); returns the dir."""
    d = make_env(envs, name, f"name: {name}\nbuild: {build}\n{extra}")
    (d / "ctx").mkdir()
    (d / "ctx" / "Dockerfile").write_text(dockerfile)
    (d / "ctx" / "hello.txt").write_text("hello\n")
    return d


def test_dockerfile_environment_hash_follows_every_file_of_the_context(envs):
    from prefect_ml.environments import image_tag, load_environment

    d = dockerfile_env(envs, "dock")
    env = load_environment("dock")
    assert env.build_context == (d / "ctx").resolve() and env.dockerfile == "Dockerfile"
    assert env.dockerfile_path == (d / "ctx" / "Dockerfile").resolve()
    assert env.resolved_base_image() == "prefect-ml/base:bookworm"  # its FROM, not the setting
    first = env.spec_hash()
    assert load_environment("dock").spec_hash() == first  # unchanged context: the same hash, the same image
    tag = image_tag(env, "sha256:aaa")
    assert tag.startswith("prefect-ml/dock:") and tag != image_tag(env, "sha256:bbb")  # its FROM's id counts too

    (d / "ctx" / "hello.txt").write_text("changed\n")  # a context file
    assert env.spec_hash() != first and image_tag(env, "sha256:aaa") != tag
    (d / "ctx" / "hello.txt").write_text("hello\n")
    assert env.spec_hash() == first  # content, not times
    (d / "ctx" / "Dockerfile").write_text("FROM prefect-ml/base:bookworm\nENV X=1\n")  # the Dockerfile
    assert env.spec_hash() != first
    (d / "ctx" / "Dockerfile").write_text("FROM prefect-ml/base:bookworm\nCOPY hello.txt /hello.txt\n")
    (d / "ctx" / "sub").mkdir()
    (d / "ctx" / "sub" / ".hidden").write_text("x")  # dotfiles count (Docker sends them)
    assert env.spec_hash() != first
    (d / "ctx" / "sub" / ".hidden").unlink()
    assert env.spec_hash() != first  # an empty folder is sent too
    (d / "ctx" / "sub").rmdir()
    assert env.spec_hash() == first
    (d / "ctx" / "hello.txt").chmod(0o755)  # the executable bit goes into the image
    assert env.spec_hash() != first
    (d / "ctx" / "hello.txt").chmod(0o644)
    (d / "ctx" / ".git").mkdir()
    (d / "ctx" / ".git" / "HEAD").write_text("ref")  # .git too, as Docker sends it, unless .dockerignore lists it
    assert env.spec_hash() != first


def test_dockerfile_environment_with_dockerfile_path_and_the_env_dir_as_context(envs):
    from prefect_ml.environments import load_environment

    d = make_env(envs, "here", "name: here\ngpu: true\nbuild:\n  path: .\n  dockerfile_path: docker/train.Dockerfile\n")
    (d / "docker").mkdir()
    (d / "docker" / "train.Dockerfile").write_text("ARG BASE=prefect-ml/base:bookworm\nFROM ${BASE}\n")
    env = load_environment("here")
    assert env.gpu and env.build_context == d.resolve() and env.dockerfile == "docker/train.Dockerfile"
    assert env.resolved_base_image() == "prefect-ml/base:bookworm"


def test_dockerfile_base_follows_stages_arg_defaults_and_continuations(tmp_path):
    from prefect_ml.environments.spec import dockerfile_base
    from prefect_ml.errors import EnvironmentSpecError

    f = tmp_path / "Dockerfile"
    f.write_text("# syntax=docker/dockerfile:1\nARG PY=3.11\nFROM --platform=linux/amd64 python:${PY}-slim AS build\n"
                 "RUN echo a \\\n    && echo b\nFROM build AS final\nFROM \\\n  final\nENV X=1\n")
    assert dockerfile_base(f) == "python:3.11-slim"  # the final stage's root, through two stage names
    f.write_text("from prefect-ml/base:bookworm as b\nfrom other:1\n")
    assert dockerfile_base(f) == "other:1"
    for text, message in [
        ("RUN true\n", r"Dockerfile: no FROM line; start the Dockerfile FROM a local image"),
        ("ARG BASE\nFROM $BASE\n", r"Dockerfile line 2: FROM \$BASE uses a build argument without a default"),
        ("FROM prefect-ml/base:bookworm AS b\nFROM scratch\nCOPY --from=b / /\n",
         r"Dockerfile line 2: the image is FROM scratch, which has no Python"),
    ]:
        f.write_text(text)
        with pytest.raises(EnvironmentSpecError, match=message):
            dockerfile_base(f)


def test_dockerfile_environment_problems_fail_at_load_naming_file_and_line(envs, tmp_path):
    from prefect_ml.environments import load_environment
    from prefect_ml.errors import EnvironmentSpecError

    cases = [
        ("both", "{path: ctx}", "requirements: requirements.txt\n",
         r"both/environment.yaml line 3: keys 'build' and 'requirements' cannot be combined: the Dockerfile is the "
         r"whole image .*drop 'requirements' or drop 'build'\.$"),
        ("withbase", "{path: ctx}", "base_image: python:3.11-slim\n",
         r"withbase/environment.yaml line 3: keys 'build' and 'base_image' cannot be combined"),
        ("nodir", "{path: missing}", "",
         r"nodir/environment.yaml line 2: key 'build': path 'missing' is not a folder \(.*missing\); create the build "
         r"context there or fix build.path\.$"),
        ("nofile", "\n  path: ctx\n  dockerfile_path: gpu.Dockerfile", "",
         r"nofile/environment.yaml line 4: key 'build': the Dockerfile 'gpu.Dockerfile' does not exist in the build "
         r"context \(.*ctx/gpu.Dockerfile\); create it or fix build.dockerfile_path\.$"),
        ("outside", "{path: ctx, dockerfile_path: ../../Dockerfile}", "",
         r"line 2: key 'build': dockerfile_path '../../Dockerfile' is outside the build context"),
        ("typo", "{path: ctx, dockerfile: Dockerfile}", "",
         r"typo/environment.yaml line 2: key 'build': unknown key\(s\) \['dockerfile'\]; allowed: "
         r"\['dockerfile_path', 'path'\]"),
        ("string", "ctx", "", r"line 2: key 'build': must be a mapping `\{path: <folder with a Dockerfile>"),
        ("remote", "{path: 'https://github.com/x/y.git'}", "", r"path 'https://github.com/x/y.git' is not a local "
                                                                r"folder"),
    ]
    for name, build, extra, message in cases:
        d = dockerfile_env(envs, name, build=build, extra=extra)
        (d / "requirements.txt").write_text("six\n")
        with pytest.raises(EnvironmentSpecError, match=message) as err:
            load_environment(name)
        assert "\n" not in str(err.value)  # one line

    d = dockerfile_env(envs, "badfrom", dockerfile="ARG B\nFROM ${B}\n")
    with pytest.raises(EnvironmentSpecError, match=r"badfrom/environment.yaml line 2: key 'build': .*ctx/Dockerfile "
                                                   r"line 2: FROM \$\{B\} uses a build argument without a default"):
        load_environment("badfrom")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    d = dockerfile_env(envs, "leaky")
    (d / "ctx" / "link.txt").symlink_to(secret)
    with pytest.raises(EnvironmentSpecError, match=r"leaky/environment.yaml line 2: key 'build': .*'link.txt' in the "
                                                   r"build context .* links to .*secret.txt', outside the context; "
                                                   r"copy it into the context"):
        load_environment("leaky")
    d = dockerfile_env(envs, "inlink")
    (d / "ctx" / "alias.txt").symlink_to(d / "ctx" / "hello.txt")  # inside the context: fine
    assert load_environment("inlink").spec_hash()


def test_dockerfile_context_is_bounded(envs, monkeypatch):
    from prefect_ml.environments import load_environment, spec
    from prefect_ml.errors import EnvironmentSpecError

    monkeypatch.setattr(spec, "MAX_CONTEXT_FILES", 1)
    dockerfile_env(envs, "big")  # Dockerfile + hello.txt: two files
    with pytest.raises(EnvironmentSpecError, match=r"big/environment.yaml line 2: key 'build': the build context "
                                                   r".*ctx holds more than 1 files or 512 MiB that Docker would send; "
                                                   r"list data and output folders in its .dockerignore, or point "
                                                   r"build.path at a folder with the Dockerfile"):
        load_environment("big")


def test_dockerfile_context_is_what_docker_sends_dockerignore_applied(envs, monkeypatch):
    """The hash and the bounds cover what `docker build` sends: a folder `.dockerignore` leaves out neither
    counts toward the bound nor changes the hash; a file that is sent does; the Dockerfile and
    `.dockerignore` themselves are always sent (docker-py adds them back), so they count and are hashed."""
    from prefect_ml.environments import load_environment, spec
    from prefect_ml.errors import EnvironmentSpecError

    monkeypatch.setattr(spec, "MAX_CONTEXT_FILES", 5)
    d = dockerfile_env(envs, "azure")
    ctx = d / "ctx"
    (ctx / "data").mkdir()
    for i in range(10):  # a data folder bigger than the bound
        (ctx / "data" / f"part-{i}.csv").write_text(f"{i}\n")
    with pytest.raises(EnvironmentSpecError, match=r"holds more than 5 files"):
        load_environment("azure")
    (ctx / ".dockerignore").write_text("# not sent\ndata\n\n*.log\n")
    env = load_environment("azure")  # Dockerfile, hello.txt, .dockerignore: within the bound
    first = env.spec_hash()
    (ctx / "data" / "part-0.csv").write_text("rewritten\n")  # ignored: the same hash (the same image)
    (ctx / "data" / "new").mkdir()
    (ctx / "data" / "new" / "more.csv").write_text("x\n")
    (ctx / "run.log").write_text("log\n")
    (ctx / "data" / "out.txt").symlink_to("/etc/hostname")  # not sent, so not refused either
    assert load_environment("azure").spec_hash() == first == env.spec_hash()
    (ctx / "hello.txt").write_text("changed\n")  # sent: a new hash
    assert env.spec_hash() != first
    (ctx / "hello.txt").write_text("hello\n")
    assert env.spec_hash() == first

    (ctx / ".dockerignore").write_text("*\n")  # everything ignored, but Docker still sends these two
    ignored_all = env.spec_hash()
    assert ignored_all != first  # .dockerignore's bytes are hashed (and hello.txt is no longer sent)
    (ctx / "Dockerfile").write_text("FROM prefect-ml/base:bookworm\nENV X=2\n")
    assert env.spec_hash() != ignored_all  # the Dockerfile counts although `*` matches it
    (ctx / ".dockerignore").write_text("*\n# edited\n")
    assert env.spec_hash() not in (ignored_all, first)
    assert [rel for rel, _ in spec.context_files(ctx, "Dockerfile")] == [".dockerignore", "Dockerfile"]
    monkeypatch.setattr(spec, "MAX_CONTEXT_FILES", 1)  # and both count toward the bound
    with pytest.raises(EnvironmentSpecError, match=r"holds more than 1 files"):
        env.spec_hash()


def test_dockerfile_context_files_are_docker_pys_own_list(tmp_path):
    """`context_files` lists exactly what docker-py's `exclude_paths` (what `docker build` tars) lists:
    negations, `**`, a Dockerfile in an ignored folder, a folder link (sent as a link, not entered)."""
    from docker.utils.build import exclude_paths

    from prefect_ml.environments.spec import context_files, dockerignore_patterns

    ctx = tmp_path / "ctx"
    for rel in ("docker/train.Dockerfile", "docker/notes.md", "src/app.py", "src/cache/x.pyc", "data/a.csv",
                "data/keep.txt", "logs/deep/x.log", "README.md", ".git/HEAD"):
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(rel)
    (ctx / "srclink").symlink_to("src")
    (ctx / ".dockerignore").write_text("# comment\n  data  \n!data/keep.txt\ndocker\n**/*.pyc\n**/*.log\n.git\n")
    ours = context_files(ctx, "docker/train.Dockerfile")
    expected = exclude_paths(str(ctx.resolve()), dockerignore_patterns(ctx), dockerfile="docker/train.Dockerfile")
    assert {rel for rel, _ in ours} == expected
    assert {"docker/train.Dockerfile", "data/keep.txt", ".dockerignore", "srclink"} <= expected
    assert not expected & {"docker/notes.md", "data/a.csv", "src/cache/x.pyc", "logs/deep/x.log", ".git/HEAD"}
    assert dict(ours)["srclink"] == "link" and "srclink/app.py" not in expected
    (ctx / ".dockerignore").unlink()  # nothing ignored: the same list, without importing docker-py
    assert {rel for rel, _ in context_files(ctx, "docker/train.Dockerfile")} == exclude_paths(
        str(ctx.resolve()), [], dockerfile="docker/train.Dockerfile")
    code = (f"import sys; from prefect_ml.environments.spec import context_files; "
            f"context_files({str(ctx)!r}, 'docker/train.Dockerfile'); print('docker' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_the_build_context_is_read_once_per_load_and_image_lookup(envs, monkeypatch):
    """Loading a `build:` environment reads no file of its context (only the Dockerfile); `ensure_image`
    hashes the context once for an existing image, twice for a build (the tag, then the check that
    the context did not change while it was built); the labels reuse the first hash."""
    import docker.errors

    from prefect_ml.environments import ensure_image, image, load_environment, spec

    reads: list[str] = []
    real = spec.context_digest
    monkeypatch.setattr(spec, "context_digest", lambda *a, **k: reads.append("x") or real(*a, **k))
    dockerfile_env(envs, "counted")
    env = load_environment("counted")
    assert reads == []

    class Images:
        def __init__(self):
            self.tags: set[str] = set()

        def get(self, name):
            if name == "prefect-ml/base:bookworm" or name in self.tags:
                return type("Image", (), {"id": "sha256:base"})()
            raise docker.errors.ImageNotFound(name)

    class Api:
        def __init__(self, images):
            self.images, self.labels = images, {}

        def build(self, *, tag, labels, **kwargs):
            self.images.tags.add(tag)
            self.labels = labels
            return iter([{"stream": "Step 1/1 : FROM prefect-ml/base:bookworm\n"}])

    client = type("Client", (), {})()
    client.images = Images()
    client.api = Api(client.images)
    monkeypatch.setattr(image, "build_lock", lambda tag: __import__("contextlib").nullcontext())
    tag = ensure_image(env, client)
    assert len(reads) == 2 and tag == image.image_tag(env, "sha256:base")
    assert client.api.labels["prefect-ml.environment-hash"].startswith(tag.rsplit(":", 1)[1])
    reads.clear()
    assert ensure_image(env, client) == tag and len(reads) == 1


def test_dockerfile_environment_is_refused_on_process_infrastructure(envs, tmp_path):
    from prefect_ml.environments import ensure_venv
    from prefect_ml.environments.requirements_check import check_interpreter
    from prefect_ml.errors import EnvironmentSpecError
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.process import ProcessStepInfrastructure

    dockerfile_env(envs, "dockonly")
    message = (r"environment 'dockonly' \(.*environment.yaml\) is an image built from the Dockerfile .*ctx/Dockerfile, "
               r"which process infrastructure cannot run a step in: run the step on Docker infrastructure .*or give it "
               r"an environment with `requirements`")
    with pytest.raises(EnvironmentSpecError, match=message):
        ensure_venv("dockonly")
    with pytest.raises(EnvironmentSpecError, match=message):
        check_interpreter("dockonly")
    marker = tmp_path / "ran"
    job = StepJob("d", f"touch {marker}", tmp_path, {}, {}, {}, environment="dockonly")
    for block in (ProcessStepInfrastructure(), ProcessStepInfrastructure(use_environment_venv=True)):
        with pytest.raises(EnvironmentSpecError, match=message):
            block.run(job, lambda line: None)
    assert not marker.exists()  # refused before the step started


def test_environments_without_build_keep_their_hash(envs):
    """Adding `build:` changed nothing for the other environments: their spec hash (and so their image
    tags and the steps cached with them) is what it was."""
    import hashlib
    import json

    from prefect_ml.environments import load_environment

    d = make_env(envs, "plain", "name: plain\nrequirements: requirements.txt\napt: [libgomp1]\n",
                 {"requirements.txt": "six\n"})
    h = hashlib.sha256(json.dumps({"v": "1", "name": "plain", "version": "1", "base_image": None,
                                   "requirements": "requirements.txt", "conda": None, "apt": ["libgomp1"],
                                   "gpu": False}, sort_keys=True).encode())
    for f in ("environment.yaml", "requirements.txt"):
        h.update(b"\0" + f.encode() + b"\0" + (d / f).read_bytes())
    assert load_environment("plain").spec_hash() == h.hexdigest()
