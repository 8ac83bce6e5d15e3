"""What data is behind a URI: its files, with sizes and checksums, and one fingerprint of them.

Local files are tagged by sha256 of their content (by size + mtime above `HASH_LIMIT`, memoised
per path, size, mtime and inode); remote objects by their ETag (or MD5, or mtime); https:// files by their ETag (or
Last-Modified) and size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect_ml.errors import StorageError
from prefect_ml.storage.caches import caches
from prefect_ml.storage.credentials import check_uri, redact
from prefect_ml.storage.filesystems import filesystem
from prefect_ml.storage.locations import storage_error
from prefect_ml.storage.uri import is_local, local_path

HASH_LIMIT = 64 * 1024 * 1024  # local files up to this size are fingerprinted by content


@dataclass(frozen=True)
class FileEntry:
    """One file of the data behind a URI: path relative to it, size, and a change tag."""

    path: str
    size: int
    checksum: str  # remote: "etag:..." (or "mtime:..."); local: "sha256:..." or "stat:size:mtime_ns"
    mtime_ns: int | None = None  # local files only


def local_files(path: Path) -> Iterator[Path]:
    """The file at `path`, or every file under the folder `path` (none if it does not exist)."""
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from (p for p in path.rglob("*") if p.is_file())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _file_digest(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    cached = caches.digest(key)
    if cached is not None:
        return cached
    # hashing GiBs on every run costs seconds; above the limit size + mtime is what make(1) trusts too
    digest = sha256_file(path) if st.st_size <= HASH_LIMIT else f"stat:{st.st_size}:{st.st_mtime_ns}"
    caches.put_digest(key, digest)
    return digest


def _remote_tag(e: dict) -> str:
    tag = e.get("ETag") or e.get("etag")
    if tag:
        return "etag:" + str(tag).strip('"')
    md5 = (e.get("content_settings") or {}).get("content_md5")
    if md5:
        return "md5:" + (md5.hex() if isinstance(md5, (bytes, bytearray)) else str(md5))
    modified = e.get("last_modified") or e.get("LastModified") or e.get("Last-Modified")  # http: a header
    return f"mtime:{modified}"


def list_files(uri: str, *, full_hash: bool = False) -> list[FileEntry]:
    """Every file under `uri` (or the file itself), sorted. Raises StorageError if there is none.

    `full_hash` computes sha256 for local files of any size (data asset registration); otherwise
    local files above 64 MiB are tagged by size + mtime.
    """
    fs, path = filesystem(uri)
    if is_local(uri):
        p = Path(path)
        if not p.exists():
            raise StorageError(f"data {uri!r} does not exist; check the path or URI.")
        out = []
        for f in sorted(local_files(p)):
            st = f.stat()
            digest = sha256_file(f) if full_hash and st.st_size > HASH_LIMIT else _file_digest(f, st)
            rel = f.name if p.is_file() else str(f.relative_to(p))
            out.append(FileEntry(rel, st.st_size, digest, st.st_mtime_ns))
        return out
    try:
        info = fs.info(path)
        if info.get("type") == "file":
            entries = [info]
        else:
            entries = [e for e in fs.find(path, detail=True).values() if e.get("type") == "file"]
    except Exception as exc:
        raise storage_error(exc, uri, "read") from None  # a driver error: see storage.locations
    if not entries:
        raise StorageError(f"data {redact(uri)!r} does not exist (no objects under it); check the URI.")
    base = path.rstrip("/")
    out = []
    for e in entries:
        name = e["name"].rstrip("/")
        rel = name.rsplit("/", 1)[-1] if info.get("type") == "file" else name[len(base):].lstrip("/")
        out.append(FileEntry(rel, int(e.get("size") or 0), _remote_tag(e)))
    return sorted(out, key=lambda e: e.path)


def fingerprint(uri: str) -> str:
    """A short string that changes when the data behind `uri` changes.

    Local files: sha256 of the content (size + mtime above 64 MiB); folders: the same per file,
    combined; remote objects: ETag (or size + mtime) per object. Raises StorageError if missing.
    """
    if is_local(uri):
        check_uri(uri)
        p = local_path(uri)
        if p.is_file():
            return _file_digest(p, p.stat())
        if not p.is_dir():
            raise StorageError(f"data {uri!r} does not exist; check the path or URI.")
        prefix = "tree:"
    else:
        prefix = "remote:"
    h = hashlib.sha256()
    for e in list_files(uri):
        h.update(f"{e.path}\0{e.size}\0{e.checksum}\n".encode())
    return prefix + h.hexdigest()
