"""Command templates: placeholders, optional fragments, and values that stay literal."""

import subprocess
import sys

import pytest

from prefect_ml.dsl import command_template as ct


def test_placeholders_marks_fragments():
    found = ct.placeholders("python a.py ${{inputs.x}} $[[--y ${{inputs.y}}]] --o ${{outputs.o}}")
    assert [(p.kind, p.name, p.optional_fragment) for p in found] == [
        ("inputs", "y", True), ("inputs", "x", False), ("outputs", "o", False)]


def test_render_keeps_fragment_when_set_and_drops_when_unset():
    t = "python a.py --x ${{inputs.x}} $[[ --y ${{inputs.y}} ]] --out ${{outputs.o}}"
    assert ct.render(t, {"x": "1", "y": "2"}, {"o": "/out"}) == [
        "python", "a.py", "--x", "1", "--y", "2", "--out", "/out"]
    assert ct.render(t, {"x": "1", "y": None}, {"o": "/out"}) == ["python", "a.py", "--x", "1", "--out", "/out"]


def test_placeholder_inside_a_word_is_substituted():
    assert ct.render("python a.py --x=${{inputs.x}}", {"x": "a b"}, {}) == ["python", "a.py", "--x=a b"]


@pytest.mark.parametrize("value", [
    "a b", "it's \"quoted\"", "x; rm -rf /tmp/nope", "a | cat", "$(touch /tmp/pwned)", "`id`", "$HOME", "\\n"])
def test_values_reach_the_program_literally(value, tmp_path):
    argv = ct.render("python -c ${{inputs.code}} ${{inputs.v}}",
                     {"code": "import sys; print(sys.argv[1])", "v": value}, {})
    argv[0] = sys.executable
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out == value + "\n"
    assert not (tmp_path / "pwned").exists()


def test_syntax_problems_are_described():
    assert "unbalanced" in ct.check_syntax("a $[[ --x ${{inputs.x}}")
    assert "quotes" in ct.check_syntax("a 'unterminated")
    assert "placeholder" in ct.check_syntax("a ${{input.x}}")
    assert ct.check_syntax("a ${{inputs.x}}") is None


def test_shell_operators_are_found():
    assert ct.shell_operators("python a.py && echo done") == ["&&"]
    assert ct.shell_operators("python a.py '&&'") == ["&&"]  # quoted too: it would reach the program literally
    assert ct.shell_operators("python a.py --x=a&&b") == []
