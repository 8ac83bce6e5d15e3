"""Model lifecycle end to end: champion vs challenger in real training runs, the promotion flow paused
for a decision (answered through the API, and through the Prefect UI in headless Chromium), rejection,
rollback, batch scoring with @champion, and the bad inputs.

Real Prefect (the session's test-harness API; a `prefect server start` with its UI for the Chromium
test), a real MLflow SQLite registry, steps as local processes. Three credit-default runs train the
models once for the module (synthetic sample): a first model, a better one, a worse one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.paths import REPO

sys.path.insert(0, str(REPO / "flows"))

pytestmark = pytest.mark.integration

NAME = "lifecycle_credit_model"
# three runs of credit-default on the synthetic sample: AUC(2) > AUC(1) and AUC(3) < AUC(2)
TRAININGS = ({"n_estimators": 3, "learning_rate": 0.05}, {"n_estimators": 60, "learning_rate": 0.1},
             {"n_estimators": 1, "learning_rate": 0.01})


@dataclass
class Trained:
    home: Path
    out: list[dict[str, Any]]  # credit_default's return value per run
    flow_run_ids: list[str]
    status_after_run: list[str | None]  # the new version's approval status right after its run
    challenger_after_run: list[int | None]  # the @challenger version right after each run


def _client():
    from prefect_ml.runtime import tracking

    return tracking.client()


def _tags(version: int) -> dict[str, str]:
    return _client().get_model_version(NAME, str(version)).tags


def _champion() -> int | None:
    from prefect_ml.runtime import promotion

    return promotion.alias_version(_client(), NAME, "champion")


def _artifacts(flow_run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as c:
        found = c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in sorted(found, key=lambda a: a.created)}  # the latest version of each key


@pytest.fixture(scope="module")
def trained(prefect_api, tmp_path_factory):
    """One PREFECT_ML_HOME for the module: v1 trained and promoted to @champion, v2 (better: wins, then
    promoted), v3 (worse than v2: loses)."""
    from credit_default import credit_default

    from prefect_ml.runtime import promotion

    home = tmp_path_factory.mktemp("lifecycle") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_ML_HOME", str(home))
        for var in ("PREFECT_ML_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI", "PREFECT_ML_INFRASTRUCTURE"):
            mp.delenv(var, raising=False)
        outs, ids, statuses, challengers = [], [], [], []
        for i, params in enumerate(TRAININGS):
            state = credit_default(registered_model_name=NAME, min_auc=0.0, return_state=True, **params)
            outs.append(state.result())
            ids.append(str(state.state_details.flow_run_id))
            version = outs[-1]["registered"]["version"]
            statuses.append(_tags(version).get("prefect_ml.approval_status"))
            challengers.append(promotion.alias_version(_client(), NAME, "challenger"))
            if i < 2:  # the first model, then the winner, become champion (as an approval would do)
                promotion.promote(NAME, outs[i]["registered"]["version"], by="fixture", reason=f"run {i + 1}")
        yield Trained(home=home, out=outs, flow_run_ids=ids, status_after_run=statuses,
                      challenger_after_run=challengers)


def _version(trained: Trained, i: int) -> int:
    return int(trained.out[i]["registered"]["version"])


# --- champion vs challenger -------------------------------------------------------------------------------


def test_better_second_model_wins_and_worse_third_loses(trained):
    first, second, third = (trained.out[i]["registered"]["comparison"] for i in range(3))
    assert first["decision"] == "no-champion" and first["wins"]
    assert second["decision"] == "challenger-wins", second
    assert second["champion_version"] == _version(trained, 0)
    assert second["challenger_value"] > second["champion_value"]
    assert third["decision"] == "champion-holds", third
    assert third["champion_version"] == _version(trained, 1)
    assert third["challenger_value"] < third["champion_value"] and not third["wins"]

    t2, t3 = _tags(_version(trained, 1)), _tags(_version(trained, 2))
    assert t2["prefect_ml.comparison.decision"] == "challenger-wins"
    assert trained.status_after_run == ["PendingManualApproval", "PendingManualApproval", "Rejected"]
    assert trained.challenger_after_run[:2] == [_version(trained, 0), _version(trained, 1)]
    assert t2["prefect_ml.comparison.rule"] == "challenger auc >= champion auc + 0 (max)"
    assert float(t2["prefect_ml.comparison.champion_value"]) == pytest.approx(second["champion_value"])
    assert t3["prefect_ml.comparison.decision"] == "champion-holds"
    assert t3["prefect_ml.approval_status"] == "Rejected" and "lost the comparison" in t3["prefect_ml.approval.reason"]

    wins = _artifacts(trained.flow_run_ids[1])[f"comparison-{NAME.replace('_', '-')}"].data
    holds = _artifacts(trained.flow_run_ids[2])[f"comparison-{NAME.replace('_', '-')}"].data
    assert "CHALLENGER WINS" in wins and f"{second['champion_value']:.6g}" in wins
    assert "CHAMPION HOLDS" in holds and "improvement" in holds


# --- the promotion flow ----------------------------------------------------------------------------------------


def _wait_state(flow_run_id: str, types: set[str], timeout: float = 120) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as c:
        while True:
            run = c.read_flow_run(flow_run_id)
            if run.state and run.state.type.value in types:
                return run
            assert time.monotonic() < deadline, f"flow run {flow_run_id} still {run.state.type if run.state else None}"
            time.sleep(0.5)


def _paused_promotion(trained: Trained, version: int, **params: Any) -> tuple[threading.Thread, list, str]:
    """Start promote-model in a thread of this process; return it once the run is Paused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from promote import promote_model

    tag = f"lifecycle-{version}-{time.monotonic_ns()}"
    result: list = []

    def run() -> None:
        from prefect import tags

        with tags(tag):
            result.append(promote_model(model_name=NAME, version=version, return_state=True, **params))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as c:
        while True:
            found = c.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
            if found and found[0].state and found[0].state.is_paused():
                return thread, result, str(found[0].id)
            assert thread.is_alive(), f"promote-model ended without pausing: {result}"
            assert time.monotonic() < deadline, "promote-model never paused"
            time.sleep(0.5)


