"""Function components (`@component`), the search space, and sweep/fail validation and planning.

No servers: specs, the stdlib runner in a plain interpreter, cache keys, and `plan()` (which decides
steps without running them). Runs against Prefect, MLflow and Docker: tests/integration/test_sweeps.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from prefect_ml import Input, Output, command, load_function_component, pipeline
from prefect_ml.dsl.command_template import render
from prefect_ml.dsl.function import FunctionComponent
from prefect_ml.dsl.pipeline import plan
from prefect_ml.dsl.sweep import SweepError
from prefect_ml.errors import ComponentError, StepInputError
from prefect_ml.runtime.cache_key import code_digest, step_cache_key
from prefect_ml.search import MedianStopping, SearchSpaceError, choice, loguniform, randint, uniform

HEADER = "from typing import Annotated\nfrom prefect_ml import Input, Output, component\n\n"


def module(tmp_path: Path, body: str, name: str | None = None) -> Path:
    """Write a component module into its own code dir; returns the file."""
    name = name or f"fc_{uuid.uuid4().hex[:8]}"
    code = tmp_path / name
    code.mkdir(parents=True, exist_ok=True)
    f = code / f"{name}.py"
    f.write_text(HEADER + textwrap.dedent(body))
    return f


TRAIN = """
@component(environment=None)
def train(data: Input("uri_file"), model: Output("uri_folder"),
          lr: Annotated[float, Input(min=0.0001, max=1.0)] = 0.1, n: int = 3, flag: bool = False,
          label: str | None = None) -> dict:
    import os
    with open(data) as f:
        text = f.read()
    os.makedirs(model, exist_ok=True)
    with open(os.path.join(model, "m.txt"), "w") as f:
        f.write(f"{lr!r} {n!r} {flag!r} {label!r} {text.strip()}")
    return {"score": lr * n}
