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
    there is one), so the registry never depends on the artifact root.
    """
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    version_tags = {**tags, "prefect_ml.model_uri": model_uri}
    if producer is not None:
        version_tags[SOURCE_KEY_TAG] = producer.key
    run_id = producer.mlflow_run_id if producer else None
    try:
        existing = _version_of_source(client, name, producer.key) if producer is not None else None
        # the same model (same producing step key): point the alias at it, no duplicate version
        if existing is not None and producer is not None:
            client.set_registered_model_alias(name, alias, existing.version)
            uri = f"models:/{name}@{alias}"
            if log:
                log(f"model {name} version {existing.version} already holds this model (source step key "
                    f"{producer.key}): pointed @{alias} at it instead of registering a duplicate: {uri}")
            return {"name": name, "version": int(existing.version), "alias": alias, "uri": uri,
                    "run_id": existing.run_id, "reused": True}
        if run_id is None:
            run_id = tracking.start_run("prefect-ml-models", f"register-{name}", {"prefect_ml.model_uri": model_uri})
            tracking.end_run(run_id, True)
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


def _version_of_source(client: Any, name: str, key: str) -> Any:
    """The registered version of `name` made from the step output with cache key `key`, if any."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{_quote(name)}' and tags.`{SOURCE_KEY_TAG}` = '{_quote(key)}'")
    except MlflowException:  # no such model yet
        return None
    return max(found, key=lambda v: int(v.version)) if found else None


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
