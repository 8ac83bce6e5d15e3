"""Model lifecycle in the MLflow registry: champion vs challenger, approval status, promotion, rollback.

Everything is recorded in the registry itself, so the MLflow UI, `prefect-ml model ...` and the
promotion flow read one truth:

- a model version's approval status is the tag `prefect_ml.approval_status`, with SageMaker's
  vocabulary as values (`PendingManualApproval`, `Approved`, `Rejected`), plus who/when/why/how
  tags (`prefect_ml.approval.by|at|reason|via`);
- a comparison of a new version with the current champion is tags `prefect_ml.comparison.*`
  (challenger and champion values, the rule, the decision and its reason);
- an alias's history is two registered-model tags: `prefect_ml.alias.<alias>.stack` (the versions
  that held the alias, the current one last: what rollback pops) and `prefect_ml.alias.<alias>.history`
  (the last events: promote / rollback, with who, when, why).

Only `tracking.client()` (an MlflowClient) talks to the registry. Every function that moves an alias
checks everything it can first, so a bad input never moves an alias.
"""

from __future__ import annotations

import datetime
import getpass
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect_ml.errors import RegistrationError
from prefect_ml.runtime import tracking

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
STATUSES = (PENDING, APPROVED, REJECTED)

STATUS_TAG = "prefect_ml.approval_status"
APPROVAL_TAG = "prefect_ml.approval."  # + by, at, reason, via
COMPARISON_TAG = "prefect_ml.comparison."  # + decision, metric, direction, ...
METRIC_TAG = "metric."  # written by registry.register from the metrics output
ROLLED_BACK_TAG = "prefect_ml.rolled_back"
CHAMPION = "champion"
CHALLENGER = "challenger"

# decisions of a comparison
WINS = "challenger-wins"
HOLDS = "champion-holds"
NO_CHAMPION = "no-champion"
IS_CHAMPION = "is-champion"

DIRECTIONS = ("max", "min")
_STACK_MAX = 50
_TAG_VALUE_MAX = 4000  # MLflow refuses tag values above 5000 characters (sqlite store: 5000)

def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PromotionError(RegistrationError):
    """A lifecycle operation (compare, promote, reject, rollback, resolve) cannot be done; nothing moved."""