def test_promotion_flow_approved_through_the_api(trained):
    from prefect.flow_runs import resume_flow_run

    from prefect_ml.runtime import promotion

    v1, v2 = _version(trained, 0), _version(trained, 1)
    promotion.promote(NAME, v1, by="test", reason="reset")
    thread, result, run_id = _paused_promotion(trained, v2)
    assert _tags(v2)["prefect_ml.approval_status"] == "PendingManualApproval"
    assert _champion() == v1  # nothing moves while it waits
    shown = _artifacts(run_id)[f"promotion-{NAME.replace('_', '-')}"].data
    assert "CHALLENGER WINS" in shown and f"version {v2}" in shown
    resume_flow_run(run_id, run_input={"decision": "approve", "reason": "better auc", "reviewer": "qa-lead"})
    thread.join(120)
    state = result[0]
    assert state.is_completed(), state
    assert _champion() == v2
    tags = _tags(v2)
    assert tags["prefect_ml.approval_status"] == "Approved"
    assert tags["prefect_ml.approval.by"] == "qa-lead" and tags["prefect_ml.approval.reason"] == "better auc"
    assert tags["prefect_ml.approval.via"] == f"prefect flow run {run_id}"
    assert promotion.history(NAME)[-1]["version"] == v2


def test_promotion_flow_rejection_leaves_the_alias(trained):
    from prefect.flow_runs import resume_flow_run

    from prefect_ml.runtime import promotion

    v1, v2 = _version(trained, 0), _version(trained, 1)
    promotion.promote(NAME, v1, by="test", reason="reset")
    thread, result, run_id = _paused_promotion(trained, v2)
    resume_flow_run(run_id, run_input={"decision": "reject", "reason": "not on this data", "reviewer": "risk"})
    thread.join(120)
    assert result[0].is_completed()
    assert _champion() == v1
    tags = _tags(v2)
    assert tags["prefect_ml.approval_status"] == "Rejected" and tags["prefect_ml.approval.by"] == "risk"


