"""Trust boundaries that need no server: what a step's outputs may contain, what its metrics may
say, what a code dir may link to, and what a spec file may make the loader do (issue 12)."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pytest

from prefect_ml import Input, Output, command, load_component
from prefect_ml.dsl.component import CommandWarning
from prefect_ml.errors import ComponentError, StepFailed
from prefect_ml.runtime import outputs
from prefect_ml.runtime.cache_key import code_digest


def _component(tmp_path: Path, **outs: str):
    return command(name="c", command="true", code=tmp_path, outputs={k: Output(type=v) for k, v in outs.items()})


# --- symlinks and special files in outputs ------------------------------------------------------

def test_a_symlink_out_of_an_output_is_refused(tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("root:x:0:0")
    staging = tmp_path / "staging"
    (staging / "data").mkdir(parents=True)
    (staging / "data" / "leak.txt").symlink_to(secret)
    with pytest.raises(StepFailed, match=r"output 'data' contains a symlink 'data/leak.txt' .* outside the output"):
        outputs.verify(_component(tmp_path, data="uri_folder"), {"data": staging / "data"}, "s")


def test_a_file_output_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "m.json").symlink_to("/etc/hostname")
    with pytest.raises(StepFailed, match="points outside the output"):
        outputs.verify(_component(tmp_path, m="uri_file"), {"m": tmp_path / "staging" / "m.json"}, "s")


def test_links_inside_an_output_are_kept(tmp_path):
    out = tmp_path / "staging" / "data"
    out.mkdir(parents=True)
    (out / "a.csv").write_text("x\n1\n")
    (out / "latest.csv").symlink_to("a.csv")
    outputs.verify(_component(tmp_path, data="uri_folder"), {"data": out}, "s")


def test_a_fifo_in_an_output_is_refused(tmp_path):
    out = tmp_path / "staging" / "data"
    out.mkdir(parents=True)
    os.mkfifo(out / "pipe")
    with pytest.raises(StepFailed, match="not a regular file or folder"):
        outputs.verify(_component(tmp_path, data="uri_folder"), {"data": out}, "s")


# --- metrics ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('{"auc": Infinity}', r"metric 'auc' is inf \(not a finite number\)"),
    ('{"auc": NaN}', r"metric 'auc' is nan"),
    ('{"a/../b": 1}', "refused by MLflow: names must not be file-path-like"),
    ('{"a;b": 1}', "refused by MLflow: names may only contain"),
    (json.dumps({f"m{i}": i for i in range(1001)}), "1001 numbers, more than the 1000"),
    ('{"x": 1, "pad": 1}' + " " * (1024 * 1024), "metrics file is over 1024 KiB"),
])
def test_bad_metrics_are_errors_that_name_the_fix(tmp_path, text, message):
    p = tmp_path / "metrics.json"
    p.write_text(text)
    with pytest.raises(StepFailed, match=message):
        outputs.read_metrics(str(p), where="step 's', output 'metrics'")


def test_good_metrics_read_back(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text('{"auc": 0.81, "val/loss": 1, "f1 score": 0.5}')
    assert outputs.read_metrics(str(p), where="w") == {"auc": 0.81, "val/loss": 1.0, "f1 score": 0.5}


# --- code dir hashing ---------------------------------------------------------------------------

def test_code_digest_follows_links_inside_and_refuses_links_out(tmp_path):
    code = tmp_path / "code"
    (code / "helpers").mkdir(parents=True)
    (code / "helpers" / "util.py").write_text("A = 1\n")
    (code / "main.py").write_text("print(1)\n")
    (code / "lib").symlink_to(code / "helpers")  # a linked package inside the code dir
    before = code_digest(code)
    (code / "helpers" / "util.py").write_text("A = 2\n")
    assert code_digest(code) != before  # a changed linked module changes the key
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (code / "out").symlink_to(outside)
    with pytest.raises(ComponentError, match="outside the code dir"):
        code_digest(code)


def test_code_digest_never_blocks_on_special_files(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text("print(1)\n")
    os.mkfifo(code / "fifo")
    with pytest.raises(ComponentError, match="not a regular file"):
        code_digest(code)
    os.unlink(code / "fifo")
    (code / "zero").symlink_to("/dev/zero")
    with pytest.raises(ComponentError, match="outside the code dir"):
        code_digest(code)


# --- untrusted YAML -----------------------------------------------------------------------------

BOMB = """name: bomb
command: echo
a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
j: &j [*i,*i,*i,*i,*i,*i,*i,*i,*i,*i]
k: &k [*j,*j,*j,*j,*j,*j,*j,*j,*j,*j]
l: &l [*k,*k,*k,*k,*k,*k,*k,*k,*k,*k]
"""  # 11 levels of 10 aliases: 10**12 strings if expanded


def test_a_yaml_bomb_is_refused_quickly(tmp_path):
    p = tmp_path / "component.yaml"
    p.write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(ComponentError, match="more than 100 YAML aliases"):
        load_component(p)
    assert time.monotonic() - started < 5  # a bound, not a benchmark: unbounded, this took minutes


def test_a_huge_yaml_file_is_refused(tmp_path):
    p = tmp_path / "component.yaml"
    p.write_text("name: big\ncommand: echo\ndescription: " + "x" * (1024 * 1024 + 10) + "\n")
    with pytest.raises(ComponentError, match="over 1024 KiB"):
        load_component(p)


@pytest.mark.parametrize("line, message", [
    ("is_deterministic: 'false'", "'is_deterministic' .* must be true or false"),
    ("timeout: soon", "'timeout' must be a number of seconds > 0"),
    ("retries: -5", "'retries' must be a whole number >= 0"),
    ("retries: 1.5", "'retries' must be a whole number >= 0"),
])
def test_wrong_typed_keys_are_load_errors(tmp_path, line, message):
    p = tmp_path / "component.yaml"
    p.write_text(f"name: c\ncommand: echo hi\n{line}\n")
    with pytest.raises(ComponentError, match=message):
        load_component(p)


# --- shell scripts ------------------------------------------------------------------------------

def test_a_placeholder_inside_a_bash_c_script_warns_and_the_safe_form_does_not(tmp_path):
    with pytest.warns(CommandWarning, match=r"inside a shell's -c script.*bash -c 'echo \"\$1\""):
        command(name="c", code=tmp_path, command="bash -c 'echo ${{inputs.x}}'", inputs={"x": Input(type="string")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        command(name="c", code=tmp_path, command="bash -c 'echo \"$1\"' _ ${{inputs.x}}",
                inputs={"x": Input(type="string")})


def test_the_shell_operator_message_recommends_the_safe_form(tmp_path):
    with pytest.raises(ComponentError, match=r"values as arguments, never inside the script: bash -c"):
        command(name="c", code=tmp_path, command="echo a | wc -c")


# --- $VAR in commands (Azure runs commands in a shell; we expand them ourselves) -----------------

def test_env_vars_in_a_command_are_expanded_without_a_shell():
    from prefect_ml.dsl.command_template import render

    argv = render("python t.py --out $OUT_DIR/${NAME}.csv --keep $UNSET --x ${{inputs.x}}",
                  {"x": "$NAME; rm -rf /"}, {}, env={"OUT_DIR": "/data", "NAME": "run1"})
    # a value substituted afterwards is never expanded, and unknown variables stay literal
    assert argv == ["python", "t.py", "--out", "/data/run1.csv", "--keep", "$UNSET", "--x", "$NAME; rm -rf /"]


def test_a_code_dir_that_is_a_whole_disk_is_refused(tmp_path, monkeypatch):
    from prefect_ml.runtime import cache_key

    monkeypatch.setattr(cache_key, "MAX_CODE_FILES", 3)  # the real bound is 20,000 files / 512 MiB
    for i in range(5):
        (tmp_path / f"f{i}.py").write_text("x")
    with pytest.raises(ComponentError, match=r"holds more than 3 files .* not at a data or home folder"):
        code_digest(tmp_path)


# --- data assets -------------------------------------------------------------------------------

def test_data_asset_lookups_and_registrations_refuse_what_is_not_data(tmp_path, monkeypatch):
    from prefect_ml.asset_registry import AssetRegistry
    from prefect_ml.errors import DataAssetError

    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path / "home"))
    reg = AssetRegistry((tmp_path / "registry").as_uri())
    (tmp_path / "registry").mkdir()
    (tmp_path / "x.json").write_text('{"name": "x"}')
    with pytest.raises(DataAssetError, match=r"version '\.\./\.\./x' is invalid"):
        reg.get("credit", "../../x")
    for bad, message in (("", "the path is empty"), ("/dev/zero", "not a regular file or folder")):
        with pytest.raises(DataAssetError, match=message):
            reg.register("credit", "1", bad)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DataAssetError, match="not a regular file or folder"):
        reg.register("credit", "1", str(tmp_path / "pipe"))
