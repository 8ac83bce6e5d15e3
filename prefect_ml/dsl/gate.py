"""Gates: a condition on a step's metrics that decides what a pipeline does next."""

from __future__ import annotations

import operator
from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from prefect_ml._util import slugify
from prefect_ml.dsl import context
from prefect_ml.dsl.step import OutputRef
from prefect_ml.errors import GateError
from prefect_ml.runtime import tracking
from prefect_ml.runtime.outputs import read_metrics

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}


def _uri(value: OutputRef | str) -> str:
    return value.uri() if isinstance(value, OutputRef) else str(value)


def compare(metrics_uri: str, metric: str, op: str, threshold: float, source: str) -> tuple[float, bool]:
    """Read one metric of a metrics output and compare it; a missing metric is an error."""
    metrics = read_metrics(metrics_uri, where=f"gate on '{metric}'")
    if metric not in metrics:
        raise GateError(
            f"gate: metric '{metric}' is not in the metrics output of {source} ({metrics_uri}); "
            f"available metrics: {sorted(metrics)}. Fix the metric name or make the step write it."
        )
    return metrics[metric], bool(OPERATORS[op](metrics[metric], threshold))


@task(name="gate", cache_policy=NO_CACHE, persist_result=False)
def _gate(metrics_uri: str, metric: str, op: str, threshold: float, source: str,
          mlflow_run_id: str | None = None) -> bool:
    logger = get_run_logger()
    value, passed = compare(metrics_uri, metric, op, threshold, source)
    decision = "passed" if passed else "failed"
    logger.info(f"gate {metric} {op} {threshold}: {metric}={value:.6g} -> {decision}")
    create_markdown_artifact(
        key=f"gate-{slugify(metric)}",
        markdown=(
            f"### Gate: `{metric} {op} {threshold}` — **{decision.upper()}**\n\n"
            f"| metric | value | operator | threshold | outcome |\n|---|---|---|---|---|\n"
            f"| {metric} | {value:.6g} | {op} | {threshold} | {decision} |\n\nmetrics: `{metrics_uri}`"
        ),
        description=f"gate {metric} {op} {threshold}: {decision}",
    )
    if mlflow_run_id:
        tracking.set_tags(mlflow_run_id, {
            f"prefect_ml.gate.{metric}": f"{metric}={value:.6g} {op} {threshold}: {decision}",
        })
    return passed


def _plan_gate(notes: list[str], metrics: OutputRef | str, metric: str, op: str, threshold: float,
               source: str) -> bool:
    if isinstance(metrics, OutputRef) and not metrics.step.result().cached:
        notes.append(f"gate {metric} {op} {threshold}: unknown until step '{metrics.step_name}' runs (assumed to pass)")
        return True
    value, passed = compare(_uri(metrics), metric, op, threshold, source)
    notes.append(f"gate {metric} {op} {threshold}: {metric}={value:.6g} -> {'passed' if passed else 'failed'}")
    return passed


def gate(metrics: OutputRef | str, metric: str, op: str, threshold: float) -> bool:
    """Compare one metric of a `metrics` output with a threshold; record and return the decision.

    Example:
        if gate(report.outputs.metrics, "auc", ">=", 0.75):
            register_model(model.outputs.model, name="credit_defaults_model")
    """
    if op not in OPERATORS:
        raise GateError(f"gate: unknown operator {op!r}; use one of {list(OPERATORS)}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise GateError(f"gate: threshold must be a number, got {threshold!r}.")
    if isinstance(metrics, OutputRef) and metrics.type != "metrics":
        raise GateError(f"gate: '{metrics.name}' of step '{metrics.step_name}' is {metrics.type}, not a metrics "
            "output.")
    source = f"step '{metrics.step_name}'" if isinstance(metrics, OutputRef) else repr(metrics)
    run = context.active()
    if run is not None and run.planning:
        return _plan_gate(run.notes, metrics, metric, op, float(threshold), source)
    spec = run.spec if run is not None else None
    return _gate.with_options(task_run_name=f"gate-{slugify(metric)}")(
        _uri(metrics), metric, op, float(threshold), source, spec.mlflow_run_id if spec else None)
