"""The Prefect UI in a real headless Chromium shows a deployed pipeline run, its steps and artifacts.

Renders pages of the server from tests/integration/test_deployments.py (shared: one server and one completed
`credit-default/cpu` run per session), saves a screenshot and the rendered DOM of each page under
`test-output/ui/` (or `$PREFECT_ML_TEST_OUTPUT/ui/`), and asserts on the text the page shows.
Chromium comes from Debian (`apt-get install -y chromium`, see scripts/setup-test-services.sh).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

# the same module object pytest collected (tests/ is a package), so the session shares one server
from tests.integration.test_deployments import Stack, cpu_run, deploy_stack  # noqa: F401 - fixtures
from tests.paths import REPO
from tests.servers import skip_or_fail

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--window-size=1400,1000",
]
# Without a virtual time budget the page is captured before the app has fetched anything; on a busy
# machine an API answer can still come late, so a page missing its expected text is loaded again
# with a larger budget.
TIME_BUDGETS_MS = (20_000, 40_000, 60_000, 60_000, 90_000)  # the logs panel loads lazily: retry the render


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("no Chromium: apt-get install -y chromium (scripts/setup-test-services.sh)")
    return ""  # unreachable


@pytest.fixture(scope="module")
def output_dir() -> Path:
    root = Path(os.environ.get("PREFECT_ML_TEST_OUTPUT") or REPO / "test-output")
    out = root / "ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


def page_text(dom: str) -> str:
    """The visible text of a rendered DOM: tags, scripts and styles dropped, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


def render(url: str, out: Path, name: str, tmp_path: Path, expect: tuple[str, ...] = ()) -> str:
    """Load `url` in headless Chromium; save NAME.png and NAME.html under `out`; return the page text.

    Loads again (with a larger virtual time budget) while a string of `expect` is not on the page.
    """
    shot, dom_file = out / f"{name}.png", out / f"{name}.html"
    for attempt, budget in enumerate(TIME_BUDGETS_MS):
        proc = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--virtual-time-budget={budget}",
             f"--user-data-dir={tmp_path / f'chromium-{name}-{attempt}'}",
             f"--screenshot={shot}", "--dump-dom", url],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, check=False,
            env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
        )
        assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
        text = page_text(proc.stdout)
        if all(e in text for e in expect):
            break
    dom_file.write_text(proc.stdout)
    assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {url}"
    assert "Can't connect to Server API" not in text, "the UI does not reach the API (PREFECT_UI_API_URL)"
    return text


def test_flow_run_page_shows_completed_run_and_steps(deploy_stack: Stack, cpu_run: dict, output_dir, tmp_path):  # noqa: F811 - fixtures
    text = render(f"{deploy_stack.ui_url}/runs/flow-run/{cpu_run['id']}", output_dir, "flow-run", tmp_path,
                  expect=("Completed", "data_prep", "evaluate"))
    assert cpu_run["name"] in text, text[:2000]
    assert "Completed" in text
    assert "credit-default" in text and "ml-cpu" in text  # flow, and the work pool it ran on
    count = re.search(r"(\d+) Task runs?", text)
    assert count and int(count.group(1)) >= 5, text[:2000]  # three steps, the gate, the registration
    for step in ("data_prep", "train", "evaluate"):  # the logs name each step's task run
        assert step in text, step


def test_task_run_page_shows_step_logs(deploy_stack: Stack, cpu_run: dict, output_dir, tmp_path):  # noqa: F811 - fixtures
    train = next(t for t in deploy_stack.task_runs(cpu_run["id"]) if t["name"] == "train")
    # the worker ships logs to the API in batches after the run: wait until the line is stored, then render
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logs = deploy_stack.api("POST", "/logs/filter",
                                {"logs": {"task_run_id": {"any_": [train["id"]]}}, "limit": 200})
        if any("training on" in log["message"] for log in logs):
            break
        time.sleep(2)
    text = render(f"{deploy_stack.ui_url}/runs/task-run/{train['id']}", output_dir, "task-run-train", tmp_path,
                  expect=("Completed", "training on"))
    assert "train" in text and "Completed" in text, text[:2000]
    assert "training on" in text, text[:3000]  # a line the step's own process printed


def test_artifact_pages_show_summary_and_metrics(deploy_stack: Stack, cpu_run: dict, output_dir, tmp_path):  # noqa: F811 - fixtures
    artifacts = deploy_stack.artifacts(cpu_run["id"])
    metrics = render(f"{deploy_stack.ui_url}/artifacts/artifact/{artifacts['metrics-credit-default']['id']}",
                     output_dir, "artifact-metrics", tmp_path, expect=("auc",))
    assert "metrics-credit-default" in metrics
    assert re.search(r"evaluate metrics auc 0\.\d+", metrics), metrics[:2000]
    summary = render(f"{deploy_stack.ui_url}/artifacts/artifact/{artifacts['pipeline-credit-default']['id']}",
                     output_dir, "artifact-pipeline-summary", tmp_path, expect=("evaluate", "file://"))
    for step in ("data_prep", "train", "evaluate"):
        assert step in summary
    assert re.search(r"\b(hit|miss)\b", summary) and "file://" in summary, summary[:2000]