# --- the rule and the decision (pure) ---------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Challenger wins when its `metric` beats the champion's by at least `min_improvement`
    (higher is better for `direction="max"`, lower for `"min"`)."""

    metric: str
    direction: str = "max"
    min_improvement: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise PromotionError("compare: `metric` must name a metric of the metrics output, e.g. metric='auc'.")
        if self.direction not in DIRECTIONS:
            raise PromotionError(f"compare: direction must be 'max' (higher is better) or 'min' (lower is better), "
                                 f"got {self.direction!r}.")
        if (isinstance(self.min_improvement, bool) or not isinstance(self.min_improvement, (int, float))
                or not math.isfinite(self.min_improvement) or self.min_improvement < 0):
            raise PromotionError("compare: min_improvement must be a finite number >= 0, "
                                 f"got {self.min_improvement!r}.")

    def text(self) -> str:
        op = ">=" if self.direction == "max" else "<="
        sign = "+" if self.direction == "max" else "-"
        return (f"challenger {self.metric} {op} champion {self.metric} {sign} {self.min_improvement:g} "
                f"({self.direction})")


def decide(challenger: float, champion: float | None, rule: Rule) -> tuple[str, str]:
    """(decision, reason) for one comparison; `champion=None` means there is no champion yet.

    With `min_improvement` 0 the challenger must be strictly better (a retrain that changes nothing
    is no reason to switch); otherwise at least `min_improvement` better.
    """
    if champion is None:
        return NO_CHAMPION, (f"no champion yet: the challenger ({rule.metric}={challenger:.6g}) is the first "
                             "candidate for champion")
    gain = challenger - champion if rule.direction == "max" else champion - challenger
    enough = gain > 0 if rule.min_improvement == 0 else gain >= rule.min_improvement - 1e-12
    word = "higher" if rule.direction == "max" else "lower"
    need = "strictly better" if rule.min_improvement == 0 else f"at least {rule.min_improvement:g} better"
    if enough:
        return WINS, (f"challenger {rule.metric}={challenger:.6g} beats champion {rule.metric}={champion:.6g} "
                      f"by {gain:.4g} ({word} is better; needed: {need})")
    return HOLDS, (f"challenger {rule.metric}={challenger:.6g} vs champion {rule.metric}={champion:.6g}: "
                   f"improvement {gain:.4g}, needed {need} ({word} is better)")


@dataclass
class Comparison:
    """A challenger version compared with the version behind an alias (default `champion`)."""

    name: str
    rule: Rule
    challenger_value: float
    challenger_version: int | None = None
    against: str = CHAMPION
    champion_version: int | None = None
    champion_value: float | None = None
    decision: str = ""
    reason: str = ""
    at: str = field(default_factory=_now)

    @property
    def wins(self) -> bool:
        """True when the challenger should go to approval (it beats the champion, or there is none)."""
        return self.decision in (WINS, NO_CHAMPION)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wins"] = self.wins
        d["rule_text"] = self.rule.text()
        return d

    def tags(self) -> dict[str, str]:
        p = COMPARISON_TAG
        return {
            f"{p}decision": self.decision,
            f"{p}reason": self.reason[:_TAG_VALUE_MAX],
            f"{p}against": self.against,
            f"{p}metric": self.rule.metric,
            f"{p}direction": self.rule.direction,
            f"{p}min_improvement": f"{self.rule.min_improvement:g}",
            f"{p}rule": self.rule.text(),
            f"{p}challenger_value": f"{self.challenger_value:.6g}",
            f"{p}champion_version": "" if self.champion_version is None else str(self.champion_version),
            f"{p}champion_value": "" if self.champion_value is None else f"{self.champion_value:.6g}",
            f"{p}at": self.at,
        }

    @classmethod
    def from_tags(cls, name: str, version: int, tags: Mapping[str, str]) -> Comparison | None:
        p = COMPARISON_TAG
        if f"{p}decision" not in tags:
            return None
        rule = Rule(tags.get(f"{p}metric", "?"), tags.get(f"{p}direction", "max"),
                    float(tags.get(f"{p}min_improvement") or 0))
        champ_v, champ_val = tags.get(f"{p}champion_version"), tags.get(f"{p}champion_value")
        return cls(name=name, rule=rule, challenger_value=float(tags.get(f"{p}challenger_value") or "nan"),
                   challenger_version=version, against=tags.get(f"{p}against", CHAMPION),
                   champion_version=int(champ_v) if champ_v else None,
                   champion_value=float(champ_val) if champ_val else None,
                   decision=tags[f"{p}decision"], reason=tags.get(f"{p}reason", ""), at=tags.get(f"{p}at", ""))

    def markdown(self) -> str:
        champ = ("(none)" if self.champion_version is None else
                 f"version {self.champion_version}: {self.rule.metric} = {self.champion_value:.6g}")
        verdict = {WINS: "CHALLENGER WINS", HOLDS: "CHAMPION HOLDS", NO_CHAMPION: "NO CHAMPION YET",
                   IS_CHAMPION: "ALREADY CHAMPION"}.get(self.decision, self.decision)
        return (
            f"### `{self.name}` version {self.challenger_version} vs @{self.against}: **{verdict}**\n\n"
            f"| | version | {self.rule.metric} |\n|---|---|---|\n"
            f"| challenger | {self.challenger_version} | {self.challenger_value:.6g} |\n"
            f"| @{self.against} | {'-' if self.champion_version is None else self.champion_version} | "
            f"{'-' if self.champion_value is None else f'{self.champion_value:.6g}'} |\n\n"
            f"**Rule:** {self.rule.text()}  \n**Decision:** `{self.decision}`: {self.reason}  \n"
            f"**Champion:** {champ}\n"
        )


# --- registry access ----------------------------------------------------------------------------


def current_user() -> str:
    """Who runs this: PREFECT_ML_USER, else the OS user (the fallback for `by` in records)."""
    try:
        return os.environ.get("PREFECT_ML_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _unreachable(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in ("API request to", "Max retries exceeded", "Connection refused",
                                   "Failed to establish a new connection", "unable to open database file"))


@contextmanager
def _registry(what: str) -> Iterator[Any]:
    """Yield the registry client (over REST for a tracking server, so `mlflow` is not imported;
    else an MlflowClient); turn its errors into one-line PromotionErrors."""
    uri = tracking.tracking_uri()
    errors = tracking.registry_errors()
    try:
        yield tracking.registry_client()
    except PromotionError:
        raise
    except errors as exc:
        message = str(getattr(exc, "message", "") or exc)
        if _unreachable(exc):
            raise PromotionError(f"{what}: the MLflow registry at {_shown(uri)} is not reachable "
                                 f"({_first_line(message)}). Start it or set MLFLOW_TRACKING_URI; nothing was "
                                 "changed.") from exc
        raise PromotionError(f"{what}: MLflow refused: {_first_line(message)}") from exc
    except OSError as exc:  # requests' ConnectionError is an OSError
        raise PromotionError(f"{what}: the MLflow registry at {_shown(uri)} is not reachable "
                             f"({_first_line(str(exc))}); nothing was changed.") from exc


def _shown(uri: str) -> str:
    from prefect_ml.storage import redact

    return redact(uri)


def _first_line(text: str) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line[:400]


def _not_found(exc: BaseException) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower() \
        or "does not exist" in str(exc).lower()


def registered_model(client: Any, name: str) -> Any:
    """The registered model `name`; an unknown name is a PromotionError listing the known ones."""
    try:
        return client.get_registered_model(name)
    except tracking.registry_errors() as exc:
        if not _not_found(exc) or _unreachable(exc):
            raise
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise PromotionError(f"unknown model '{name}' in the MLflow registry at {_shown(tracking.tracking_uri())}; "
                             f"registered models: {', '.join(known) if known else '(none)'}.") from exc


def model_version(client: Any, name: str, version: int | str) -> Any:
    """One version of `name`; an unknown version is a PromotionError listing the versions there are."""
    registered_model(client, name)
    try:
        v = int(version)
    except (TypeError, ValueError):
        raise PromotionError(f"model version must be a number, got {version!r} (use NAME@ALIAS for an alias).") \
            from None
    try:
        return client.get_model_version(name, str(v))
    except tracking.registry_errors() as exc:
        if not _not_found(exc) or _unreachable(exc):
            raise
        have = sorted(int(m.version) for m in client.search_model_versions(f"name = '{_quote(name)}'"))
        raise PromotionError(f"model '{name}' has no version {v}; versions: "
                             f"{', '.join(map(str, have)) if have else '(none)'}.") from exc


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def alias_version(client: Any, name: str, alias: str) -> int | None:
    """The version behind `name@alias`, or None when the alias is not set."""
    aliases = getattr(registered_model(client, name), "aliases", None) or {}
    v = aliases.get(alias)
    return int(v) if v is not None else None


def aliases_by_version(model: Any) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, v in (getattr(model, "aliases", None) or {}).items():
        out.setdefault(int(v), []).append(alias)
    return out


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """`NAME`, `NAME@ALIAS` or `NAME:VERSION` (also `models:/NAME@ALIAS`, `models:/NAME/VERSION`)."""
    text = ref.removeprefix("models:/")
    if "@" in text:
        name, _, alias = text.partition("@")
        if not name or not alias:
            raise PromotionError(f"bad model reference {ref!r}: use NAME, NAME@ALIAS or NAME:VERSION.")
        return name, alias, None
    sep = ":" if ":" in text else "/" if ref.startswith("models:/") and "/" in text else None
    if sep:
        name, _, ver = text.rpartition(sep)
        if not name or not ver.isdigit():
            raise PromotionError(f"bad model reference {ref!r}: use NAME, NAME@ALIAS or NAME:VERSION (a number).")
        return name, None, int(ver)
    if not text:
        raise PromotionError("empty model reference: use NAME, NAME@ALIAS or NAME:VERSION.")
    return text, None, None


def resolve(name: str, alias: str = CHAMPION) -> int:
    """The version number behind `name@alias` (what batch scoring pins before it runs)."""
    with _registry(f"resolve {name}@{alias}") as client:
        v = alias_version(client, name, alias)
        if v is None:
            model = registered_model(client, name)
            have = ", ".join(f"@{a}" for a in sorted(getattr(model, "aliases", None) or {})) or "(none)"
            raise PromotionError(f"model '{name}' has no @{alias} alias; its aliases: {have}. Promote a version: "
                                 f"prefect-ml model promote {name} VERSION --alias {alias}")
        return v


def _metric_tags(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for k, v in tags.items():
        if k.startswith(METRIC_TAG):
            try:
                out[k.removeprefix(METRIC_TAG)] = float(v)
            except ValueError:
                continue
    return out


def version_metrics(version: Any) -> dict[str, float]:
    """A version's metrics, from its `metric.*` tags (what register_model writes)."""
    return _metric_tags(version.tags or {})


