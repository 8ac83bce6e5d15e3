"""Data by URI on fsspec: the artifact-root layout, staging in, atomic publish, fingerprints.

Layout under an artifact root (`file://`, `s3://`, `abfs://`/`az://`):

    <root>/steps/<cache key>/<attempt id>/<output name>[/...]   outputs of one attempt
    <root>/steps/<cache key>/_COMPLETE.json                    the completion marker

An attempt writes its outputs in a private place and publishes them: on a local root it renames
its staging dir (same filesystem, so no bytes move) into the step dir; on a remote root it uploads
them under its own attempt prefix. The marker is written last and names the attempt whose outputs
are complete, so a reader (or the cache) that trusts only the marker never sees partial outputs,
and two attempts racing on one key never overwrite each other's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import fsspec

from prefect_ml.errors import StorageError
from prefect_ml.settings import get_settings

MARKER = "_COMPLETE.json"
KNOWN_PROTOCOLS = ("file", "local", "s3", "s3a", "abfs", "abfss", "az", "memory")
HASH_LIMIT = 64 * 1024 * 1024  # local files up to this size are fingerprinted by content


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def normalize(uri: str) -> str:
    """A plain path becomes an absolute `file://` URI; other URIs are returned without a trailing '/'."""
    if "://" not in uri:
        return Path(uri).expanduser().resolve().as_uri()
    return uri.rstrip("/") if not uri.endswith(":///") else uri


def is_local(uri: str) -> bool:
    return protocol_of(uri) in ("file", "local")


def local_path(uri: str) -> Path:
    """The local path of a `file://` URI or plain path."""
    if "://" not in uri:
        return Path(uri).expanduser().resolve()
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options for a protocol from `PREFECT_ML_STORAGE_OPTIONS` (JSON keyed by protocol)."""
    raw = get_settings().storage_options
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StorageError(f"PREFECT_ML_STORAGE_OPTIONS is not valid JSON ({exc.msg}); give an object keyed by protocol.") from None
    aliases = {"s3a": "s3", "abfss": "abfs", "az": "abfs"}
    return dict(options.get(protocol) or options.get(aliases.get(protocol, protocol)) or {})


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path of a URI, with a clear error for unknown schemes."""
    protocol = protocol_of(uri)
    if protocol not in KNOWN_PROTOCOLS:
        raise StorageError(
            f"unknown URI scheme '{protocol}://' in {uri!r}; use a local path, file://, s3://, abfs:// or az://."
        )
    if is_local(uri):
        return fsspec.filesystem("file"), str(local_path(uri))
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(protocol))
    except ImportError as exc:
        raise StorageError(f"no fsspec driver for {protocol}:// ({exc}); install s3fs or adlfs.") from None
    return fs, path


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.exists(path)
    except Exception as exc:  # remote stores raise on auth/network errors: report, never leak secrets
        raise StorageError(f"cannot check {uri!r}: {type(exc).__name__}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


# --- fingerprints -------------------------------------------------------------------------------

_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


def _file_digest(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    if st.st_size <= HASH_LIMIT:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
    else:  # hashing GiBs on every run costs seconds; size + mtime is what make(1) trusts too
        digest = f"stat:{st.st_size}:{st.st_mtime_ns}"
    with _memo_lock:
        _memo[key] = digest
    return digest


def fingerprint(uri: str) -> str:
    """A short string that changes when the data behind `uri` changes.

    Local files: sha256 of the content (size + mtime above 64 MiB); folders: the same per file,
    combined; remote objects: ETag (or size + mtime) per object. Raises StorageError if missing.
    """
    fs, path = filesystem(uri)
    h = hashlib.sha256()
    if is_local(uri):
        p = Path(path)
        if p.is_file():
            return _file_digest(p, p.stat())
        if not p.is_dir():
            raise StorageError(f"data {uri!r} does not exist; check the path or URI.")
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p)}\0{_file_digest(f, f.stat())}\n".encode())
        return "tree:" + h.hexdigest()
    try:
        if not fs.exists(path):
            raise StorageError(f"data {uri!r} does not exist; check the URI and that the bucket/container exists.")
        info = fs.info(path)
        entries = [info] if info.get("type") == "file" else list(fs.find(path, detail=True).values())
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot read {uri!r}: {type(exc).__name__}: {_short(exc)}") from None
    for e in sorted(entries, key=lambda e: e["name"]):
        tag = e.get("ETag") or e.get("etag") or e.get("content_settings", {}) and e.get("etag")
        h.update(f"{e['name'][len(path):]}\0{e.get('size')}\0{tag or e.get('last_modified') or e.get('LastModified')}\n".encode())
    return "remote:" + h.hexdigest()


# --- the artifact root -------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedStep:
    key: str
    attempt: str
    outputs: dict[str, str]  # output name -> URI


class ArtifactRoot:
    """The fsspec location under which steps publish their outputs."""

    def __init__(self, uri: str):
        self.uri = normalize(uri)
        self.fs, self.path = filesystem(self.uri)

    @property
    def local(self) -> bool:
        return is_local(self.uri)

    def step_uri(self, key: str) -> str:
        return join(self.uri, "steps", key)

    def marker_uri(self, key: str) -> str:
        return join(self.step_uri(key), MARKER)

    def read_marker(self, key: str) -> Optional[dict]:
        fs, path = filesystem(self.marker_uri(key))
        try:
            with fs.open(path, "r") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn or foreign file is no marker

    def completed(self, key: str, outputs: list[str]) -> Optional[PublishedStep]:
        """The published outputs of `key` if its marker exists and every output is there; else None."""
        marker = self.read_marker(key)
        if not marker or set(marker.get("outputs", {})) != set(outputs):
            return None
        for uri in marker["outputs"].values():
            if not exists(uri):
                return None
        return PublishedStep(key, marker["attempt"], dict(marker["outputs"]))

    def new_attempt(self, staging_home: Path) -> tuple[str, Path]:
        """An attempt id and a private local dir to write outputs into."""
        attempt = uuid.uuid4().hex[:12]
        if self.local:
            staging = Path(self.path) / ".staging" / attempt
        else:
            staging = staging_home / "outputs" / attempt
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
            self._upload(staging, target)
            shutil.rmtree(staging, ignore_errors=True)
        uris = {name: join(target, rel) for name, rel in outputs.items()}
        marker = {"key": key, "attempt": attempt, "outputs": uris, **meta}
        self._write_marker(key, marker)
        return PublishedStep(key, attempt, uris)

    def _upload(self, staging: Path, target: str) -> None:
        fs, path = filesystem(target)
        try:
            fs.put(str(staging) + "/", path, recursive=True)
        except Exception as exc:
            raise StorageError(f"cannot upload outputs to {target!r}: {type(exc).__name__}: {_short(exc)}") from None

    def _write_marker(self, key: str, marker: dict) -> None:
        data = json.dumps(marker, indent=2, sort_keys=True)
        if self.local:
            final = local_path(self.marker_uri(key))
            tmp = final.with_name(f".{MARKER}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(data)
            os.replace(tmp, final)
        else:
            fs, path = filesystem(self.marker_uri(key))
            with fs.open(path, "w") as f:
                f.write(data)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


def stage_in(uri: str, staging_home: Path) -> Path:
    """A local path for a data input: local data is used in place (no copy); remote data is
    downloaded once per fingerprint into `staging_home/inputs/` (written aside, then renamed)."""
    if is_local(uri):
        p = local_path(uri)
        if not p.exists():
            raise StorageError(f"data {uri!r} does not exist; check the path or URI.")
        return p
    digest = hashlib.sha256(f"{uri}\0{fingerprint(uri)}".encode()).hexdigest()[:24]
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "data"
    dest = staging_home / "inputs" / digest / name
    if dest.exists():
        return dest
    tmp = staging_home / "inputs" / f".{digest}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    fs, path = filesystem(uri)
    try:
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(tmp / name), recursive=True)
        else:
            fs.get(path, str(tmp / name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp / name, dest)
        except OSError:
            if not dest.exists():  # a concurrent download of the same data won: use it
                raise
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot download {uri!r}: {type(exc).__name__}: {_short(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
