"""`prefect-ml data ...`: register, list and show versioned data assets."""

from __future__ import annotations

import datetime
import json

import typer

from prefect_ml.cli._errors import fail
from prefect_ml.cli._table import print_table
from prefect_ml.errors import PrefectMLError

app = typer.Typer(no_args_is_help=True)


def _registry():
    from prefect_ml.asset_registry import AssetRegistry

    return AssetRegistry.default()


_fail = fail


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(size: int) -> str:
    n = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("register")
def register(
    name: str | None = typer.Argument(None, help="Data asset name (letters, digits, '_', '-', '.')."),
    version: str | None = typer.Option(None, "--version", "-v", help="Version to create (immutable once "
        "registered)."),
    path: str | None = typer.Option(None, "--path", "-p", help="Local path or URI (file://, s3://, abfs://, az://, "
        "https://, azureml://datastores/...)."),
    type: str | None = typer.Option(None, "--type", "-t", help="uri_file, uri_folder or mltable (default: detected)."),
    description: str | None = typer.Option(None, "--description", "-d", help="What the data is."),
    snapshot: bool = typer.Option(False, "--snapshot", help="Copy the data under the artifact root so the version "
        "can never change."),
    file: str | None = typer.Option(None, "--file", "-f", help="An Azure ML data asset YAML (name, version, type, "
        "path, description), as `az ml data create --file`; options given here override it."),
) -> None:
    """Register data at a path or URI as a new, immutable version of a data asset."""
    try:
        spec = _data_yaml(file) if file else {}
        name = name or spec.get("name")
        version = version or spec.get("version")
        path = path or spec.get("path")
        type = type or spec.get("type")
        description = description if description is not None else spec.get("description", "")
        missing = [k for k, v in (("NAME", name), ("--version", version), ("--path", path)) if not v]
        if missing:
            raise typer.BadParameter(f"give {', '.join(missing)} (or --file data.yml with name, version and path)")
        if type == "mltable":
            type = _mltable(str(path))
        rec = _registry().register(str(name), str(version), str(path), type=type, description=str(description or ""),
                                   snapshot=snapshot)
    except PrefectMLError as exc:
        _fail(exc)
    note = f" (snapshot of {rec.source_uri})" if rec.snapshot else ""
    typer.echo(f"Registered {rec.ref}: {rec.type} at {rec.uri}{note}, {len(rec.files)} file(s), {_size(rec.size)}.")
    typer.echo(f"Use it as a pipeline input: data_asset({rec.name!r}, {rec.version!r})  or  --param data={rec.ref}")


DATA_YAML_KEYS = {"$schema", "name", "version", "description", "type", "path", "tags", "properties", "datastore",
                  "stage", "auto_delete_setting"}


def _data_yaml(file: str) -> dict:
    """An Azure ML data asset YAML (the `data.schema.json` form); a relative path is relative to the file."""
    from pathlib import Path

    from prefect_ml._util import load_yaml_file
    from prefect_ml.errors import DataAssetError

    p = Path(file).expanduser().resolve()
    if not p.is_file():
        raise DataAssetError(f"data asset file {str(p)!r} does not exist; check the path.")
    raw = load_yaml_file(p, DataAssetError)
    if not isinstance(raw, dict):
        raise DataAssetError(f"{p}: expected a data asset mapping (name, version, type, path).")
    unknown = sorted(set(raw) - DATA_YAML_KEYS)
    if unknown:
        raise DataAssetError(f"{p}: unknown key(s) {unknown}; a data asset YAML has {sorted(DATA_YAML_KEYS)}.")
    ignored = sorted(set(raw) & {"tags", "properties", "datastore", "stage", "auto_delete_setting"})
    if ignored:
        typer.echo(f"warning: {p}: {', '.join(ignored)} accepted but not recorded here.", err=True)
    keep = ("name", "version", "description", "type", "path")
    out = {k: str(v) for k, v in raw.items() if k in keep and v is not None}
    path = out.get("path", "")
    if path and "://" not in path and not path.startswith("azureml:"):
        out["path"] = str((p.parent / path).resolve())
    return out


def _mltable(path: str) -> str:
    """`type: mltable` is a folder with an MLTable file: registered as uri_folder."""
    from pathlib import Path

    from prefect_ml.errors import DataAssetError

    if "://" not in path and not (Path(path) / "MLTable").is_file():
        raise DataAssetError(f"mltable {path!r} has no MLTable file; add one or register it as uri_folder.")
    return "uri_folder"


@app.command("list")
def list_assets(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every data asset with its versions (latest last)."""
    try:
        reg = _registry()
        versions = reg.list()
    except PrefectMLError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps([{"name": v.name, "version": v.version, "type": v.type, "uri": v.uri,
                                "description": v.description, "created_at": v.created_at} for v in versions], indent=2))
        return
    if not versions:
        typer.echo(f"No data assets in {reg.uri}. Register one: prefect-ml data register NAME --version 1 --path URI")
        return
    rows = [("NAME", "VERSION", "TYPE", "SIZE", "REGISTERED", "URI")]
    rows += [(v.name, v.version, v.type, _size(v.size), _when(v.created_at), v.uri) for v in versions]
    print_table(rows)


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME or NAME:VERSION (default version: latest)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check that the data is unchanged since "
        "registration."),
) -> None:
    """Show one version of a data asset: URI, type, files with their fingerprints, and whether it changed."""
    from prefect_ml.assets import is_asset_ref, parse_ref

    if is_asset_ref(ref):
        name, version = parse_ref(ref)
    else:
        name, _, version = ref.partition(":")
    try:
        reg = _registry()
        rec = reg.get(name, version or "latest")
        changes = reg.changes(rec) if verify else []
        all_versions = [v.version for v in reg.versions(name)]
    except PrefectMLError as exc:
        _fail(exc)
    typer.echo(f"{rec.ref}")
    typer.echo(f"  type:        {rec.type}")
    typer.echo(f"  uri:         {rec.uri}")
    if rec.snapshot:
        typer.echo(f"  snapshot of: {rec.source_uri}")
    if rec.description:
        typer.echo(f"  description: {rec.description}")
    typer.echo(f"  registered:  {_when(rec.created_at)}")
    typer.echo(f"  size:        {_size(rec.size)} in {len(rec.files)} file(s)")
    typer.echo(f"  versions:    {', '.join(all_versions)} (latest: {all_versions[-1]})")
    for f in rec.files[:20]:
        typer.echo(f"    {f['path']}  {f['size']}  {f['checksum']}")
    if len(rec.files) > 20:
        typer.echo(f"    ... and {len(rec.files) - 20} more")
    if verify:
        typer.echo("  status:      " + ("unchanged since registration" if not changes else
                                       "CHANGED since registration: " + "; ".join(changes[:5])))
        if changes:
            raise typer.Exit(2)
