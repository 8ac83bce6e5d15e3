"""Azure ML files unchanged (issue 15): pipeline YAML, environment forms, data forms, SDK spellings.

No server: loading, checking, planning, parameter schemas. Runs are in
tests/integration/test_azure_pipelines.py. Fixtures (Azure's published schemas): tests/fixtures/azure/.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefect_ml import Input, Output, load_component, pipeline
from prefect_ml.dsl import azure_pipeline
from prefect_ml.dsl.azure_pipeline import load_pipeline, load_pipeline_yaml
from prefect_ml.errors import ComponentError, DataAssetError, EnvironmentSpecError, StorageError
from tests.unit.conftest import write_yaml as write

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
PIPELINE = FIXTURES / "pipeline.yml"


pytestmark = pytest.mark.usefixtures("azure_home")


def copy_fixtures(tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "azure"
    shutil.copytree(FIXTURES, dest)
    return dest


# --- pipeline YAML ------------------------------------------------------------------------------------


def test_three_job_pipeline_loads_with_parent_inputs_and_outputs():
    p = load_pipeline(PIPELINE)
    assert list(p.jobs) == ["prep_job", "train_job", "score_job"]
    assert p.name == "azure-three-jobs" and p.experiment == "azure-fixtures" and p.infrastructure == "process"
    assert {n: s.type for n, s in p.inputs.items()} == {"raw_data": "uri_folder", "ratio": "number",
                                                          "epochs": "integer"}
    assert p.inputs["raw_data"].default == str(FIXTURES / "data" / "raw")  # relative to the YAML
    train = p.jobs["train_job"]
    assert train.options == {"infrastructure": "process", "timeout": 600.0}
    assert train.outputs == {"model": "trained_model"}
    assert train.inputs["train_data"] == azure_pipeline.Ref("jobs", "prep_job", "train_data")
    assert p.jobs["prep_job"].component.environment_variables["STAGE"] == "from-yaml"
    # azureml:NAME:VERSION, an azureml://registries/... reference and a curated name via the alias map
    assert {j.component.environment for j in p.jobs.values()} == {"local-py"}


def test_flow_parameters_are_the_pipeline_inputs():
    from prefect.utilities.callables import parameter_schema

    flow = load_pipeline_yaml(PIPELINE)
    props = parameter_schema(flow).model_dump()["properties"]
    assert {k: (v["type"], v.get("default")) for k, v in props.items()} == {
        "raw_data": ("string", str(FIXTURES / "data" / "raw")), "ratio": ("number", 0.25), "epochs": ("integer", 3)}
    assert flow.name == "azure-three-jobs"
    assert flow.validate_parameters({"epochs": 5})["epochs"] == 5


def test_plan_through_the_cli_with_set():
    from prefect_ml.cli import app

    result = CliRunner().invoke(app, ["plan", str(PIPELINE), "--set", "inputs.epochs=5"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split()[0] for ln in lines[2:5]] == ["prep_job", "train_job", "score_job"]  # steps named as jobs
    bad = CliRunner().invoke(app, ["plan", str(PIPELINE), "--set", "jobs.x=1"])
    assert bad.exit_code != 0 and "inputs.NAME=VALUE" in bad.output


def test_deployment_entrypoint_builds_the_flow_from_the_yaml(monkeypatch):
    """What `prefect deploy` and a worker do with `flows/azure_pipeline.py:azure_pipeline`."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    repo = FIXTURES.parents[2]
    monkeypatch.setenv("PREFECT_ML_PIPELINE_YAML", str(PIPELINE.relative_to(repo)))
    flow = load_flow_from_entrypoint(f"{repo / 'flows' / 'azure_pipeline.py'}:azure_pipeline")
    assert flow.name == "azure-three-jobs"
    assert set(parameter_schema(flow).model_dump()["properties"]) == {"raw_data", "ratio", "epochs"}
    monkeypatch.delenv("PREFECT_ML_PIPELINE_YAML")
    default = load_flow_from_entrypoint(f"{repo / 'flows' / 'azure_pipeline.py'}:azure_pipeline")
    assert default.name == "credit-default-yaml"
    assert parameter_schema(default).model_dump()["required"] == ["data"]


