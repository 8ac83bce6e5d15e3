"""Function components, sweeps and fail() against real Prefect (the session's API), a real MLflow SQLite
store and, for the container case, the real Docker engine.

Validation and plans: tests/unit/test_function_components.py."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from prefect_ml import fail, gate, load_function_component, pipeline, sweep
from prefect_ml.dsl.sweep import SweepError
from prefect_ml.search import choice
from tests.conftest import require, task_runs
from tests.servers import DEFAULT_BASE_IMAGE, docker_available, docker_image_available

HEADER = "from prefect_ml import Input, Output, component\n\n"

SCORE = """
import time

@component
def score(x: float = 0.0, delay: float = 0.0, fail_at: float = -1.0) -> dict:
    time.sleep(delay)
    if x == fail_at:
        raise RuntimeError(f"trial with x={x} fails on purpose")
    return {"auc": 1 - (x - 0.3) ** 2, "x": x}
"""

PREP_AND_TRAIN = """
@component(environment=ENV)
def count_words(text: Input("uri_file"), counts: Output("uri_file"), scale: float = 1.0) -> dict:
    import sys
    words = open(text).read().split()
    with open(counts, "w") as f:
        f.write(str(len(words)))
    print(f"counted {len(words)} words with python {sys.version_info[0]}.{sys.version_info[1]}")
    return {"words": len(words) * scale}
