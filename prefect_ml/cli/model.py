"""`prefect-ml model ...`: list, show, promote, reject and roll back registered model versions.

Reads and writes the MLflow registry of `MLFLOW_TRACKING_URI` (default: the local SQLite store
under PREFECT_ML_HOME). Promotion and rollback are recorded like an approval in the promotion flow:
status tags on the version (SageMaker's PendingManualApproval / Approved / Rejected) and the
alias's history on the model.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from prefect_ml.cli._errors import user_errors
from prefect_ml.cli._table import print_table

app = typer.Typer(no_args_is_help=True)


def _metrics(metrics: dict[str, float], limit: int = 3) -> str:
    from prefect_ml.runtime.promotion import KEY_METRICS

    keys = [k for k in KEY_METRICS if k in metrics] + sorted(k for k in metrics if k not in KEY_METRICS)
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys[:limit]) or "-"


@app.command("list")
def list_versions(
    name: str = typer.Argument(..., help="Registered model name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every version of a model, newest first: aliases, approval status, key metrics, source run."""
    from prefect_ml.runtime import promotion

    with user_errors():
        versions = promotion.list_versions(name)
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in d.items() if k != "tags"} for d in versions], indent=2))
        return
    if not versions:
        typer.echo(f"Model '{name}' has no versions.")
        return
    rows: list[tuple[str, ...]] = [("VERSION", "ALIASES", "STATUS", "METRICS", "CREATED", "SOURCE RUN")]
    for d in versions:
        rows.append((str(d["version"]), ",".join(f"@{a}" for a in d["aliases"]) or "-", d["status"] or "-",
                     _metrics(d["metrics"]), d["created"], d["source_run"] or "-"))
    print_table(rows)


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME (latest version), NAME@ALIAS or NAME:VERSION."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One version: aliases, status with who/when/why, metrics, the champion comparison, lineage."""
    from prefect_ml.runtime import promotion

    with user_errors():
        d = promotion.show(ref)
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    typer.echo(f"{d['name']} version {d['version']}")
    typer.echo(f"  aliases:     {', '.join('@' + a for a in d['aliases']) or '-'}")
    typer.echo(f"  status:      {d['status'] or '-'}")
    ap = d["approval"]
    if ap:
        typer.echo(f"  decided:     by {ap.get('by', '?')} at {ap.get('at', '?')} via {ap.get('via', '?')}"
                   + (f": {ap['reason']}" if ap.get("reason") else ""))
    typer.echo(f"  metrics:     {_metrics(d['metrics'], limit=20)}")
    cmp_ = d["comparison"]
    if cmp_:
        typer.echo(f"  comparison:  {cmp_.get('decision')} ({cmp_.get('rule')}): {cmp_.get('reason')}")
    if d["rolled_back"]:
        typer.echo(f"  rolled back: {d['rolled_back']}")
    typer.echo(f"  created:     {d['created']}")
    typer.echo(f"  source run:  {d['source_run'] or '-'}")
    if d["flow_run_id"]:
        typer.echo(f"  flow run:    {d['flow_run_id']}")
    typer.echo(f"  source:      {d['source']}")
    for alias, events in d.get("history", {}).items():
        typer.echo(f"  @{alias} history:")
        for e in events[-10:]:
            typer.echo(f"    {e.get('at')}  {e.get('action')} v{e.get('version')} (from v{e.get('from')}) "
                       f"by {e.get('by')} via {e.get('via')}" + (f": {e['reason']}" if e.get("reason") else ""))


def _done(info: dict[str, Any], verb: str) -> None:
    was = f" (was version {info['previous']})" if info.get("previous") is not None else ""
    typer.echo(f"{verb} {info['name']} version {info['version']} to @{info['alias']}{was}: {info['uri']}")


@app.command("promote")
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: int = typer.Argument(..., help="The version to promote."),
    alias: str = typer.Option("champion", "--alias", "-a", help="The alias to move."),
    reason: str = typer.Option("", "--reason", "-r", help="Why (recorded on the version)."),
    by: str = typer.Option("", "--by", help="Who decides (default: PREFECT_ML_USER or the OS user)."),
    force: bool = typer.Option(False, "--force", help="Promote even a Rejected version (recorded as forced)."),
) -> None:
    """Point NAME@ALIAS at VERSION, recorded as Approved (who, when, why) with the alias history."""
    from prefect_ml.runtime import promotion

    with user_errors():
        info = promotion.promote(name, version, alias=alias, by=by or None, reason=reason, via="cli", force=force)
    _done(info, "Promoted")


@app.command("reject")
def reject(
    name: str = typer.Argument(..., help="Registered model name."),
    version: int = typer.Argument(..., help="The version to reject."),
    reason: str = typer.Option("", "--reason", "-r", help="Why (recorded on the version)."),
    by: str = typer.Option("", "--by", help="Who decides (default: PREFECT_ML_USER or the OS user)."),
) -> None:
    """Tag VERSION Rejected (who, when, why); no alias moves."""
    from prefect_ml.runtime import promotion

    with user_errors():
        info = promotion.reject(name, version, by=by or None, reason=reason, via="cli")
    typer.echo(f"Rejected {info['name']} version {info['version']}.")


@app.command("rollback")
def rollback(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Option("champion", "--alias", "-a", help="The alias to move back."),
    reason: str = typer.Option("", "--reason", "-r", help="Why (recorded in the alias history)."),
    by: str = typer.Option("", "--by", help="Who decides (default: PREFECT_ML_USER or the OS user)."),
) -> None:
    """Point NAME@ALIAS back at the version that held it before the current one (recorded)."""
    from prefect_ml.runtime import promotion

    with user_errors():
        info = promotion.rollback(name, alias=alias, by=by or None, reason=reason, via="cli")
    _done(info, "Rolled back")
