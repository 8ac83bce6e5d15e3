"""Paths the tests share: a plain module (no fixtures, no side effects), importable from any tier.

    from tests.paths import REPO, SHARED_DATA
"""

from __future__ import annotations

from pathlib import Path

#: The repository root (this file is tests/paths.py).
REPO = Path(__file__).resolve().parent.parent
#: The real UCI credit-default table, outside the project (tests that need it skip without it).
SHARED_DATA = REPO.parent / "shared" / "data" / "credit_default.csv"
