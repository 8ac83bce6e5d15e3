"""The data asset registry: named, immutable versions of data at a URI.

Each version is one JSON record on the artifact root, next to the data it describes:

    <artifact root>/assets/<name>/<version>.json        the record (written once, never rewritten)
    <artifact root>/assets/<name>/<version>/data/...     the copy of the data, for `snapshot=True`

(`PREFECT_ML_ASSET_REGISTRY` puts the registry elsewhere.) A record holds the URI, the type
(`uri_file` / `uri_folder`), a description, and a fingerprint of the data: size and checksum per
file (sha256 for local files, the ETag for objects). Resolving a version re-lists the data and
compares: data that changed since registration is an error, never a silent new input.

Why files on the artifact root and not Prefect variables or blocks: the registry then lives
where the data and the step outputs live, under the same credentials, so whoever can run the
pipeline can resolve its assets, with or without a Prefect server (the CLI works offline);
records are immutable objects with no size limit (a Prefect variable holds 5,000 characters,
too few for a folder's per-file fingerprints); and snapshots sit next to their records.
"""

from __future__ import annotations

import builtins  # the registry has a method named `list`: annotations below it use builtins.list
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect_ml import storage
from prefect_ml._util import NAME_PATTERN
from prefect_ml.errors import DataAssetError, StorageError
from prefect_ml.settings import get_settings

TYPES = ("uri_file", "uri_folder")
LATEST = "latest"

# uri -> (name, version) of every asset version resolved in this process: lineage for registration
_resolved: dict[str, tuple[str, str]] = {}
_resolved_lock = threading.Lock()


def asset_of(uri: str) -> tuple[str, str] | None:
    """The (name, version) of the data asset that `uri` was resolved from in this process, if any."""
    with _resolved_lock:
        return _resolved.get(storage.normalize(uri))


@dataclass
class AssetVersion:
    """One registered version of a data asset."""

    name: str
    version: str
    uri: str
    type: str
    description: str = ""
    files: list[dict] = field(default_factory=list)  # [{"path", "size", "checksum"[, "mtime_ns"]}]
    size: int = 0
    created_at: float = 0.0
    source_uri: str | None = None  # the original location, when `uri` is a snapshot
    source_files: list[dict] = field(default_factory=list)  # its files at registration (snapshots)

    @property
    def ref(self) -> str:
        return f"asset:{self.name}:{self.version}"

    @property
    def snapshot(self) -> bool:
        return self.source_uri is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _entries(files: list[storage.FileEntry]) -> list[dict]:
    out = []
    for f in files:
        e = {"path": f.path, "size": f.size, "checksum": f.checksum}
        if f.mtime_ns is not None:
            e["mtime_ns"] = f.mtime_ns  # lets a check skip re-hashing an untouched local file
        out.append(e)
    return out


def _same(a: list[dict], b: list[dict]) -> bool:
    strip = lambda es: [(e["path"], e["size"], e["checksum"]) for e in es]  # noqa: E731
    return strip(a) == strip(b)


def _check_regular(path: Path, what: str) -> None:
    """A local data asset is regular files: a FIFO, socket or device (`/dev/zero`) would block or
    never end when it is hashed, staged or copied."""
    import stat

    try:
        mode = path.stat().st_mode  # follows a symlink: what matters is what it leads to
    except FileNotFoundError:
        return  # list_files says it does not exist
    if stat.S_ISDIR(mode):
        for entry in path.rglob("*"):
            if not (entry.is_file() or entry.is_dir()):
                raise DataAssetError(f"cannot register {what}: {entry} is not a regular file (a FIFO, socket or "
                                     "device); remove it from the folder.")
    elif not stat.S_ISREG(mode):
        raise DataAssetError(f"cannot register {what}: {path} is not a regular file or folder (a FIFO, socket or "
                             "device); register a file or a folder.")


def _version_key(v: str):
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


