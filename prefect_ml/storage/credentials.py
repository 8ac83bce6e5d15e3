"""Credentials and storage options, and keeping their secrets out of every message.

Credentials and endpoints come from the standard chains, unchanged (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, profiles, instance roles; `AZURE_STORAGE_CONNECTION_STRING`,
`AZURE_STORAGE_ACCOUNT_NAME`/`_KEY`, service principals), plus fsspec options per protocol from the
`storage_options` setting (`PREFECT_ML_STORAGE_OPTIONS`, JSON) and, optionally, a saved Secret/JSON
block named by the `storage_options_block` setting (`PREFECT_ML_STORAGE_OPTIONS_BLOCK`). They are
never taken from URIs or command lines (`check_uri` refuses a URI that carries them), and `redact`
scrubs their values from every error message.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from prefect_ml.errors import StorageError
from prefect_ml.settings import PrefectMLSettings, get_settings
from prefect_ml.storage.caches import caches
from prefect_ml.storage.uri import (
    ALIASES,
    READ_ONLY_PROTOCOLS,
    canonical_protocol,
    carries_credentials,
    is_known_protocol,
    protocol_of,
)

# The cloud SDKs' variables whose values select the endpoint or identity: part of every cache key.
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
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
    re.compile(r"((?:%3F|%26)sig%3D)[^&\s%]+", re.I),  # a SAS signature inside a URL-encoded URL
    # presigned S3 / GCS URLs (an https:// input given as a signed URL) and OAuth-style tokens in a query
    re.compile(r"([?&](?:X-Amz-(?:Signature|Credential|Security-Token)|X-Goog-(?:Signature|Credential)"
               r"|Signature|access_token|token)=)[^&\s]+", re.I),
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/@\s:]*:)[^/@\s]+(?=@)", re.I),  # scheme://user:PASSWORD@host
    re.compile(r"(\bs3a?://)[^/@\s]+(?=@)", re.I),  # s3://TOKEN@bucket
)
CREDENTIAL_HINT = {
    "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a profile/role) and AWS_ENDPOINT_URL, or the 's3' entry of "
          "PREFECT_ML_STORAGE_OPTIONS",
    "abfs": "AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT_NAME/_KEY, a SAS token or a service "
            "principal), or the 'abfs' entry of PREFECT_ML_STORAGE_OPTIONS",
}
BLOCK_TTL_S = 60.0  # re-read the block at most once a minute (a rotated secret is picked up)


def credential_hint(protocol: str, default: str = "the storage options") -> str:
    """Where the credentials of a (canonical) protocol come from, for error messages."""
    return CREDENTIAL_HINT.get(protocol, default)


def credential_environment(settings: PrefectMLSettings | None = None) -> dict[str, str | None]:
    """Everything that selects a store's endpoint or identity: the SDKs' variables and our settings."""
    settings = settings or get_settings()
    env = {k: os.environ.get(k) for k in CREDENTIAL_ENV}
    env["PREFECT_ML_STORAGE_OPTIONS"] = settings.storage_options
    env["PREFECT_ML_STORAGE_OPTIONS_BLOCK"] = settings.storage_options_block
    return env


# --- storage options ----------------------------------------------------------------------------


def _options_from_block(name: str) -> dict[str, Any]:
    """Storage options kept in a saved Prefect block (a Secret or JSON block holding the same JSON)."""
    cached = caches.block_options(name, BLOCK_TTL_S)
    if cached is not None:
        return cached
    value = _load_block_options(name)
    caches.put_block_options(name, value)
    return value


def _load_block_options(name: str) -> dict[str, Any]:
    from prefect.blocks.core import Block

    try:
        block = Block.load(name, validate=False)
    except Exception as exc:
        raise StorageError(
            f"PREFECT_ML_STORAGE_OPTIONS_BLOCK names block {name!r}, which cannot be loaded ({type(exc).__name__}); "
            "save a Secret or JSON block with storage options keyed by protocol, e.g. 'secret/ml-storage'."
        ) from exc
    value = block.get() if hasattr(block, "get") else getattr(block, "value", None)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            # not chained: the decode error holds the block's whole (secret) text as `doc`
            raise StorageError(f"block {name!r} does not hold JSON storage options keyed by protocol.") from None
    if not isinstance(value, dict):
        raise StorageError(f"block {name!r} does not hold a JSON object of storage options keyed by protocol.")
    return value


def _all_options(settings: PrefectMLSettings | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    raw = settings.storage_options
    options: dict[str, Any] = {}
    if settings.storage_options_block:
        options.update(_options_from_block(settings.storage_options_block))
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            # not chained: the message has the decode error; the error's `doc` holds the (secret) options
            raise StorageError(
                f"PREFECT_ML_STORAGE_OPTIONS is not valid JSON ({exc.msg}); give an object keyed by protocol, "
                'e.g. {"s3": {"endpoint_url": "http://127.0.0.1:9000"}}.'
            ) from None
        if not isinstance(parsed, dict):
            raise StorageError("PREFECT_ML_STORAGE_OPTIONS must be a JSON object keyed by protocol (s3, abfs).")
        for proto, opts in parsed.items():
            options[proto] = {**(options.get(proto) or {}), **(opts or {})}
    return options


def storage_options(protocol: str, settings: PrefectMLSettings | None = None) -> dict[str, Any]:
    """fsspec options for a protocol from the settings block/JSON (`s3a` reads `s3`, `az`/`abfss` read `abfs`).

    `settings`: the settings already read by the caller (reading them costs a little).
    """
    options = _all_options(settings)
    return dict(options.get(protocol) or options.get(ALIASES.get(protocol, protocol)) or {})


# --- secrets ------------------------------------------------------------------------------------


def _secrets() -> list[str]:
    values = [os.environ.get(k, "") for k in SECRET_ENV]
    try:
        for opts in _all_options().values():
            for k, v in (opts or {}).items():
                if isinstance(v, str) and SECRET_OPTION.search(k):
                    values.append(v)
    except StorageError:
        pass
    for cs in [os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""), *values]:
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


def short_error(exc: BaseException) -> str:
    """The first line of an exception's text (at most 300 characters), redacted."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text[:300])


def check_uri(uri: str) -> None:
    """Raise StorageError for an unknown scheme or a URI that carries credentials."""
    protocol = protocol_of(uri)
    if not is_known_protocol(uri):
        raise StorageError(
            f"unknown URI scheme '{protocol}://' in {redact(uri)!r}; use a local path, file://, s3://, abfs:// or "
            "az:// "
            "(https:// for read-only data inputs)."
        )
    if carries_credentials(uri) and protocol in READ_ONLY_PROTOCOLS:
        raise StorageError(
            f"{protocol}:// inputs must not carry credentials (a signed URL's signature or a user:password would be "
            "recorded in lineage, MLflow tags and logs): serve the data without them, or copy it to s3:// or abfs://, "
            "whose credentials come from the environment."
        )
    if carries_credentials(uri):
        # user:secret@host would put a credential in the URI (and so in logs and MLflow tags)
        raise StorageError(
            f"{protocol}:// URIs must not carry credentials; use "
                f"{credential_hint(canonical_protocol(uri), 'storage options')}."
        )
