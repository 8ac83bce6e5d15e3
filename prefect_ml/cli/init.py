"""`prefect-ml init`: work pools, infrastructure blocks and block types (idempotent)."""

from __future__ import annotations

import typer


def init() -> None:
    typer.echo("not implemented yet")
    raise typer.Exit(1)
