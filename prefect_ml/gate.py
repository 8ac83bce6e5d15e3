"""Gates on step metrics, and gated model registration in MLflow."""

from __future__ import annotations

import operator
from typing import Any, Optional, Union

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from prefect_ml import tracking
from prefect_ml.lineage import model_version_tags
from prefect_ml.errors import GateError, RegistrationError
from prefect_ml.pipeline import OutputRef, current_run
from prefect_ml.step import StepResult, read_metrics

OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


def _uri(value: Union[OutputRef, str]) -> str:
    return value.uri() if isinstance(value, OutputRef) else str(value)


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:60] or "x"


def _compare(metrics_uri: str, metric: str, op: str, threshold: float, source: str) -> tuple[float, bool]:
    """Read one metric of a metrics output and compare it; a missing metric is an error."""
    metrics = read_metrics(metrics_uri, where=f"gate on '{metric}'")
    if metric not in metrics:
        raise GateError(
            f"gate: metric '{metric}' is not in the metrics output of {source} ({metrics_uri}); "
            f"available metrics: {sorted(metrics)}. Fix the metric name or make the step write it."
        )
    return metrics[metric], bool(OPERATORS[op](metrics[metric], threshold))


@task(name="gate", cache_policy=NO_CACHE, persist_result=False)
def _gate(metrics_uri: str, metric: str, op: str, threshold: float, source: str) -> bool:
    logger = get_run_logger()
    value, passed = _compare(metrics_uri, metric, op, threshold, source)
    decision = "passed" if passed else "failed"
    logger.info(f"gate {metric} {op} {threshold}: {metric}={value:.6g} -> {decision}")
    create_markdown_artifact(
        key=f"gate-{_slug(metric)}",
        markdown=(
            f"### Gate: `{metric} {op} {threshold}` — **{decision.upper()}**\n\n"
            f"| metric | value | operator | threshold | outcome |\n|---|---|---|---|---|\n"
            f"| {metric} | {value:.6g} | {op} | {threshold} | {decision} |\n\nmetrics: `{metrics_uri}`"
        ),
        description=f"gate {metric} {op} {threshold}: {decision}",
    )
    run = current_run()
    if run and run.spec.mlflow_run_id:
        tracking.set_tags(run.spec.mlflow_run_id, {
            f"prefect_ml.gate.{metric}": f"{metric}={value:.6g} {op} {threshold}: {decision}",
        })
    return passed


def _plan_gate(run, metrics, metric: str, op: str, threshold: float, source: str) -> bool:
    if isinstance(metrics, OutputRef) and not metrics.step.result().cached:
        run.notes.append(f"gate {metric} {op} {threshold}: unknown until step '{metrics.step_name}' runs (assumed to pass)")
        return True
    value, passed = _compare(_uri(metrics), metric, op, threshold, source)
    run.notes.append(f"gate {metric} {op} {threshold}: {metric}={value:.6g} -> {'passed' if passed else 'failed'}")
    return passed


