"""URI syntax: the schemes we know, their aliases, normalising, joining and local paths.

Pure string work: nothing here touches a filesystem, the network or the configuration, except
`normalize` of an `azureml://datastores/...` URI, which reads the datastore map (`datastores`).
"""

from __future__ import annotations

import re
from pathlib import Path

KNOWN_PROTOCOLS = ("file", "local", "s3", "s3a", "abfs", "abfss", "az", "memory", "http", "https")
READ_ONLY_PROTOCOLS = ("http", "https")  # data inputs only: never an artifact root or a snapshot target
ALIASES = {"s3a": "s3", "abfss": "abfs", "az": "abfs", "local": "file"}


def protocol_of(uri: str) -> str:
    """The scheme of `uri`, lower-case (`file` for a plain path)."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def canonical_protocol(uri: str) -> str:
    """`s3a` -> `s3`, `az`/`abfss` -> `abfs`, `local` -> `file`."""
    p = protocol_of(uri)
    return ALIASES.get(p, p)


def normalize(uri: str) -> str:
    """A plain path becomes an absolute `file://` URI; other URIs are returned without a trailing '/'.

    Azure's `azureml://datastores/<name>/paths/<path>` becomes the URI under the datastore's root
    (the datastore map: `prefect_ml.storage.datastores`, the one place here that reads a file)."""
    if uri.startswith("azureml://"):
        from prefect_ml.storage.datastores import resolve_datastore_uri

        uri = resolve_datastore_uri(uri)
    if "://" not in uri:
        return Path(uri).expanduser().resolve().as_uri()
    return uri.rstrip("/") if not uri.endswith(":///") else uri


def is_read_only(uri: str) -> bool:
    """Whether `uri` can only be read (http/https data inputs)."""
    return protocol_of(uri) in READ_ONLY_PROTOCOLS


def is_local(uri: str) -> bool:
    return protocol_of(uri) in ("file", "local")


def local_path(uri: str) -> Path:
    """The local path of a `file://` URI or plain path."""
    if "://" not in uri:
        return Path(uri).expanduser().resolve()
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def container_of(uri: str) -> str:
    """The bucket (s3) or container (abfs) of a remote URI."""
    return uri.split("://", 1)[1].split("/", 1)[0].split("@", 1)[0]


def is_known_protocol(uri: str) -> bool:
    """Whether the scheme of `uri` is one we can read and write."""
    return protocol_of(uri) in KNOWN_PROTOCOLS


# a signed URL's query (an Azure SAS `sig=`, S3/GCS presigned signatures, tokens) is a credential too
QUERY_SECRET = re.compile(r"[?&](?:sig|Signature|X-Amz-(?:Signature|Credential|Security-Token)"
                          r"|X-Goog-(?:Signature|Credential)|access_token|token)=", re.I)


def carries_credentials(uri: str) -> bool:
    """Whether a remote URI has a userinfo part (`user:secret@`, or `TOKEN@` on S3) or a signed query,
    which would put a credential in logs, tags and lineage. Azure's
    `abfs://container@account.dfs.core.windows.net` is no credential (the part before '@' is the container)."""
    if "://" not in uri or is_local(uri):
        return False
    if QUERY_SECRET.search(uri):
        return True
    netloc = uri.split("://", 1)[1].split("/", 1)[0]
    if "@" not in netloc:
        return False
    userinfo = netloc.rsplit("@", 1)[0]
    return ":" in userinfo or canonical_protocol(uri) != "abfs"
