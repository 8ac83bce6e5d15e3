"""Prefect artifacts that summarise a pipeline run in the UI."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact


def pipeline_summary(run) -> None:
    """A table artifact: one row per step with reuse, duration, infrastructure and output URIs."""
    rows = []
    for step in run.steps:
        res = step.result()
        rows.append({
            "step": step.name,
            "component": f"{step.component.name}:{step.component.version}",
            "reused": "cached" if res.cached else "ran",
            "duration_s": round(res.duration_s, 2),
            "infrastructure": res.infrastructure,
            "cache_key": res.key,
            "outputs": ", ".join(f"{k}={v}" for k, v in res.outputs.items()),
        })
    if rows:
        create_table_artifact(
            key=f"pipeline-{run.spec.pipeline.lower().replace('_', '-')}"[:60],
            table=rows,
            description=f"prefect-ml pipeline {run.spec.pipeline}: {len(rows)} steps, artifact root {run.spec.artifact_root}",
        )
