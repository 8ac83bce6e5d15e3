"""`register_model`: register an `mlflow_model` step output in the MLflow model registry."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_ml.dsl import context
from prefect_ml.dsl.step import OutputRef
from prefect_ml.errors import RegistrationError
from prefect_ml.records import StepResult
from prefect_ml.runtime import promotion, registry
from prefect_ml.runtime.outputs import read_metrics
from prefect_ml.settings import get_settings


@task(name="register-model", cache_policy=NO_CACHE, persist_result=False)
def _register(producer: StepResult | None, model_uri: str, output: str, name: str, alias: str,
              metrics_uri: str | None, tags: dict[str, str], compare: dict[str, Any] | None = None) -> dict[str, Any]:
    log = get_run_logger().info
    comparison = None
    if compare is not None:
        # read the champion BEFORE registering: a comparison that cannot be made registers nothing
        comparison = _compare_before(name, metrics_uri, compare)
    info = registry.register(producer=producer, model_uri=model_uri, output=output, name=name, alias=alias,
                             metrics_uri=metrics_uri, tags=tags, staging_home=get_settings().home_path / "staging",
                             log=log)
    registry.registration_artifact(info)
    if comparison is not None:
        promotion.record_comparison(comparison, info["version"], reused=bool(info.get("reused")))
        log(f"{name} version {info['version']} vs @{comparison.against}: {comparison.decision}: {comparison.reason}")
        _comparison_artifact(comparison)
        info["comparison"] = comparison.to_dict()
    return info


def _compare_before(name: str, metrics_uri: str | None, compare: dict[str, Any]) -> promotion.Comparison:
    rule = promotion.Rule(compare["metric"], compare["direction"], compare["min_improvement"])
    if not metrics_uri:
        raise RegistrationError(f"register_model(compare_with={compare['against']!r}) needs metrics=... (the "
                                f"challenger's '{rule.metric}' comes from the metrics output).")
    values = read_metrics(metrics_uri, where=f"register_model compare on '{rule.metric}'")
    if rule.metric not in values:
        raise RegistrationError(f"register_model: metric '{rule.metric}' is not in the metrics output {metrics_uri}; "
                                f"available: {sorted(values)}. Nothing was registered.")
    # the value as registry.register tags it (6 significant digits): both sides compare alike
    value = float(f"{values[rule.metric]:.6g}")
    return promotion.compare(name, value, rule, against=compare["against"])


def _comparison_artifact(comparison: promotion.Comparison) -> None:
    from prefect.artifacts import create_markdown_artifact

    from prefect_ml._util import slugify

    create_markdown_artifact(
        key=f"comparison-{slugify(comparison.name)}", markdown=comparison.markdown(),
        description=f"{comparison.name} v{comparison.challenger_version} vs @{comparison.against}: "
                    f"{comparison.decision}")


def _run_lineage() -> dict[str, str]:
    """Lineage tags from the active pipeline run: its ids and every completed step's inputs."""
    run = context.active()
    if run is None:
        return {}
    results = {s.name: r for s in run.steps if (r := s.finished_result()) is not None}
    return registry.lineage_tags(run.spec, results)


def register_model(model: OutputRef | str, name: str, *, alias: str = "candidate",
                   metrics: OutputRef | str | None = None, tags: dict[str, str] | None = None,
                   compare_with: str | None = None, metric: str | None = None, direction: str = "max",
                   min_improvement: float = 0.0) -> dict[str, Any]:
    """Register an `mlflow_model` output in the MLflow model registry and point `alias` at it.

    The version is tagged with lineage: pipeline and flow run ids, the data inputs of every step,
    and the model's URI (plus `metric.*` tags when `metrics` is given). Returns name, version,
    alias and the `models:/name@alias` URI.

    With `compare_with="champion"` (any alias), the new version is the *challenger*: its `metric`
    (from `metrics`) is compared with the `metric.<metric>` tag of the version behind
    `name@champion` before anything is registered. The comparison (both values, the rule
    `direction` / `min_improvement`, the decision and why) becomes `prefect_ml.comparison.*` tags
    on the new version and a `comparison-<name>` Prefect artifact, and is returned under
    `"comparison"` (`"wins"` says whether it should go to approval). A winner is tagged
    `PendingManualApproval` and gets the `@challenger` alias; a loser is tagged `Rejected`. With no
    champion yet the decision is `no-champion` and counts as a win: the first model still needs an
    approval (or `prefect-ml model promote`) to become champion. `@champion` itself never moves here.

    Example:
        if gate(report.outputs.metrics, "auc", ">=", 0.75):
            register_model(model.outputs.model, name="credit_defaults_model", metrics=report.outputs.metrics,
                           compare_with="champion", metric="auc", direction="max", min_improvement=0.0)
    """
    compare = None
    if compare_with is not None:
        if metric is None:
            raise RegistrationError(f"register_model(compare_with={compare_with!r}) needs metric=... (e.g. "
                                    "metric='auc').")
        promotion.Rule(metric, direction, min_improvement)  # validate now, before any step result is awaited
        compare = {"against": compare_with, "metric": metric, "direction": direction,
                   "min_improvement": float(min_improvement)}
    run = context.active()
    if run is not None and run.planning:
        note = f" (compared with @{compare_with} on {metric}, {direction})" if compare_with else ""
        run.notes.append(f"register_model {name} @{alias}{note}")
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
        producer, model_uri, output, name, alias, metrics_uri, lineage, compare)