"""


def write_module(root: Path, name: str, body: str, **consts: str) -> Path:
    code = root / name
    code.mkdir(parents=True, exist_ok=True)
    text = HEADER + "".join(f"{k} = {v!r}\n" for k, v in consts.items()) + textwrap.dedent(body)
    (code / f"{name}.py").write_text(text)
    return code / f"{name}.py"


def mlflow_run(flow_state):
    from mlflow import MlflowClient

    from prefect_ml.runtime import tracking

    tracking.flush()  # MLflow writes are queued
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    flow_run_id = str(flow_state.state_details.flow_run_id)
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    return next(r for r in runs if "mlflow.parentRunId" not in r.data.tags), client


# --- function components --------------------------------------------------------------------------


def test_function_component_runs_in_a_process_and_is_reused(env, tmp_path):
    counter = load_function_component(f"{write_module(tmp_path, 'fc_proc', PREP_AND_TRAIN, ENV=None)}:count_words")
    text = tmp_path / "text.txt"
    text.write_text("a b c d")

    @pipeline(name="fc-process")
    def p(scale: float = 2.0):
        step = counter(text=str(text), scale=scale)
        return {"counts": step.outputs.counts, "metrics": step.outputs.metrics}

    first = p()
    counts = first["counts"].removeprefix("file://")
    assert Path(counts).read_text() == "4"
    assert json.loads(Path(first["metrics"].removeprefix("file://")).read_text()) == {"words": 8.0}
    state = p(return_state=True)
    assert [r.state.name for r in task_runs(state)] == ["Cached"]


def test_function_component_runs_in_docker_with_only_its_environment(env, tmp_path, monkeypatch):
    ok, reason = docker_available()
    require(ok, reason)
    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    ok, reason = docker_image_available(image)
    require(ok, reason)
    monkeypatch.setenv("PREFECT_ML_BASE_IMAGE", image)
    envs = tmp_path / "environments" / "fn-bare"
    envs.mkdir(parents=True)
    (envs / "environment.yaml").write_text("name: fn-bare\nversion: '1'\nrequirements: requirements.txt\n")
    (envs / "requirements.txt").write_text("# nothing: the runner is stdlib only, prefect-ml is not installed\n")
    counter = load_function_component(
        f"{write_module(tmp_path, 'fc_docker', PREP_AND_TRAIN, ENV='fn-bare')}:count_words")
    text = tmp_path / "text.txt"
    text.write_text("one two three")

    @pipeline(name="fc-docker", infrastructure="docker")
    def p():
        return counter(text=str(text), scale=1.0).outputs.metrics

    state = p(return_state=True)
    assert state.is_completed(), state.message
    metrics_uri = state.result()
    assert json.loads(Path(metrics_uri.removeprefix("file://")).read_text()) == {"words": 3.0}
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    messages = ""
    deadline = time.monotonic() + 30
    while "counted 3 words" not in messages and time.monotonic() < deadline:  # logs reach the API in batches
        time.sleep(0.5)
        with get_client(sync_client=True) as c:
            logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
                any_=[state.state_details.flow_run_id])))
        messages = "\n".join(log.message for log in logs)
    assert "counted 3 words with python 3." in messages
    assert "(image prefect-ml/fn-bare" in messages  # it ran in the environment's image


# --- sweeps ---------------------------------------------------------------------------------------


@pytest.fixture
def score(tmp_path, env):
    return load_function_component(f"{write_module(tmp_path, 'fc_score', SCORE)}:score")


def overlap(runs) -> int:
    """The most task runs running at one moment, from their start and end timestamps."""
    spans = [(r.start_time, r.end_time) for r in runs]
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


def test_six_trials_three_at_a_time_pick_the_best_and_a_rerun_reuses_every_trial(score):
    @pipeline(name="sweep-six")
    def tune(fail_at: float = -1.0):
        search = sweep(score, inputs={"delay": 1.5, "fail_at": fail_at},
                       search_space={"x": choice([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])}, sampler="grid",
                       objective=("auc", "max"), max_concurrent=3)
        return {"best": search.best.params, "value": search.best_value, "best_step": search.best.name,
                "states": {t.name: t.state for t in search.trials}, "metrics": search.best.outputs.metrics}

    started = time.monotonic()
    state = tune(return_state=True)
    elapsed = time.monotonic() - started
    assert state.is_completed(), state.message
    out = state.result()
    assert out["best"] == {"x": 0.3} and out["value"] == pytest.approx(1.0) and out["best_step"] == "score-trial-3"
    trials = [r for r in task_runs(state) if r.name.startswith("score-trial-")]
    assert len(trials) == 6
    assert overlap(trials) == 3, [(r.name, r.start_time, r.end_time) for r in trials]
    print(f"\n6 trials x 1.5 s, max_concurrent=3: {elapsed:.1f} s wall")

    parent, client = mlflow_run(state)
    assert parent.data.params["sweep.score.best.x"] == "0.3"
    assert parent.data.metrics["sweep.score.best_auc"] == pytest.approx(1.0)
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 6 and all("auc" in r.data.metrics and "x" in r.data.params for r in children)

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as c:  # filtered: the session's server holds every test's artifacts
        table = c.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["sweep-score"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert table, "no sweep-score artifact on this flow run"
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert [r["param.x"] for r in rows][:3] == [0.3, 0.2, 0.4]  # sorted by the objective, best first

    again = tune(return_state=True)
    assert set(again.result()["states"].values()) == {"cached"}
    assert {r.state.name for r in task_runs(again) if r.name.startswith("score-trial-")} == {"Cached"}


def test_a_failing_trial_is_tolerated_and_every_failing_trial_fails_the_sweep(score):
    @pipeline(name="sweep-tolerant")
    def tune(fail_at: float, max_failed_trials: int | None = None):
        search = sweep(score, inputs={"fail_at": fail_at}, search_space={"x": choice([0.2, 0.3, 0.5])},
                       sampler="grid", objective=("auc", "max"), max_concurrent=3,
                       max_failed_trials=max_failed_trials)
        return {"best": search.best.params, "states": {t.number: t.state for t in search.trials}}

    state = tune(fail_at=0.3, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == {"best": {"x": 0.2}, "states": {1: "completed", 2: "failed", 3: "completed"}}

    with pytest.raises(SweepError, match=r"1 trials failed \(max_failed_trials=0\)"):
        tune(fail_at=0.5, max_failed_trials=0)


def test_every_trial_failing_fails_the_sweep(score):
    @pipeline(name="sweep-all-fail")
    def tune():
        sweep(score, inputs={"fail_at": 0.2}, search_space={"x": choice([0.2])}, objective=("auc", "max"))

    with pytest.raises(SweepError, match=r"every trial failed \(1\): trial 1: StepFailed: step 'score-trial-1' "
                                         r"failed: exit code 1\. Last lines: \.\.\. RuntimeError: trial with "
                                         r"x=0\.2 fails on purpose$"):
        tune()


def test_objective_missing_from_a_trials_metrics_names_metric_and_trial(score):
    @pipeline(name="sweep-no-metric")
    def tune():
        sweep(score, search_space={"x": choice([0.1, 0.2])}, objective=("f1", "max"), max_concurrent=1)

    with pytest.raises(SweepError, match=r"objective metric 'f1' is missing from the metrics of trial 1 "
                                         r"\(step 'score-trial-1'\); its metrics are \['auc', 'x'\]"):
        tune()


def test_tpe_sampler_runs_trials_through_optuna(score):
    from prefect_ml.search import uniform

    @pipeline(name="sweep-tpe")
    def tune():
        search = sweep(score, search_space={"x": uniform(0.0, 1.0)}, objective=("auc", "max"), sampler="tpe",
                       max_trials=6, max_concurrent=2)
        return {"n": len(search.trials), "value": search.best_value}

    out = tune()
    assert out["n"] == 6 and 0.5 < out["value"] <= 1.0


# --- fail() ---------------------------------------------------------------------------------------


def test_fail_ends_the_run_failed_with_the_message_in_prefect_and_mlflow(score):
    @pipeline(name="sweep-then-fail")
    def tune(min_auc: float = 1.5):
        search = sweep(score, search_space={"x": choice([0.1, 0.2])}, objective=("auc", "max"))
        if not gate(search.best.outputs.metrics, "auc", ">=", min_auc):
            fail(f"no trial reached AUC {min_auc}")
        return "registered"

    state = tune(return_state=True)
    assert state.is_failed()
    assert "no trial reached AUC 1.5" in state.message
    parent, _ = mlflow_run(state)
    assert parent.data.tags["prefect_ml.fail"] == "no trial reached AUC 1.5"
    assert parent.info.status == "FAILED"
    assert tune(min_auc=0.5) == "registered"


def test_median_stopping_starts_no_new_trials_once_recent_ones_stay_below_the_median(score):
    from prefect_ml.search import median_stopping

    @pipeline(name="sweep-median")
    def tune():
        search = sweep(score, search_space={"x": choice([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])}, sampler="grid",
                       objective=("auc", "max"), max_concurrent=1,
                       early_termination=median_stopping(delay_evaluation=3, patience=2))
        return {"n": len(search.trials), "stopped": search.stopped_early, "best": search.best.params}

    out = tune()
    # auc falls with x: after 4 trials the last two (0.5, 0.6) are below the median of the four
    assert out["n"] == 4 and out["best"] == {"x": 0.3}
    assert out["stopped"].startswith("median stopping")
