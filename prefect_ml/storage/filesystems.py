"""The fsspec filesystem for a URI: one cached instance per protocol, options and credentials.

fsspec imports the drivers (s3fs, adlfs) only when a filesystem of their protocol is made.
"""

from __future__ import annotations

import hashlib
import json

import fsspec

from prefect_ml._compat import strip_protocol
from prefect_ml.errors import StorageError
from prefect_ml.settings import get_settings
from prefect_ml.storage.caches import caches
from prefect_ml.storage.credentials import (
    check_uri,
    credential_environment,
    credential_hint,
    short_error,
    storage_options,
)
from prefect_ml.storage.uri import ALIASES, is_local, local_path, protocol_of


def _fs_for(protocol: str) -> fsspec.AbstractFileSystem:
    """One filesystem instance per protocol, options and credential environment (they change in tests)."""
    proto = ALIASES.get(protocol, protocol)
    settings = get_settings()
    options = storage_options(protocol, settings)
    env = credential_environment(settings)
    key = hashlib.sha256(json.dumps([proto, options, env], sort_keys=True, default=str).encode()).hexdigest()
    fs = caches.filesystem(key)
    if fs is not None:
        return fs
    # other processes publish under the same root: never answer exists()/info() from a stale listing
    kwargs = {"use_listings_cache": False, **options}
    try:
        fs = fsspec.filesystem(proto, skip_instance_cache=True, **kwargs)
    except ImportError as exc:
        raise StorageError(f"no fsspec driver for {protocol}:// ({exc}); install s3fs or adlfs.") from exc
    except Exception as exc:  # e.g. a malformed connection string
        # not chained: the driver's error may quote the options (a connection string); the message is redacted
        raise StorageError(
            f"cannot set up {protocol}:// storage: {type(exc).__name__}: {short_error(exc)}. "
            f"Check {credential_hint(proto)}."
        ) from None
    caches.put_filesystem(key, fs)
    return fs


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path of a URI, with a clear error for unknown schemes."""
    check_uri(uri)
    if is_local(uri):
        return fsspec.filesystem("file"), str(local_path(uri))
    fs = _fs_for(protocol_of(uri))
    return fs, strip_protocol(fs, uri)