def test_keys_with_no_meaning_warn_once_each(caplog):
    with caplog.at_level(logging.WARNING, logger="prefect_ml.dsl.azure_pipeline"):
        load_pipeline(PIPELINE)
        load_pipeline(PIPELINE)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "services" in m]) == 1
    assert len([m for m in messages if "outputs.final_report.mode" in m]) == 1
    assert all("line " in m for m in messages)


@pytest.mark.parametrize("change, match", [
    ("ratio: ${{parent.inputs.nope}}", r"pipeline.yml:line \d+: key 'jobs.prep_job.inputs.ratio'.*no input 'nope'"),
    ("ratio: ${{parent.jobs.ghost.outputs.x}}", r"no job 'ghost'"),
    ("nope_input: 1", r"key 'jobs.prep_job.inputs.nope_input'.*has no input 'nope_input'"),
])
def test_bad_references_fail_at_load_with_file_and_line(tmp_path, change, match):
    root = copy_fixtures(tmp_path)
    text = (root / "pipeline.yml").read_text().replace("ratio: ${{parent.inputs.ratio}}", change)
    (root / "pipeline.yml").write_text(text)
    with pytest.raises(ComponentError, match=match):
        load_pipeline(root / "pipeline.yml")


def test_job_kinds_and_keys_refused_with_a_fix(tmp_path):
    base = """
        type: pipeline
        jobs:
          a:
            type: command
            command: python -c pass
            {extra}
    """
    for extra, match in [
        ("distribution: {type: mpi}", "MPI jobs are not launched"),
        ("resources: {instance_count: 2}", "one machine"),
        ("outputs: {o: {type: uri_folder, path: azureml://datastores/x/paths/y}}", "published under the artifact root"),
        ("limits: {timeout: -1}", "seconds > 0"),
        ("wat: 1", r"unknown key\(s\) \['wat'\]"),
    ]:
        with pytest.raises(ComponentError, match=match):
            load_pipeline(write(tmp_path, base.replace("{extra}", extra)))
    sweep = write(tmp_path, "type: pipeline\njobs:\n  s:\n    type: sweep\n")
    with pytest.raises(ComponentError, match=r"line 4: key 'jobs.s.type': job type 'sweep' is not supported"):
        load_pipeline(sweep)
    with pytest.raises(ComponentError, match="a pipeline YAML has `type: pipeline`"):
        load_pipeline(FIXTURES / "components" / "prep" / "component.yml")


def test_cycle_is_refused(tmp_path):
    p = write(tmp_path, """
        type: pipeline
        jobs:
          a:
            command: python -c pass ${{inputs.x}}
            inputs: {x: "${{parent.jobs.b.outputs.o}}"}
            outputs: {o: {}}
          b:
            command: python -c pass ${{inputs.x}}
            inputs: {x: "${{parent.jobs.a.outputs.o}}"}
            outputs: {o: {}}
    """)
    with pytest.raises(ComponentError, match="cycle: a -> b -> a"):
        load_pipeline(p)


def test_unknown_component_name(tmp_path):
    root = copy_fixtures(tmp_path)
    text = (root / "pipeline.yml").read_text().replace("azureml:train@latest", "azureml:train:7")
    (root / "pipeline.yml").write_text(text)
    with pytest.raises(ComponentError, match=r"is version '2', not '7'"):
        load_pipeline(root / "pipeline.yml")


# --- environments --------------------------------------------------------------------------------------


def test_inline_environment_is_written_once_by_content(azure_home):
    p = load_pipeline(FIXTURES / "data_forms.yml")
    env = p.jobs["inspect"].component.environment
    assert env.startswith("inline-env-")
    spec = azure_home / "environments" / "inline" / env / "environment.yaml"
    assert spec.is_file() and "python:3.11-slim" in spec.read_text()
    assert load_pipeline(FIXTURES / "data_forms.yml").jobs["inspect"].component.environment == env
    assert p.jobs["summarize"].component.environment == "local-py"  # settings.default_environment


def component_with_env(tmp_path: Path, env: str) -> Path:
    return write(tmp_path, f"""
        name: c
        type: command
        environment: {env}
        command: python -c pass
    """, "component.yml")


