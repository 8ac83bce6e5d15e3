"""The Prefect task that runs one step: resolve inputs, reuse or run, publish outputs, track.

This is thin glue: the command runs behind the `StepInfrastructure.run` interface, storage
lives in `storage`, the cache key in `caching`, MLflow in `tracking`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from prefect_ml import caching, lineage, storage, tracking
from prefect_ml.component import Component
from prefect_ml.errors import PrefectMLError, StepFailed
from prefect_ml.infrastructure import resolve_infrastructure
from prefect_ml.infrastructure.base import StepJob
from prefect_ml.settings import get_settings

UPSTREAM = "__step__"


class Opaque:
    """Carries an object through Prefect task parameters untouched (Prefect only walks collections)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"<{type(self.value).__name__}>"


@dataclass(frozen=True)
class RunSpec:
    """What a step needs to know about the pipeline run it belongs to."""

    pipeline: str
    flow_run_id: Optional[str]
    artifact_root: str
    experiment: str
    mlflow_run_id: Optional[str]
    infrastructure: Optional[str]
    cache: bool


@dataclass
class StepResult:
    """What a finished step returns (also the value a `Cached` state carries)."""

    step: str
    key: str
    outputs: dict[str, str]
    cached: bool
    mlflow_run_id: Optional[str]
    inputs: dict[str, str] = field(default_factory=dict)  # data input name -> URI
    fingerprints: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    infrastructure: str = ""


def output_rel_path(name: str, output) -> str:
    """Where an output lives inside an attempt: folders as `<name>/`, metrics as `<name>.json`."""
    return f"{name}.json" if output.type == "metrics" else name


def read_metrics(path_or_uri: str, *, where: str) -> dict[str, float]:
    """Parse a metrics output: a JSON object of name -> number."""
    fs, path = storage.filesystem(path_or_uri if "://" in path_or_uri else str(Path(path_or_uri).resolve()))
    try:
        with fs.open(path, "r") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise StepFailed(f"{where}: metrics file {path_or_uri!r} was not written.") from None
    except json.JSONDecodeError as exc:
        raise StepFailed(f"{where}: metrics file is not valid JSON ({exc.msg}); write a JSON object of name -> number.") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()
    ):
        raise StepFailed(f"{where}: metrics must be a JSON object of name -> number, got {str(data)[:200]}.")
    return {k: float(v) for k, v in data.items()}


def _resolve_inputs(component: Component, inputs: dict[str, Any]):
    values: dict[str, Optional[str]] = {}
    raw_values: dict[str, Any] = {}
    data: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    for name, spec in component.inputs.items():
        v = inputs.get(name)
        if isinstance(v, dict) and UPSTREAM in v:
            producer: StepResult = v[UPSTREAM]
            data[name] = producer.outputs[v["output"]]
            fingerprints[name] = f"step:{producer.key}/{v['output']}"
        elif spec.is_data:
            if v is not None:
                data[name] = storage.normalize(str(v))
        else:
            raw_values[name] = v
            values[name] = None if v is None else str(v)
    return values, raw_values, data, fingerprints


def _environment_key(component: Component, infra) -> Optional[str]:
    """The environment part of the key: the infrastructure's identity for it (Docker: the image
    hash, which covers the base image id) or the environment spec's content hash."""
    if not component.environment:
        return None
    identity = getattr(infra, "environment_identity", None)
    if identity is not None:
        return identity(component.environment, component.code)
    from prefect_ml import environments

    return environments.cache_identity(component.environment, start=component.code)


@dataclass
class Decision:
    """What a step will do: its cache key, the parts it was made of, and reuse or run (and why)."""

    key: str
    parts: dict[str, Any]
    values: dict[str, Optional[str]]
    raw_values: dict[str, Any]
    data: dict[str, str]
    fingerprints: dict[str, str]
    published: Optional[storage.PublishedStep]
    reason: str

    @property
    def reuse(self) -> bool:
        return self.published is not None