"""


def load(f: Path, fn: str = "train") -> FunctionComponent:
    return load_function_component(f"{f}:{fn}")


# --- the spec -------------------------------------------------------------------------------------


def test_signature_becomes_the_same_spec_a_yaml_component_has(tmp_path):
    c = load(module(tmp_path, TRAIN))
    assert c.name == "train" and c.code == tmp_path / c.module
    assert c.inputs["data"] == Input(type="uri_file")
    assert c.inputs["lr"] == Input(type="number", default=0.1, min=0.0001, max=1.0)
    assert c.inputs["n"] == Input(type="integer", default=3)
    assert c.inputs["flag"] == Input(type="boolean", default=False)
    assert c.inputs["label"] == Input(type="string", optional=True)
    assert dict(c.outputs) == {"model": Output(type="uri_folder"), "metrics": c.outputs["metrics"]}
    assert c.outputs["metrics"].type == "metrics"
    assert c.func is not None and c.func.__name__ == "train"


def test_input_as_default_and_annotation_forms(tmp_path):
    f = module(tmp_path, """
    @component
    def f(a: float = Input(type="number", default=0.5, min=0.0, max=1.0),
          b: Input(type="string", enum=["x", "y"]) = "x", c: Annotated[int, Input(min=1)] = 2) -> None:
        pass
    """)
    c = load(f, "f")
    assert c.inputs["a"] == Input(type="number", default=0.5, min=0.0, max=1.0)
    assert c.inputs["b"] == Input(type="string", default="x", enum=["x", "y"])
    assert c.inputs["c"] == Input(type="integer", default=2, min=1)
    assert "metrics" not in c.outputs


def test_the_runner_runs_the_function_in_an_interpreter_without_prefect_ml(tmp_path):
    """The runner is stdlib only; `from prefect_ml import ...` in the module is served by a stand-in."""
    c = load(module(tmp_path, TRAIN))
    (tmp_path / "data.txt").write_text("hello")
    argv = render(c.command, {"data": str(tmp_path / "data.txt"), "lr": "0.5", "n": "4", "flag": "True",
                              "label": "a b; $(rm -rf x)"},
                  {"model": str(tmp_path / "out" / "model"), "metrics": str(tmp_path / "out" / "m.json")})
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    bare = subprocess.run([python, "-c", "import prefect_ml"], capture_output=True, check=False)
    proc = subprocess.run([python if bare.returncode else sys.executable, *argv[1:]], cwd=c.code,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "m.json").read_text()) == {"score": 2.0}
    assert (tmp_path / "out" / "model" / "m.txt").read_text() == "0.5 4 True 'a b; $(rm -rf x)' hello"


def test_values_are_arguments_never_part_of_the_script(tmp_path):
    c = load(module(tmp_path, TRAIN))
    argv = render(c.command, {"data": "/d", "lr": "0.5", "n": "4", "flag": "True", "label": "x'); import os; ('"},
                  {"model": "/m", "metrics": "/j"})
    assert argv[0] == "python3" and argv[1] == "-c"
    assert "import os; (" not in argv[2]
    assert "x'); import os; ('" in argv[3:]


def test_cache_key_changes_with_the_functions_source_and_its_code_dir(tmp_path):
    f = module(tmp_path, TRAIN, name="keyed")

    def key() -> str:
        c = load_function_component(f"{f}:train")
        import sys as _sys

        for name in [n for n in _sys.modules if n.startswith("_prefect_ml_fn_")]:
            del _sys.modules[name]  # reload the module from disk next time
        return step_cache_key(c, code=code_digest(c.code), environment=None, values={"lr": 0.1}, data={})[0]

    first = key()
    assert key() == first  # deterministic
    f.write_text(f.read_text().replace("lr * n", "lr * n * 2"))
    changed = key()
    assert changed != first
    (f.parent / "helper.py").write_text("X = 1\n")
    assert key() != changed  # the module's code dir is part of the key too


# --- bad input at decoration and at call ----------------------------------------------------------

@pytest.mark.parametrize("signature, message", [
    ("(x: list) -> None", r"parameter 'x': unsupported annotation list"),
    ("(x) -> None", r"parameter 'x' has no type annotation"),
    ("(m: Output) -> None", r"parameter 'm': Output without a type; write Output\('uri_folder'\)"),
    ("(d: Input) -> None", r"parameter 'd': Input without a type"),
    ("(m: Output('uri_folder') = 'x') -> None", r"an output takes no default"),
    ("(*args: int) -> None", r"\*args, \*\*kwargs"),
    ("(x: int = 1) -> str", r"return annotation str is not supported"),
    ("(retries: int = 1) -> None", r"'retries' is reserved for call options"),
    ("(x: Output('table')) -> None", r"key 'outputs.x': unknown type 'table'"),
    ("(lr: Annotated[float, Input(min=0.0, max=1.0)] = 2.0) -> None",
     r"key 'inputs.lr' default: 2.0 is above the maximum 1.0; pass a value <= 1.0. Fix the default"),
    ("(lr: Annotated[float, Input(type='integer')] = 2.0) -> None", r"annotation says 'number' but Input"),
])
def test_bad_signatures_are_refused_at_decoration(tmp_path, signature, message):
    f = module(tmp_path, f"@component\ndef bad{signature}:\n    pass\n")
    with pytest.raises(ComponentError, match=message):
        load(f, "bad")


def test_a_nested_function_is_refused(tmp_path):
    from prefect_ml import component

    def inner(x: int = 1) -> None:
        pass

    with pytest.raises(ComponentError, match="top level of a module"):
        component(inner)


def test_default_outside_bounds_has_the_yaml_components_message(tmp_path):
    f = module(tmp_path, "@component\ndef twin(lr: Annotated[float, Input(min=0.0, max=1.0)] = 2.0) -> None:\n"
                         "    pass\n")
    with pytest.raises(ComponentError) as fn_error:
        load(f, "twin")
    with pytest.raises(ComponentError) as yaml_error:
        command(name="twin", command="python x.py ${{inputs.lr}}", code=tmp_path,
                inputs={"lr": Input(type="number", default=2.0, min=0.0, max=1.0)})
    tail = "key 'inputs.lr' default: 2.0 is above the maximum 1.0; pass a value <= 1.0. Fix the default"
    assert tail in str(fn_error.value) and tail in str(yaml_error.value)


@pytest.mark.parametrize("kwargs", [
    {"data": "/d", "lr": 5.0}, {"data": "/d", "n": "many"}, {"data": "/d", "nope": 1}, {"lr": 0.1},
    {"data": "/d", "flag": "yes"},
])
def test_bad_calls_get_the_same_messages_as_yaml_components(tmp_path, kwargs):
    c = load(module(tmp_path, TRAIN))
    yaml_like = command(name="train", code=tmp_path, command="python3 t.py", inputs=dict(c.inputs),
                        outputs=dict(c.outputs))
    with pytest.raises(StepInputError) as fn_error:
        c.bind(kwargs)
    with pytest.raises(StepInputError) as yaml_error:
        yaml_like.bind(kwargs)
    assert str(fn_error.value) == str(yaml_error.value)


# --- search space ---------------------------------------------------------------------------------

def test_search_expressions():
    assert choice([1, 2]).grid == [1, 2] and choice(1, 2).grid == [1, 2]
    assert randint(3).grid == [0, 1, 2] and randint(2, 4).grid == [2, 3, 4]
    assert uniform(0, 1).grid is None and loguniform(1e-3, 1).log
    for bad in (lambda: choice([]), lambda: uniform(1, 0), lambda: loguniform(0, 1), lambda: randint(0),
                lambda: randint(1.5, 2), lambda: choice([[1]]), lambda: uniform("a", 1)):
        with pytest.raises(SearchSpaceError):
            bad()


def test_median_stopping_stops_after_recent_trials_stay_below_the_median():
    policy = MedianStopping(delay_evaluation=4, patience=2)
    assert not policy.should_stop([0.9, 0.8, 0.1], maximize=True)  # not enough trials yet
    assert not policy.should_stop([0.5, 0.6, 0.7, 0.8], maximize=True)
    assert policy.should_stop([0.5, 0.6, 0.7, 0.8, 0.1, 0.2], maximize=True)
    assert policy.should_stop([0.5, 0.6, 0.7, 0.8, 0.9, 0.95], maximize=False)


# --- sweeps: validation and plan (no run) --------------------------------------------------------

SCORE = """
@component
def score(x: float = 0.0, y: int = 1, mode: str = "a", data: Input("uri_file", optional=True) = None) -> dict:
    return {"auc": 1 - (x - 0.3) ** 2, "y": y}
