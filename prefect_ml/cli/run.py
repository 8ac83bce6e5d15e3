"""`prefect-ml run FILE:FLOW --param k=v` / `prefect-ml run pipeline.yml --set inputs.k=v`: run a pipeline."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import typer

from prefect_ml.cli._errors import user_errors

YAML_SUFFIXES = (".yml", ".yaml")


def parse_params(params: list[str], option: str = "--param") -> dict:
    out = {}
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{option} {item!r}: use NAME=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # plain text
    return out


def parse_sets(sets: list[str]) -> dict:
    """Azure CLI's `--set inputs.NAME=VALUE` (`az ml job create --set ...`): the pipeline input NAME."""
    out = {}
    for key, value in parse_params(sets, "--set").items():
        if not key.startswith("inputs.") or key.count(".") != 1:
            raise typer.BadParameter(f"--set {key}=...: only pipeline inputs can be set here; write inputs.NAME=VALUE")
        out[key.removeprefix("inputs.")] = value
    return out


def is_yaml_target(target: str) -> bool:
    return target.lower().endswith(YAML_SUFFIXES)


def load_flow(target: str):
    """Load `path/to/file.py:flow_name` (the Prefect deployment entrypoint form), or an Azure ML
    pipeline YAML (`pipeline.yml`, `type: pipeline`) as a flow."""
    if is_yaml_target(target):
        from prefect_ml.dsl.azure_pipeline import load_pipeline_yaml

        if not Path(target).is_file():
            raise typer.BadParameter(f"{target!r}: no such pipeline YAML file")
        with user_errors():
            return load_pipeline_yaml(target)
    path, _, name = target.rpartition(":")
    if not path or not Path(path).is_file():
        raise typer.BadParameter(f"{target!r}: give FILE.py:FLOW_NAME with an existing file, or a pipeline YAML")
    namespace = runpy.run_path(path, run_name="prefect_ml_cli")
    if name not in namespace:
        raise typer.BadParameter(f"{path} has no {name!r}")
    return namespace[name]


def parameters(param: list[str] | None, set_: list[str] | None) -> dict:
    return {**parse_params(param or []), **parse_sets(set_ or [])}


def run(
    target: str = typer.Argument(..., help="FILE.py:FLOW (e.g. flows/credit_default.py:credit_default) or an Azure ML "
        "pipeline YAML (pipeline.yml)"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="NAME=VALUE (VALUE parsed as JSON if it can "
        "be)"),
    set_: list[str] | None = typer.Option(None, "--set", help="inputs.NAME=VALUE, as `az ml job create --set` (a "
        "pipeline input)"),
) -> None:
    """Run a pipeline from a file. A .py file is executed as Python to find the pipeline."""
    flow = load_flow(target)
    with user_errors():
        result = flow(**parameters(param, set_))
    typer.echo(json.dumps(result, indent=2, default=str))