# --- comparison ---------------------------------------------------------------------------------


def compare(name: str, challenger_value: float, rule: Rule, against: str = CHAMPION) -> Comparison:
    """Compare a challenger's metric value with the version behind `name@against` (read before the
    challenger is registered, so a comparison that cannot be made registers nothing)."""
    if isinstance(challenger_value, bool) or not isinstance(challenger_value, (int, float)) \
            or not math.isfinite(challenger_value):
        raise PromotionError(f"compare: the challenger's {rule.metric} is not a finite number: {challenger_value!r}.")
    with _registry(f"compare {name} with @{against}") as client:
        try:
            model = client.get_registered_model(name)
        except tracking.registry_errors() as exc:
            if not _not_found(exc) or _unreachable(exc):
                raise
            model = None  # the first version of a new model: no champion yet
        champ_v = None if model is None else (getattr(model, "aliases", None) or {}).get(against)
        if champ_v is None:
            decision, reason = decide(float(challenger_value), None, rule)
            return Comparison(name=name, rule=rule, challenger_value=float(challenger_value), against=against,
                              decision=decision, reason=reason)
        champ = client.get_model_version(name, str(champ_v))
    metrics = version_metrics(champ)
    if rule.metric not in metrics:
        raise PromotionError(
            f"compare: the @{against} version {champ.version} of '{name}' has no metric '{rule.metric}' "
            f"(its metrics: {', '.join(sorted(metrics)) or 'none'}): it was registered before the metric existed. "
            f"Compare on a metric it has, or promote a version that has '{rule.metric}' first "
            f"(prefect-ml model promote {name} VERSION). Nothing was registered.")
    decision, reason = decide(float(challenger_value), metrics[rule.metric], rule)
    return Comparison(name=name, rule=rule, challenger_value=float(challenger_value), against=against,
                      champion_version=int(champ.version), champion_value=metrics[rule.metric],
                      decision=decision, reason=reason)


