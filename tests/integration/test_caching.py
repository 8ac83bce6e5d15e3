"""Reuse, retries and resume: real runs of the credit-default steps on process infrastructure."""

import shutil
import threading
from pathlib import Path

import pytest

from prefect_ml import command, gate, load_component, pipeline
from prefect_ml.dsl.pipeline import plan
from prefect_ml.errors import StepFailed
from prefect_ml.samples import credit_default_sample
from tests.conftest import task_runs
from tests.paths import REPO


def states(flow_state) -> dict[str, str]:
    """Step name -> final state name ('Completed' = ran, 'Cached' = reused)."""
    runs = task_runs(flow_state, names=ALL_RAN)
    return {r.name: r.state.name for r in runs if not r.name.startswith(("gate", "register"))}


def planned(p, **params) -> dict[str, str]:
    return {s.name: ("Cached" if s.decision.reuse else "Completed") for s in plan(p, params).steps}


@pytest.fixture
def credit(tmp_path, env):
    """The credit-default pipeline built from a private copy of the shipped components."""
    components = tmp_path / "components"
    shutil.copytree(REPO / "components", components, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "environments", tmp_path / "environments")
    data = credit_default_sample(tmp_path / "sample.csv", rows=1500)
    prep = load_component(components / "data_prep" / "component.yaml")
    train = load_component(components / "train" / "component.yaml")
    evaluate = load_component(components / "evaluate" / "component.yaml").with_options(retries=0)

    @pipeline(name="credit-default-cache")
    def credit(learning_rate: float = 0.1, min_auc: float = 0.5) -> dict:
        p = prep(data=str(data))
        m = train(train_data=p.outputs.train_data, learning_rate=learning_rate, n_estimators=10)
        r = evaluate(model=m.outputs.model, test_data=p.outputs.test_data)
        return {"model": m.outputs.model, "metrics": r.outputs.metrics,
                "passed": gate(r.outputs.metrics, "auc", ">=", min_auc)}

    credit.components = components
    return credit


ALL_RAN = {"data_prep": "Completed", "train": "Completed", "evaluate": "Completed"}
ALL_CACHED = {"data_prep": "Cached", "train": "Cached", "evaluate": "Cached"}


def test_rerun_reuses_exactly_what_is_unchanged(credit):
    assert planned(credit) == ALL_RAN
    cold = credit(return_state=True)
    assert states(cold) == ALL_RAN

    assert planned(credit) == ALL_CACHED
    warm = credit(return_state=True)
    assert states(warm) == ALL_CACHED
    assert warm.result()["model"] == cold.result()["model"]

    # a new learning rate: data_prep is reused, train and evaluate run
    expected = {"data_prep": "Cached", "train": "Completed", "evaluate": "Completed"}
    assert planned(credit, learning_rate=0.2) == expected
    assert states(credit(learning_rate=0.2, return_state=True)) == expected

    # a code change in evaluate: only evaluate (and what follows it) runs
    script = credit.components / "evaluate" / "evaluate.py"
    script.write_text(script.read_text() + "\n# changed\n")
    expected = {"data_prep": "Cached", "train": "Cached", "evaluate": "Completed"}
    assert planned(credit) == expected
    assert states(credit(return_state=True)) == expected

    # outputs deleted under a cached step: it runs again (a marker alone is not trusted)
    model_dir = Path(warm.result()["model"].removeprefix("file://"))
    shutil.rmtree(model_dir)
    expected = {"data_prep": "Cached", "train": "Completed", "evaluate": "Cached"}
    assert planned(credit) == expected
    assert states(credit(return_state=True)) == expected


def test_failed_pipeline_resumes_from_completed_steps(credit, monkeypatch):
    script = credit.components / "evaluate" / "evaluate.py"
    fail_first = "import os, sys\nif os.environ.get('FAIL_EVALUATE'):\n    sys.exit('evaluate failed on purpose')\n"
    script.write_text(fail_first + script.read_text())
    monkeypatch.setenv("FAIL_EVALUATE", "1")
    with pytest.raises(StepFailed, match="evaluate failed on purpose"):
        credit()
    monkeypatch.delenv("FAIL_EVALUATE")
    assert states(credit(return_state=True)) == {"data_prep": "Cached", "train": "Cached", "evaluate": "Completed"}


def test_retry_reruns_only_the_failed_step(env, tmp_path):
    code = tmp_path / "flaky"
    code.mkdir()
    (code / "flaky.py").write_text(
        "import pathlib, sys\n"
        "flag = pathlib.Path(sys.argv[1])\n"
        "if not flag.exists():\n    flag.write_text('1')\n    sys.exit('first attempt fails')\n"
        "pathlib.Path(sys.argv[2]).write_text('ok')\n"
    )
    flag = tmp_path / "attempted"
    flaky = command(name="flaky", code=code, command="python flaky.py ${{inputs.flag}} ${{outputs.out}}",
                    inputs={"flag": "string"}, outputs={"out": "uri_file"}, retries=1)

    @pipeline
    def retrying():
        return flaky(flag=str(flag)).outputs.out

    state = retrying(return_state=True)
    assert Path(state.result().removeprefix("file://")).read_text() == "ok"
    [run] = task_runs(state, names=["flaky"])
    assert run.run_count == 2 and run.state.is_completed()


def test_cache_can_be_turned_off(credit, monkeypatch):
    credit()
    monkeypatch.setenv("PREFECT_ML_CACHE", "false")
    assert states(credit(return_state=True)) == ALL_RAN


def test_two_concurrent_runs_do_not_corrupt_each_other(credit):
    results, errors = [], []

    def go():
        try:
            results.append(credit())
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        assert (Path(r["model"].removeprefix("file://")) / "MLmodel").is_file()
    # a later run reuses whatever was published, complete
    assert planned(credit) == ALL_CACHED