"""


@pytest.fixture
def score(tmp_path, ml_home):
    return load(module(tmp_path, SCORE), "score")


def planned(score, **sweep_args):
    from prefect_ml import sweep

    @pipeline(name=f"p-{uuid.uuid4().hex[:6]}")
    def p():
        result = sweep(score, **{"objective": ("auc", "max"), **sweep_args})
        return result

    return plan(p)


@pytest.mark.parametrize("args, message", [
    ({"search_space": {}}, "search_space is empty"),
    ({"search_space": {"x": 0.5}}, r"search_space\['x'\]: 0.5 is not a search expression"),
    ({"search_space": {"lr": uniform(0, 1)}, "max_trials": 2}, r"has no input 'lr'; its inputs are \['data', "),
    ({"search_space": {"data": choice(["a"])}}, "input 'data' is data"),
    ({"search_space": {"x": choice([0.1])}, "inputs": {"x": 0.2}}, "also given in inputs="),
    ({"search_space": {"y": uniform(0, 1)}, "max_trials": 2}, "uniform draws floats but input 'y' is 'integer'"),
    ({"search_space": {"mode": choice([1, 2])}}, "expects a string, got int 1"),
    ({"search_space": {"x": choice([0.1])}, "max_concurrent": 0}, "max_concurrent must be an integer >= 1, got 0"),
    ({"search_space": {"x": choice([0.1])}, "objective": "auc"}, r"objective must be \(metric, 'max' \| 'min'\)"),
    ({"search_space": {"x": uniform(0, 1)}, "sampler": "grid"}, r"grid sampling needs choice or randint"),
    ({"search_space": {"x": uniform(0, 1)}}, "give max_trials \\(required when the space has uniform"),
    ({"search_space": {"x": choice([0.1])}, "sampler": "bayes"}, "unknown sampler 'bayes'"),
])
def test_bad_sweeps_are_refused_before_any_trial(score, args, message):
    with pytest.raises((SweepError, StepInputError), match=message):
        planned(score, **args)


def test_plan_shows_every_grid_trial_and_random_trials_are_reproducible(score):
    run = planned(score, search_space={"x": choice([0.1, 0.2, 0.3]), "y": randint(1, 2)}, sampler="grid")
    assert [s.name for s in run.steps] == [f"score-trial-{i}" for i in range(1, 7)]
    assert not any(s.decision.reuse for s in run.steps)
    assert any("6 trials (0 reused, 6 to run), sampler grid" in n for n in run.notes)

    def random_keys():
        return [s.decision.key for s in planned(score, search_space={"x": uniform(0, 1)}, max_trials=4).steps]

    assert random_keys() == random_keys() and len(set(random_keys())) == 4


def test_fail_in_a_plan_is_noted(score):
    from prefect_ml import fail

    @pipeline(name="plan-fail")
    def p():
        fail("not good enough")

    assert "fail: not good enough" in plan(p).notes


def test_sweep_outside_a_pipeline_is_refused(score):
    from prefect_ml import sweep

    with pytest.raises(SweepError, match=r"runs inside a @pipeline"):
        sweep(score, search_space={"x": choice([0.1])}, objective=("auc", "max"))
