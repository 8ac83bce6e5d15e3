"""The step cache key: one documented, fail-closed function."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

KEY_VERSION = "1"
SKIP_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache"}


def code_digest(code_dir: Path) -> str:
    """sha256 over every file's relative path and bytes in the code dir (bytecode caches skipped)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(code_dir):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            p = Path(root) / name
            h.update(str(p.relative_to(code_dir)).encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()


def component_definition(component) -> dict[str, Any]:
    """The parts of a component that change what it computes (not its description or tags)."""
    return {
        "name": component.name,
        "version": component.version,
        "command": component.command,
        "inputs": {k: [v.type, v.default, v.optional] for k, v in sorted(component.inputs.items())},
        "outputs": {k: v.type for k, v in sorted(component.outputs.items())},
        "environment_variables": dict(sorted(component.environment_variables.items())),
    }


def step_cache_key(
    component,
    *,
    code: str,
    environment: Optional[str],
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