# what an SQL store says when two writers insert the same new row (SQLite, MySQL, PostgreSQL)
_DUPLICATE_ROW = ("unique constraint failed", "duplicate entry", "duplicate key value")


def _upsert(call: Callable[..., Any], *args: Any) -> None:
    """A registry write that sets a row (a version tag, an alias), tried a second time when another writer
    added the same row at the same moment: MLflow's SQL store inserts a row it did not find, so two runs
    that register the same model at once (one cache key, one version) collide on the first write of
    each; the second try updates the row the other one wrote."""
    try:
        call(*args)
    except Exception as exc:
        if not any(s in str(getattr(exc, "message", "") or exc).lower() for s in _DUPLICATE_ROW):
            raise
        call(*args)


def _set_tag(client: Any, name: str, version: Any, key: str, value: Any) -> None:
    _upsert(client.set_model_version_tag, name, str(version), key, value)


def record_comparison(comparison: Comparison, version: int, *, reused: bool = False) -> Comparison:
    """Tag the new version with the comparison and its status; a winner gets @challenger and
    `PendingManualApproval`, a loser `Rejected` (by the comparison), a version that already is the
    champion keeps its status. A `reused` version (the same model registered again) that a person
    already decided on keeps that status: a decision outranks a re-run's comparison."""
    comparison.challenger_version = int(version)
    if comparison.champion_version == int(version):
        comparison.decision, comparison.reason = IS_CHAMPION, (
            f"version {version} already is @{comparison.against} (the same model was registered again)")
    name = comparison.name
    with _registry(f"record the comparison of {name} version {version}") as client:
        tags = comparison.tags()
        before = (client.get_model_version(name, str(version)).tags or {}) if reused else {}
        if before.get(STATUS_TAG) and before.get(f"{APPROVAL_TAG}via") != "comparison":
            pass  # a person decided on this model before: keep it
        elif comparison.wins:
            tags |= _status_tags(PENDING, by="prefect-ml", reason=comparison.reason, via="comparison")
        elif comparison.decision == HOLDS:
            tags |= _status_tags(REJECTED, by="prefect-ml", reason=f"lost the comparison: {comparison.reason}",
                                 via="comparison")
        for k, v in _to_write(before, tags).items():
            _set_tag(client, name, str(version), k, v)
        if comparison.wins:
            _upsert(client.set_registered_model_alias, name, CHALLENGER, str(version))
    return comparison


