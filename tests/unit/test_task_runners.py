"""Task-runner selection and the distributed-run check (no server, no cluster: prefect-dask only builds
its runner object here, it connects on first submit)."""

from __future__ import annotations

import pickle

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_ml.errors import PrefectMLError
from prefect_ml.runtime import task_runners
from prefect_ml.runtime.task_runners import (
    PipelineTaskRunner,
    TaskRunnerError,
    check_distributed_run,
    is_distributed,
    make_task_runner,
)
from prefect_ml.settings import PrefectMLSettings, get_settings, use_settings

S3 = "s3://bucket/ml"
SERVER = "http://127.0.0.1:5000"


@pytest.fixture
def clean(monkeypatch, tmp_path):
    for k in ("PREFECT_ML_TASK_RUNNER", "PREFECT_ML_DASK_ADDRESS", "PREFECT_ML_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path / "home"))
    return monkeypatch


# --- settings ----------------------------------------------------------------------------------------


def test_default_is_prefect_s_thread_pool(clean):
    assert get_settings().task_runner == "threads"
    assert type(PipelineTaskRunner().duplicate()) is ThreadPoolTaskRunner


def test_setting_selects_dask_at_the_address_when_the_run_starts(clean):
    from prefect_dask import DaskTaskRunner

    runner = PipelineTaskRunner()  # made at decoration: the setting is read per run, not now
    clean.setenv("PREFECT_ML_TASK_RUNNER", "dask")
    clean.setenv("PREFECT_ML_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    real = runner.duplicate()
    assert isinstance(real, DaskTaskRunner) and real.address == "tcp://127.0.0.1:8786"
    assert is_distributed(real) and is_distributed(runner)
    clean.delenv("PREFECT_ML_DASK_ADDRESS")
    local = runner.duplicate()
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert not is_distributed(local)  # a temporary local cluster shares this machine's disk


def test_only_a_remote_cluster_is_distributed():
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    assert not is_distributed(ThreadPoolTaskRunner())
    assert not is_distributed(DaskTaskRunner(cluster_class=LocalCluster))
    assert not is_distributed(DaskTaskRunner(cluster_class="distributed.LocalCluster"))
    assert is_distributed(DaskTaskRunner(cluster_class="distributed.SpecCluster"))
    assert is_distributed(DaskTaskRunner(address="tcp://127.0.0.1:8786"))


def test_pipeline_choice_wins_over_the_setting(clean):
    from prefect_dask import DaskTaskRunner

    clean.setenv("PREFECT_ML_TASK_RUNNER", "dask")
    assert type(PipelineTaskRunner("threads").duplicate()) is ThreadPoolTaskRunner
    given = DaskTaskRunner(address="tcp://10.0.0.1:8786")
    real = PipelineTaskRunner(given).duplicate()
    assert isinstance(real, DaskTaskRunner) and real is not given and real.address == given.address
    assert type(PipelineTaskRunner(ThreadPoolTaskRunner).duplicate()) is ThreadPoolTaskRunner


def test_unknown_names_are_one_line_errors(clean):
    with pytest.raises(TaskRunnerError, match=r"unknown task runner 'ray'; use one of threads, dask") as e:
        PipelineTaskRunner("ray")
    assert isinstance(e.value, PrefectMLError) and "\n" not in str(e.value)
    clean.setenv("PREFECT_ML_TASK_RUNNER", "procs")
    with pytest.raises(TaskRunnerError, match=r"^PREFECT_ML_TASK_RUNNER: unknown task runner 'procs'"):
        PipelineTaskRunner().duplicate()
    assert make_task_runner(" Threads ").__class__ is ThreadPoolTaskRunner


def test_pipeline_decorator_takes_task_runner(clean):
    from prefect_ml import pipeline

    @pipeline(task_runner="dask")
    def p():
        return None

    assert isinstance(p.task_runner, PipelineTaskRunner) and p.task_runner.choice == "dask"
    with pytest.raises(TaskRunnerError):
        pipeline(task_runner="nope")(lambda: None)


# --- the refusal ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["file:///tmp/artifacts", "/tmp/artifacts", "memory://ml"])
def test_refuses_a_local_artifact_root(root):
    with pytest.raises(TaskRunnerError, match=r"artifact root .* is a local path .*set PREFECT_ML_ARTIFACT_ROOT") as e:
        check_distributed_run(root, SERVER)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", "mlruns"])
def test_refuses_a_local_tracking_store(uri):
    with pytest.raises(TaskRunnerError, match=r"MLflow tracking store .* is local .*set MLFLOW_TRACKING_URI") as e:
        check_distributed_run(S3, uri)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("uri", [SERVER, "https://user:pw@mlflow.example.com", "postgresql+psycopg://db/mlflow"])
def test_accepts_shared_root_and_store(uri):
    check_distributed_run(S3, uri)
    check_distributed_run("abfs://container/ml", uri)


def test_refuses_a_temporary_prefect_api():
    with pytest.raises(TaskRunnerError, match=r"temporary Prefect API .*set PREFECT_API_URL"):
        check_distributed_run(S3, SERVER, prefect_api_url=None)
    check_distributed_run(S3, SERVER, prefect_api_url="http://127.0.0.1:4200/api")


def test_a_secret_in_a_refused_uri_is_not_echoed():
    with pytest.raises(TaskRunnerError) as e:
        check_distributed_run(S3, "file://user:hunter2@host/mlruns")
    assert "hunter2" not in str(e.value) and "user:***@" in str(e.value)


def test_the_default_setup_is_refused(clean):
    """What a pipeline's run spec holds with no settings (a home-based root, a SQLite store) is refused;
    the same check runs in the flow body before the MLflow parent run and the first step."""
    from prefect_ml.dsl.pipeline import PipelineOptions, _run_spec

    spec = _run_spec("p", PipelineOptions())
    with pytest.raises(TaskRunnerError, match="artifact root"):
        check_distributed_run(spec.artifact_root, spec.settings.mlflow_tracking_uri)
    clean.setenv("PREFECT_ML_ARTIFACT_ROOT", S3)
    spec = _run_spec("p", PipelineOptions())
    with pytest.raises(TaskRunnerError, match="MLflow tracking store sqlite:"):
        check_distributed_run(spec.artifact_root, spec.settings.mlflow_tracking_uri)


# --- what a worker gets ----------------------------------------------------------------------------------


def test_settings_snapshot_travels_with_the_run_and_home_stays_the_worker_s(clean, tmp_path):
    clean.setenv("PREFECT_ML_ARTIFACT_ROOT", S3)
    clean.setenv("MLFLOW_TRACKING_URI", SERVER)
    clean.setenv("PREFECT_ML_STORAGE_OPTIONS", '{"s3": {"endpoint_url": "http://127.0.0.1:9"}}')
    clean.setenv("PREFECT_ML_CACHE", "false")
    snapshot = pickle.loads(pickle.dumps(PrefectMLSettings()))  # as it reaches a worker

    # the worker's own environment: another home, no run-wide settings at all
    for k in ("PREFECT_ML_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI", "PREFECT_ML_STORAGE_OPTIONS", "PREFECT_ML_CACHE"):
        clean.delenv(k)
    clean.setenv("PREFECT_ML_HOME", str(tmp_path / "worker-home"))
    view = snapshot.for_this_machine()
    assert view.home_path == tmp_path / "worker-home"
    assert view.artifact_root == S3 and view.mlflow_tracking_uri == SERVER
    assert view.storage_options and not view.cache
    with use_settings(view):
        assert get_settings() is view
    assert get_settings().mlflow_tracking_uri.startswith("sqlite:///")  # outside: the worker's environment


def test_a_default_store_and_root_keep_naming_the_run_s_home(clean, tmp_path):
    snapshot = PrefectMLSettings()
    clean.setenv("PREFECT_ML_HOME", str(tmp_path / "elsewhere"))
    view = snapshot.for_this_machine()
    assert view.resolved_artifact_root == snapshot.resolved_artifact_root
    assert view.mlflow_tracking_uri == snapshot.mlflow_tracking_uri


def test_worker_helpers_outside_a_worker(tmp_path):
    assert task_runners.dask_worker_address() is None
    host, pid = task_runners.this_process().rsplit(":", 1)
    assert host and int(pid) > 0

    class C:
        code = tmp_path / "missing"

    with pytest.raises(TaskRunnerError, match=r"code dir .*missing does not exist on w1; install the project"):
        task_runners.check_code_dir(C(), "train", "w1")
    C.code = tmp_path
    task_runners.check_code_dir(C(), "train", "w1")


def test_an_inline_environment_the_worker_lacks_is_named_with_what_to_do(tmp_path, monkeypatch):
    """An Azure YAML's inline environment is written under the pipeline machine's home: a worker with its own
    home does not find it, and says so (a named environment of the project's environments/ works)."""
    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path / "worker-home"))
    monkeypatch.chdir(tmp_path)

    class C:
        code = tmp_path
        environment = "inline-inspect_data-0123456789ab"

    with pytest.raises(TaskRunnerError, match=r"^step 'inspect': its environment inline-inspect_data-0123456789ab is "
                                              r"an inline environment .*on Dask, name an environment of the project"):
        task_runners.check_inline_environment(C(), "inspect", "dask worker tcp://w1")
    C.environment = "sklearn-cpu"  # a named environment: found (or not) from the code dir as on any machine
    task_runners.check_inline_environment(C(), "inspect", "dask worker tcp://w1")
    # a worker that shares the pipeline's home (a local cluster) finds the inline environment written there
    C.environment = "inline-inspect_data-0123456789ab"
    written = tmp_path / "worker-home" / "environments" / "inline" / C.environment
    written.mkdir(parents=True)
    (written / "environment.yaml").write_text(f'{{"name": "{C.environment}", "base_image": "python:3.11-slim"}}\n')
    task_runners.check_inline_environment(C(), "inspect", "dask worker tcp://w1")
