"""Prefect artifacts that summarise a pipeline run in the UI (the flow run's Artifacts tab).

- `pipeline-<name>`: one row per step: cache hit/miss, duration, infrastructure, output URIs.
- `metrics-<name>`: one row per metric of every `metrics` output (e.g. evaluate's auc).

The gate decision and the registered model are artifacts of their own tasks (see `gate.py`).
"""

from __future__ import annotations

import re

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from prefect_ml.errors import PrefectMLError


def artifact_key(prefix: str, pipeline: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes; at most 60 characters)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-") or "pipeline"
    return f"{prefix}-{slug}"[:60].rstrip("-")


def _finished(step):
    """The step's `StepResult`, or None when it did not complete (failed, or never ran)."""
    future = getattr(step, "future", None)
    if future is not None and not future.state.is_completed():
        return None
    return step.result()


def summary_rows(run) -> list[dict]:
    """One row per step of `run` (a `PipelineRun`); a step that did not complete shows its state."""
    rows = []
    for step in run.steps:
        res = _finished(step)
        if res is None:
            state = step.future.state
            rows.append({"step": step.name, "cache": "-", "duration_s": None, "infrastructure": "",
                         "outputs": f"{state.name}: {(state.message or '')[:200]}",
                         "component": f"{step.component.name}:{step.component.version}", "cache_key": ""})
            continue
        rows.append({  # the columns a reader scans first come first (the UI cuts wide tables)
            "step": step.name,
            "cache": "hit" if res.cached else "miss",
            "duration_s": round(res.duration_s, 2),
            "infrastructure": res.infrastructure,
            "outputs": ", ".join(f"{k}={v}" for k, v in res.outputs.items()),
            "component": f"{step.component.name}:{step.component.version}",
            "cache_key": res.key,
        })
    return rows


def metrics_rows(run) -> list[dict]:
    """One row per metric of each completed step's `metrics` outputs."""
    from prefect_ml.step import read_metrics

    rows = []
    for step in run.steps:
        res = _finished(step)
        if res is None:
            continue
        for name, out in step.component.outputs.items():
            if out.type != "metrics" or name not in res.outputs:
                continue
            values = read_metrics(res.outputs[name], where=f"step '{step.name}', output '{name}'")
            rows += [{"step": step.name, "output": name, "metric": k, "value": round(v, 6)}
                     for k, v in sorted(values.items())]
    return rows


def pipeline_summary(run) -> None:
    """Write the pipeline summary and the metrics table artifacts of a pipeline run.

    Safe to call for a failed run too: steps that did not complete are listed with their state.
    """
    rows = summary_rows(run)
    if not rows:
        return
    hits = sum(r["cache"] == "hit" for r in rows)
    ran = sum(r["cache"] == "miss" for r in rows)
    create_table_artifact(
        key=artifact_key("pipeline", run.spec.pipeline),
        table=rows,
        description=(
            f"prefect-ml pipeline {run.spec.pipeline}: {len(rows)} steps ({hits} cache hits, {ran} ran, "
            f"{len(rows) - hits - ran} did not complete); artifact root {run.spec.artifact_root}"
        ),
    )
    try:
        metrics = metrics_rows(run)
    except PrefectMLError as exc:  # a summary must not fail a run whose steps succeeded
        get_run_logger().warning(f"metrics table skipped: {exc}")
        return
    if metrics:
        create_table_artifact(
            key=artifact_key("metrics", run.spec.pipeline),
            table=metrics,
            description=f"metrics of pipeline {run.spec.pipeline}: "
            + ", ".join(f"{r['step']}.{r['metric']}={r['value']:.4g}" for r in metrics[:6]),
        )
