"""`prefect-ml plan`: each step's cache key and whether it would be reused, without running."""

from __future__ import annotations

import typer

from prefect_ml.cli._errors import user_errors
from prefect_ml.cli.run import load_flow, parameters


def plan(
    target: str = typer.Argument(..., help="FILE.py:PIPELINE (e.g. flows/credit_default.py:credit_default) or an "
        "Azure ML pipeline YAML (pipeline.yml)"),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="NAME=VALUE (VALUE parsed as JSON if it can "
        "be)"),
    set_: list[str] | None = typer.Option(None, "--set", help="inputs.NAME=VALUE, as `az ml job create --set` (a "
        "pipeline input)"),
) -> None:
    """Show each step's cache key and whether it would be reused; nothing runs.

    A .py file is executed as Python to find the pipeline (as `python FILE` would): plan only files
    you trust. A pipeline YAML is only read.
    """
    from prefect_ml.dsl.pipeline import plan as make_plan

    flow = load_flow(target)
    with user_errors():
        run = make_plan(flow, parameters(param, set_))
    typer.echo(f"pipeline {run.spec.pipeline} on {run.spec.artifact_root}")
    width = max([len(s.name) for s in run.steps] + [4])
    typer.echo(f"{'step':<{width}}  {'decision':<8}  {'cache key':<32}  reason")
    for step in run.steps:
        d = step.decision
        typer.echo(f"{step.name:<{width}}  {'reuse' if d.reuse else 'run':<8}  {d.key[:32]:<32}  {d.reason}")
    for note in run.notes:
        typer.echo(f"  {note}")
