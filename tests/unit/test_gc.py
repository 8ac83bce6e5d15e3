"""`prefect-ml gc` on the file system: unpublished attempts and old staging folders (no engine, no server).
Containers, images and S3 multipart uploads: tests/integration/test_gc.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from typer.testing import CliRunner


def _age(path: Path, hours: float) -> Path:
    t = time.time() - hours * 3600
    os.utime(path, (t, t))
    return path


def _layout(home: Path) -> dict[str, Path]:
    root = home / "artifacts"
    p = {
        "published": root / "steps" / "k1" / "aaaaaaaaaaaa",
        "lost_race": root / "steps" / "k1" / "bbbbbbbbbbbb",
        "no_marker": root / "steps" / "k2" / "cccccccccccc",
        "fresh_no_marker": root / "steps" / "k3" / "dddddddddddd",
        "staging_attempt": root / ".staging" / "eeeeeeeeeeee",
        "remote_outputs": home / "staging" / "outputs" / "ffffffffffff",
        "download": home / "staging" / "inputs" / "0123456789abcdef01234567",
        "relay": home / "staging" / "mlruns-x1",
        "fresh_download": home / "staging" / "inputs" / "fresh",
    }
    for path in p.values():
        path.mkdir(parents=True)
        (path / "f.txt").write_text("x")
    (root / "steps" / "k1" / "_COMPLETE.json").write_text(json.dumps({"attempt": "aaaaaaaaaaaa"}))
    for name, path in p.items():
        if not name.startswith("fresh"):
            _age(path, 48)
    return p


def test_gc_lists_then_removes_unpublished_attempts_and_old_staging(ml_home):
    from prefect_ml.cli import app

    paths = _layout(ml_home)
    runner = CliRunner()
    dry = runner.invoke(app, ["gc", "--only", "attempts", "--only", "staging"])
    assert dry.exit_code == 0, dry.output
    assert "6 to remove; run again with --yes" in dry.output, dry.output
    assert all(p.exists() for p in paths.values())  # a dry run removes nothing
    assert "the marker names attempt aaaaaaaaaaaa" in dry.output and "no marker" in dry.output

    done = runner.invoke(app, ["gc", "--yes", "--only", "attempts", "--only", "staging"])
    assert done.exit_code == 0, done.output
    assert "6 removed, 0 failed" in done.output
    gone = {"lost_race", "no_marker", "staging_attempt", "remote_outputs", "download", "relay"}
    for name, path in paths.items():
        assert path.exists() != (name in gone), (name, done.output)


def test_gc_refuses_an_unknown_kind(ml_home):
    from prefect_ml.cli import app

    result = CliRunner().invoke(app, ["gc", "--only", "everything"])
    assert result.exit_code == 1
    assert "unknown kind(s) ['everything']" in result.output
