"""Whether data or its bucket/container exists, and what a failed storage operation means.

`storage_error` turns a driver's exception into a StorageError that says what went wrong (access
denied, endpoint unreachable, bucket/container or data missing) and how to fix it, without a
secret. The driver's exception is not chained to it (`from None`): its text and its own cause
may quote connection strings, SAS URLs or keys that a logged traceback would print.
"""

from __future__ import annotations

import hashlib
import json
import ssl

from prefect_ml.errors import StorageError
from prefect_ml.storage.caches import caches
from prefect_ml.storage.credentials import check_uri, credential_environment, credential_hint, redact, short_error
from prefect_ml.storage.filesystems import filesystem
from prefect_ml.storage.uri import canonical_protocol, container_of, is_local, protocol_of


def is_auth_error(exc: BaseException) -> bool:
    """Whether a driver's exception means the credentials were rejected."""
    if isinstance(exc, PermissionError):
        return True
    status = getattr(exc, "status_code", None)
    text = f"{type(exc).__name__} {exc} {getattr(exc, 'error_code', '')}".lower()
    return status in (401, 403) or any(s in text for s in (
        "authorizationfailure", "authenticationfailed", "authentication_failed", "authorization_failure",
        "invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "forbidden", "clientauthenticationerror",
    ))


def is_connection_error(exc: BaseException) -> bool:
    """Whether a driver's exception means the endpoint cannot be reached."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(s in text for s in ("endpointconnectionerror", "could not connect", "connection refused",
                                   "servicerequesterror", "cannot connect to host", "name or service not known"))


def storage_error(exc: BaseException, uri: str, action: str) -> StorageError:
    """A StorageError that says what went wrong with `uri` and how to fix it (never a secret)."""
    if isinstance(exc, StorageError):
        return exc
    proto = canonical_protocol(uri)
    what = {"s3": "bucket", "abfs": "container"}.get(proto, "location")
    shown = redact(uri)
    if proto in ("http", "https"):
        return _http_error(exc, shown, action)
    if is_auth_error(exc):
        return StorageError(
            f"cannot {action} {shown!r}: access denied: the {proto}:// credentials were rejected "
            f"({type(exc).__name__}). Check {credential_hint(proto)}."
        )
    if is_connection_error(exc):
        return StorageError(
            f"cannot {action} {shown!r}: the {proto}:// endpoint cannot be reached ({short_error(exc)}). "
            f"Check {credential_hint(proto)}."
        )
    if isinstance(exc, FileNotFoundError) or "notfound" in type(exc).__name__.lower():
        if not is_local(uri) and not container_exists(uri):
            return StorageError(
                f"cannot {action} {shown!r}: the {what} '{container_of(uri)}' does not exist; create it "
                f"or fix the URI."
            )
        return StorageError(f"cannot {action} {shown!r}: no data there; check the path or URI.")
    return StorageError(f"cannot {action} {shown!r}: {type(exc).__name__}: {short_error(exc)}")


def _http_error(exc: BaseException, shown: str, action: str) -> StorageError:
    """fsspec's HTTP filesystem reports most failures as FileNotFoundError; its cause (aiohttp's error)
    says which: an untrusted TLS certificate, a server that cannot be reached, a refusal, or no data."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    cert = next((c for c in chain if isinstance(c, ssl.SSLCertVerificationError)
                 or isinstance(getattr(c, "certificate_error", None), ssl.SSLCertVerificationError)), None)
    if cert is not None:
        detail = getattr(getattr(cert, "certificate_error", cert), "verify_message", "") or short_error(cert)
        return StorageError(
            f"cannot {action} {shown!r}: the server's TLS certificate is not trusted ({detail}). Trust its CA: "
            "point SSL_CERT_FILE at a PEM bundle that holds it (or add it to this machine's CA store)."
        )
    http = [c for c in chain if type(c).__module__.startswith("aiohttp")]  # what the server or the network said
    statuses = [getattr(c, "status", None) for c in http]
    status = next((code for code in statuses if isinstance(code, int)), None)
    if status in (401, 403):
        return StorageError(f"cannot {action} {shown!r}: the server refused it (HTTP {status}); https:// inputs are "
                            "read without credentials: serve the data without them, or copy it to s3:// or abfs://.")
    if status is not None and status >= 500:
        return StorageError(f"cannot {action} {shown!r}: the server failed (HTTP {status}); try again later.")
    reach = next((c for c in http if "connect" in type(c).__name__.lower() or is_connection_error(c)), None)
    if reach is not None:
        return StorageError(f"cannot {action} {shown!r}: the server cannot be reached ({short_error(reach)}); "
                            "check the URL and that the server is up.")
    if status == 404 or (isinstance(exc, FileNotFoundError) and not http and len(chain) == 1):
        return StorageError(f"cannot {action} {shown!r}: no data at this URL (HTTP 404); check the URL.")
    # anything else (a timeout, a local disk or permission error while downloading) as it is
    cause = http[0] if http else chain[-1]
    return StorageError(f"cannot {action} {shown!r}: {type(cause).__name__}: {short_error(cause)}")


def container_exists(uri: str) -> bool:
    """Whether the bucket/container of a remote URI exists (raises StorageError on auth errors)."""
    fs, _ = filesystem(uri)
    container = container_of(uri)
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
        if is_auth_error(exc) or is_connection_error(exc):
            raise storage_error(exc, uri, "access") from None
        return True  # e.g. no list permission: let the real operation say what is wrong


def check_location(uri: str) -> None:
    """Fail early, with a clear message, if a remote URI's bucket/container is missing or the
    credentials are rejected. Successful checks are remembered for the process."""
    if is_local(uri) or protocol_of(uri) in ("memory", "http", "https"):
        return  # http(s): no bucket or container to check; a missing URL is a missing input
    check_uri(uri)
    key = hashlib.sha256(json.dumps([container_of(uri), canonical_protocol(uri),
                                     credential_environment()]).encode()).hexdigest()
    if caches.location_checked(key):
        return
    if not container_exists(uri):
        what = "bucket" if canonical_protocol(uri) == "s3" else "container"
        raise StorageError(f"the {what} '{container_of(uri)}' of {redact(uri)!r} does not exist; create it or fix "
            "the URI.")
    caches.mark_location_checked(key)


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
