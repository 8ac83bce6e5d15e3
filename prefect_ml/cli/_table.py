"""Plain-text tables for the CLI's list commands (`model list`, `data list`)."""

from __future__ import annotations

from collections.abc import Sequence

import typer


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print a header row and data rows in aligned columns; the last column is left ragged (URIs, ids)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
