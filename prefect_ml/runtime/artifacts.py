"""Prefect artifacts that explain a run in the UI.

- on each step's task run: its cache key, the key's parts and the hit/miss reason (`ArtifactsObserver`);
- on the flow run: `pipeline-<name>`, one row per step (cache hit/miss, duration, infrastructure,
  output URIs), and `metrics-<name>`, one row per metric of every `metrics` output.

The gate decision and the registered model are artifacts of their own tasks (`dsl.gate`, `runtime.registry`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prefect_ml._util import slugify
from prefect_ml.errors import PrefectMLError
from prefect_ml.runtime.observers import StepContext, StepObserver
from prefect_ml.runtime.outputs import read_metrics

if TYPE_CHECKING:
    from prefect_ml.dsl.step import Step
    from prefect_ml.records import Decision, RunSpec


def artifact_key(prefix: str, pipeline: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes; at most 60 characters)."""
    return f"{prefix}-{slugify(pipeline, max_len=200, fallback='pipeline')}"[:60].rstrip("-")


def key_artifact(step_name: str, d: Decision) -> None:
    """A markdown artifact on the task run: the key, its parts and the hit/miss reason."""
    from prefect.artifacts import create_markdown_artifact

    rows = "\n".join(f"| {k} | `{json.dumps(v, default=str)[:300]}` |" for k, v in d.parts.items())
    create_markdown_artifact(
        markdown=f"### Step `{step_name}`: {'reused' if d.reuse else 'ran'}\n\n{d.reason}\n\n"
                 f"cache key `{d.key}`\n\n| part | value |\n|---|---|\n{rows}\n",
        description=f"cache key of step {step_name}",
    )


class ArtifactsObserver(StepObserver):
    """The cache-key artifact on every step's task run, for a hit and a run alike.

    Written by the background writer (in the task run's context), off the step's critical path;
    the pipeline flushes it before its flow returns."""

    def step_started(self, ctx: StepContext) -> None:
        from prefect_ml.runtime import background

        step, decision = ctx.step_name, ctx.decision
        background.submit(f"cache-key artifact of step {step}", lambda: key_artifact(step, decision), in_context=True)


def summary_rows(steps: Sequence[Step]) -> list[dict[str, Any]]:
    """One row per step; a step that did not complete shows its state."""
    rows: list[dict[str, Any]] = []
    for step in steps:
        res = step.finished_result()
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


def metrics_rows(steps: Sequence[Step]) -> list[dict[str, Any]]:
    """One row per metric of each completed step's `metrics` outputs."""
    rows: list[dict[str, Any]] = []
    for step in steps:
        res = step.finished_result()
        if res is None:
            continue
        for name, out in step.component.outputs.items():
            if out.type != "metrics" or name not in res.outputs:
                continue
            values = read_metrics(res.outputs[name], where=f"step '{step.name}', output '{name}'")
            rows += [{"step": step.name, "output": name, "metric": k, "value": round(v, 6)}
                     for k, v in sorted(values.items())]
    return rows


def pipeline_summary(spec: RunSpec, steps: Sequence[Step]) -> None:
    """Write the pipeline summary and the metrics table artifacts of a pipeline run.

    Safe to call for a failed run too: steps that did not complete are listed with their state.
    """
    from prefect import get_run_logger
    from prefect.artifacts import create_table_artifact

    rows = summary_rows(steps)
    if not rows:
        return
    hits = sum(r["cache"] == "hit" for r in rows)
    ran = sum(r["cache"] == "miss" for r in rows)
    create_table_artifact(
        key=artifact_key("pipeline", spec.pipeline),
        table=rows,
        description=(
            f"prefect-ml pipeline {spec.pipeline}: {len(rows)} steps ({hits} cache hits, {ran} ran, "
            f"{len(rows) - hits - ran} did not complete); artifact root {spec.artifact_root}"
        ),
    )
    try:
        metrics = metrics_rows(steps)
    except PrefectMLError as exc:  # a summary must not fail a run whose steps succeeded
        get_run_logger().warning(f"metrics table skipped: {exc}")
        return
    if metrics:
        create_table_artifact(
            key=artifact_key("metrics", spec.pipeline),
            table=metrics,
            description=f"metrics of pipeline {spec.pipeline}: "
            + ", ".join(f"{r['step']}.{r['metric']}={r['value']:.4g}" for r in metrics[:6]),
        )
