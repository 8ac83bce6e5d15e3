"""Champion vs challenger, approval status, promotion and rollback against a real MLflow SQLite registry
(no Prefect API: prefect_ml.runtime.promotion and the `prefect-ml model` CLI only)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prefect_ml.runtime import promotion, tracking
from prefect_ml.runtime.promotion import (
    APPROVED,
    HOLDS,
    NO_CHAMPION,
    PENDING,
    REJECTED,
    WINS,
    PromotionError,
    Rule,
    decide,
)

NAME = "lifecycle_model"


# --- the rule (pure) -------------------------------------------------------------------------------


def test_decide_max_and_min():
    assert decide(0.80, 0.75, Rule("auc"))[0] == WINS
    assert decide(0.75, 0.75, Rule("auc"))[0] == HOLDS  # a tie is no reason to switch
    assert decide(0.70, 0.75, Rule("auc"))[0] == HOLDS
    assert decide(0.76, 0.75, Rule("auc", min_improvement=0.02))[0] == HOLDS
    assert decide(0.77, 0.75, Rule("auc", min_improvement=0.02))[0] == WINS
    assert decide(0.9, 1.0, Rule("rmse", direction="min"))[0] == WINS
    assert decide(1.1, 1.0, Rule("rmse", direction="min"))[0] == HOLDS
    decision, reason = decide(0.7, None, Rule("auc"))
    assert decision == NO_CHAMPION and "no champion" in reason


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": ""}, "metric"),
    ({"metric": "auc", "direction": "up"}, "direction"),
    ({"metric": "auc", "min_improvement": -0.1}, "min_improvement"),
    ({"metric": "auc", "min_improvement": float("nan")}, "min_improvement"),
])
def test_bad_rules_are_refused(kwargs, message):
    with pytest.raises(PromotionError, match=message):
        Rule(**kwargs)


def test_parse_ref():
    assert promotion.parse_ref("m") == ("m", None, None)
    assert promotion.parse_ref("m@champion") == ("m", "champion", None)
    assert promotion.parse_ref("m:3") == ("m", None, 3)
    assert promotion.parse_ref("models:/m/4") == ("m", None, 4)
    for bad in ("m:x", "@a", "m@", ""):
        with pytest.raises(PromotionError):
            promotion.parse_ref(bad)


# --- against a real registry -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An empty, migrated MLflow SQLite store, made once: creating one costs seconds, copying it nothing."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}").search_registered_models()
    return db


@pytest.fixture
def registry(ml_home, tmp_path, empty_store):
    """A fresh SQLite registry; `add(auc=...)` registers a version with metric tags (as register_model does)."""
    import shutil

    ml_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, ml_home / "mlflow.db")
    client = tracking.client()
    source = tmp_path / "model"
    source.mkdir()

    def add(name: str = NAME, **metrics: float) -> int:
        try:
            client.create_registered_model(name)
        except Exception:
            pass
        tags = {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}
        mv = client.create_model_version(name, str(source), tags=tags)
        return int(mv.version)

    return add


def _tags(version: int, name: str = NAME) -> dict[str, str]:
    return tracking.client().get_model_version(name, str(version)).tags


def _champion(name: str = NAME) -> int | None:
    return promotion.alias_version(tracking.client(), name, "champion")


def test_first_model_is_challenger_then_better_wins_and_worse_loses(registry):
    v1 = registry(auc=0.70)
    c1 = promotion.record_comparison(promotion.compare(NAME, 0.70, Rule("auc")), v1)
    assert c1.decision == NO_CHAMPION and c1.wins
    assert _tags(v1)[promotion.STATUS_TAG] == PENDING
    assert _champion() is None  # a comparison never moves @champion
    promotion.promote(NAME, v1, by="alice", reason="first model")

    v2 = registry(auc=0.80)
    c2 = promotion.record_comparison(promotion.compare(NAME, 0.80, Rule("auc")), v2)
    assert c2.decision == WINS and c2.champion_version == v1 and c2.champion_value == pytest.approx(0.70)
    tags = _tags(v2)
    assert tags["prefect_ml.comparison.decision"] == WINS
    assert tags["prefect_ml.comparison.challenger_value"] == "0.8"
    assert tags["prefect_ml.comparison.champion_value"] == "0.7"
    assert tags[promotion.STATUS_TAG] == PENDING
    assert promotion.alias_version(tracking.client(), NAME, "challenger") == v2

    promotion.promote(NAME, v2, by="bob", reason="better auc")
    v3 = registry(auc=0.60)
    c3 = promotion.record_comparison(promotion.compare(NAME, 0.60, Rule("auc")), v3)
    assert c3.decision == HOLDS and not c3.wins
    assert _tags(v3)[promotion.STATUS_TAG] == REJECTED
    assert "lost the comparison" in _tags(v3)["prefect_ml.approval.reason"]
    assert _champion() == v2


def test_the_same_model_registered_again_keeps_a_persons_decision(registry):
    v1, v2 = registry(auc=0.7), registry(auc=0.8)
    promotion.promote(NAME, v1)
    promotion.reject(NAME, v2, by="erin", reason="leaks the target")
    again = promotion.record_comparison(promotion.compare(NAME, 0.8, Rule("auc")), v2, reused=True)
    assert again.decision == WINS and _tags(v2)[promotion.STATUS_TAG] == REJECTED  # erin's decision stands
    same = promotion.record_comparison(promotion.compare(NAME, 0.7, Rule("auc")), v1, reused=True)
    assert same.decision == promotion.IS_CHAMPION and _tags(v1)[promotion.STATUS_TAG] == APPROVED


def test_promote_records_who_when_why_and_rollback_restores(registry):
    v1, v2, v3 = registry(auc=0.7), registry(auc=0.8), registry(auc=0.9)
    promotion.promote(NAME, v1, by="alice", reason="r1")
    promotion.promote(NAME, v2, by="bob", reason="r2")
    info = promotion.promote(NAME, v3, by="carol", reason="r3", via="test")
    assert info["previous"] == v2 and _champion() == v3
    tags = _tags(v3)
    assert tags[promotion.STATUS_TAG] == APPROVED
    assert tags["prefect_ml.approval.by"] == "carol" and tags["prefect_ml.approval.reason"] == "r3"
    assert tags["prefect_ml.approval.via"] == "test" and tags["prefect_ml.approval.at"].endswith("Z")

    back = promotion.rollback(NAME, by="dave", reason="bad in prod")
    assert back["version"] == v2 and back["previous"] == v3 and _champion() == v2
    assert "rolled back to version 2" in _tags(v3)[promotion.ROLLED_BACK_TAG]
    assert promotion.rollback(NAME)["version"] == v1  # a second rollback goes further back
    with pytest.raises(PromotionError, match="nothing to roll back to"):
        promotion.rollback(NAME)
    assert _champion() == v1
    actions = [(e["action"], e["version"]) for e in promotion.history(NAME)]
    assert actions == [("promote", v1), ("promote", v2), ("promote", v3), ("rollback", v2), ("rollback", v1)]


def test_rollback_knows_a_champion_set_outside_prefect_ml(registry):
    v1, v2 = registry(auc=0.7), registry(auc=0.8)
    tracking.client().set_registered_model_alias(NAME, "champion", str(v1))  # by hand, in the MLflow UI
    promotion.promote(NAME, v2)
    assert promotion.rollback(NAME)["version"] == v1


def test_reject_leaves_aliases_and_rejected_needs_force(registry):
    v1, v2 = registry(auc=0.7), registry(auc=0.8)
    promotion.promote(NAME, v1)
    promotion.reject(NAME, v2, by="erin", reason="looks overfit")
    assert _champion() == v1 and _tags(v2)[promotion.STATUS_TAG] == REJECTED
    with pytest.raises(PromotionError, match=r"Rejected .*--force.*did not move"):
        promotion.promote(NAME, v2)
    assert _champion() == v1
    info = promotion.promote(NAME, v2, force=True, reason="override")
    assert _champion() == v2 and "forced" in info["reason"]


def test_bad_inputs_move_nothing(registry):
    v1 = registry(auc=0.7)
    promotion.promote(NAME, v1)
    with pytest.raises(PromotionError, match=r"unknown model 'nope'.*lifecycle_model"):
        promotion.promote("nope", 1)
    with pytest.raises(PromotionError, match="has no version 9; versions: 1"):
        promotion.promote(NAME, 9)
    with pytest.raises(PromotionError, match="no @staging alias"):
        promotion.resolve(NAME, "staging")
    assert _champion() == v1


def test_champion_without_the_metric_says_it_predates_it(registry):
    v1 = registry(accuracy=0.8)  # registered before 'auc' was measured
    promotion.promote(NAME, v1)
    registry(auc=0.9)
    with pytest.raises(PromotionError, match=r"has no metric 'auc'.*registered before the metric existed"):
        promotion.compare(NAME, 0.9, Rule("auc"))
    assert _champion() == v1


def test_unreachable_registry_is_one_clear_error(ml_home, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    for call in (lambda: promotion.promote(NAME, 1), lambda: promotion.rollback(NAME),
                 lambda: promotion.resolve(NAME), lambda: promotion.compare(NAME, 0.5, Rule("auc"))):
        with pytest.raises(PromotionError, match="not reachable"):
            call()


# --- the CLI -------------------------------------------------------------------------------------------


def _cli(*args: str):
    from prefect_ml.cli import app

    return CliRunner().invoke(app, ["model", *args])


def test_cli_list_show_promote_rollback(registry):
    v1, v2 = registry(auc=0.7, f1=0.5), registry(auc=0.8, f1=0.6)
    out = _cli("promote", NAME, str(v1), "--reason", "first", "--by", "alice")
    assert out.exit_code == 0 and f"Promoted {NAME} version 1 to @champion" in out.output
    assert _cli("promote", NAME, str(v2), "--by", "bob").exit_code == 0
    listing = _cli("list", NAME)
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "ALIASES", "STATUS"]
    assert lines[1].split()[:3] == ["2", "@champion", APPROVED] and "auc=0.8" in lines[1]
    shown = _cli("show", f"{NAME}@champion")
    assert shown.exit_code == 0 and f"{NAME} version 2" in shown.output and "by bob" in shown.output
    assert "promote v2 (from v1)" in shown.output
    as_json = json.loads(_cli("show", f"{NAME}:1", "--json").output)
    assert as_json["version"] == 1 and as_json["approval"]["by"] == "alice"
    back = _cli("rollback", NAME, "--reason", "incident")
    assert back.exit_code == 0 and "Rolled back" in back.output and "version 1" in back.output
    assert _champion() == v1


@pytest.mark.parametrize("args, message", [
    (("list", "nope"), "unknown model 'nope'"),
    (("show", f"{NAME}:7"), "has no version 7"),
    (("show", f"{NAME}@gold"), "no @gold alias"),
    (("promote", NAME, "7"), "has no version 7"),
    (("rollback", NAME), "nothing to roll back to"),
])
def test_cli_errors_are_one_line(registry, args, message):
    promotion.promote(NAME, registry(auc=0.7))
    out = _cli(*args)
    assert out.exit_code == 1, out.output
    err = out.stderr if hasattr(out, "stderr") else out.output
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("Error: ")


def test_cli_rejected_needs_force(registry):
    v1, v2 = registry(auc=0.7), registry(auc=0.8)
    promotion.promote(NAME, v1)
    assert _cli("reject", NAME, str(v2), "--reason", "no").exit_code == 0
    refused = _cli("promote", NAME, str(v2))
    assert refused.exit_code == 1 and "--force" in refused.stderr
    assert _champion() == v1
    assert _cli("promote", NAME, str(v2), "--force").exit_code == 0 and _champion() == v2


def test_an_unchanged_comparison_writes_no_tags_and_keeps_its_times():
    from prefect_ml.runtime.promotion import APPROVAL_TAG, COMPARISON_TAG, STATUS_TAG, _to_write

    before = {f"{COMPARISON_TAG}decision": "wins", f"{COMPARISON_TAG}at": "t1",
              STATUS_TAG: "PendingManualApproval", f"{APPROVAL_TAG}via": "comparison", f"{APPROVAL_TAG}at": "t1"}
    again = {**before, f"{COMPARISON_TAG}at": "t2", f"{APPROVAL_TAG}at": "t2"}
    assert _to_write(before, again) == {}  # a re-run of the same model: nothing new to record
    changed = {**again, f"{COMPARISON_TAG}decision": "holds"}
    assert _to_write(before, changed) == {f"{COMPARISON_TAG}decision": "holds", f"{COMPARISON_TAG}at": "t2"}
    assert _to_write({}, again) == again  # a new version gets every tag


def test_a_tag_another_writer_added_at_the_same_moment_is_written_again():
    """Two runs that register one model at once both write its new tags; MLflow's SQL store inserts a tag it
    did not find, so one of them hits the other's row: the second try updates it. Other errors stay errors."""
    from prefect_ml.runtime.promotion import _set_tag

    class Store:
        def __init__(self, first_error: str | None) -> None:
            self.first_error, self.tags = first_error, {}

        def set_model_version_tag(self, name, version, key, value):
            if self.first_error:
                error, self.first_error = self.first_error, None
                raise RuntimeError(error)
            self.tags[key] = value

    collided = Store("(sqlite3.IntegrityError) UNIQUE constraint failed: model_version_tags.key")
    _set_tag(collided, "m", 2, "prefect_ml.status", "PendingManualApproval")
    assert collided.tags == {"prefect_ml.status": "PendingManualApproval"}
    refused = Store("RESOURCE_DOES_NOT_EXIST: model version 2")
    with pytest.raises(RuntimeError, match="RESOURCE_DOES_NOT_EXIST"):
        _set_tag(refused, "m", 2, "k", "v")
    assert refused.tags == {}