def gate(metrics: Union[OutputRef, str], metric: str, op: str, threshold: float) -> bool:
    """Compare one metric of a `metrics` output with a threshold; record and return the decision.

    Example:
        if gate(report.outputs.metrics, "auc", ">=", 0.75):
            register_model(model.outputs.model, name="credit_defaults_model")
    """
    if op not in OPERATORS:
        raise GateError(f"gate: unknown operator {op!r}; use one of {list(OPERATORS)}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise GateError(f"gate: threshold must be a number, got {threshold!r}.")
    if isinstance(metrics, OutputRef):
        out = metrics.step.component.outputs[metrics.name]
        if out.type != "metrics":
            raise GateError(f"gate: '{metrics.name}' of step '{metrics.step_name}' is {out.type}, not a metrics output.")
    source = f"step '{metrics.step_name}'" if isinstance(metrics, OutputRef) else repr(metrics)
    run = current_run()
    if run is not None and run.planning:
        return _plan_gate(run, metrics, metric, op, float(threshold), source)
    return _gate.with_options(task_run_name=f"gate-{_slug(metric)}")(_uri(metrics), metric, op, float(threshold), source)


@task(name="register-model", cache_policy=NO_CACHE, persist_result=False)
def _register(producer: Optional[StepResult], model_uri: str, output: str, name: str, alias: str,
              metrics_uri: Optional[str], tags: dict[str, str]) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from prefect_ml import storage
    from prefect_ml.settings import get_settings

    logger = get_run_logger()
    client = tracking.client()
    run = current_run()
    lineage: dict[str, str] = dict(tags)
    if run:
        lineage["prefect_ml.pipeline"] = run.spec.pipeline
        lineage["prefect_ml.flow_run_id"] = run.spec.flow_run_id or ""
        if run.spec.mlflow_run_id:
            lineage["prefect_ml.mlflow_parent_run_id"] = run.spec.mlflow_run_id
        step_inputs: dict[str, dict[str, str]] = {}
        for step in run.steps:
            if step.future is not None and step.future.state.is_completed():
                res = step.result()
                step_inputs[step.name] = res.inputs
                for k, uri in res.inputs.items():
                    if not res.fingerprints.get(k, "").startswith("step:"):  # external data, not a step output
                        lineage[f"prefect_ml.input.{step.name}.{k}"] = uri
        lineage.update(model_version_tags(step_inputs))
    lineage["prefect_ml.model_uri"] = model_uri
    run_id = producer.mlflow_run_id if producer else None
    try:
        if run_id is None:
            run_id = tracking.start_run("prefect-ml-models", f"register-{name}", {"prefect_ml.model_uri": model_uri})
            tracking.end_run(run_id, True)
        # copy the model into MLflow's artifact store so the registry never depends on the artifact root
        local = storage.stage_in(model_uri, get_settings().home_path / "staging")
        client.log_artifacts(run_id, str(local), artifact_path=output)
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{output}"
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        version = client.create_model_version(name, source, run_id=run_id, tags=lineage)
        if metrics_uri:
            for k, v in read_metrics(metrics_uri, where="register_model metrics").items():
                client.set_model_version_tag(name, version.version, f"metric.{k}", f"{v:.6g}")
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        raise RegistrationError(f"register_model: MLflow refused to register '{name}': {exc.message}") from None
    uri = f"models:/{name}@{alias}"
    logger.info(f"registered model {name} version {version.version} as @{alias}: {uri}")
    link = tracking.run_link(run_id)
    create_markdown_artifact(
        key=f"model-{_slug(name)}",
        markdown=(
            f"### Registered model `{name}`\n\n| name | version | alias | URI | source run |\n|---|---|---|---|---|\n"
            f"| {name} | {version.version} | {alias} | `{uri}` | {link} |\n"
        ),
        description=f"registered {name} v{version.version} @{alias}",
    )
    return {"name": name, "version": int(version.version), "alias": alias, "uri": uri, "run_id": run_id}


def register_model(model: Union[OutputRef, str], name: str, *, alias: str = "candidate",
                   metrics: Union[OutputRef, str, None] = None, tags: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Register an `mlflow_model` output in the MLflow model registry and point `alias` at it.

    The version is tagged with lineage: pipeline and flow run ids, the data inputs of every step,
    and the model's URI (plus `metric.*` tags when `metrics` is given). Returns name, version,
    alias and the `models:/name@alias` URI.
    """
    run = current_run()
    if run is not None and run.planning:
        run.notes.append(f"register_model {name} @{alias}")
        return {"name": name, "version": None, "alias": alias, "uri": f"models:/{name}@{alias}", "run_id": None}
    producer = None
    output = "model"
    if isinstance(model, OutputRef):
        out = model.step.component.outputs[model.name]
        if out.type != "mlflow_model":
            raise RegistrationError(
                f"register_model: output '{model.name}' of step '{model.step_name}' is {out.type}; "
                "only mlflow_model outputs can be registered."
            )
        producer = model.step.result()
        output = model.name
    return _register.with_options(task_run_name=f"register-{name}")(producer, _uri(model), output, name, alias,
                     _uri(metrics) if metrics is not None else None, dict(tags or {}))
