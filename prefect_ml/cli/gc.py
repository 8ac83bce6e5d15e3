"""`prefect-ml gc`: remove what killed, failed or old runs left behind. A dry run unless `--yes`.

What it finds (each kind can be chosen with `--only`):
- containers: step containers whose pipeline process has ended (label `prefect-ml.managed`, owner
  `prefect-ml.owner` = host:pid:start time no longer running on this host); containers without an
  owner label once stopped and older than `--older-than`;
- attempts: attempt folders under a local artifact root (`steps/<key>/<attempt>/`) that the key's
  `_COMPLETE.json` marker does not name (a killed publish, a lost race), and `.staging/<attempt>`
  folders, older than `--older-than`;
- staging: entries of `PREFECT_ML_HOME/staging` (attempt outputs for remote roots, downloaded inputs,
  MLflow relay stores of steps) older than `--older-than`;
- images: environment images `prefect-ml/<name>:<16 hex>` of an environment found from here whose tag
  is not the environment's current content hash (images of environments not found here are kept);
- uploads: open S3 multipart uploads under an `s3://` artifact root older than `--older-than`.

"Older than" is by modification time (creation time for containers and uploads). Run it when no
pipeline is running, or with an `--older-than` longer than your longest run.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

KINDS = ("containers", "attempts", "staging", "images", "uploads")
HASH_TAG = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class Garbage:
    kind: str
    what: str  # shown to the user
    remove: Any  # a callable that removes it


def _old(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime < cutoff
    except OSError:
        return False


def _rmtree(path: Path):
    return lambda: shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def find_attempts(root: Path, cutoff: float) -> list[Garbage]:
    """Attempt folders of a local artifact root that no marker names, and old `.staging` folders."""
    from prefect_ml.storage.artifact_root import ATTEMPT_ID, MARKER

    found: list[Garbage] = []
    steps = root / "steps"
    if steps.is_dir():
        for key_dir in sorted(p for p in steps.iterdir() if p.is_dir() and not p.is_symlink()):
            named = None
            try:
                import json

                named = json.loads((key_dir / MARKER).read_text()).get("attempt")
            except (OSError, ValueError, AttributeError):
                pass
            for attempt in sorted(key_dir.iterdir()):
                if (attempt.is_dir() and ATTEMPT_ID.match(attempt.name) and attempt.name != named
                        and _old(attempt, cutoff)):
                    why = "no marker" if named is None else f"the marker names attempt {named}"
                    found.append(Garbage("attempts", f"attempt {attempt} ({why})", _rmtree(attempt)))
    staging = root / ".staging"
    if staging.is_dir():
        for attempt in sorted(staging.iterdir()):
            if _old(attempt, cutoff):
                found.append(Garbage("attempts", f"unpublished attempt {attempt}", _rmtree(attempt)))
    return found


def find_staging(home: Path, cutoff: float) -> list[Garbage]:
    """Old entries of PREFECT_ML_HOME/staging (one level below its `inputs/` and `outputs/`)."""
    found: list[Garbage] = []
    staging = home / "staging"
    if not staging.is_dir():
        return found
    for entry in sorted(staging.iterdir()):
        children = sorted(entry.iterdir()) if entry.name in ("inputs", "outputs") and entry.is_dir() else [entry]
        for child in children:
            if _old(child, cutoff):
                found.append(Garbage("staging", f"staging {child}", _rmtree(child)))
    return found


def find_containers(client, older_than_s: float) -> list[Garbage]:
    from prefect_ml.infrastructure.container import OWNER_LABEL, orphaned_containers

    def remover(c):
        return lambda: c.remove(force=True)

    return [Garbage("containers", f"container {c.short_id} ({c.status}, step {c.labels.get('prefect-ml.step', '?')}, "
                    f"owner {c.labels.get(OWNER_LABEL, 'unknown')})", remover(c))
            for c in orphaned_containers(client, unowned_older_than=older_than_s)]


def find_images(client, notes: list[str]) -> list[Garbage]:
    """`prefect-ml/<env>:<hash>` tags of environments found from here that are not their current tag."""
    from prefect_ml import environments
    from prefect_ml.errors import PrefectMLError

    current: dict[str, str | None] = {}
    for name, spec in environments.known_environments().items():
        try:
            current[name] = environments.image_for(environments.load_environment(spec), client)
            if current[name] is None:
                notes.append(f"environment {name}: its base image is not here, so its current tag is unknown "
                             "(its images are kept)")
        except PrefectMLError as exc:
            notes.append(f"environment {name}: {exc} (its images are kept)")
    found: list[Garbage] = []
    unknown: set[str] = set()
    for image in client.images.list(filters={"reference": "prefect-ml/*"}):
        for tag in image.tags:
            repo, _, version = tag.rpartition(":")
            name = repo.removeprefix("prefect-ml/")
            if not repo.startswith("prefect-ml/") or not HASH_TAG.match(version):
                continue  # e.g. the base image prefect-ml/base:bookworm
            if name not in current:
                unknown.add(name)
                continue
            if current[name] is not None and tag != current[name]:
                found.append(Garbage("images", f"image {tag} (environment {name} is now {current[name]})",
                                     lambda tag=tag: client.images.remove(tag)))
    if unknown:
        notes.append(f"kept images of environments not found from here: {sorted(unknown)}")
    return found


def find_uploads(root_uri: str, cutoff: float) -> list[Garbage]:
    """Open multipart uploads under an s3:// artifact root, started before `cutoff`."""
    from prefect_ml.storage.filesystems import filesystem

    fs, path = filesystem(root_uri)
    bucket, _, prefix = path.partition("/")
    found: list[Garbage] = []
    for upload in fs.list_multipart_uploads(bucket):
        key, upload_id = upload.get("Key", ""), upload.get("UploadId")
        initiated = upload.get("Initiated")
        started = initiated.timestamp() if hasattr(initiated, "timestamp") else 0.0
        if key.startswith(prefix) and started < cutoff and upload_id:
            found.append(Garbage("uploads", f"multipart upload s3://{bucket}/{key} ({upload_id[:12]}…)",
                                 lambda k=key, u=upload_id: fs.abort_mpu(bucket, k, u)))
    return found