def test_promotion_flow_timeout_stays_pending(trained):
    from promote import promote_model

    from prefect_ml.runtime import promotion

    v1, v2 = _version(trained, 0), _version(trained, 1)
    promotion.promote(NAME, v1, by="test", reason="reset")
    state = promote_model(model_name=NAME, version=v2, timeout_seconds=2, return_state=True)
    # Prefect's server fails a run whose pause expired, whatever the flow returns; the flow says what it means
    assert state.is_failed() and "never resumed" in state.message
    said = _artifacts(str(state.state_details.flow_run_id))[f"promotion-{NAME.replace('_', '-')}"].data
    assert "no decision within 2 s" in said and "stays PendingManualApproval" in said
    assert _tags(v2)["prefect_ml.approval_status"] == "PendingManualApproval" and _champion() == v1


def test_training_run_requests_approval_when_the_challenger_wins(trained):
    from credit_default import credit_default
    from prefect.client.orchestration import get_client
    from promote import promote_model

    from prefect_ml.runtime import promotion

    v1, v2 = _version(trained, 0), _version(trained, 1)
    promotion.promote(NAME, v2, by="test", reason="approved once")
    promotion.promote(NAME, v1, by="test", reason="reset")
    # no promote-model deployment on the server: the run still succeeds and logs how to promote
    out = credit_default(registered_model_name=NAME, min_auc=0.0, request_promotion=True, **TRAININGS[1])
    assert out["registered"]["version"] == v2 and out["registered"]["comparison"]["wins"]
    assert out["promotion_run"] is None
    assert _tags(v2)["prefect_ml.approval_status"] == "Approved"  # a person's earlier decision is kept
    # with the deployment: a promote-model run for the winner is created on it
    deployment_id = promote_model.to_deployment(name="approval").apply()
    out = credit_default(registered_model_name=NAME, min_auc=0.0, request_promotion=True, **TRAININGS[1])
    with get_client(sync_client=True) as c:
        run = c.read_flow_run(out["promotion_run"])
    assert run.deployment_id == deployment_id
    assert run.parameters == {"model_name": NAME, "version": v2, "alias": "champion"}
    assert _champion() == v1  # nothing moves before the decision


def test_rollback_restores_the_previous_champion(trained):
    from prefect_ml.runtime import promotion

    v1, v2 = _version(trained, 0), _version(trained, 1)
    promotion.promote(NAME, v1, by="test", reason="reset")
    promotion.promote(NAME, v2, by="test", reason="better", force=True)
    back = promotion.rollback(NAME, by="oncall", reason="drift alarm")
    assert back == {**back, "version": v1, "previous": v2}
    assert _champion() == v1
    assert promotion.history(NAME)[-1] | {"at": None} == {"action": "rollback", "version": v1, "from": v2, "at": None,
                                                         "by": "oncall", "reason": "drift alarm", "via": "cli"}


# --- batch scoring ----------------------------------------------------------------------------------------------


