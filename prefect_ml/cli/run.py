"""`prefect-ml run FILE:FLOW --param k=v`: run a pipeline with JSON-typed parameters."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import typer

from prefect_ml.cli._errors import user_errors


def parse_params(params: list[str]) -> dict:
    out = {}
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param {item!r}: use NAME=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # plain text
    return out


def load_flow(target: str):
    """Load `path/to/file.py:flow_name` (the Prefect deployment entrypoint form)."""
    path, _, name = target.rpartition(":")
    if not path or not Path(path).is_file():
        raise typer.BadParameter(f"{target!r}: give FILE.py:FLOW_NAME with an existing file")
    namespace = runpy.run_path(path, run_name="prefect_ml_cli")
    if name not in namespace:
        raise typer.BadParameter(f"{path} has no {name!r}")
    return namespace[name]


def run(
    target: str = typer.Argument(..., help="FILE.py:FLOW, e.g. flows/credit_default.py:credit_default"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="NAME=VALUE (VALUE parsed as JSON if it can "
        "be)"),
) -> None:
    """Run a pipeline from a file. The file is executed as Python to find the pipeline."""
    flow = load_flow(target)
    with user_errors():
        result = flow(**parse_params(param or []))
    typer.echo(json.dumps(result, indent=2, default=str))
