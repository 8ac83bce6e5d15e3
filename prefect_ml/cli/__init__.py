"""`prefect-ml` command line, in Prefect's CLI style (typer, one sub-command group per module)."""

from __future__ import annotations

import typer

from prefect_ml.cli import data, env, init, plan, run

app = typer.Typer(
    name="prefect-ml",
    help="Azure ML / SageMaker-style ML pipelines on Prefect.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(env.app, name="env", help="Build and inspect environments (images and venvs).")
app.add_typer(data.app, name="data", help="Register and inspect versioned data assets.")
app.add_typer(__import__("prefect_ml.cli.model", fromlist=["app"]).app, name="model", help="Registered models.")
app.add_typer(__import__("prefect_ml.cli.server", fromlist=["app"]).app, name="server",
              help="Start, stop and inspect the local Prefect and MLflow servers (background; loopback).")
app.command("init", help="Create work pools and default infrastructure blocks (idempotent).")(init.init)
app.command("plan", help="Show each step of a pipeline, its cache key and whether it would be reused "
            "(runs the file as Python to find the pipeline: plan only files you trust).")(plan.plan)
app.command("run", help="Run a pipeline from a file: prefect-ml run flows/x.py:flow --param k=v "
            "(the file runs as Python).")(run.run)
app.command("gc", help="Clean up after killed runs (dry run).")(__import__("prefect_ml.cli.gc", fromlist=["gc"]).gc)