def decide(component: Component, inputs: dict[str, Any], run: RunSpec, infra) -> Decision:
    """Compute the step's cache key and whether complete outputs for it exist (fail closed)."""
    values, raw_values, data, fingerprints = _resolve_inputs(component, inputs)
    root = storage.ArtifactRoot(run.artifact_root)
    try:
        for name, uri in data.items():
            if name not in fingerprints:
                fingerprints[name] = storage.fingerprint(uri)
        key, parts = caching.step_cache_key(
            component, code=caching.code_digest(component.code), environment=_environment_key(component, infra),
            values=raw_values, data=fingerprints,
        )
    except PrefectMLError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed: run, and say why
        import uuid

        return Decision("nocache-" + uuid.uuid4().hex[:24], {}, values, raw_values, data, fingerprints, None,
                        f"cache key could not be computed ({type(exc).__name__}: {exc}); running without reuse")
    off = [who for who, on in (("component", component.cache), ("pipeline run", run.cache),
                               ("PREFECT_ML_CACHE", get_settings().cache)) if not on]
    if off:  # publish under a key of its own, so fresh outputs never lose to older ones
        import uuid

        return Decision(f"{key}-{uuid.uuid4().hex[:8]}", parts, values, raw_values, data, fingerprints, None,
                        f"caching is off ({', '.join(off)}); running")
    published = root.completed(key, list(component.outputs))
    if published:
        reason = f"cache hit: outputs of key {key} are complete at {root.step_uri(key)}"
    elif root.read_marker(key):
        reason = f"cache miss: key {key} has a marker but some outputs are missing; running again"
    else:
        reason = f"cache miss: no complete outputs for key {key}; running"
    return Decision(key, parts, values, raw_values, data, fingerprints, published, reason)


def _key_artifact(step_name: str, d: Decision) -> None:
    """A markdown artifact on the task run: the key, its parts and the hit/miss reason."""
    from prefect.artifacts import create_markdown_artifact

    rows = "\n".join(f"| {k} | `{json.dumps(v, default=str)[:300]}` |" for k, v in d.parts.items())
    create_markdown_artifact(
        markdown=f"### Step `{step_name}`: {'reused' if d.reuse else 'ran'}\n\n{d.reason}\n\n"
                 f"cache key `{d.key}`\n\n| part | value |\n|---|---|\n{rows}\n",
        description=f"cache key of step {step_name}",
    )


def _check_outputs(component: Component, paths: dict[str, Path], step: str) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, out in component.outputs.items():
        p = paths[name]
        if out.type in ("uri_folder", "mlflow_model"):
            if not p.is_dir():
                raise StepFailed(f"step '{step}': output '{name}' ({out.type}) is not a folder at {p}.")
            if out.type == "mlflow_model" and not (p / "MLmodel").is_file():
                raise StepFailed(
                    f"step '{step}': output '{name}' is an mlflow_model but has no MLmodel file; save it with "
                    "mlflow.<flavor>.save_model(model, path) into ${{outputs." + name + "}}."
                )
        elif not p.is_file():
            raise StepFailed(f"step '{step}': output '{name}' ({out.type}) was not written; write a file at ${{{{outputs.{name}}}}}.")
        if out.type == "metrics":
            metrics.update(read_metrics(str(p), where=f"step '{step}', output '{name}'"))
    return metrics


