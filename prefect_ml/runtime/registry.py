"""Model registration in MLflow: copy an `mlflow_model` output into MLflow's artifact store,
create a registered model version tagged with lineage, and point an alias at it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect_ml import storage
from prefect_ml.errors import RegistrationError
from prefect_ml.records import RunSpec, StepResult
from prefect_ml.runtime import tracking
from prefect_ml.runtime.lineage import external_inputs, model_version_tags
from prefect_ml.runtime.outputs import read_metrics

# Tag on a model version: the cache key of the step that produced the model. A second
# registration of the same output re-points the alias instead of adding an identical version.
SOURCE_KEY_TAG = "prefect_ml.source_cache_key"


def lineage_tags(spec: RunSpec | None, results: Mapping[str, StepResult]) -> dict[str, str]:
    """Model version tags that say where a model came from: the pipeline run and every external
    data input of every completed step (with data asset versions)."""
    tags: dict[str, str] = {}
    if spec is not None:
        tags["prefect_ml.pipeline"] = spec.pipeline
        tags["prefect_ml.flow_run_id"] = spec.flow_run_id or ""
        if spec.mlflow_run_id:
            tags["prefect_ml.mlflow_parent_run_id"] = spec.mlflow_run_id
    for step, res in results.items():
        for k, uri in external_inputs(res.inputs, res.fingerprints).items():
            tags[f"prefect_ml.input.{step}.{k}"] = uri
    tags.update(model_version_tags({step: res.inputs for step, res in results.items()}))
    return tags


def register(*, producer: StepResult | None, model_uri: str, output: str, name: str, alias: str,
             metrics_uri: str | None, tags: Mapping[str, str], staging_home: Path,
             log: Any = None) -> dict[str, Any]:
    """Register `model_uri` as a new version of `name` and point `alias` at it.

    The model is copied into MLflow's artifact store (under the producing step's MLflow run when
    there is one), so the registry never depends on the artifact root. When a version made from
    the same step output (same producing step key) exists, `alias` is re-pointed at it instead.
    With an MLflow server that check and the alias go through the REST API, so an unchanged re-run
    never imports `mlflow`; only a new version (artifact upload + create_model_version) does.
    """
    tracking.flush(warn=log)  # the producing step's run is complete in the store before it is referenced
    if producer is not None:
        existing = _version_of_source(name, producer.key)
        # the same model (same producing step key): point the alias at it, no duplicate version
        if existing is not None:
            version, existing_run = existing
            _set_alias(name, alias, version)
            uri = f"models:/{name}@{alias}"
            if log:
                log(f"model {name} version {version} already holds this model (source step key "
                    f"{producer.key}): pointed @{alias} at it instead of registering a duplicate: {uri}")
            return {"name": name, "version": int(version), "alias": alias, "uri": uri,
                    "run_id": existing_run, "reused": True}
    return _register_new(producer=producer, model_uri=model_uri, output=output, name=name, alias=alias,
                         metrics_uri=metrics_uri, tags=tags, staging_home=staging_home, log=log)


def _register_new(*, producer: StepResult | None, model_uri: str, output: str, name: str, alias: str,
                  metrics_uri: str | None, tags: Mapping[str, str], staging_home: Path, log: Any) -> dict[str, Any]:
    """A new model version through the mlflow library (artifact upload needs it)."""
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    version_tags = {**tags, "prefect_ml.model_uri": model_uri}
    if producer is not None:
        version_tags[SOURCE_KEY_TAG] = producer.key
    run_id = producer.mlflow_run_id if producer else None
    try:
        if run_id is None:
            run_id = tracking.start_run("prefect-ml-models", f"register-{name}", {"prefect_ml.model_uri": model_uri})
            tracking.end_run(run_id, True, wait=True)
        local = storage.stage_in(model_uri, staging_home)
        client.log_artifacts(run_id, str(local), artifact_path=output)
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{output}"
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        version = client.create_model_version(name, source, run_id=run_id, tags=version_tags)
        if metrics_uri:
            for k, v in read_metrics(metrics_uri, where="register_model metrics").items():
                client.set_model_version_tag(name, version.version, f"metric.{k}", f"{v:.6g}")
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        raise RegistrationError(f"register_model: MLflow refused to register '{name}': {exc.message}") from exc
    uri = f"models:/{name}@{alias}"
    if log:
        log(f"registered model {name} version {version.version} as @{alias}: {uri}")
    return {"name": name, "version": int(version.version), "alias": alias, "uri": uri, "run_id": run_id,
            "reused": False}


def _version_of_source(name: str, key: str) -> tuple[str, str | None] | None:
    """(version, run id) of the newest version of `name` made from the step output with cache key `key`."""
    from prefect_ml.runtime.mlflow_rest import MlflowRestError, is_http

    query = f"name = '{_quote(name)}' and tags.`{SOURCE_KEY_TAG}` = '{_quote(key)}'"
    if is_http(tracking.tracking_uri()):
        rest = tracking.backend().rest  # type: ignore[attr-defined]
        try:
            found = rest.search_model_versions(query)
        except MlflowRestError as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistrationError(f"register_model: MLflow could not search versions of '{name}': {exc}") from exc
        if not found:
            return None
        best = max(found, key=lambda v: int(v["version"]))
        return str(best["version"]), best.get("run_id") or None
    from mlflow.exceptions import MlflowException

    try:
        versions = tracking.client().search_model_versions(query)
    except MlflowException:  # no such model yet
        return None
    if not versions:
        return None
    v = max(versions, key=lambda v: int(v.version))
    return str(v.version), v.run_id


def _set_alias(name: str, alias: str, version: str) -> None:
    from prefect_ml.runtime.mlflow_rest import MlflowRestError, is_http

    if is_http(tracking.tracking_uri()):
        try:
            tracking.backend().rest.set_registered_model_alias(name, alias, version)  # type: ignore[attr-defined]
        except MlflowRestError as exc:
            raise RegistrationError(f"register_model: MLflow refused alias @{alias} of '{name}': {exc}") from exc
        return
    from mlflow.exceptions import MlflowException

    try:
        tracking.client().set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise RegistrationError(f"register_model: MLflow refused alias @{alias} of '{name}': {exc.message}") from exc


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def registration_artifact(info: Mapping[str, Any]) -> None:
    """A markdown artifact on the registration task: name, version, alias, URI and source run."""
    from prefect.artifacts import create_markdown_artifact

    from prefect_ml._util import slugify

    name, version, alias, uri = info["name"], info["version"], info["alias"], info["uri"]
    link = tracking.run_link(info["run_id"]) if info.get("run_id") else ""
    what = (f"version {version} already held this model (same source step): @{alias} re-pointed, no new version"
            if info.get("reused") else f"new version {version}")
    create_markdown_artifact(
        key=f"model-{slugify(name)}",
        markdown=(
            f"### Registered model `{name}`\n\n{what}\n\n| name | version | alias | URI | source run |\n"
            f"|---|---|---|---|---|\n| {name} | {version} | {alias} | `{uri}` | {link} |\n"
        ),
        description=f"{name} v{version} @{alias}" + (" (existing version)" if info.get("reused") else " (registered)"),
    )