def _to_write(before: Mapping[str, str], tags: Mapping[str, str]) -> dict[str, str]:
    """The tags that differ from what the version carries. A comparison or decision that is the same
    as the recorded one keeps the time it was first made: an unchanged re-run records nothing (MLflow
    has no batch call for version tags, so each one written is a request)."""
    changed = {k: v for k, v in tags.items() if before.get(k) != str(v)}
    for stamp, group in ((f"{COMPARISON_TAG}at", (COMPARISON_TAG,)), (f"{APPROVAL_TAG}at", (APPROVAL_TAG, STATUS_TAG))):
        if stamp in changed and not any(k.startswith(group) for k in changed if k != stamp):
            del changed[stamp]
    return changed


def comparison_of(name: str, version: int) -> Comparison | None:
    """The comparison recorded on a version (None when it was registered without one)."""
    with _registry(f"read {name} version {version}") as client:
        mv = model_version(client, name, version)
    return Comparison.from_tags(name, int(mv.version), mv.tags or {})


# --- status, promotion, rollback ------------------------------------------------------------------


def _status_tags(status: str, *, by: str, reason: str, via: str) -> dict[str, str]:
    return {STATUS_TAG: status, f"{APPROVAL_TAG}by": by[:200], f"{APPROVAL_TAG}at": _now(),
            f"{APPROVAL_TAG}reason": (reason or "")[:_TAG_VALUE_MAX], f"{APPROVAL_TAG}via": via[:500]}


def status_of(version: Any) -> str:
    return (version.tags or {}).get(STATUS_TAG, "")


def mark_pending(name: str, version: int, *, via: str, reason: str = "waiting for a decision") -> None:
    """Set `PendingManualApproval` on a version (the promotion flow does this before it pauses)."""
    with _registry(f"mark {name} version {version} pending") as client:
        model_version(client, name, version)
        for k, v in _status_tags(PENDING, by="prefect-ml", reason=reason, via=via).items():
            _set_tag(client, name, str(version), k, v)


def _stack_key(alias: str) -> str:
    return f"prefect_ml.alias.{alias}.stack"


def _history_key(alias: str) -> str:
    return f"prefect_ml.alias.{alias}.history"


def _read_json_tag(model: Any, key: str) -> list[Any]:
    raw = (getattr(model, "tags", None) or {}).get(key)
    try:
        value = json.loads(raw) if raw else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def history(name: str, alias: str = CHAMPION) -> list[dict[str, Any]]:
    """The recorded events of `name@alias` (promote / rollback), oldest first."""
    with _registry(f"read the history of {name}@{alias}") as client:
        return [e for e in _read_json_tag(registered_model(client, name), _history_key(alias)) if isinstance(e, dict)]


def _write_history(client: Any, name: str, alias: str, stack: list[int], events: list[dict[str, Any]]) -> None:
    stack = stack[-_STACK_MAX:]
    while len(events) > 1 and len(json.dumps(events)) > _TAG_VALUE_MAX:
        events = events[1:]
    client.set_registered_model_tag(name, _stack_key(alias), json.dumps(stack))
    client.set_registered_model_tag(name, _history_key(alias), json.dumps(events))


