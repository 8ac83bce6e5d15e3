"""The failure catalogue (docs/errors.md), pipeline side: each bad input or fault gives its message
and publishes nothing (no completion marker, no leftover staging dir)."""

from pathlib import Path

import pytest

from prefect_ml import Input, command, gate, pipeline, register_model
from prefect_ml.errors import (
    DataAssetError,
    EnvironmentSpecError,
    GateError,
    InfrastructureError,
    RegistrationError,
    StepFailed,
    StepInputError,
    StorageError,
)


@pytest.fixture
def code(tmp_path):
    d = tmp_path / "code"
    d.mkdir()
    files = {
        "ok.py": "import json, sys, pathlib\njson.dump({'auc': 0.9}, open(sys.argv[1], 'w'))\n",
        "nothing.py": "print('wrote nothing')\n",
        "badjson.py": "import sys\nopen(sys.argv[1], 'w').write('not json')\n",
        "strings.py": "import json, sys\njson.dump({'auc': 'high'}, open(sys.argv[1], 'w'))\n",
        "fakemodel.py": "import sys, pathlib\npathlib.Path(sys.argv[1]).mkdir()\n",
        "exit2.py": "import sys\nprint('bad things')\nsys.exit(2)\n",
    }
    for name, body in files.items():
        (d / name).write_text(body)
    return d


def run_pipeline(body):
    @pipeline(name="catalogue")
    def p():
        return body()

    return p()


def assert_nothing_published(home: Path):
    root = home / "artifacts"
    assert not list(root.glob("steps/*/_COMPLETE.json")), "a completion marker was published"
    staging = root / ".staging"
    assert not staging.exists() or not list(staging.iterdir()), "a staging dir was left behind"


def cases(code: Path):
    metrics = command(name="metrics", code=code, command="python ok.py ${{outputs.m}}", outputs={"m": "metrics"})
    number = command(name="num", code=code, command="python ok.py ${{outputs.m}} ${{inputs.x}}",
                     inputs={"x": Input(type="number", min=0, max=1),
                             "mode": Input(type="string", default="a", enum=["a", "b"])},
                     outputs={"m": "metrics"})
    data = command(name="reader", code=code, command="python ok.py ${{outputs.m}} ${{inputs.d}}",
                   inputs={"d": "uri_file"}, outputs={"m": "metrics"})

    def one(cmd, outputs, **kw):
        return command(name=kw.pop("name", "faulty"), code=code, command=cmd, outputs=outputs, **kw)

    return {
        "required input missing": (
            number, StepInputError, r"input 'x' is required but was not given; pass x=\.\.\."),
        "string for a number": (
            lambda: number(x="0.5"), StepInputError, r"input 'x': expects a number, got str '0\.5'"),
        "value above max": (lambda: number(x=3), StepInputError, r"input 'x': 3(\.0)? is above the maximum 1"),
        "value not in enum": (
            lambda: number(x=0.5, mode="c"), StepInputError,
            r"input 'mode': 'c' is not one of the allowed values \['a', 'b'\]"),
        "unknown input name": (
            lambda: number(x=0.5, y=1), StepInputError, r"unknown input\(s\) \['y'\]; declared inputs are"),
        "data that does not exist": (
            lambda: data(d=str(code / "missing.csv")), StepInputError,
            r"input 'd': data .*missing\.csv' does not exist"),
        "unknown URI scheme in an input": (
            lambda: data(d="ftp://host/x.csv"), StorageError, r"unknown URI scheme 'ftp://'"),
        "unknown data asset": (
            lambda: data(d="asset:no-such-asset:1"), DataAssetError, r"unknown data asset 'no-such-asset'"),
        "metrics output given to a data input": (
            lambda: data(d=metrics().outputs.m), StepInputError,
            r"input 'd' \(uri_file\) cannot take output 'm' \(metrics\)"),
        "metrics output given to a value input": (
            lambda: number(x=metrics().outputs.m), StepInputError,
            r"input 'x': is of type 'number' but got the output 'm' of step 'metrics'"),
        "gate on a missing metric": (
            lambda: gate(metrics().outputs.m, "f1", ">=", 0.5), GateError,
            r"metric 'f1' is not in the metrics output.*available metrics: \['auc'\]"),
        "gate with an unknown operator": (
            lambda: gate(metrics().outputs.m, "auc", "=>", 0.5), GateError, r"unknown operator '=>'; use one of"),
        "register a non-model output": (
            lambda: register_model(metrics().outputs.m, name="x"), RegistrationError,
            r"output 'm' of step 'metrics' is metrics; only mlflow_model outputs"),
        "unknown infrastructure": (
            lambda: metrics.with_options(infrastructure="no-such-block")().result(), InfrastructureError,
            r"unknown infrastructure 'no-such-block'.*built-ins: \['process', 'docker'\]"),
        "unknown environment": (
            lambda: command(name="envless", code=code, command="python ok.py ${{outputs.m}}", outputs={"m": "metrics"},
                            environment="no-such-env")().result(),
            EnvironmentSpecError, r"unknown environment 'no-such-env'"),
        "non-zero exit": (
            lambda: one("python exit2.py", {"o": "uri_folder"})().result(), StepFailed,
            r"step 'faulty' failed: exit code 2\. Last lines:\nbad things"),
        "program not on PATH": (
            lambda: one("no-such-program --x", {"o": "uri_folder"})().result(), StepFailed,
            r"program 'no-such-program' not found on PATH"),
        "declared output not written": (
            lambda: one("python nothing.py ${{outputs.o}}", {"o": "uri_file"})().result(), StepFailed,
            r"output 'o' \(uri_file\) was not written"),
        "metrics not JSON": (
            lambda: one("python badjson.py ${{outputs.m}}", {"m": "metrics"})().result(), StepFailed,
            r"metrics file is not valid JSON"),
        "metrics not numbers": (
            lambda: one("python strings.py ${{outputs.m}}", {"m": "metrics"})().result(), StepFailed,
            r"metrics must be a JSON object of name -> number"),
        "mlflow_model without MLmodel": (
            lambda: one("python fakemodel.py ${{outputs.model}}", {"model": "mlflow_model"})().result(), StepFailed,
            r"output 'model' is an mlflow_model but has no MLmodel file"),
    }


CASES = [
    "required input missing", "string for a number", "value above max", "value not in enum", "unknown input name",
    "data that does not exist", "unknown URI scheme in an input", "unknown data asset",
    "metrics output given to a data input", "metrics output given to a value input",
    "gate on a missing metric", "gate with an unknown operator", "register a non-model output",
    "unknown infrastructure", "unknown environment", "non-zero exit", "program not on PATH",
    "declared output not written", "metrics not JSON", "metrics not numbers", "mlflow_model without MLmodel",
]


@pytest.mark.parametrize("case", CASES)
def test_catalogue_entry(env, code, case):
    body, error, message = cases(code)[case]
    with pytest.raises(error, match=message):
        run_pipeline(body)
    if case.startswith(("gate", "register", "metrics output")):  # the upstream metrics step completed: fine
        root = env / "artifacts"
        assert all(p.parent.name for p in root.glob("steps/*/_COMPLETE.json"))
        assert not (root / ".staging").exists() or not list((root / ".staging").iterdir())
    else:
        assert_nothing_published(env)


def test_unknown_artifact_root_scheme_fails_before_any_step(env, code, monkeypatch):
    monkeypatch.setenv("PREFECT_ML_ARTIFACT_ROOT", "gopher://bucket/prefix")
    with pytest.raises(StorageError, match=r"unknown URI scheme 'gopher://'"):
        run_pipeline(lambda: None)
