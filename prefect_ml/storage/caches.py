"""Every per-process cache of the storage package, in one object that one call resets.

Filesystem instances, storage options read from a block (with a time to live), remote locations
already checked, file digests, and the transfer counters. Tests and long-running workers call
`caches.clear()` to start afresh (e.g. after rotating credentials).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class TransferStats:
    """Bytes and files moved by staging since the last reset (local pass-through moves none)."""

    bytes_in: int = 0
    bytes_out: int = 0
    files_in: int = 0
    files_out: int = 0


class StorageCaches:
    """The storage package's process-wide state, each part behind its own lock."""

    def __init__(self) -> None:
        self._fs_lock = threading.Lock()
        self._block_lock = threading.Lock()
        self._checked_lock = threading.Lock()
        self._digest_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._filesystems: dict[str, Any] = {}  # cache key -> fsspec filesystem
        self._block_options: dict[str, tuple[float, dict[str, Any]]] = {}  # block name -> (read at, options)
        self._checked: set[str] = set()  # remote locations whose bucket/container exists
        self._digests: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> digest
        self._stats = TransferStats()

    # --- filesystems -------------------------------------------------------------------------------

    def filesystem(self, key: str) -> Any | None:
        with self._fs_lock:
            return self._filesystems.get(key)

    def put_filesystem(self, key: str, fs: Any) -> None:
        with self._fs_lock:
            self._filesystems[key] = fs

    # --- storage options from a block --------------------------------------------------------------

    def block_options(self, name: str, ttl_s: float) -> dict[str, Any] | None:
        """The options read from block `name` less than `ttl_s` seconds ago, else None."""
        with self._block_lock:
            cached = self._block_options.get(name)
        if cached and time.monotonic() - cached[0] < ttl_s:
            return cached[1]
        return None

    def put_block_options(self, name: str, options: dict[str, Any]) -> None:
        with self._block_lock:
            self._block_options[name] = (time.monotonic(), options)

    # --- remote locations checked ------------------------------------------------------------------

    def location_checked(self, key: str) -> bool:
        with self._checked_lock:
            return key in self._checked

    def mark_location_checked(self, key: str) -> None:
        with self._checked_lock:
            self._checked.add(key)

    # --- file digests ------------------------------------------------------------------------------

    def digest(self, key: tuple) -> str | None:
        with self._digest_lock:
            return self._digests.get(key)

    def put_digest(self, key: tuple, digest: str) -> None:
        with self._digest_lock:
            self._digests[key] = digest

    # --- transfer counters -------------------------------------------------------------------------

    def count(self, direction: str, nbytes: int, nfiles: int) -> None:
        """Add a transfer `in` (download) or `out` (upload) to the counters."""
        with self._stats_lock:
            setattr(self._stats, f"bytes_{direction}", getattr(self._stats, f"bytes_{direction}") + nbytes)
            setattr(self._stats, f"files_{direction}", getattr(self._stats, f"files_{direction}") + nfiles)

    def transfer_stats(self) -> TransferStats:
        """A copy of the counters."""
        with self._stats_lock:
            return TransferStats(**vars(self._stats))

    def reset_transfer_stats(self) -> None:
        with self._stats_lock:
            for f in fields(TransferStats):
                setattr(self._stats, f.name, 0)

    # --- all of it ---------------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget every cached filesystem, block, location check and digest, and zero the counters."""
        with self._fs_lock:
            self._filesystems.clear()
        with self._block_lock:
            self._block_options.clear()
        with self._checked_lock:
            self._checked.clear()
        with self._digest_lock:
            self._digests.clear()
        self.reset_transfer_stats()


caches = StorageCaches()
