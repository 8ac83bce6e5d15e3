"""`prefect-ml env ...`: build and list environments, make a local base image."""

from __future__ import annotations

import json
import os
import subprocess
import time

import typer

from prefect_ml.errors import PrefectMLError

app = typer.Typer(no_args_is_help=True)

DEFAULT_BASE_NAME = "prefect-ml/base:bookworm"
# shipped inside the package (package data), so it is there in a wheel install too
BASE_IMAGE_SCRIPT = ("prefect_ml.environments", "make-base-image.sh")
WHO = "prefect-ml env"


def _fail(exc: Exception) -> None:
    typer.echo(f"Error: {exc}", err=True)
    raise typer.Exit(1)


@app.command("build")
def build(
    name: str = typer.Argument(..., help="Environment name (environments/<name>/environment.yaml)."),
    venv: bool = typer.Option(False, "--venv", help="Build the local venv (process infrastructure) instead of the "
        "image."),
    pull_policy: str = typer.Option("if_not_present", "--pull-policy", help="Base image: if_not_present, always or "
        "never."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print build output."),
) -> None:
    """Build an environment's image `prefect-ml/<name>:<content hash>` (nothing to do when it exists)."""
    from prefect_ml import environments
    from prefect_ml.infrastructure.docker_client import docker_client

    log = (lambda line: None) if quiet else typer.echo
    started = time.monotonic()
    try:
        env = environments.load_environment(name)
        if venv:
            path = environments.ensure_venv(env, log=log)
            typer.echo(f"{env.name}: venv {path} ({time.monotonic() - started:.1f} s)")
            return
        if pull_policy != "always":  # an unchanged environment: answer without importing docker-py
            from prefect_ml.environments.image import existing_image

            found = existing_image(env)
            if found is not None:
                tag, image_id = found
                typer.echo(f"{env.name}: image {tag} ({image_id[:19]}) ready in {time.monotonic() - started:.1f} s")
                return
        client = docker_client(who=WHO)  # an engine that does not answer: one line, exit status 1
        try:
            tag = environments.ensure_image(env, client, pull_policy=pull_policy, log=log)
            image_id = client.images.get(tag).id
        finally:
            client.close()
    except PrefectMLError as exc:
        _fail(exc)
    typer.echo(f"{env.name}: image {tag} ({image_id[:19]}) ready in {time.monotonic() - started:.1f} s")


@app.command("list")
def list_environments(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the environments found from the current directory (and PREFECT_ML_ENVIRONMENTS_DIR)."""
    from prefect_ml import environments
    from prefect_ml.infrastructure.docker_client import docker_client

    try:
        client = docker_client(who=WHO)
    except PrefectMLError:  # the listing works without an engine, minus the image column
        client = None
    try:
        rows = [_row(environments, name, spec, client) for name, spec in environments.known_environments().items()]
    finally:
        if client is not None:
            client.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no environments found (looked for environments/<name>/environment.yaml from here upwards)")
        return
    for r in rows:
        if "error" in r:
            typer.echo(f"{r['name']:<20} INVALID: {r['error']}")
            continue
        state = {True: "built", False: "not built", None: "(no engine/base image)"}[r["built"]]
        typer.echo(f"{r['name']:<20} v{r['version']:<6} {'gpu ' if r['gpu'] else 'cpu '} base {r['base_image']:<28} "
                   f"{r['image'] or '-'}  {state}")


def _row(environments, name: str, spec, client) -> dict:
    """One environment as a listing row (an invalid one as its error)."""
    try:
        env = environments.load_environment(spec)
        image = environments.image_for(env, client) if client else None
        built = None
        if image and client:
            try:
                client.images.get(image)
                built = True
            except Exception:
                built = False
        return {"name": name, "version": env.version, "base_image": env.resolved_base_image(),
                "gpu": env.gpu, "spec_hash": env.spec_hash()[:16], "image": image, "built": built,
                "spec": str(spec)}
    except PrefectMLError as exc:
        return {"name": name, "error": str(exc), "spec": str(spec)}


@app.command("base-image")
def base_image(
    name: str = typer.Option(DEFAULT_BASE_NAME, "--name", help="Tag of the image to make."),
    mirror: str | None = typer.Option(None, "--mirror", help="Debian mirror (default http://deb.debian.org/debian)."),
) -> None:
    """Make a local Debian bookworm base image (python3, venv, pip) without a registry: debootstrap + docker import.

    Then use it: PREFECT_ML_BASE_IMAGE=<name> and pull policy `never`.
    """
    from importlib import resources

    package, filename = BASE_IMAGE_SCRIPT
    script = resources.files(package).joinpath(filename)
    if not script.is_file():
        _fail(PrefectMLError(
            f"{filename} is missing from the installed {package} package; reinstall prefect-ml, or run "
            "scripts/make-base-image.sh from a checkout of prefect-ml."
        ))
    env = dict(os.environ)
    if mirror:
        env["DEBIAN_MIRROR"] = mirror
    with resources.as_file(script) as path:
        proc = subprocess.run(["bash", str(path), name], env=env, check=False)
    if proc.returncode != 0:
        raise typer.Exit(proc.returncode)
    typer.echo(f"base image {name} ready; use it with PREFECT_ML_BASE_IMAGE={name}")