def test_missing_alias_names_the_map(tmp_path):
    root = copy_fixtures(tmp_path)
    p = component_with_env(root / "components", "azureml://registries/azureml/environments/tensorflow-2/labels/latest")
    with pytest.raises(ComponentError, match=r"add a line `tensorflow-2: <local environment>` to the alias map "
                                             r".*environments/aliases.yaml"):
        load_component(p)
    p = component_with_env(root / "components", "AzureML-Nope-1.0@latest")
    with pytest.raises(ComponentError, match=r"AzureML-Nope-1\.0: <local environment>"):
        load_component(p)


def test_environment_problems_fail_at_load(tmp_path):
    root = copy_fixtures(tmp_path)
    env_dir = root / "environments"
    (env_dir / "broken").mkdir()
    (env_dir / "broken" / "environment.yaml").write_text("name: broken\nrequirements: requirements.txt\n")
    with pytest.raises(ComponentError, match=r"key 'environment'.*'requirements.txt', which does not exist"):
        load_component(component_with_env(root / "components", "broken"))
    (env_dir / "broken" / "environment.yaml").write_text("name: broken\nversion: [1\n")
    with pytest.raises(ComponentError, match=r"environment.yaml: line \d+, column \d+: invalid YAML"):
        load_component(component_with_env(root / "components", "broken"))
    with pytest.raises(ComponentError, match=r"unknown environment 'ghost'"):
        load_component(component_with_env(root / "components", "ghost"))
    with pytest.raises(ComponentError, match=r"version '1', not '9'"):
        load_component(component_with_env(root / "components", "azureml:local-py:9"))
    assert load_component(component_with_env(root / "components", "azureml:local-py@latest")).environment == "local-py"


def test_dockerfile_build_is_accepted_as_an_inline_environment(tmp_path, azure_home):
    """`build: {path: ./docker}` (Azure's Docker build context) resolves to a generated environment that
    builds that Dockerfile; the same context is the same environment, its content is in the hash."""
    from prefect_ml.environments import load_environment

    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM prefect-ml/base:bookworm\nENV STAGE=docker\n")
    p = write(tmp_path, """
        name: c
        type: command
        environment:
          build: {path: ./docker}
        command: python -c pass
    """)
    name = load_component(p).environment
    assert name.startswith("inline-env-")
    env = load_environment(name)
    assert env.build_context == (tmp_path / "docker").resolve() and env.dockerfile == "Dockerfile"
    assert env.resolved_base_image() == "prefect-ml/base:bookworm"
    assert (azure_home / "environments" / "inline" / name / "environment.yaml").is_file()
    assert load_component(p).environment == name  # the same context: the same environment
    before = env.spec_hash()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM prefect-ml/base:bookworm\nENV STAGE=changed\n")
    assert load_component(p).environment == name and load_environment(name).spec_hash() != before


def test_requirements_check_names_missing_packages_and_the_ways_out(tmp_path):
    from prefect_ml.environments.requirements_check import check_interpreter, unmet

    assert unmet(["packaging>=1", "typer"]) == []
    missing = unmet(["no-such-package-xyz>=1", "packaging<1", "pywin32; sys_platform == 'win32'"])
    assert [m.split()[0] for m in missing] == ["no-such-package-xyz", "packaging"]
    env = tmp_path / "environments" / "needs"
    env.mkdir(parents=True)
    (env / "environment.yaml").write_text("name: needs\nrequirements: requirements.txt\n")
    (env / "requirements.txt").write_text("packaging\nno-such-package-xyz==2.0  # comment\n")
    with pytest.raises(EnvironmentSpecError, match=r"no-such-package-xyz \(not installed.*prefect-ml env build needs "
                                                   r"--venv.*pip install 'no-such-package-xyz==2.0'"):
        check_interpreter(str(env / "environment.yaml"))


# --- data ---------------------------------------------------------------------------------------------


def test_asset_references_in_azure_forms():
    from prefect_ml.assets import is_asset_ref, parse_ref

    assert parse_ref("azureml:credit@latest") == ("credit", "latest")
    assert parse_ref("azureml:credit:3") == ("credit", "3")
    assert not is_asset_ref("azureml://datastores/x/paths/y")
    with pytest.raises(DataAssetError, match="@latest"):
        parse_ref("azureml:credit@prod")


