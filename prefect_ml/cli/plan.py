"""`prefect-ml plan`: each step's cache key and whether it would be reused, without running."""

from __future__ import annotations

import typer


def plan() -> None:
    typer.echo("not implemented yet")
    raise typer.Exit(1)