def collect(kinds: set[str], older_than_hours: float, notes: list[str],
            docker_host: str | None = None) -> list[Garbage]:
    from prefect_ml.errors import PrefectMLError
    from prefect_ml.settings import get_settings

    settings = get_settings()
    cutoff = time.time() - older_than_hours * 3600
    root = settings.resolved_artifact_root
    found: list[Garbage] = []
    if "attempts" in kinds:
        if root.startswith("file://"):
            found += find_attempts(Path(root.removeprefix("file://")), cutoff)
        else:
            notes.append(f"attempts: the artifact root {root} is not local; only its multipart uploads are checked")
    if "staging" in kinds:
        found += find_staging(settings.home_path, cutoff)
    if "uploads" in kinds and root.startswith("s3://"):
        try:
            found += find_uploads(root, cutoff)
        except Exception as exc:
            notes.append(f"uploads: could not list multipart uploads under {root}: {exc}")
    if kinds & {"containers", "images"}:
        from prefect_ml.infrastructure.docker_client import docker_client

        # as DOCKER_HOST, so that docker's DOCKER_TLS_VERIFY / DOCKER_CERT_PATH apply to it too
        environment = {**os.environ, "DOCKER_HOST": docker_host} if docker_host else None
        try:
            client = docker_client(who="prefect-ml gc", timeout=30, environment=environment)
        except PrefectMLError as exc:
            notes.append(f"containers/images skipped: {exc}")
        else:
            try:
                if "containers" in kinds:
                    found += find_containers(client, older_than_hours * 3600)
                if "images" in kinds:
                    found += find_images(client, notes)
            finally:
                client.close()
    return found


def gc(
    yes: bool = typer.Option(False, "--yes", help="Remove what is found (default: only list it)."),
    older_than: float = typer.Option(24.0, "--older-than", min=0, help="Hours: only attempts, staging folders, "
        "ownerless containers and uploads older than this."),
    only: list[str] = typer.Option([], "--only", help=f"Only these kinds (repeatable): {', '.join(KINDS)}."),
    docker_host: str | None = typer.Option(None, "--docker-host", help="The Docker engine whose containers and "
        "images are checked, e.g. tcp://gpu-box:2376 (read as DOCKER_HOST: DOCKER_TLS_VERIFY and DOCKER_CERT_PATH "
        "apply; default: DOCKER_HOST or the local socket)."),
) -> None:
    """Remove leftovers of killed or old runs: orphaned step containers, unpublished attempts, old staging
    folders, outdated environment images, open S3 multipart uploads. A dry run unless --yes."""
    from prefect_ml.cli._errors import fail

    unknown = [k for k in only if k not in KINDS]
    if unknown:
        fail(f"unknown kind(s) {unknown}; use {', '.join(KINDS)}")
    notes: list[str] = []
    kinds = set(only or KINDS)
    if docker_host and not kinds & {"containers", "images"}:
        fail(f"--docker-host names an engine, but --only {', '.join(sorted(kinds))} checks none; add --only containers "
             "or --only images")
    found = collect(kinds, older_than, notes, docker_host)
    removed = failed = 0
    for g in found:
        if not yes:
            typer.echo(f"would remove {g.what}")
            continue
        try:
            g.remove()
            removed += 1
            typer.echo(f"removed {g.what}")
        except Exception as exc:
            failed += 1
            typer.echo(f"could not remove {g.what}: {exc}", err=True)
    for note in notes:
        typer.echo(f"note: {note}")
    if yes:
        typer.echo(f"{removed} removed, {failed} failed")
    else:
        typer.echo(f"{len(found)} to remove; run again with --yes to remove them" if found else "nothing to remove")
    if failed:
        raise typer.Exit(1)