@task(cache_policy=NO_CACHE, persist_result=False)
def run_step(component: Opaque, inputs: dict[str, Any], run: Opaque, step_name: str):
    """Run (or reuse) one step. Returns a `StepResult`; a reused step ends in a `Cached` state."""
    component: Component = component.value
    run: RunSpec = run.value
    logger = get_run_logger()
    started = time.monotonic()
    settings = get_settings()
    root = storage.ArtifactRoot(run.artifact_root)
    staging_home = settings.home_path / "staging"
    infra = resolve_infrastructure(component.infrastructure or run.infrastructure)
    d = decide(component, inputs, run, infra)
    key, parts, values, raw_values, data, fingerprints = d.key, d.parts, d.values, d.raw_values, d.data, d.fingerprints
    (logger.info if d.reuse or d.parts else logger.warning)(d.reason)
    _key_artifact(step_name, d)
    from prefect import runtime

    task_run_id = str(runtime.task_run.id)
    tags = {
        "prefect.flow_run_id": run.flow_run_id or "",
        "prefect.task_run_id": task_run_id,
        "prefect_ml.step": step_name,
        "prefect_ml.component": f"{component.name}:{component.version}",
        "prefect_ml.cache_key": key,
        "prefect_ml.infrastructure": infra.describe(),
    }
    params = {**raw_values, **data}

    if d.published:
        published = d.published
        run_id = tracking.start_run(run.experiment, step_name, {**tags, "prefect_ml.cache": "hit"}, run.mlflow_run_id, params)
        lineage.record_step(step_name, data, fingerprints, published.outputs, cache_key=key, cached=True)
        tracking.end_run(run_id, True, metrics=_published_metrics(component, published.outputs, step_name),
                         tags={**_output_tags(published.outputs), **lineage.mlflow_tags(data, fingerprints)})
        result = StepResult(step_name, key, published.outputs, True, run_id, data, fingerprints,
                            time.monotonic() - started, infra.describe())
        return Completed(name="Cached", message=f"reused outputs of cache key {key}", data=result)

    run_id = tracking.start_run(run.experiment, step_name, {**tags, "prefect_ml.cache": "miss"}, run.mlflow_run_id, params)
    attempt, staging = root.new_attempt(staging_home)
    ok = False
    final_metrics: dict[str, float] = {}
    final_tags: dict[str, str] = {}
    try:
        data_paths = {name: storage.stage_in(uri, staging_home, fingerprint_hint=fingerprints.get(name))
                      for name, uri in data.items()}
        out_paths: dict[str, Path] = {}
        for name, out in component.outputs.items():
            p = staging / output_rel_path(name, out)
            if out.type == "uri_folder":  # a folder output exists, as in Azure ML; an mlflow_model path
                p.mkdir(parents=True)     # must not: mlflow's save_model() refuses an existing dir
            out_paths[name] = p
        job = StepJob(
            step_name=step_name, command=component.command, code_dir=component.code, values=values,
            data_inputs=data_paths, outputs=out_paths, environment=component.environment, timeout=component.timeout,
            env={
                **component.environment_variables,
                "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
                "MLFLOW_RUN_ID": run_id,
                "PREFECT_ML_STEP": step_name,
                "PREFECT_ML_CACHE_KEY": key,
                "PREFECT_ML_FLOW_RUN_ID": run.flow_run_id or "",
                "PREFECT_ML_TASK_RUN_ID": task_run_id,
            },
            labels={"prefect-ml.flow-run-id": run.flow_run_id or "", "prefect-ml.task-run-id": task_run_id,
                    "prefect-ml.step": step_name},
        )
        logger.info(f"running on {infra.describe()}")
        outcome = infra.run(job, logger.info)
        if outcome.exit_code != 0:
            reason = f" ({outcome.reason})" if outcome.reason else ""
            tail = "\n".join(outcome.last_lines[-10:])
            raise StepFailed(
                f"step '{step_name}' failed: exit code {outcome.exit_code}{reason}. Last lines:\n{tail}",
                exit_code=outcome.exit_code, last_lines=outcome.last_lines,
            )
        metrics = _check_outputs(component, out_paths, step_name)
        rel = {name: output_rel_path(name, out) for name, out in component.outputs.items()}
        published = root.publish(key, attempt, staging, rel, {
            "step": step_name, "component": f"{component.name}:{component.version}",
            "key_parts": parts, "inputs": data, "flow_run_id": run.flow_run_id, "mlflow_run_id": run_id,
            "completed_at": time.time(),
        })
        final_metrics = metrics
        final_tags = {**_output_tags(published.outputs), **lineage.mlflow_tags(data, fingerprints)}
        lineage.record_step(step_name, data, fingerprints, published.outputs, cache_key=key)
        ok = True
    finally:
        if not ok:
            root.discard(staging)
        tracking.end_run(run_id, ok, metrics=final_metrics, tags=final_tags)
    return StepResult(step_name, key, published.outputs, False, run_id, data, fingerprints,
                      time.monotonic() - started, infra.describe())


def _output_tags(outputs: dict[str, str]) -> dict[str, str]:
    return {f"prefect_ml.output.{k}": v for k, v in outputs.items()}


def _published_metrics(component: Component, outputs: dict[str, str], step: str) -> dict[str, float]:
    """The metrics of a reused step, read back from its published `metrics` outputs."""
    metrics: dict[str, float] = {}
    for name, out in component.outputs.items():
        if out.type == "metrics":
            metrics.update(read_metrics(outputs[name], where=f"step '{step}', output '{name}'"))
    return metrics
