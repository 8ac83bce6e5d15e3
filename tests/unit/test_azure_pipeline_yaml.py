"""Azure pipeline YAML and SDK spellings, continued (issue 15 audit gaps): continue_on_step_failure,
load_component on a pipeline YAML, `resources` keys, output modes, warnings per file, datastore roots,
and the Azure `@pipeline` keyword arguments. No servers: flows are built, not run (the runs are in
tests/integration/test_azure_pipelines.py)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from prefect_ml.dsl import azure_pipeline
from prefect_ml.dsl import pipeline as pipeline_module
from prefect_ml.dsl.azure_pipeline import load_pipeline
from prefect_ml.dsl.component import command, load_component
from prefect_ml.dsl.pipeline import definition_of, pipeline
from prefect_ml.errors import ComponentError
from tests.unit.conftest import write_yaml as write

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure"
COMMAND = "python -c pass"


pytestmark = pytest.mark.usefixtures("azure_home")


# --- continue_on_step_failure ---------------------------------------------------------------------------


def test_yaml_default_is_azures_false_and_the_setting_reaches_the_flow(tmp_path):
    p = load_pipeline(FIXTURES / "step_failure.yml")
    assert p.continue_on_step_failure is False
    assert definition_of(p.to_flow()).options.continue_on_step_failure is False
    plain = write(tmp_path, f"""
        type: pipeline
        jobs:
          a: {{type: command, command: {COMMAND}}}
        """)
    assert load_pipeline(plain).continue_on_step_failure is False  # Azure's default when the key is absent
    on = write(tmp_path, f"""
        type: pipeline
        settings: {{continue_on_step_failure: true}}
        jobs:
          a: {{type: command, command: {COMMAND}}}
        """, "on.yml")
    assert definition_of(load_pipeline(on).to_flow()).options.continue_on_step_failure is True


def test_python_pipelines_keep_running_independent_steps_unless_told():
    def body() -> None:
        pass

    assert definition_of(pipeline(body)).options.continue_on_step_failure is True
    assert definition_of(pipeline(continue_on_step_failure=False)(body)).options.continue_on_step_failure is False


def test_no_step_starts_after_the_first_failure(monkeypatch):
    """The step function's check (run when a step would start) and the on_failure hook that feeds it."""
    from prefect_ml.runtime import task as task_module

    flow_run_id = str(uuid.uuid4())
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", flow_run_id)
    ran: list[str] = []
    monkeypatch.setattr(task_module, "run_step", SimpleNamespace(fn=lambda c, i, r, name: ran.append(name) or name))
    stop = pipeline_module.FirstFailure()
    monkeypatch.setitem(pipeline_module._first_failures, flow_run_id, stop)

    assert pipeline_module.run_step_unless_stopped(None, {}, None, "first") == "first"  # type: ignore[arg-type]
    hook_run = SimpleNamespace(flow_run_id=uuid.UUID(flow_run_id), name="fail_job")
    pipeline_module._record_failure(None, hook_run, None)
    pipeline_module._record_failure(None, SimpleNamespace(flow_run_id=hook_run.flow_run_id, name="other"), None)
    assert stop.step == "fail_job"  # the first failure is kept
    state = pipeline_module.run_step_unless_stopped(None, {}, None, "later_job")  # type: ignore[arg-type]
    assert ran == ["first"]
    assert state.is_cancelled() and state.name == "NotRun"
    assert "step 'fail_job' failed" in state.message and "continue_on_step_failure is false" in state.message


def test_a_step_of_another_process_asks_the_api_and_runs_if_it_cannot(monkeypatch):
    import prefect.client.orchestration as orchestration

    def no_api(*args, **kwargs):
        raise RuntimeError("no API here")

    monkeypatch.setattr(orchestration, "get_client", no_api)
    assert pipeline_module.failed_step(str(uuid.uuid4())) is None


# --- load_component on a pipeline YAML, the export ---------------------------------------------------------


