"""Data by URI on fsspec: the artifact-root layout, staging in, atomic publish, fingerprints.

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

Credentials and endpoints come from the standard chains, unchanged (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, profiles, instance roles; `AZURE_STORAGE_CONNECTION_STRING`,
`AZURE_STORAGE_ACCOUNT_NAME`/`_KEY`, service principals), plus fsspec options per protocol from
`PREFECT_ML_STORAGE_OPTIONS` (JSON) and, optionally, a saved Secret/JSON block named by
`PREFECT_ML_STORAGE_OPTIONS_BLOCK`. They are never taken from URIs or command lines, and every
error message is scrubbed of secret values.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import fsspec

from prefect_ml.errors import StorageError
from prefect_ml.settings import get_settings

MARKER = "_COMPLETE.json"
KNOWN_PROTOCOLS = ("file", "local", "s3", "s3a", "abfs", "abfss", "az", "memory")
ALIASES = {"s3a": "s3", "abfss": "abfs", "az": "abfs", "local": "file"}
HASH_LIMIT = 64 * 1024 * 1024  # local files up to this size are fingerprinted by content
# Environment variables whose values select the endpoint or identity: part of the filesystem cache key.
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID", "PREFECT_ML_STORAGE_OPTIONS", "PREFECT_ML_STORAGE_OPTIONS_BLOCK",
)
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CLIENT_SECRET",
)
SECRET_OPTION = re.compile(r"(secret|key|token|password|connection_string|credential|sas)", re.I)
SECRET_PATTERNS = (
    re.compile(r"(AccountKey=)[^;\s]+", re.I),
    re.compile(r"(SharedAccessSignature=)[^;\s]+", re.I),
    re.compile(r"([?&]sig=)[^&\s]+", re.I),
)
CREDENTIAL_HINT = {
    "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a profile/role) and AWS_ENDPOINT_URL, or the 's3' entry of "
          "PREFECT_ML_STORAGE_OPTIONS",
    "abfs": "AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT_NAME/_KEY, a SAS token or a service "
            "principal), or the 'abfs' entry of PREFECT_ML_STORAGE_OPTIONS",
}


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def canonical_protocol(uri: str) -> str:
    """`s3a` -> `s3`, `az`/`abfss` -> `abfs`, `local` -> `file`."""
    p = protocol_of(uri)
    return ALIASES.get(p, p)


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


def _check_uri(uri: str) -> None:
    protocol = protocol_of(uri)
    if protocol not in KNOWN_PROTOCOLS:
        raise StorageError(
            f"unknown URI scheme '{protocol}://' in {redact(uri)!r}; use a local path, file://, s3://, abfs:// or az://."
        )
    if "://" in uri and not is_local(uri):
        netloc = uri.split("://", 1)[1].split("/", 1)[0]
        if ":" in netloc.split("@")[0] and "@" in netloc:
            # user:secret@host would put a credential in the URI (and so in logs and MLflow tags)
            raise StorageError(
                f"{protocol}:// URIs must not carry credentials; use {CREDENTIAL_HINT.get(canonical_protocol(uri), 'storage options')}."
            )


# --- credentials and filesystems -----------------------------------------------------------------


_block_cache: dict[str, tuple[float, dict[str, Any]]] = {}
BLOCK_TTL_S = 60.0  # re-read the block at most once a minute (a rotated secret is picked up)


def _options_from_block(name: str) -> dict[str, Any]:
    """Storage options kept in a saved Prefect block (a Secret or JSON block holding the same JSON)."""
    import time

    cached = _block_cache.get(name)
    if cached and time.monotonic() - cached[0] < BLOCK_TTL_S:
        return cached[1]
    value = _load_block_options(name)
    _block_cache[name] = (time.monotonic(), value)
    return value


def _load_block_options(name: str) -> dict[str, Any]:
    from prefect.blocks.core import Block

    try:
        block = Block.load(name, validate=False)
    except Exception as exc:
        raise StorageError(
            f"PREFECT_ML_STORAGE_OPTIONS_BLOCK names block {name!r}, which cannot be loaded ({type(exc).__name__}); "
            "save a Secret or JSON block with storage options keyed by protocol, e.g. 'secret/ml-storage'."
        ) from None
    value = block.get() if hasattr(block, "get") else getattr(block, "value", None)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise StorageError(f"block {name!r} does not hold JSON storage options keyed by protocol.") from None
    if not isinstance(value, dict):
        raise StorageError(f"block {name!r} does not hold a JSON object of storage options keyed by protocol.")
    return value


def _all_options() -> dict[str, Any]:
    raw = get_settings().storage_options
    options: dict[str, Any] = {}
    block = os.environ.get("PREFECT_ML_STORAGE_OPTIONS_BLOCK")
    if block:
        options.update(_options_from_block(block))
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StorageError(
                f"PREFECT_ML_STORAGE_OPTIONS is not valid JSON ({exc.msg}); give an object keyed by protocol, "
                'e.g. {"s3": {"endpoint_url": "http://127.0.0.1:9000"}}.'
            ) from None
        if not isinstance(parsed, dict):
            raise StorageError("PREFECT_ML_STORAGE_OPTIONS must be a JSON object keyed by protocol (s3, abfs).")
        for proto, opts in parsed.items():
            options[proto] = {**(options.get(proto) or {}), **(opts or {})}
    return options


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options for a protocol from the settings block/JSON (`s3a` reads `s3`, `az`/`abfss` read `abfs`)."""
    options = _all_options()
    return dict(options.get(protocol) or options.get(ALIASES.get(protocol, protocol)) or {})


