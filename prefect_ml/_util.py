"""Small helpers that several layers share: names, slugs, atomic writes, YAML with positions.

Each piece of knowledge lives here once (the name rule and its message, the slug rule, how a
file is replaced atomically, how a YAML error names its line and column).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Component, data asset and similar user-given names: letters, digits, '_', '-', '.', not first.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_RULE = "use letters, digits, '_', '-' or '.' (not first)"

_SLUG_CHARS = re.compile(r"[^a-z0-9-]+")


def is_name(value: object) -> bool:
    """True when `value` is a string that follows `NAME_PATTERN`."""
    return isinstance(value, str) and bool(NAME_PATTERN.match(value))


def slugify(text: str, *, max_len: int = 60, fallback: str = "x") -> str:
    """Lowercase `text` and keep `[a-z0-9-]`: the form Prefect artifact keys accept."""
    return _SLUG_CHARS.sub("-", text.lower()).strip("-")[:max_len] or fallback


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` so that a reader sees the old content or the new, never a part of it.

    The temporary file sits beside the target (same filesystem, so the rename is atomic).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def yaml_error_position(exc: Exception) -> str:
    """' line L, column C' for a YAML error that has a position (1-based), else ''."""
    mark = getattr(exc, "problem_mark", None)
    return f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def yaml_problem(exc: Exception) -> str:
    """The short problem text of a YAML error (not its multi-line repr)."""
    return str(getattr(exc, "problem", None) or exc)


# Component, environment and data files are a few KiB; these bounds stop a hostile file (a YAML
# "billion laughs" of nested aliases, or a huge file) from taking minutes and gigabytes to load.
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_ALIASES = 100


class YAMLLimitError(ValueError):
    """A YAML document is larger, or uses more aliases, than a spec file may."""


def safe_load_yaml(text: str) -> Any:
    """`yaml.safe_load` within `MAX_YAML_BYTES` and `MAX_YAML_ALIASES` (raises `YAMLLimitError`).

    yaml is imported here so that modules that never read YAML do not pay for it.
    """
    import yaml

    if len(text.encode()) > MAX_YAML_BYTES:
        raise YAMLLimitError(f"the file is over {MAX_YAML_BYTES // 1024} KiB, more than a spec file may be")

    class BoundedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise YAMLLimitError(
                        f"the file uses more than {MAX_YAML_ALIASES} YAML aliases (*name); write the values out"
                    )
            return super().compose_node(parent, index)

    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml_file(path: Path, error: Callable[[str], Exception], text: str | None = None) -> Any:
    """Parse a spec file (`text`, when the caller has read it already) within the bounds above.

    A YAML problem raises `error(message)`, the message naming the file and the position:
    `<path>: line L, column C: invalid YAML: <problem>; fix the syntax there.` Anything else (an
    OSError, a bug) propagates as it is: it is not the file's syntax.
    """
    try:
        return safe_load_yaml(path.read_text() if text is None else text)
    except YAMLLimitError as exc:
        raise error(f"{path}: {exc}.") from None
    except Exception as exc:  # yaml.YAMLError (yaml is imported lazily)
        if not type(exc).__module__.startswith("yaml"):
            raise
        at = yaml_error_position(exc)
        raise error(f"{path}:{at}: invalid YAML: {yaml_problem(exc)}; fix the syntax there.") from None
