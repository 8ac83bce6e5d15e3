"""Data by URI on fsspec: the artifact-root layout, staging in, atomic publish, fingerprints.

One concern per module (each imports only the ones listed before it):

    uri            URI syntax: schemes, aliases, normalize, join, local paths (http/https: read-only inputs)
    datastores     Azure's azureml://datastores/<name>/paths/<p> -> a URI, through datastores.yaml
    caches         every per-process cache in one object (`caches.clear()` resets them all)
    credentials    storage options (settings, block), secrets and `redact`, URI checks
    filesystems    the cached fsspec filesystem for a URI
    locations      exists / bucket-container checks, and `storage_error` (what went wrong)
    fingerprint    the files behind a URI and their fingerprint
    transfer       download, upload, stage in, transfer counters
    artifact_root  where steps publish outputs: attempts, the completion marker
"""

from prefect_ml.records import PublishedStep
from prefect_ml.storage.artifact_root import MARKER, ArtifactRoot
from prefect_ml.storage.caches import StorageCaches, TransferStats, caches
from prefect_ml.storage.credentials import redact, storage_options
from prefect_ml.storage.filesystems import filesystem
from prefect_ml.storage.fingerprint import HASH_LIMIT, FileEntry, fingerprint, list_files, sha256_file
from prefect_ml.storage.locations import check_location, exists, storage_error
from prefect_ml.storage.transfer import download, reset_transfer_stats, stage_in, transfer_stats, upload
from prefect_ml.storage.uri import canonical_protocol, is_local, join, local_path, normalize

__all__ = [
    "HASH_LIMIT",
    "MARKER",
    "ArtifactRoot",
    "FileEntry",
    "PublishedStep",
    "StorageCaches",
    "TransferStats",
    "caches",
    "canonical_protocol",
    "check_location",
    "download",
    "exists",
    "filesystem",
    "fingerprint",
    "is_local",
    "join",
    "list_files",
    "local_path",
    "normalize",
    "redact",
    "reset_transfer_stats",
    "sha256_file",
    "stage_in",
    "storage_error",
    "storage_options",
    "transfer_stats",
    "upload",
]
