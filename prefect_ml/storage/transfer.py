"""Moving bytes between a remote URI and local disk: download, upload, stage in, and their counters.

A step reads local paths: local data is used in place, remote data is downloaded once per
fingerprint. `transfer_stats()` counts what was moved since `reset_transfer_stats()` (tests and
benchmarks read it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from prefect_ml.errors import StorageError
from prefect_ml.records import is_step_fingerprint
from prefect_ml.storage.caches import TransferStats, caches
from prefect_ml.storage.credentials import check_uri
from prefect_ml.storage.filesystems import filesystem
from prefect_ml.storage.fingerprint import fingerprint, local_files
from prefect_ml.storage.locations import storage_error
from prefect_ml.storage.uri import is_local, is_read_only, local_path


def transfer_stats() -> TransferStats:
    """Bytes and files staged in and out since the last reset (a copy)."""
    return caches.transfer_stats()


def reset_transfer_stats() -> None:
    caches.reset_transfer_stats()


def download(uri: str, dest: Path) -> int:
    """Download a remote file or folder to local `dest` (a file path, or a folder for a folder).

    Objects are streamed to disk in chunks (never held in memory) and a folder's objects are
    fetched concurrently (s3fs/adlfs batch their async requests). Returns the bytes written.
    """
    fs, path = filesystem(uri)
    try:
        if not is_read_only(uri) and fs.isdir(path):  # an http(s) URL is one file (isdir would scrape links)
            dest.mkdir(parents=True, exist_ok=True)
            fs.get(path.rstrip("/") + "/", str(dest) + "/", recursive=True)
        else:
            fs.get_file(path, str(dest))
    except Exception as exc:
        raise storage_error(exc, uri, "download") from None  # a driver error: see storage.locations
    files = list(local_files(dest))
    nbytes = sum(f.stat().st_size for f in files)
    caches.count("in", nbytes, len(files))
    return nbytes


def upload(src: Path, uri: str) -> int:
    """Upload a local file or folder to `uri` (folders: concurrently, large files in multipart
    chunks streamed from disk). Returns the bytes sent."""
    fs, path = filesystem(uri)
    files = list(local_files(src))
    try:
        if src.is_dir():
            if files:
                fs.put(str(src) + "/", path.rstrip("/") + "/", recursive=True)
        else:
            fs.put_file(str(src), path)
    except Exception as exc:
        raise storage_error(exc, uri, "upload to") from None  # a driver error: see storage.locations
    nbytes = sum(f.stat().st_size for f in files)
    caches.count("out", nbytes, len(files))
    return nbytes


def stage_in(uri: str, staging_home: Path, *, fingerprint_hint: str | None = None) -> Path:
    """A local path for a data input: local data is used in place (no copy); remote data is
    downloaded once per fingerprint into `staging_home/inputs/` (written aside, then renamed), so
    a step, its retries and later steps with the same input download it once.

    `fingerprint_hint`: the input's fingerprint if the caller has it (saves one listing). A step
    output's fingerprint (`step:<key>/<output>`) names no bytes, so the data is listed then.
    """
    if is_local(uri):
        check_uri(uri)
        p = local_path(uri)
        if not p.exists():
            raise StorageError(f"data {uri!r} does not exist; check the path or URI.")
        return p
    fp = fingerprint_hint if fingerprint_hint and not is_step_fingerprint(fingerprint_hint) else fingerprint(uri)
    digest = hashlib.sha256(f"{uri}\0{fp}".encode()).hexdigest()[:24]
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "data"
    dest = Path(staging_home) / "inputs" / digest / name
    if dest.exists():
        return dest
    tmp = Path(staging_home) / "inputs" / f".{digest}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        download(uri, tmp / name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp / name, dest)
        except OSError:
            if not dest.exists():  # a concurrent download of the same data won: use it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
