"""`register_model`: register an `mlflow_model` step output in the MLflow model registry."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_ml.dsl import context
from prefect_ml.dsl.step import OutputRef
from prefect_ml.errors import RegistrationError
from prefect_ml.records import StepResult
from prefect_ml.runtime import registry
from prefect_ml.settings import get_settings


@task(name="register-model", cache_policy=NO_CACHE, persist_result=False)
def _register(producer: StepResult | None, model_uri: str, output: str, name: str, alias: str,
              metrics_uri: str | None, tags: dict[str, str]) -> dict[str, Any]:
    info = registry.register(producer=producer, model_uri=model_uri, output=output, name=name, alias=alias,
                             metrics_uri=metrics_uri, tags=tags, staging_home=get_settings().home_path / "staging",
                             log=get_run_logger().info)
    registry.registration_artifact(info)
    return info


def _run_lineage() -> dict[str, str]:
    """Lineage tags from the active pipeline run: its ids and every completed step's inputs."""
    run = context.active()
    if run is None:
        return {}
    results = {s.name: r for s in run.steps if (r := s.finished_result()) is not None}
    return registry.lineage_tags(run.spec, results)


def register_model(model: OutputRef | str, name: str, *, alias: str = "candidate",
                   metrics: OutputRef | str | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Register an `mlflow_model` output in the MLflow model registry and point `alias` at it.

    The version is tagged with lineage: pipeline and flow run ids, the data inputs of every step,
    and the model's URI (plus `metric.*` tags when `metrics` is given). Returns name, version,
    alias and the `models:/name@alias` URI.

    Example:
        if gate(report.outputs.metrics, "auc", ">=", 0.75):
            register_model(model.outputs.model, name="credit_defaults_model", metrics=report.outputs.metrics)
    """
    run = context.active()
    if run is not None and run.planning:
        run.notes.append(f"register_model {name} @{alias}")
        return {"name": name, "version": None, "alias": alias, "uri": f"models:/{name}@{alias}", "run_id": None}
    producer = None
    output = "model"
    if isinstance(model, OutputRef):
        if model.type != "mlflow_model":
            raise RegistrationError(
                f"register_model: output '{model.name}' of step '{model.step_name}' is {model.type}; "
                "only mlflow_model outputs can be registered."
            )
        producer = model.step.result()
        output = model.name
    model_uri = model.uri() if isinstance(model, OutputRef) else str(model)
    metrics_uri = None if metrics is None else metrics.uri() if isinstance(metrics, OutputRef) else str(metrics)
    lineage = {**dict(tags or {}), **_run_lineage()}
    return _register.with_options(task_run_name=f"register-{name}")(
        producer, model_uri, output, name, alias, metrics_uri, lineage)