def test_load_component_on_a_pipeline_yaml_says_what_to_use():
    given = str(FIXTURES / "pipeline.yml")
    with pytest.raises(ComponentError) as info:
        load_component(given)
    message = str(info.value)
    assert "\n" not in message
    assert "is a pipeline YAML" in message and f"load_pipeline_yaml({given!r})" in message
    assert f"prefect-ml run {given}" in message  # the path as given: it works from where it was given


def test_load_pipeline_yaml_is_exported():
    import prefect_ml

    assert "load_pipeline_yaml" in prefect_ml.__all__
    assert prefect_ml.load_pipeline_yaml is azure_pipeline.load_pipeline_yaml


# --- resources keys, component + command, output modes -----------------------------------------------------


def component_yaml(folder: Path, resources: str, name: str = "c.yml") -> Path:
    return write(folder, f"""
        name: c
        command: {COMMAND}
        resources: {resources}
        """, name)


def test_component_resources_without_a_meaning_warn_once_per_file(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        c = load_component(component_yaml(tmp_path, "{instance_type: Standard_DS3_v2, shm_size: 2g}"))
        load_component(tmp_path / "c.yml")
    assert c.distribution is None
    messages = [r.getMessage() for r in caplog.records if "accepted but ignored" in r.getMessage()]
    assert len(messages) == 2  # instance_type and shm_size, once each
    assert any("line 3: key 'resources.instance_type'" in m and "infrastructure block" in m for m in messages)
    assert any("key 'resources.shm_size'" in m and "shm_size on the Docker infrastructure block" in m
               for m in messages)


@pytest.mark.parametrize("resources, match", [
    ("{docker_args: --ipc=host}", r"c.yml\) line 3: key 'resources.docker_args': extra `docker run` arguments"),
    ("{locations: [westeurope]}", r"key 'resources.locations': has no equivalent here; set it on the infrastructure"),
])
def test_component_resources_that_cannot_be_honoured_are_refused(tmp_path, resources, match):
    with pytest.raises(ComponentError, match=match):
        load_component(component_yaml(tmp_path, resources))


def test_command_resources_get_the_same_treatment(caplog):
    with caplog.at_level(logging.WARNING):
        c = command(name="c", command=COMMAND, resources={"instance_type": "Standard_NC6", "instance_count": 1})
    assert c.distribution is None
    assert any("component 'c'" in r.getMessage() and "resources" in r.getMessage() for r in caplog.records)
    with pytest.raises(ComponentError, match=r"component 'c': key 'resources.docker_args': extra `docker run`"):
        command(name="c", command=COMMAND, resources={"docker_args": "--ipc=host"})


def test_a_job_with_a_component_and_its_own_command_is_refused(tmp_path):
    (tmp_path / "c.yml").write_text(f"name: c\ncommand: {COMMAND}\n")
    p = write(tmp_path, f"""
        type: pipeline
        jobs:
          a:
            type: command
            component: file:./c.yml
            code: ./src
            command: {COMMAND}
        """)
    with pytest.raises(ComponentError, match=r"pipeline.yml:line 7: key 'jobs.a.command': the job names a "
                                             r"`component:`.*move command and code into the component"):
        load_pipeline(p)


OUTPUT_MODES = f"""
    type: pipeline
    outputs:
      out: {{type: uri_folder, mode: PIPELINE_MODE}}
    jobs:
      a:
        type: command
        command: {COMMAND} ${{{{outputs.result}}}} ${{{{outputs.more}}}}
        outputs:
          result: ${{{{parent.outputs.out}}}}
          more: {{type: uri_folder, mode: JOB_MODE}}
    """


@pytest.mark.parametrize("key", ["outputs.out.mode", "jobs.a.outputs.more.mode"])
def test_output_mode_is_checked_before_the_warning(tmp_path, key, caplog):
    pipeline_mode, job_mode = ("direct", "upload") if key.startswith("outputs") else ("upload", "direct")
    p = write(tmp_path, OUTPUT_MODES.replace("PIPELINE_MODE", pipeline_mode).replace("JOB_MODE", job_mode))
    with pytest.raises(ComponentError, match=rf"key '{key}': output mode 'direct' has no equivalent here"):
        load_pipeline(p)
    p = write(tmp_path, OUTPUT_MODES.replace("PIPELINE_MODE", "upload").replace("JOB_MODE", "rw_mount"))
    with caplog.at_level(logging.WARNING):
        load_pipeline(p)
    warned = [r.getMessage() for r in caplog.records if "accepted but ignored" in r.getMessage()]
    assert len(warned) == 1 and "mode'" in warned[0]  # once per file for output modes


def test_warnings_are_once_per_file_and_key(tmp_path, caplog):
    text = f"""
        type: pipeline
        jobs:
          a:
            type: command
            command: {COMMAND}
            services: {{jupyter: {{type: jupyter_lab}}}}
        """
    first, second = write(tmp_path, text, "first.yml"), write(tmp_path, text, "second.yml")
    with caplog.at_level(logging.WARNING):
        load_pipeline(first)
        load_pipeline(first)
        load_pipeline(second)
    messages = [r.getMessage() for r in caplog.records if "services" in r.getMessage()]
    assert len(messages) == 2
    assert "first.yml" in messages[0] and "second.yml" in messages[1]


# --- datastore map ----------------------------------------------------------------------------------------


def test_a_relative_datastore_root_is_relative_to_the_map_not_the_cwd(tmp_path, monkeypatch):
    from prefect_ml import storage

    (tmp_path / "data").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "datastores.yaml").write_text("local_share: ./data\nhome_share: ~/somewhere\n")
    monkeypatch.chdir(tmp_path / "sub")  # the map is found in a parent folder
    assert storage.normalize("azureml://datastores/local_share/paths/x/y.csv") == (
        (tmp_path / "data").resolve().as_uri() + "/x/y.csv")
    assert storage.normalize("azureml://datastores/home_share/paths/z") == (
        (Path.home() / "somewhere").resolve().as_uri() + "/z")