class AssetRegistry:
    """Data asset versions stored as JSON records under `uri` (default: `<artifact root>/assets`).

    Example:
        reg = AssetRegistry.default()
        reg.register("credit-card", "1", "s3://data/credit.csv", description="UCI credit default")
        reg.resolve("credit-card", "latest")   # -> "s3://data/credit.csv", verified unchanged
    """

    def __init__(self, uri: str):
        self.uri = storage.normalize(uri)

    @classmethod
    def default(cls) -> AssetRegistry:
        settings = get_settings()
        return cls(settings.asset_registry or storage.join(settings.resolved_artifact_root, "assets"))

    # --- reading --------------------------------------------------------------------------------

    def _record_uri(self, name: str, version: str) -> str:
        return storage.join(self.uri, name, f"{version}.json")

    def _read(self, name: str, version: str) -> AssetVersion | None:
        uri = self._record_uri(name, version)
        fs, path = storage.filesystem(uri)
        try:
            data = json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            raise DataAssetError(f"the record of data asset {name}:{version} at {uri} is not valid JSON.") from None
        except Exception as exc:
            raise storage.storage_error(exc, uri, "read") from None
        return AssetVersion(**{k: v for k, v in data.items() if k in AssetVersion.__dataclass_fields__})

    def names(self) -> list[str]:
        fs, path = storage.filesystem(self.uri)
        try:
            if storage.is_local(self.uri):
                return sorted(p.name for p in Path(path).iterdir() if p.is_dir()) if Path(path).is_dir() else []
            found = fs.glob(path.rstrip("/") + "/*/*.json")
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise storage.storage_error(exc, self.uri, "list") from None
        return sorted({f.rstrip("/").split("/")[-2] for f in found})

    def versions(self, name: str) -> list[AssetVersion]:
        """Every version of `name`, oldest registration first."""
        base = storage.join(self.uri, name)
        fs, path = storage.filesystem(base)
        try:
            if storage.is_local(base):
                files = [str(p) for p in Path(path).glob("*.json")] if Path(path).is_dir() else []
            else:
                files = fs.glob(path.rstrip("/") + "/*.json")
        except FileNotFoundError:
            files = []
        except Exception as exc:
            raise storage.storage_error(exc, base, "list") from None
        out = [self._read(name, f.rsplit("/", 1)[-1][: -len(".json")]) for f in files]
        return sorted((v for v in out if v), key=lambda v: (v.created_at, _version_key(v.version)))

    def list(self) -> list[AssetVersion]:
        return [v for name in self.names() for v in self.versions(name)]

    def get(self, name: str, version: str = LATEST) -> AssetVersion:
        """The record of `name:version` (`latest`: the most recently registered version)."""
        if not NAME_PATTERN.match(name or ""):
            raise DataAssetError(f"data asset name {name!r} is invalid; use letters, digits, '_', '-', '.'.")
        version = str(version or LATEST)
        if version != LATEST and not NAME_PATTERN.match(version):  # e.g. '../../x': never a path to read
            raise DataAssetError(f"data asset version {version!r} is invalid; use letters, digits, '_', '-', '.'.")
        if version != LATEST:
            found = self._read(name, version)
            if found:
                return found
        versions = self.versions(name)
        if not versions:
            known = self.names()
            listing = ", ".join(known) if known else "none"
            raise DataAssetError(
                f"unknown data asset '{name}' in registry {self.uri}; registered assets: {listing}. "
                f"Register it with: prefect-ml data register {name} --version 1 --path URI"
            )
        if version == LATEST:
            return versions[-1]
        raise DataAssetError(
            f"data asset '{name}' has no version '{version}'; versions: "
            f"{', '.join(v.version for v in sorted(versions, key=lambda v: _version_key(v.version)))} "
            f"(latest: {versions[-1].version})."
        )

    # --- verifying and resolving -----------------------------------------------------------------

    def changes(self, rec: AssetVersion) -> builtins.list[str]:
        """How the data behind `rec` differs from what was registered (empty: unchanged)."""
        try:
            current = storage.list_files(rec.uri)
        except StorageError as exc:
            return [f"the data can no longer be read ({exc})"]
        now = {f.path: f for f in current}
        then = {f["path"]: f for f in rec.files}
        diffs = []
        for path, old in then.items():
            new = now.get(path)
            if new is None:
                diffs.append(f"'{path}' was removed")
            elif new.size != old["size"]:
                diffs.append(f"'{path}' size {old['size']} -> {new.size}")
            elif new.checksum != old["checksum"]:
                if new.mtime_ns is not None and new.mtime_ns == old.get("mtime_ns"):
                    continue  # a large local file, listed by size+mtime, untouched since it was hashed
                # large local files are listed by size+mtime: hash them before calling it a change
                if storage.is_local(rec.uri) and old["checksum"].startswith("sha256:"):
                    full = storage.sha256_file(storage.local_path(rec.uri) / path
                                               if storage.local_path(rec.uri).is_dir() else storage.local_path(rec.uri))
                    if full == old["checksum"]:
                        continue
                diffs.append(f"'{path}' content changed (checksum differs)")
        diffs += [f"'{p}' was added" for p in now if p not in then]
        return diffs

    def resolve(self, name: str, version: str = LATEST) -> str:
        """The URI of `name:version`, after checking that its data is unchanged since registration."""
        rec = self.get(name, version)
        diffs = self.changes(rec)
        if diffs:
            shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
            raise DataAssetError(
                f"data asset '{name}' version {rec.version} changed since registration (data at {rec.uri}): {shown}. "
                f"Versions are immutable: register the current data as a new version (prefect-ml data register "
                f"{name} --version NEW --path {rec.source_uri or rec.uri}), or use --snapshot to keep a copy that "
                "cannot change."
            )
        with _resolved_lock:
            _resolved[storage.normalize(rec.uri)] = (rec.name, rec.version)
        return rec.uri

    # --- registering ---------------------------------------------------------------------------

    def register(self, name: str, version: str, path: str, *, type: str | None = None, description: str = "",
                 snapshot: bool = False) -> AssetVersion:
        """Register `path` (a local path or URI) as version `version` of `name`; returns the record.

        Registering the same data again under an existing version is a no-op; other data is an
        error (versions are immutable). `snapshot=True` first copies the data under the registry
        so the version keeps working even if the original changes.
        """
        if not NAME_PATTERN.match(name or ""):
            raise DataAssetError(f"data asset name {name!r} is invalid; use letters, digits, '_', '-', '.'.")
        version = str(version)
        if not NAME_PATTERN.match(version) or version == LATEST:
            raise DataAssetError(f"version {version!r} is invalid; use letters, digits, '_', '-', '.' (not 'latest').")
        if type is not None and type not in TYPES:
            raise DataAssetError(f"type {type!r} is invalid; use one of {', '.join(TYPES)}.")
        if not str(path or "").strip():
            raise DataAssetError(f"cannot register {name}:{version}: the path is empty; give a file, folder or URI.")
        uri = storage.normalize(path)
        storage.check_location(uri)
        if storage.is_local(uri):
            _check_regular(storage.local_path(uri), f"{name}:{version}")
        try:
            files = storage.list_files(uri, full_hash=True)
        except StorageError as exc:
            raise DataAssetError(f"cannot register {name}:{version}: {exc}") from None
        actual = "uri_folder" if self._is_folder(uri) else "uri_file"
        if type and type != actual:
            raise DataAssetError(f"cannot register {name}:{version}: {uri} is a {actual.split('_')[1]}, not a "
                                 f"{type.split('_')[1]}; use --type {actual}.")
        existing = self._read(name, version)
        if existing:
            source = existing.source_uri or existing.uri
            if source == uri and _same(_entries(files), existing.source_files if existing.snapshot else existing.files):
                return existing
            raise DataAssetError(
                f"data asset '{name}' version {version} already exists with other data ({source}); versions are "
                f"immutable: register this data as a new version."
            )
        record_uri, source_uri, source_files = uri, None, []
        if snapshot:
            record_uri = self._snapshot(uri, name, version)
            source_uri, source_files = uri, _entries(files)
            files = storage.list_files(record_uri, full_hash=True)
        rec = AssetVersion(name=name, version=version, uri=record_uri, type=actual, description=description,
                           files=_entries(files), size=sum(f.size for f in files), created_at=time.time(),
                           source_uri=source_uri, source_files=source_files)
        self._write_once(name, version, rec)
        return rec

    @staticmethod
    def _is_folder(uri: str) -> bool:
        if storage.is_local(uri):
            return storage.local_path(uri).is_dir()
        fs, path = storage.filesystem(uri)
        try:
            return fs.isdir(path)
        except Exception as exc:
            raise storage.storage_error(exc, uri, "read") from None

    def _snapshot(self, uri: str, name: str, version: str) -> str:
        """Copy the data under `<registry>/<name>/<version>/data/` (the record is written after)."""
        base = uri.rstrip("/").rsplit("/", 1)[-1] or "data"
        dest = storage.join(self.uri, name, version, "data", base)
        if storage.is_local(uri) and storage.is_local(dest):
            src, dst = storage.local_path(uri), storage.local_path(dest)
            if dst.exists():
                shutil.rmtree(dst) if dst.is_dir() else dst.unlink()  # a torn earlier snapshot: no record points at it
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
            return dest
        if storage.canonical_protocol(uri) == storage.canonical_protocol(dest) and not storage.is_local(uri):
            fs, src_path = storage.filesystem(uri)
            _, dst_path = storage.filesystem(dest)
            try:  # server-side copy: no bytes through this machine
                fs.copy(src_path, dst_path, recursive=fs.isdir(src_path))
                return dest
            except Exception:  # e.g. across accounts: fall back to download + upload
                pass
        with tempfile.TemporaryDirectory(prefix="prefect-ml-snapshot-") as tmp:
            local = Path(tmp) / base
            if storage.is_local(uri):
                local = storage.local_path(uri)
            else:
                storage.download(uri, local)
            storage.upload(local, dest)
        return dest

    def _write_once(self, name: str, version: str, rec: AssetVersion) -> None:
        uri = self._record_uri(name, version)
        data = rec.to_json().encode()
        if storage.is_local(uri):
            final = storage.local_path(uri)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_bytes(data)
            try:
                os.link(tmp, final)  # atomic create-if-absent: a concurrent registration loses cleanly
            except FileExistsError:
                raise DataAssetError(f"data asset '{name}' version {version} was just registered by someone "
                    "else.") from None
            finally:
                tmp.unlink(missing_ok=True)
            return
        fs, path = storage.filesystem(uri)
        try:
            fs.pipe_file(path, data)
        except Exception as exc:
            raise storage.storage_error(exc, uri, "write") from None
