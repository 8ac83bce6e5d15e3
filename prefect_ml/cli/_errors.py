"""How the CLI reports an error a user can fix: one line on stderr and exit status 1, no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer


def fail(exc: BaseException | str) -> NoReturn:
    """Print `Error: <message>` on one line and exit 1."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()) or type(exc).__name__
    typer.echo(f"Error: {text}", err=True)
    raise typer.Exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into `fail(...)`: prefect-ml's own errors and Prefect's
    parameter errors (a `--param` that does not fit the pipeline's signature)."""
    from prefect_ml.errors import PrefectMLError

    try:
        yield
    except PrefectMLError as exc:
        fail(exc)
    except Exception as exc:
        if type(exc).__name__ in ("ParameterTypeError", "SignatureMismatchError", "ParameterBindError"):
            fail(exc)
        raise
