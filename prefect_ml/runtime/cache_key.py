"""The step cache key: one documented, fail-closed function."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect_ml.errors import ComponentError

KEY_VERSION = "2"  # 2: env var values as digests
# A code dir is source: these bounds stop `code: /` (or a data folder) from hashing a whole disk.
MAX_CODE_FILES = 20_000
MAX_CODE_BYTES = 512 * 2**20
SKIP_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache"}


def code_digest(code_dir: Path) -> str:
    """sha256 over every file's relative path and bytes in the code dir (bytecode caches skipped).

    It hashes what the step will read: symlinks inside the code dir are followed (a linked helper
    package counts), a link that leads out of it is an error (its content is not the component's),
    and special files (FIFOs, devices, sockets) are refused instead of read, so hashing never blocks.
    """
    import stat

    root = Path(code_dir).resolve()
    h = hashlib.sha256()
    seen: set[Path] = set()
    n_files = n_bytes = 0

    def where(p: Path) -> str:
        return str(p.relative_to(code_dir)) if p.is_relative_to(code_dir) else str(p)

    for dirpath, dirs, files in os.walk(code_dir, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if not real.is_relative_to(root):
            raise ComponentError(
                f"code dir {str(code_dir)!r}: {where(here)!r} links to {str(real)!r}, outside the code dir; "
                "copy it into the code dir (the step's cache key and container see only the code dir)."
            )
        if real in seen:  # a link loop or a second link to the same folder: hash it once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            p = here / name
            target = p.resolve()
            if not target.is_relative_to(root):
                raise ComponentError(
                    f"code dir {str(code_dir)!r}: {where(p)!r} links to {str(target)!r}, outside the code dir; "
                    "copy the file into the code dir instead."
                )
            try:
                mode = os.stat(p).st_mode
            except FileNotFoundError:  # a dangling link: nothing the step could read
                h.update(f"{where(p)}\0<dangling>\0".encode())
                continue
            if not stat.S_ISREG(mode):
                raise ComponentError(
                    f"code dir {str(code_dir)!r}: {where(p)!r} is not a regular file (a FIFO, socket or device); "
                    "remove it from the code dir."
                )
            n_files += 1
            n_bytes += os.stat(p).st_size
            if n_files > MAX_CODE_FILES or n_bytes > MAX_CODE_BYTES:
                raise ComponentError(
                    f"code dir {str(code_dir)!r} holds more than {MAX_CODE_FILES} files or "
                    f"{MAX_CODE_BYTES // 2**20} MiB; point `code` at the component's source folder, not at a "
                    "data or home folder (data belongs in inputs)."
                )
            h.update(where(p).encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def component_definition(component) -> dict[str, Any]:
    """The parts of a component that change what it computes (not its description or tags)."""
    definition = {
        "name": component.name,
        "version": component.version,
        "command": component.command,
        "inputs": {k: [v.type, v.default, v.optional] for k, v in sorted(component.inputs.items())},
        "outputs": {k: v.type for k, v in sorted(component.outputs.items())},
        # values may be secrets: the key (and the marker and artifact that show its parts) keeps a digest
        "environment_variables": {k: "sha256:" + hashlib.sha256(v.encode()).hexdigest()[:16]
                                  for k, v in sorted(component.environment_variables.items())},
    }
    # the world size changes the numbers a distributed step computes (sharding, reduction order); only
    # a distributed component has the part, so every other key stays what it was
    dist = getattr(component, "distribution", None)
    if dist is not None:
        definition["distribution"] = [dist.type, dist.instance_count, dist.process_count_per_instance]
    return definition


def step_cache_key(
    component,
    *,
    code: str,
    environment: str | None,
    values: Mapping[str, Any],
    data: Mapping[str, str],
) -> tuple[str, dict[str, Any]]:
    """The cache key of a step and the parts it was made of.

    key = sha256(json({
        "v": KEY_VERSION,
        "component": name, version, command, input/output types and defaults, env vars,
        "code": sha256 of the code dir (see `code_digest`),
        "environment": the environment's content hash (plus the image id in Docker), or null,
        "values": primitive input values (canonical JSON: 0.1 and 0.10 are the same),
        "data": fingerprint of each data input (see `storage.fingerprint`; a step output's
                fingerprint is its producer's key, so the key chains through the pipeline),
    }))

    No run ids, timestamps, output paths or infrastructure settings are part of it: where a step
    runs does not change what it computes. The caller fails closed: if any part cannot be
    computed, the step runs (and says why) instead of guessing a key.
    """
    parts = {
        "v": KEY_VERSION,
        "component": component_definition(component),
        "code": code,
        "environment": environment,
        "values": {k: values[k] for k in sorted(values)},
        "data": {k: data[k] for k in sorted(data)},
    }
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32], parts