def promote(name: str, version: int, *, alias: str = CHAMPION, by: str | None = None, reason: str = "",
            via: str = "cli", force: bool = False) -> dict[str, Any]:
    """Point `name@alias` at `version` and record it: status Approved with who/when/why/how on the
    version, and the alias's stack and history on the model.

    A `Rejected` version is refused unless `force` (then the record says so). Nothing moves on error.
    """
    by = by or current_user()
    if not alias or not alias.replace("_", "").replace("-", "").isalnum():
        raise PromotionError(f"bad alias {alias!r}: use letters, digits, '_' or '-'.")
    with _registry(f"promote {name} version {version} to @{alias}") as client:
        mv = model_version(client, name, version)
        v = int(mv.version)
        status = status_of(mv)
        if status == REJECTED and not force:
            why = (mv.tags or {}).get(f"{APPROVAL_TAG}reason", "")
            raise PromotionError(f"model '{name}' version {v} is Rejected ({why or 'no reason recorded'}); "
                                 f"promoting it needs --force (force=True). @{alias} did not move.")
        model = registered_model(client, name)
        current = alias_version(client, name, alias)
        stack = [int(x) for x in _read_json_tag(model, _stack_key(alias)) if str(x).isdigit()]
        events = _read_json_tag(model, _history_key(alias))
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)  # the alias was set outside prefect-ml: remember it, so rollback finds it
        note = f" (forced over status {status})" if force and status == REJECTED else ""
        event = {"action": "promote", "version": v, "from": current, "at": _now(), "by": by,
                 "reason": (reason + note)[:500], "via": via}
        if current == v:
            event["action"] = "confirm"
        else:
            stack.append(v)
        client.set_registered_model_alias(name, alias, str(v))
        for k, val in _status_tags(APPROVED, by=by, reason=reason + note, via=via).items():
            _set_tag(client, name, str(v), k, val)
        if alias == CHAMPION:
            _set_tag(client, name, str(v), "prefect_ml.champion_since", event["at"])
            if alias_version(client, name, CHALLENGER) == v:
                client.delete_registered_model_alias(name, CHALLENGER)
        _write_history(client, name, alias, stack, [*events, event])
    return {"name": name, "version": v, "alias": alias, "previous": current, "status": APPROVED, "by": by,
            "reason": reason + note, "via": via, "uri": f"models:/{name}@{alias}"}


def reject(name: str, version: int, *, by: str | None = None, reason: str = "", via: str = "cli") -> dict[str, Any]:
    """Tag `version` Rejected (who/when/why/how); no alias moves (a @challenger on it is removed)."""
    by = by or current_user()
    with _registry(f"reject {name} version {version}") as client:
        mv = model_version(client, name, version)
        v = int(mv.version)
        for k, val in _status_tags(REJECTED, by=by, reason=reason, via=via).items():
            _set_tag(client, name, str(v), k, val)
        if alias_version(client, name, CHALLENGER) == v:
            client.delete_registered_model_alias(name, CHALLENGER)
    return {"name": name, "version": v, "status": REJECTED, "by": by, "reason": reason, "via": via}


def rollback(name: str, *, alias: str = CHAMPION, by: str | None = None, reason: str = "",
             via: str = "cli") -> dict[str, Any]:
    """Point `name@alias` back at the version that held it before the current one (recorded)."""
    by = by or current_user()
    with _registry(f"roll back {name}@{alias}") as client:
        model = registered_model(client, name)
        current = alias_version(client, name, alias)
        if current is None:
            raise PromotionError(f"model '{name}' has no @{alias} alias: nothing to roll back.")
        stack = [int(x) for x in _read_json_tag(model, _stack_key(alias)) if str(x).isdigit()]
        if not stack or stack[-1] != current:
            stack.append(current)
        previous = stack[-2] if len(stack) >= 2 else None
        if previous is None:
            raise PromotionError(f"model '{name}' has no earlier @{alias} recorded (version {current} is the first): "
                                 f"nothing to roll back to; promote a version instead: "
                                 f"prefect-ml model promote {name} VERSION --alias {alias}")
        model_version(client, name, previous)  # still there (not deleted)?
        events = _read_json_tag(model, _history_key(alias))
        event = {"action": "rollback", "version": previous, "from": current, "at": _now(), "by": by,
                 "reason": reason[:500], "via": via}
        client.set_registered_model_alias(name, alias, str(previous))
        _set_tag(client, name, str(current), ROLLED_BACK_TAG,
                                     f"@{alias} rolled back to version {previous} at {event['at']} by {by}"
                                     + (f": {reason}" if reason else ""))
        _write_history(client, name, alias, stack[:-1], [*events, event])
    return {"name": name, "version": previous, "alias": alias, "previous": current, "by": by, "reason": reason,
            "via": via, "uri": f"models:/{name}@{alias}"}


