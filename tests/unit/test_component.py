"""Component specs: parsing, validation at definition/load time, and call-time binding."""

import textwrap

import pytest

from prefect_ml import Input, Output, command, load_component
from prefect_ml.errors import ComponentError, StepInputError
from tests.paths import REPO


def make(tmp_path, **kw):
    base = dict(name="c", code=tmp_path, command="python run.py --x ${{inputs.x}} --o ${{outputs.o}}",
                inputs={"x": Input(type="number", default=0.5, min=0.0, max=1.0)},
                outputs={"o": Output(type="uri_folder")})
    base.update(kw)
    return command(**base)


def write(tmp_path, text, name="component.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_components_load():
    for name in ("data_prep", "train", "evaluate"):
        c = load_component(REPO / "components" / name / "component.yaml")
        assert c.name == name and c.code.is_dir() and c.environment == "sklearn-cpu"
    train = load_component(REPO / "components" / "train" / "component.yaml")
    assert train.inputs["learning_rate"].type == "number" and train.outputs["model"].type == "mlflow_model"


def test_yaml_in_azure_form(tmp_path):
    p = write(tmp_path, """
        $schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json
        name: score
        version: 2
        display_name: Score
        type: command
        tags: {team: risk}
        inputs:
          data: {type: uri_folder}
          mode: {type: string, default: fast, enum: [fast, slow]}
          limit: {type: integer, optional: true}
        outputs:
          scores: {type: uri_file}
        code: .
        environment: azureml:sklearn-cpu:1
        command: python s.py --data ${{inputs.data}} --mode ${{inputs.mode}} $[[--limit ${{inputs.limit}}]] --out ${{outputs.scores}}
    """)  # noqa: E501 - the component file as Azure ML writes it, one line
    c = load_component(p)
    assert (c.name, c.version, c.tags, c.code) == ("score", "2", {"team": "risk"}, tmp_path.resolve())
    assert c.inputs["limit"].optional and c.inputs["mode"].enum == ["fast", "slow"]


def test_placeholder_naming_an_undeclared_input(tmp_path):
    with pytest.raises(ComponentError,
                       match=r"uses \$\{\{inputs.y\}\} but no input 'y' is declared.*declared inputs: \['x'\]"):
        make(tmp_path, command="python run.py ${{inputs.y}} ${{outputs.o}}")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "name: a\ncommand: python x.py\ninputs:\n  x: {type: number\n")
    with pytest.raises(ComponentError, match=rf"{p}: line \d+, column \d+: invalid YAML"):
        load_component(p)


def test_missing_code_dir(tmp_path):
    p = write(tmp_path, "name: a\ncommand: python x.py\ncode: ./nope\n")
    with pytest.raises(ComponentError, match=r"key 'code': directory .*nope.* does not exist"):
        load_component(p)


@pytest.mark.parametrize("bad", ["../x", "a-b", "1x", "x y"])
def test_names_must_be_identifiers(tmp_path, bad):
    with pytest.raises(ComponentError, match="not a plain identifier"):
        make(tmp_path, command="python run.py", inputs={bad: Input(type="string")}, outputs={})
    with pytest.raises(ComponentError, match="not a plain identifier"):
        make(tmp_path, command="python run.py", inputs={}, outputs={bad: Output()})


@pytest.mark.parametrize("spec, match", [
    (Input(type="float"), "unknown type 'float'"),
    (Input(type="number", default="0.1"), "expects a number"),
    (Input(type="integer", default=5, max=3), "above the maximum 3"),
    (Input(type="string", default="c", enum=["a", "b"]), "not one of the allowed values"),
    (Input(type="uri_file", min=1), "primitive inputs only"),
    (Input(type="string", min=1), "integer and number inputs only"),
])
def test_bad_input_specs(tmp_path, spec, match):
    with pytest.raises(ComponentError, match=match):
        make(tmp_path, command="python run.py ${{inputs.x}}", inputs={"x": spec}, outputs={})


def test_optional_input_outside_fragment_is_refused(tmp_path):
    with pytest.raises(ComponentError, match=r"wrap it as \$\[\["):
        make(tmp_path, command="python run.py ${{inputs.x}}", inputs={"x": Input(type="string", optional=True)},
             outputs={})


def test_shell_operators_are_refused(tmp_path):
    with pytest.raises(ComponentError, match="without a shell"):
        make(tmp_path, command="python run.py > log.txt", inputs={}, outputs={})


def test_unknown_yaml_keys_and_input_fields(tmp_path):
    with pytest.raises(ComponentError, match=r"unknown key\(s\) \['comand'\]"):
        load_component(write(tmp_path, "name: a\ncomand: x\ncommand: python x.py\n"))
    with pytest.raises(ComponentError, match=r"inputs.x': unknown field\(s\) \['defualt'\]"):
        load_component(write(tmp_path, "name: a\ncommand: python x.py\ninputs:\n  x: {type: number, defualt: 1}\n"))


def test_bind_validates_calls(tmp_path):
    c = make(tmp_path)
    assert c.bind({"x": 1}) == {"x": 1.0}
    with pytest.raises(StepInputError, match=r"component 'c', input 'x': expects a number, got str '0.3'"):
        c.bind({"x": "0.3"})
    with pytest.raises(StepInputError, match=r"below the minimum 0.0"):
        c.bind({"x": -1})
    with pytest.raises(StepInputError, match=r"above the maximum 1.0"):
        c.bind({"x": 2})
    with pytest.raises(StepInputError, match=r"unknown input\(s\) \['y'\]"):
        c.bind({"y": 1})
    req = make(tmp_path, inputs={"x": Input(type="number")})
    with pytest.raises(StepInputError, match=r"input 'x' is required but was not given; pass x=\.\.\."):
        req.bind({})
    b = make(tmp_path, command="python run.py ${{inputs.x}}", inputs={"x": Input(type="boolean")}, outputs={})
    with pytest.raises(StepInputError, match="expects a boolean"):
        b.bind({"x": 1})