# --- Azure @pipeline keyword arguments ---------------------------------------------------------------------


def body() -> None:
    pass


def test_default_compute_with_the_azureml_prefix_matches_infrastructure():
    f = pipeline(infrastructure="cpu", default_compute="azureml:cpu")(body)
    assert definition_of(f).options.infrastructure == "cpu"
    assert definition_of(pipeline(compute="azureml:gpu")(body)).options.infrastructure == "gpu"
    with pytest.raises(TypeError,
                       match=r"infrastructure= and default_compute= name the same thing.*\('cpu' vs 'gpu'\); give one"):
        pipeline(infrastructure="cpu", default_compute="azureml:gpu")(body)


def test_azure_pipeline_kwargs_with_a_meaning_here_are_accepted():
    f = pipeline(experiment_name="credit", display_name="nightly", force_rerun=True)(body)
    options = definition_of(f).options
    assert options.experiment == "credit" and options.cache is False
    assert f.flow_run_name == "nightly"  # Azure's display name of a run, as Prefect's flow run name
    with pytest.raises(TypeError, match="give experiment= or experiment_name="):
        pipeline(experiment="a", experiment_name="b")(body)
    # Prefect formats a flow run name with the parameters: an Azure display name's braces stay literal
    assert pipeline(display_name="run {x}")(body).flow_run_name == "run {{x}}"
    assert definition_of(pipeline(force_rerun=False)(body)).options.cache is True
    with pytest.raises(TypeError, match=r"force_rerun=...\) must be True or False, got 'false'"):
        pipeline(force_rerun="false")(body)


@pytest.mark.parametrize("key, value, match", [
    ("default_datastore", "azureml:workspaceblobstore", "artifact_root="),
    ("tags", {"team": "ml"}, r"prefect.tags\(...\)"),
    ("on_init", "setup", "call the component first"),
])
def test_azure_pipeline_kwargs_without_a_meaning_say_what_to_use(key, value, match):
    with pytest.raises(TypeError, match=rf"^@pipeline\({key}=...\), from the Azure ML SDK, .*{match}") as info:
        pipeline(**{key: value})(body)
    assert "\n" not in str(info.value)
