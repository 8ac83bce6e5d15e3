"""Step lineage: what data a step read (URIs, fingerprints, data asset versions) and what it wrote.

Three records of the same facts:
- MLflow tags on the step's child run (`mlflow_tags`), and data asset tags on a registered model
  version (`model_version_tags`);
- a Prefect table artifact per step run (`lineage_artifact`), shown on the task run in the UI;
- Prefect asset events (`emit_asset_events`): `prefect.asset.referenced` for each input and
  `prefect.asset.materialization.succeeded` for each output, related to its inputs, in the shape
  Prefect's own `@materialize` emits (`prefect.context.AssetContext.emit_events`).

Why events and not `@materialize`: a `MaterializingTask` declares its assets when the task is
defined, but a step's output URIs exist only once its cache key is known at run time. Emitting
the same events by hand gives the same result. Prefect Cloud draws the asset lineage graph from
them; a self-hosted Prefect 3.9 server stores them and lists them in the event feed (its UI has
no assets page), linked to the flow and task run that emitted them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prefect_ml._util import slugify
from prefect_ml.asset_registry import asset_of
from prefect_ml.records import is_step_fingerprint
from prefect_ml.runtime.observers import StepContext, StepObserver

if TYPE_CHECKING:
    from prefect_ml.records import StepResult

MATERIALIZED_BY = "prefect-ml"
_ASSET_KEY = re.compile(r"^[a-z0-9]+://[^\s#?&%\"'<>\[\]{}|\\^`]+$")


def _asset_label(uri: str) -> str:
    found = asset_of(uri)
    return f"{found[0]}:{found[1]}" if found else ""


def mlflow_tags(inputs: Mapping[str, str], fingerprints: Mapping[str, str]) -> dict[str, str]:
    """Tags for a step's MLflow run: each data input's URI, fingerprint and data asset version."""
    tags: dict[str, str] = {}
    for name, uri in inputs.items():
        tags[f"prefect_ml.input.{name}"] = uri
        if fingerprints.get(name):
            tags[f"prefect_ml.input_fingerprint.{name}"] = fingerprints[name]
        label = _asset_label(uri)
        if label:
            tags[f"prefect_ml.data_asset.{name}"] = label
    return tags


def model_version_tags(step_inputs: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Tags for a registered model version: `prefect_ml.data_asset.<step>.<input>` = `name:version`
    for every step input that came from a data asset, plus `prefect_ml.data_assets` listing them all."""
    tags: dict[str, str] = {}
    for step, inputs in step_inputs.items():
        for name, uri in inputs.items():
            label = _asset_label(uri)
            if label:
                tags[f"prefect_ml.data_asset.{step}.{name}"] = label
    if tags:
        tags["prefect_ml.data_assets"] = ",".join(sorted(set(tags.values())))
    return tags


def lineage_rows(inputs: Mapping[str, str], fingerprints: Mapping[str, str],
                 outputs: Mapping[str, str]) -> list[dict[str, str]]:
    rows = [{"direction": "input", "name": n, "uri": u, "fingerprint": fingerprints.get(n, ""),
             "data_asset": _asset_label(u)} for n, u in inputs.items()]
    rows += [{"direction": "output", "name": n, "uri": u, "fingerprint": "", "data_asset": ""}
             for n, u in outputs.items()]
    return rows


def lineage_artifact(step: str, inputs: Mapping[str, str], fingerprints: Mapping[str, str],
                     outputs: Mapping[str, str], *, cache_key: str = "", cached: bool = False) -> Any | None:
    """A Prefect table artifact on the current task run: one row per data input and output."""
    from prefect.artifacts import create_table_artifact

    slug = slugify(step, max_len=50, fallback="step")
    return create_table_artifact(
        key=f"lineage-{slug}",
        table=lineage_rows(inputs, fingerprints, outputs),
        description=f"lineage of step {step} ({'reused' if cached else 'ran'}; cache key {cache_key})",
    )


def _asset_resource(uri: str, name: str | None = None) -> dict[str, str]:
    resource = {"prefect.resource.id": uri}
    if name:
        resource["prefect.resource.name"] = name
    return resource


def emit_asset_events(step: str, inputs: Mapping[str, str], outputs: Mapping[str, str], *,
                      fingerprints: Mapping[str, str] | None = None, cache_key: str = "") -> list:
    """Emit Prefect asset events for a step that ran (a reused step materializes nothing, as in Prefect).

    Returns the events sent (empty when events are off or no client is connected). URIs that are not
    valid asset keys (spaces, '%', '?', ... or over 512 characters) are skipped.
    """
    from prefect.events import emit_event

    fingerprints = fingerprints or {}
    valid = lambda u: len(u) <= 512 and bool(_ASSET_KEY.match(u))  # noqa: E731
    upstream = [u for u in inputs.values() if valid(u)]
    sent = []
    for uri in upstream:
        name = _asset_label(uri) or None
        ev = emit_event(event="prefect.asset.referenced", resource=_asset_resource(uri, name), related=[])
        if ev is not None:
            sent.append(ev)
    related = [{"prefect.resource.id": u, "prefect.resource.role": "asset"} for u in upstream]
    related.append({"prefect.resource.id": MATERIALIZED_BY, "prefect.resource.role": "asset-materialized-by"})
    for name, uri in outputs.items():
        if not valid(uri):
            continue
        ev = emit_event(
            event="prefect.asset.materialization.succeeded",
            resource=_asset_resource(uri, f"{step}.{name}"),
            related=related,
            payload={"step": step, "output": name, "cache_key": cache_key,
                     "inputs": {k: {"uri": v, "fingerprint": fingerprints.get(k, "")} for k, v in inputs.items()}},
        )
        if ev is not None:
            sent.append(ev)
    return sent


def record_step(step: str, inputs: Mapping[str, str], fingerprints: Mapping[str, str],
                outputs: Mapping[str, str], *, cache_key: str = "", cached: bool = False) -> None:
    """Everything above for one finished step, from inside its Prefect task run. Never fails the step."""
    import logging

    try:
        lineage_artifact(step, inputs, fingerprints, outputs, cache_key=cache_key, cached=cached)
        if not cached:
            emit_asset_events(step, inputs, outputs, fingerprints=fingerprints, cache_key=cache_key)
    except Exception as exc:
        logging.getLogger("prefect_ml.lineage").warning(f"could not record lineage of step {step}: {exc}")


class LineageObserver(StepObserver):
    """Records each finished step's lineage (artifact and asset events); never fails the step.

    Written by the background writer (in the task run's context), off the step's critical path;
    the pipeline flushes it before its flow returns."""

    def step_finished(self, ctx: StepContext, result: StepResult, metrics: dict[str, float]) -> None:
        from prefect_ml.runtime import background

        step = ctx.step_name
        background.submit(f"lineage of step {step}", lambda: record_step(
            step, result.inputs, result.fingerprints, result.outputs, cache_key=result.key, cached=result.cached),
            in_context=True)


def external_inputs(inputs: Mapping[str, str], fingerprints: Mapping[str, str]) -> dict[str, str]:
    """The data inputs that came from outside the pipeline (not another step's output)."""
    return {k: uri for k, uri in inputs.items() if not is_step_fingerprint(fingerprints.get(k, ""))}