def test_batch_scoring_uses_the_champion_and_reruns_only_when_it_changes(trained):
    from batch_score import batch_score

    from prefect_ml.runtime import promotion

    v1, v2 = _version(trained, 0), _version(trained, 1)
    data = trained.home / "samples" / "credit_default_synthetic.csv"
    promotion.promote(NAME, v1, by="test", reason="reset")

    def score() -> dict:
        out = batch_score(data=str(data), model_name=NAME)
        folder = Path(out["predictions"].removeprefix("file://"))
        meta = json.loads((folder / "model.json").read_text())
        assert meta["model_version"] == out["model_version"]
        import pandas as pd

        preds = pd.read_csv(folder / "predictions.csv")
        assert len(preds) == meta["rows"] > 0 and preds["prediction"].between(0, 1).all()
        return out

    first = score()
    assert first["model_version"] == v1 and not first["cached"]
    assert score()["cached"]  # same champion, same data: reused
    promotion.promote(NAME, v2, by="test", reason="better", force=True)
    after = score()
    assert after["model_version"] == v2 and not after["cached"]
    assert after["predictions"] != first["predictions"]
    promotion.rollback(NAME)
    back = score()
    assert back["model_version"] == v1 and back["cached"] and back["predictions"] == first["predictions"]


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_inputs_are_clear_and_move_nothing(trained):
    from batch_score import batch_score
    from promote import promote_model

    from prefect_ml import register_model
    from prefect_ml.errors import RegistrationError
    from prefect_ml.runtime import promotion

    v1 = _version(trained, 0)
    promotion.promote(NAME, v1, by="test", reason="reset")
    before = len(_client().search_model_versions(f"name = '{NAME}'"))

    # a metric the champion lacks: nothing registered, nothing moved
    model_uri, metrics_uri = trained.out[1]["model"], trained.out[1]["metrics"]
    with pytest.raises(RegistrationError, match=r"has no metric 'logloss'.*registered before the metric existed"):
        metrics_file = trained.home / "with-logloss.json"
        metrics_file.write_text(json.dumps({**json.loads(Path(metrics_uri.removeprefix("file://")).read_text()),
                                            "logloss": 0.4}))
        register_model(model_uri, name=NAME, metrics=str(metrics_file), compare_with="champion", metric="logloss",
                       direction="min")
    with pytest.raises(RegistrationError, match="needs metric="):
        register_model(model_uri, name=NAME, metrics=metrics_uri, compare_with="champion")
    with pytest.raises(RegistrationError, match="direction"):
        register_model(model_uri, name=NAME, metrics=metrics_uri, compare_with="champion", metric="auc", direction="up")
    assert len(_client().search_model_versions(f"name = '{NAME}'")) == before

    # unknown model / version in the promotion flow and in batch scoring
    state = promote_model(model_name=NAME, version=99, return_state=True)
    assert state.is_failed() and "has no version 99" in str(state.result(raise_on_failure=False))
    state = promote_model(model_name="no_such_model", version=1, return_state=True)
    assert state.is_failed() and "unknown model 'no_such_model'" in str(state.result(raise_on_failure=False))
    state = batch_score(model_name=NAME, alias="gold", return_state=True)
    assert state.is_failed() and "no @gold alias" in str(state.result(raise_on_failure=False))

    # a Rejected version is not promoted without --force (the CLI, as a user types it)
    v3 = _version(trained, 2)
    proc = subprocess.run([str(Path(sys.executable).parent / "prefect-ml"), "model", "promote", NAME, str(v3)],
                          check=False, capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ") and "--force" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _champion() == v1


# --- approval in the Prefect UI (headless Chromium driven over the DevTools protocol) -------------------------


class DevToolsPage:
    """Headless Chromium with one page, driven over the Chrome DevTools protocol (`--remote-debugging-port`
    on 127.0.0.1, a websocket client from the `websockets` package Prefect already depends on): navigate,
    read the page's text, run JavaScript, type text as keyboard input, take a screenshot."""

    def __init__(self, chromium: str, user_data_dir: Path):
        import itertools
        import urllib.request

        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={user_data_dir}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        port_file = user_data_dir / "DevToolsActivePort"  # chromium writes its chosen port here
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert self.proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        pages = json.loads(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        self.ws = connect(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"], max_size=None,
                          open_timeout=30)
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict:
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg.get("result", {})

    def js(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, f"{expression[:100]}: {r['exceptionDetails']}"
        return r.get("result", {}).get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_text(self, *needles: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            assert time.monotonic() < deadline, f"the page never showed {needles}:\n{text[:3000]}"
            time.sleep(0.5)

    def type_into(self, selector: str, index: int, text: str) -> None:
        """Focus the index-th element matching selector and type `text` as keyboard input (Vue sees input events)."""
        assert self.js(f"(() => {{ const e = document.querySelectorAll({json.dumps(selector)})[{index}]; "
                       "if (!e) return false; e.focus(); return true; })()"), f"no {selector}[{index}] on the page"
        self.send("Input.insertText", text=text)

    def click_button(self, label: str, within: str = "body") -> None:
        assert self.js(f"(() => {{ const b = [...document.querySelector({json.dumps(within)})"
                       f".querySelectorAll('button')].find(b => b.innerText.trim() === {json.dumps(label)}); "
                       "if (!b) return false; b.click(); return true; })()"), f"no button {label!r} in {within}"

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def ui_api(trained, tmp_path_factory):
    """A `prefect server start` with its UI (the test harness' server has none); yields the API URL."""
    import contextlib

    from tests.servers import ServerError, ServiceUnavailable, prefect_server, skip_or_fail

    with contextlib.ExitStack() as stack:
        try:
            api = stack.enter_context(prefect_server(tmp_path_factory.mktemp("ui-prefect-home")))
        except (ServiceUnavailable, ServerError) as exc:
            skip_or_fail(f"no Prefect server with a UI: {exc}")
        yield api


def _api(api_url: str, method: str, path: str, body: dict | None = None) -> Any:
    import httpx

    with httpx.Client(base_url=api_url, trust_env=False, timeout=30) as c:
        resp = c.request(method, path, json=body)
        resp.raise_for_status()
        return resp.json()


def test_promotion_approved_in_the_prefect_ui(trained, ui_api, tmp_path):
    import shutil

    from prefect_ml.runtime import promotion
    from tests.servers import skip_or_fail

    chromium = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    if chromium is None:
        skip_or_fail("no Chromium: apt-get install -y chromium (scripts/setup-test-services.sh)")
    out_dir = Path(os.environ.get("PREFECT_ML_TEST_OUTPUT") or REPO / "test-output") / "ui"
    out_dir.mkdir(parents=True, exist_ok=True)
    v1, v2 = _version(trained, 0), _version(trained, 1)
    promotion.promote(NAME, v1, by="test", reason="reset")

    # the promotion flow as a user runs it, against the server with the UI
    log = tmp_path / "promote.log"
    env = {**os.environ, "PREFECT_API_URL": ui_api, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(REPO / "flows" / "promote.py"), "--model-name", NAME,
                                 "--version", str(v2), "--timeout-seconds", "600"], cwd=REPO, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    page = None
    try:
        deadline = time.monotonic() + 180
        while not (paused := _api(ui_api, "POST", "/flow_runs/filter",
                                  {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}})):
            assert proc.poll() is None, f"promote.py ended before pausing:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"promote.py never paused:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        run_id = paused[0]["id"]

        page = DevToolsPage(chromium, tmp_path / "chromium")
        page.send("Page.enable")
        page.send("Page.navigate", url=f"{ui_api[: -len('/api')]}/runs/flow-run/{run_id}")
        text = page.wait_text("Paused", "Resume", "promote-model")
        page.screenshot(out_dir / "promotion-paused.png")
        page.click_button("Resume")
        form = page.wait_text("Resume Flow Run", "CHALLENGER WINS", "Decision", "Reason", "Reviewer", "Submit")
        assert f"version {v2}" in form and "Rule:" in form, form[-2000:]
        assert page.js("document.querySelector('[role=dialog] select').value") == "approve"
        page.type_into("[role=dialog] textarea", 0, "approved in the UI: better auc")
        page.type_into("[role=dialog] textarea", 1, "ui-reviewer")
        page.screenshot(out_dir / "promotion-form.png")
        page.click_button("Submit", within="[role=dialog]")
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
        page.send("Page.reload")
        page.wait_text("Completed")
        page.screenshot(out_dir / "promotion-completed.png")
    finally:
        if page is not None:
            page.close()
        if proc.poll() is None:
            proc.kill()
    assert "Resume" in text
    assert _champion() == v2
    tags = _tags(v2)
    assert tags["prefect_ml.approval_status"] == "Approved"
    assert tags["prefect_ml.approval.by"] == "ui-reviewer"
    assert tags["prefect_ml.approval.reason"] == "approved in the UI: better auc"
    assert tags["prefect_ml.approval.via"] == f"prefect flow run {run_id}"