def test_datastore_uris_resolve_through_the_map(tmp_path, monkeypatch):
    from prefect_ml import storage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "datastores.yaml").write_text("local_share: ./data\nblob: abfs://container/prefix/\n")
    assert storage.normalize("azureml://datastores/blob/paths/a/b.csv") == "abfs://container/prefix/a/b.csv"
    assert storage.normalize("azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/local_share/paths/x"
                             ) == (tmp_path / "data").resolve().as_uri() + "/x"
    with pytest.raises(StorageError, match=r"datastore 'other' is not in a datastore map; add `other: <root URI>`"):
        storage.normalize("azureml://datastores/other/paths/x")


def test_datastore_input_in_a_pipeline_plan(tmp_path, monkeypatch):
    from prefect_ml.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "datastores.yaml").write_text(f"fixtures: {FIXTURES / 'data'}\n")
    result = CliRunner().invoke(app, ["plan", str(PIPELINE), "--set",
                                      "inputs.raw_data=azureml://datastores/fixtures/paths/raw"])
    assert result.exit_code == 0, result.output
    missing = CliRunner().invoke(app, ["plan", str(PIPELINE), "--set",
                                       "inputs.raw_data=azureml://datastores/fixtures/paths/nope"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_https_is_read_only():
    from prefect_ml import storage

    with pytest.raises(StorageError, match="read-only"):
        storage.ArtifactRoot("https://example.invalid/root")


def test_mltable_folder_needs_an_mltable_file(tmp_path):
    (tmp_path / "t").mkdir()
    p = write(tmp_path, """
        type: pipeline
        inputs:
          t: {type: mltable, path: ./t}
        jobs:
          a:
            command: python -c pass ${{inputs.x}}
            inputs: {x: "${{parent.inputs.t}}"}
    """)
    with pytest.raises(ComponentError, match=r"line 3: key 'inputs.t': mltable folder .* has no MLTable file"):
        load_pipeline(p)
    (tmp_path / "t" / "MLTable").write_text("paths: []\n")
    assert load_pipeline(p).inputs["t"].type == "uri_folder"


def test_data_register_from_an_azure_data_yaml():
    from prefect_ml.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["data", "register", "--file", str(FIXTURES / "assets" / "table.yml")])
    assert r.exit_code == 0, r.output
    assert "asset:azure-table:1: uri_folder" in r.output
    r = runner.invoke(app, ["data", "register", "--file", str(FIXTURES / "assets" / "rows.yml")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "show", "azureml:azure-rows@latest"])
    assert r.exit_code == 0 and "rows.csv" in r.output


# --- SDK spellings ------------------------------------------------------------------------------------


def test_sdk_spellings():
    c = load_component(source=FIXTURES / "components" / "prep" / "component.yml")
    assert c.name == "prep"
    assert Input(type="uri_folder", path="/data", mode="ro_mount").default == "/data"
    assert Input(type="mltable").type == "uri_folder"
    assert Output(type="uri_folder", mode="upload").type == "uri_folder"
    with pytest.raises(ComponentError, match="mode 'direct' has no equivalent"):
        Input(type="uri_file", mode="direct")
    with pytest.raises(ComponentError, match="published under the artifact root"):
        Output(type="uri_folder", path="azureml://datastores/x/paths/y")

    @pipeline(default_compute="azureml:cpu", description="Azure spelling")
    def p() -> None:
        return None

    from prefect_ml.dsl.pipeline import definition_of

    assert definition_of(p).options.infrastructure == "cpu" and p.description == "Azure spelling"
    with pytest.raises(TypeError, match="name the same thing"):
        pipeline(lambda: None, infrastructure="gpu", default_compute="cpu")


def test_dockerfile_build_with_dockerfile_path_in_a_pipeline_job(tmp_path):
    from prefect_ml.environments import load_environment

    (tmp_path / "ctx" / "docker").mkdir(parents=True)
    (tmp_path / "ctx" / "docker" / "train.Dockerfile").write_text("FROM prefect-ml/base:bookworm\n")
    p = write(tmp_path, """
        $schema: https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json
        type: pipeline
        jobs:
          hello:
            type: command
            command: python -c pass
            environment:
              name: trainer
              build:
                path: ./ctx
                dockerfile_path: docker/train.Dockerfile
    """)
    name = load_pipeline(p).jobs["hello"].component.environment
    assert name.startswith("inline-trainer-")
    env = load_environment(name)
    assert env.dockerfile_path == (tmp_path / "ctx" / "docker" / "train.Dockerfile").resolve()


def test_dockerfile_build_problems_fail_at_load_with_file_line_and_what_to_use(tmp_path):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM prefect-ml/base:bookworm\n")
    (tmp_path / "conda.yml").write_text("dependencies: [python=3.11]\n")
    cases = [
        ("{build: {path: ./docker}, image: python:3.11-slim}",
         r"'build' and 'image' cannot both be given \(in Azure ML too\): keep 'build' to build the Dockerfile, or "
         r"'image' to use an image as it is\.$"),
        ("{build: {path: ./docker}, conda_file: ./conda.yml}",
         r"'build' and 'conda_file' cannot both be given \(in Azure ML too\): install the conda packages with RUN "
         r"in the Dockerfile"),
        ("{build: {path: ./nope}}",
         r"key 'build': path './nope' is not a folder \(.*nope\); create the build context there"),
        ("{build: {path: ./docker, dockerfile_path: gpu.Dockerfile}}",
         r"key 'build': the Dockerfile 'gpu.Dockerfile' does not exist in the build context "
         r"\(.*docker/gpu.Dockerfile\); create it or fix build.dockerfile_path\.$"),
        ("{build: {path: ./docker, target: x}}",
         r"key 'build': unknown key\(s\) \['target'\]; allowed: \['dockerfile_path', 'path'\]"),
        ("{build: ./docker}", r"key 'build': must be a mapping `\{path: <folder with a Dockerfile>"),
    ]
    for env, message in cases:
        p = write(tmp_path, f"""
            name: c
            type: command
            environment: {env}
            command: python -c pass
        """, "component.yml")
        with pytest.raises(ComponentError, match=r"component 'c' \(.*component.yml\) line 3: key 'environment': "
                                                 r"inline environment: " + message) as err:
            load_component(p)
        assert "\n" not in str(err.value)
    (tmp_path / "docker" / "Dockerfile").write_text("FROM scratch\n")
    p = write(tmp_path, "name: c\ntype: command\nenvironment: {build: {path: ./docker}}\ncommand: python -c pass\n")
    with pytest.raises(ComponentError, match=r"line 3: key 'environment': inline environment: .*docker/Dockerfile "
                                             r"line 1: the image is FROM scratch, which has no Python"):
        load_component(p)
    (tmp_path / "docker" / "Dockerfile").write_text("FROM prefect-ml/base:bookworm\nCOPY secret.txt /\n")
    (tmp_path / "docker" / "secret.txt").symlink_to(tmp_path / "conda.yml")
    with pytest.raises(ComponentError, match=r"line 3: key 'environment': inline environment: key 'build': "
                                             r"'secret.txt' in the build context .*docker links to .*conda.yml', "
                                             r"outside the context"):
        load_component(p)


def test_dockerfile_build_on_process_infrastructure_is_refused_before_the_step_starts(tmp_path):
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.process import ProcessStepInfrastructure

    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM prefect-ml/base:bookworm\n")
    p = write(tmp_path, f"""
        name: c
        type: command
        environment:
          build: {{path: ./docker}}
        command: touch {tmp_path / "ran"}
    """)
    component = load_component(p)
    job = StepJob("c", component.command, tmp_path, {}, {}, {}, environment=component.environment)
    with pytest.raises(EnvironmentSpecError, match=r"is an image built from the Dockerfile .*docker/Dockerfile, which "
                                                   r"process infrastructure cannot run a step in: run the step on "
                                                   r"Docker infrastructure"):
        ProcessStepInfrastructure().run(job, lambda line: None)
    assert not (tmp_path / "ran").exists()