def _secrets() -> list[str]:
    values = [os.environ.get(k, "") for k in SECRET_ENV]
    try:
        for opts in _all_options().values():
            for k, v in (opts or {}).items():
                if isinstance(v, str) and SECRET_OPTION.search(k):
                    values.append(v)
    except StorageError:
        pass
    for cs in [os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")] + values:
        for part in cs.split(";"):  # the key inside a connection string, on its own too
            if part.lower().startswith(("accountkey=", "sharedaccesssignature=")):
                values.append(part.split("=", 1)[1])
    return sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every known secret value (env chains, storage options) replaced by '***'."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


_fs_cache: dict[str, fsspec.AbstractFileSystem] = {}
_fs_lock = threading.Lock()


def _fs_for(protocol: str) -> fsspec.AbstractFileSystem:
    """One filesystem instance per protocol, options and credential environment (they change in tests)."""
    proto = ALIASES.get(protocol, protocol)
    options = storage_options(protocol)
    env = {k: os.environ.get(k) for k in CREDENTIAL_ENV}
    key = hashlib.sha256(json.dumps([proto, options, env], sort_keys=True, default=str).encode()).hexdigest()
    with _fs_lock:
        fs = _fs_cache.get(key)
    if fs is not None:
        return fs
    # other processes publish under the same root: never answer exists()/info() from a stale listing
    kwargs = {"use_listings_cache": False, **options}
    try:
        fs = fsspec.filesystem(proto, skip_instance_cache=True, **kwargs)
    except ImportError as exc:
        raise StorageError(f"no fsspec driver for {protocol}:// ({exc}); install s3fs or adlfs.") from None
    except Exception as exc:  # e.g. a malformed connection string
        raise StorageError(
            f"cannot set up {protocol}:// storage: {type(exc).__name__}: {_short(exc)}. "
            f"Check {CREDENTIAL_HINT.get(proto, 'the storage options')}."
        ) from None
    with _fs_lock:
        _fs_cache[key] = fs
    return fs


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path of a URI, with a clear error for unknown schemes."""
    _check_uri(uri)
    if is_local(uri):
        return fsspec.filesystem("file"), str(local_path(uri))
    fs = _fs_for(protocol_of(uri))
    return fs, fs._strip_protocol(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text[:300])


def _container(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0].split("@", 1)[0]


def _is_auth_error(exc: BaseException) -> bool:
    if isinstance(exc, PermissionError):
        return True
    status = getattr(exc, "status_code", None)
    text = f"{type(exc).__name__} {exc} {getattr(exc, 'error_code', '')}".lower()
    return status in (401, 403) or any(s in text for s in (
        "authorizationfailure", "authenticationfailed", "authentication_failed", "authorization_failure",
        "invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "forbidden", "clientauthenticationerror",
    ))


def _is_connection_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(s in text for s in ("endpointconnectionerror", "could not connect", "connection refused",
                                   "serviceRequestError".lower(), "cannot connect to host", "name or service not known"))


def storage_error(exc: BaseException, uri: str, action: str) -> StorageError:
    """A StorageError that says what went wrong with `uri` and how to fix it (never a secret)."""
    if isinstance(exc, StorageError):
        return exc
    proto = canonical_protocol(uri)
    what = {"s3": "bucket", "abfs": "container"}.get(proto, "location")
    shown = redact(uri)
    if _is_auth_error(exc):
        return StorageError(
            f"cannot {action} {shown!r}: access denied: the {proto}:// credentials were rejected "
            f"({type(exc).__name__}). Check {CREDENTIAL_HINT.get(proto, 'the storage options')}."
        )
    if _is_connection_error(exc):
        return StorageError(
            f"cannot {action} {shown!r}: the {proto}:// endpoint cannot be reached ({_short(exc)}). "
            f"Check {CREDENTIAL_HINT.get(proto, 'the storage options')}."
        )
    if isinstance(exc, FileNotFoundError) or "notfound" in type(exc).__name__.lower():
        if not is_local(uri) and not _container_exists(uri):
            return StorageError(
                f"cannot {action} {shown!r}: the {what} '{_container(uri)}' does not exist; create it "
                f"or fix the URI."
            )
        return StorageError(f"cannot {action} {shown!r}: no data there; check the path or URI.")
    return StorageError(f"cannot {action} {shown!r}: {type(exc).__name__}: {_short(exc)}")


def _container_exists(uri: str) -> bool:
    """Whether the bucket/container of a remote URI exists (raises StorageError on auth errors)."""
    fs, _ = filesystem(uri)
    container = _container(uri)
    try:
        if canonical_protocol(uri) == "s3":
            fs.call_s3("list_objects_v2", Bucket=container, MaxKeys=1)
        else:
            fs.info(container)
        return True
    except FileNotFoundError:
        return False
    except Exception as exc:
        if "nosuchbucket" in str(exc).lower() or "containernotfound" in str(exc).lower():
            return False
        if _is_auth_error(exc) or _is_connection_error(exc):
            raise storage_error(exc, uri, "access") from None
        return True  # e.g. no list permission: let the real operation say what is wrong


_checked: set[str] = set()


def check_location(uri: str) -> None:
    """Fail early, with a clear message, if a remote URI's bucket/container is missing or the
    credentials are rejected. Successful checks are remembered for the process."""
    if is_local(uri) or protocol_of(uri) == "memory":
        return
    _check_uri(uri)
    key = hashlib.sha256(json.dumps([_container(uri), canonical_protocol(uri),
                                     {k: os.environ.get(k) for k in CREDENTIAL_ENV}]).encode()).hexdigest()
    if key in _checked:
        return
    if not _container_exists(uri):
        what = "bucket" if canonical_protocol(uri) == "s3" else "container"
        raise StorageError(f"the {what} '{_container(uri)}' of {redact(uri)!r} does not exist; create it or fix the URI.")
    _checked.add(key)


def exists(uri: str) -> bool:
    """Whether data is at `uri`. A missing bucket/container or rejected credentials raise StorageError
    (they are configuration errors, not missing data)."""
    fs, path = filesystem(uri)
    try:
        found = fs.exists(path)
    except Exception as exc:  # remote stores raise on auth/network errors: report, never leak secrets
        raise storage_error(exc, uri, "check") from None
    if not found:
        check_location(uri)
    return found


# --- transfer accounting (tests and benchmarks read it) -----------------------------------------


@dataclass
class TransferStats:
    """Bytes and files moved by staging since the last reset (local pass-through moves none)."""

    bytes_in: int = 0
    bytes_out: int = 0
    files_in: int = 0
    files_out: int = 0


_stats = TransferStats()
_stats_lock = threading.Lock()


def transfer_stats() -> TransferStats:
    with _stats_lock:
        return TransferStats(**vars(_stats))


def reset_transfer_stats() -> None:
    with _stats_lock:
        _stats.bytes_in = _stats.bytes_out = _stats.files_in = _stats.files_out = 0


def _count(direction: str, nbytes: int, nfiles: int) -> None:
    with _stats_lock:
        setattr(_stats, f"bytes_{direction}", getattr(_stats, f"bytes_{direction}") + nbytes)
        setattr(_stats, f"files_{direction}", getattr(_stats, f"files_{direction}") + nfiles)


def _local_tree(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from (p for p in path.rglob("*") if p.is_file())


# --- fingerprints -------------------------------------------------------------------------------

_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _file_digest(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    if st.st_size <= HASH_LIMIT:
        digest = sha256_file(path)
    else:  # hashing GiBs on every run costs seconds; size + mtime is what make(1) trusts too
        digest = f"stat:{st.st_size}:{st.st_mtime_ns}"
    with _memo_lock:
        _memo[key] = digest
    return digest


@dataclass(frozen=True)
class FileEntry:
    """One file of the data behind a URI: path relative to it, size, and a change tag."""

    path: str
    size: int
    checksum: str  # remote: "etag:..." (or "mtime:..."); local: "sha256:..." or "stat:size:mtime_ns"
    mtime_ns: Optional[int] = None  # local files only


def _remote_tag(e: dict) -> str:
    tag = e.get("ETag") or e.get("etag")
    if tag:
        return "etag:" + str(tag).strip('"')
    md5 = (e.get("content_settings") or {}).get("content_md5")
    if md5:
        return "md5:" + (md5.hex() if isinstance(md5, (bytes, bytearray)) else str(md5))
    return f"mtime:{e.get('last_modified') or e.get('LastModified')}"


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
        for f in sorted(_local_tree(p)):
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
        raise storage_error(exc, uri, "read") from None
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
        _check_uri(uri)
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


# --- moving bytes ----------------------------------------------------------------------------------


def download(uri: str, dest: Path) -> int:
    """Download a remote file or folder to local `dest` (a file path, or a folder for a folder).

    Objects are streamed to disk in chunks (never held in memory) and a folder's objects are
    fetched concurrently (s3fs/adlfs batch their async requests). Returns the bytes written.
    """
    fs, path = filesystem(uri)
    try:
        if fs.isdir(path):
            dest.mkdir(parents=True, exist_ok=True)
            fs.get(path.rstrip("/") + "/", str(dest) + "/", recursive=True)
        else:
            fs.get_file(path, str(dest))
    except Exception as exc:
        raise storage_error(exc, uri, "download") from None
    files = list(_local_tree(dest))
    nbytes = sum(f.stat().st_size for f in files)
    _count("in", nbytes, len(files))
    return nbytes


def upload(src: Path, uri: str) -> int:
    """Upload a local file or folder to `uri` (folders: concurrently, large files in multipart
    chunks streamed from disk). Returns the bytes sent."""
    fs, path = filesystem(uri)
    files = list(_local_tree(src))
    try:
        if src.is_dir():
            if files:
                fs.put(str(src) + "/", path.rstrip("/") + "/", recursive=True)
        else:
            fs.put_file(str(src), path)
    except Exception as exc:
        raise storage_error(exc, uri, "upload to") from None
    nbytes = sum(f.stat().st_size for f in files)
    _count("out", nbytes, len(files))
    return nbytes


# --- the artifact root -------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedStep:
    key: str
    attempt: str
    outputs: dict[str, str]  # output name -> URI


class ArtifactRoot:
    """The fsspec location under which steps publish their outputs.

    Creating one checks the URI scheme (and, for a remote root, once per process, that its
    bucket/container exists and the credentials are accepted), so bad input fails before a step runs.
    """

    def __init__(self, uri: str):
        self.uri = normalize(uri)
        self.fs, self.path = filesystem(self.uri)
        check_location(self.uri)

    @property
    def local(self) -> bool:
        return is_local(self.uri)

    def step_uri(self, key: str) -> str:
        return join(self.uri, "steps", key)

    def marker_uri(self, key: str) -> str:
        return join(self.step_uri(key), MARKER)

    def read_marker(self, key: str) -> Optional[dict]:
        uri = self.marker_uri(key)
        fs, path = filesystem(uri)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise storage_error(exc, uri, "read") from None
        try:
            marker = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn or foreign file is no marker
        return marker if isinstance(marker, dict) else None

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
        """An attempt id and a private local dir to write outputs into.

        On a local root the dir is inside the root (`.staging/`), so publishing is a rename.
        """
        attempt = uuid.uuid4().hex[:12]
        if self.local:
            staging = Path(self.path) / ".staging" / attempt
        else:
            staging = Path(staging_home) / "outputs" / attempt
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
        marker = {"key": key, "attempt": attempt, "outputs": uris, **meta}
        self._write_marker(key, marker)
        return PublishedStep(key, attempt, uris)

    def _upload(self, staging: Path, target: str, outputs: dict[str, str]) -> None:
        expected = {str(f.relative_to(staging)): f.stat().st_size for f in _local_tree(staging)}
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
            final = local_path(self.marker_uri(key))
            tmp = final.with_name(f".{MARKER}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(data)
            os.replace(tmp, final)
        else:
            uri = self.marker_uri(key)
            fs, path = filesystem(uri)
            try:
                fs.pipe_file(path, data.encode())  # one PUT: the store commits it whole or not at all
            except Exception as exc:
                raise storage_error(exc, uri, "write the completion marker") from None

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


def stage_in(uri: str, staging_home: Path, *, fingerprint_hint: Optional[str] = None) -> Path:
    """A local path for a data input: local data is used in place (no copy); remote data is
    downloaded once per fingerprint into `staging_home/inputs/` (written aside, then renamed), so
    a step, its retries and later steps with the same input download it once.

    `fingerprint_hint`: the input's fingerprint if the caller has it (saves one listing).
    """
    if is_local(uri):
        _check_uri(uri)
        p = local_path(uri)
        if not p.exists():
            raise StorageError(f"data {uri!r} does not exist; check the path or URI.")
        return p
    fp = fingerprint_hint if fingerprint_hint and not fingerprint_hint.startswith("step:") else fingerprint(uri)
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