# --- reading for people (CLI, flows) ----------------------------------------------------------------


KEY_METRICS = ("auc", "accuracy", "f1", "precision", "recall", "rmse", "r2")


def describe_version(model: Any, mv: Any) -> dict[str, Any]:
    tags = mv.tags or {}
    return {
        "name": mv.name, "version": int(mv.version),
        "aliases": sorted(aliases_by_version(model).get(int(mv.version), [])),
        "status": tags.get(STATUS_TAG, ""),
        "metrics": version_metrics(mv),
        "source_run": mv.run_id or "",
        "flow_run_id": tags.get("prefect_ml.flow_run_id", ""),
        "created": datetime.datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, datetime.UTC)
        .strftime("%Y-%m-%d %H:%M:%S UTC"),
        "approval": {k.removeprefix(APPROVAL_TAG): v for k, v in tags.items() if k.startswith(APPROVAL_TAG)},
        "comparison": {k.removeprefix(COMPARISON_TAG): v for k, v in tags.items() if k.startswith(COMPARISON_TAG)},
        "rolled_back": tags.get(ROLLED_BACK_TAG, ""),
        "source": mv.source,
        "tags": dict(tags),
    }


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of `name`, newest first, with aliases, status, metrics and source run."""
    with _registry(f"list {name}") as client:
        model = registered_model(client, name)
        versions = client.search_model_versions(f"name = '{_quote(name)}'")
        return [describe_version(model, mv) for mv in sorted(versions, key=lambda m: -int(m.version))]


def show(ref: str) -> dict[str, Any]:
    """One version, by `NAME`, `NAME@ALIAS` or `NAME:VERSION` (`NAME` = the latest version)."""
    name, alias, version = parse_ref(ref)
    with _registry(f"show {ref}") as client:
        model = registered_model(client, name)
        if alias is not None:
            v = alias_version(client, name, alias)
            if v is None:
                have = ", ".join(f"@{a}" for a in sorted(getattr(model, "aliases", None) or {})) or "(none)"
                raise PromotionError(f"model '{name}' has no @{alias} alias; its aliases: {have}.")
            version = v
        if version is None:
            found = client.search_model_versions(f"name = '{_quote(name)}'")
            if not found:
                raise PromotionError(f"model '{name}' has no versions.")
            version = max(int(m.version) for m in found)
        mv = model_version(client, name, version)
        out = describe_version(model, mv)
        out["history"] = {a: _read_json_tag(model, _history_key(a)) for a in (getattr(model, "aliases", None) or {})
                          if _read_json_tag(model, _history_key(a))}
        return out


PROMOTION_DEPLOYMENT = "promote-model/approval"


def request_approval(name: str, version: int, *, alias: str = CHAMPION, deployment: str = PROMOTION_DEPLOYMENT,
                     log: Any = None) -> str | None:
    """Start the promotion flow's deployment for `version` (fire and forget); its flow run id, or None
    (logged, not raised) when the deployment is not there: a finished training run must not fail
    because nobody deployed the approval flow."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run: Any = run_deployment(deployment, parameters={"model_name": name, "version": int(version), "alias": alias},
                                  timeout=0, as_subflow=False, tags=["prefect-ml", "promotion"])
    except ObjectNotFound:
        if log:
            log(f"no deployment '{deployment}' on this Prefect server: {name} version {version} waits as "
                f"{PENDING}. Deploy it (prefect --no-prompt deploy --all) or decide with "
                f"`prefect-ml model promote {name} {version}`.")
        return None
    if log:
        log(f"started {deployment} (flow run {run.id}) to approve {name} version {version} as @{alias}")
    return str(run.id)
