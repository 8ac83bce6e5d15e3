"""The artifact root: where steps publish their outputs, attempt by attempt, marker last.

Layout under an artifact root (`file://`, `s3://`, `abfs://`/`az://`):

    <root>/steps/<cache key>/<attempt id>/<output name>[/...]   outputs of one attempt
    <root>/steps/<cache key>/_COMPLETE.json                    the completion marker
    <root>/assets/<name>/<version>.json                        data asset versions (asset_registry)
    <root>/assets/<name>/<version>/data/...                    snapshots of data asset versions

An attempt writes its outputs in a private place and publishes them: on a local root it renames
its staging dir (same filesystem, so no bytes move) into the step dir; on a remote root it uploads
them under its own attempt prefix. The marker is written last (one PUT, which object stores commit
atomically) and names the attempt whose outputs are complete, so a reader (or the cache) that
trusts only the marker never sees partial outputs, and two attempts racing on one key never
overwrite each other's files. A step killed mid-upload leaves an attempt prefix without a marker:
nothing trusts it, and the next run uploads under a new attempt id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from prefect_ml._util import atomic_write_text
from prefect_ml.errors import StorageError
from prefect_ml.records import PublishedStep
from prefect_ml.storage.credentials import redact
from prefect_ml.storage.filesystems import filesystem
from prefect_ml.storage.fingerprint import fingerprint, list_files, local_files
from prefect_ml.storage.locations import check_location, exists, storage_error
from prefect_ml.storage.transfer import upload
from prefect_ml.storage.uri import is_local, is_read_only, join, local_path, normalize

MARKER = "_COMPLETE.json"
ATTEMPT_ID = re.compile(r"^[0-9a-f]{12}$")  # what `new_attempt` makes


class ArtifactRoot:
    """The fsspec location under which steps publish their outputs.

    Creating one checks the URI scheme (and, for a remote root, once per process, that its
    bucket/container exists and the credentials are accepted), so bad input fails before a step runs.
    """

    def __init__(self, uri: str):
        self.uri = normalize(uri)
        if is_read_only(self.uri):
            raise StorageError(f"artifact root {self.uri!r}: http(s):// is read-only here (data inputs only); use "
                               "file://, s3:// or abfs:// for the artifact root.")
        self.fs, self.path = filesystem(self.uri)
        check_location(self.uri)

    @property
    def local(self) -> bool:
        return is_local(self.uri)

    def step_uri(self, key: str) -> str:
        return join(self.uri, "steps", key)

    def marker_uri(self, key: str) -> str:
        return join(self.step_uri(key), MARKER)

    def read_marker(self, key: str) -> dict | None:
        uri = self.marker_uri(key)
        fs, path = filesystem(uri)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise storage_error(exc, uri, "read") from None  # a driver error: see storage.locations
        try:
            marker = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn or foreign file is no marker
        return marker if isinstance(marker, dict) else None

    def completed(self, key: str, outputs: list[str]) -> PublishedStep | None:
        """The published outputs of `key` if they can be trusted (see `check`); else None."""
        return self.check(key, outputs)[0]

    def check(self, key: str, outputs: list[str]) -> tuple[PublishedStep | None, str]:
        """The published outputs of `key`, or None and why they cannot be reused.

        Trusted only when the marker has the expected shape, names exactly `outputs`, every output
        URI lies inside the marker's own attempt folder, every output exists, and each output's
        fingerprint still equals the one recorded at publish time (an edited metrics file or model
        is a miss, not a hit). Anything else is a miss: the step runs again.
        """
        marker = self.read_marker(key)
        if marker is None:
            return None, "no completion marker"
        attempt, uris, integrity = marker.get("attempt"), marker.get("outputs"), marker.get("integrity")
        if (not isinstance(attempt, str) or not ATTEMPT_ID.match(attempt) or not isinstance(uris, dict)
                or not isinstance(integrity, dict) or not all(isinstance(u, str) for u in uris.values())):
            return None, "the completion marker has the wrong shape (written by another version, or edited)"
        if set(uris) != set(outputs):
            return None, f"the marker names outputs {sorted(uris)}, the component declares {sorted(outputs)}"
        inside = join(self.step_uri(key), attempt) + "/"
        for name, uri in uris.items():
            if not normalize(uri).startswith(inside):
                return None, f"the marker points output '{name}' outside its attempt folder ({redact(uri)})"
            if not exists(uri):
                return None, f"output '{name}' is missing"
            if integrity.get(name) != fingerprint(uri):
                return None, f"output '{name}' changed after it was published (fingerprint differs)"
        return PublishedStep(key=key, attempt=attempt, outputs=dict(uris)), ""

    def new_attempt(self, staging_home: Path) -> tuple[str, Path]:
        """An attempt id and a private local dir to write outputs into.

        On a local root the dir is inside the root (`.staging/`), so publishing is a rename.
        """
        attempt = uuid.uuid4().hex[:12]
        staging = Path(self.path) / ".staging" / attempt if self.local else Path(staging_home) / "outputs" / attempt
        staging.mkdir(parents=True, exist_ok=False)
        return attempt, staging

    def publish(self, key: str, attempt: str, staging: Path, outputs: dict[str, str], meta: dict) -> PublishedStep:
        """Move an attempt's outputs (`outputs`: name -> path relative to `staging`) into place, marker last.

        If another attempt published the same key first, its outputs are kept and ours discarded.
        """
        existing = self.completed(key, list(outputs))
        if existing:
            shutil.rmtree(staging, ignore_errors=True)
            return existing
        target = join(self.step_uri(key), attempt)
        if self.local:
            dest = Path(local_path(target))
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, dest)  # same filesystem: atomic, zero-copy
        else:
            self._upload(staging, target, outputs)
            shutil.rmtree(staging, ignore_errors=True)
        uris = {name: join(target, rel) for name, rel in outputs.items()}
        # what each output was when published: a reuse checks it again (see `check`)
        integrity = {name: fingerprint(uri) for name, uri in uris.items()}
        marker = {"key": key, "attempt": attempt, "outputs": uris, "integrity": integrity, **meta}
        self._write_marker(key, marker)
        return PublishedStep(key=key, attempt=attempt, outputs=uris)

    def _upload(self, staging: Path, target: str, outputs: dict[str, str]) -> None:
        expected = {str(f.relative_to(staging)): f.stat().st_size for f in local_files(staging)}
        upload(staging, target)
        # verify before the marker: a store that dropped or truncated an object must not be trusted
        got = {e.path: e.size for e in list_files(target)} if expected else {}
        missing = [p for p, size in expected.items() if got.get(p) != size]
        if missing:
            raise StorageError(
                f"upload to {redact(target)!r} is incomplete ({len(missing)} of {len(expected)} files missing or "
                f"truncated, e.g. {missing[0]!r}); nothing was published. Run the step again."
            )
        # empty output folders have no objects on a store: keep a placeholder so the output exists
        for rel in outputs.values():
            if (staging / rel).is_dir() and not any((staging / rel).iterdir()):
                fs, path = filesystem(join(target, rel, ".keep"))
                fs.pipe_file(path, b"")

    def _write_marker(self, key: str, marker: dict) -> None:
        data = json.dumps(marker, indent=2, sort_keys=True, default=str)
        if self.local:
            try:
                atomic_write_text(local_path(self.marker_uri(key)), data)
            except OSError as exc:  # e.g. disk full: the outputs are there, but nothing trusts them
                raise StorageError(
                    f"could not write the completion marker {self.marker_uri(key)!r} ({exc.strerror or exc}); "
                    "the step's outputs are not published. Free space or fix permissions, then run again."
                ) from exc
        else:
            uri = self.marker_uri(key)
            fs, path = filesystem(uri)
            try:
                fs.pipe_file(path, data.encode())  # one PUT: the store commits it whole or not at all
            except Exception as exc:
                raise storage_error(exc, uri, "write the completion marker") from None  # see storage.locations

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
