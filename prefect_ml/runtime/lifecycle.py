"""One step's lifecycle: decide -> stage-in -> execute -> verify -> publish.

A cache hit and a run go through the same function (`run_lifecycle`); observers (MLflow,
lineage, artifacts) are called at the same points for both. The Prefect task around this is in
`runtime.task`; the command itself runs behind `StepInfrastructure.run`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_ml import storage
from prefect_ml.errors import PrefectMLError, StepFailed
from prefect_ml.infrastructure.base import StepInfrastructure, StepJob
from prefect_ml.infrastructure.distributed import check_supported
from prefect_ml.infrastructure.resolve import resolve_infrastructure
from prefect_ml.records import Decision, PublishedStep, RunSpec, StepResult, step_fingerprint
from prefect_ml.runtime import cache_key, outputs
from prefect_ml.runtime.observers import StepContext, StepObserver

if TYPE_CHECKING:
    from prefect_ml.dsl.component import Component

# A data input that is another step's output arrives as {UPSTREAM: <StepResult>, "output": name}
# (the task runner resolves the producer's future into its result before the step starts).
UPSTREAM = "__step__"


# Resolved infrastructure per (flow run, name): a name is looked up once per pipeline run, not once
# per step (a lookup tries to load a saved block of each type from the Prefect API, 2 requests).
_resolved: dict[tuple[str, str], StepInfrastructure] = {}
_resolved_lock = threading.Lock()
_RESOLVED_RUNS_KEPT = 16


def infrastructure_for(component: Component, run: RunSpec) -> StepInfrastructure:
    """Where a step runs: the component's (or call's) choice, else the pipeline's, else the setting."""
    choice = component.infrastructure or run.infrastructure or run.settings.infrastructure
    if not isinstance(choice, str) or not run.flow_run_id:
        return resolve_infrastructure(choice)
    memo = (run.flow_run_id, choice)
    with _resolved_lock:
        found = _resolved.get(memo)
    if found is not None:
        return found
    infra = resolve_infrastructure(choice)
    with _resolved_lock:
        runs = list(dict.fromkeys(r for r, _ in _resolved))
        for old in runs[:-_RESOLVED_RUNS_KEPT]:  # keep the memo small in a long-lived worker
            for k in [k for k in _resolved if k[0] == old]:
                del _resolved[k]
        _resolved[memo] = infra
    return infra


def _resolve_inputs(component: Component, inputs: Mapping[str, Any]):
    values: dict[str, str | None] = {}
    raw_values: dict[str, Any] = {}
    data: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    for name, spec in component.inputs.items():
        v = inputs.get(name)
        if isinstance(v, dict) and UPSTREAM in v:
            producer: StepResult = v[UPSTREAM]
            data[name] = producer.outputs[v["output"]]
            fingerprints[name] = step_fingerprint(producer.key, v["output"])
        elif spec.is_data:
            if v is not None:
                data[name] = storage.normalize(str(v))
        else:
            raw_values[name] = v
            values[name] = None if v is None else str(v)
    return values, raw_values, data, fingerprints


def _environment_key(component: Component, infra: StepInfrastructure) -> str | None:
    """The environment part of the key: the infrastructure's identity for it (Docker: the image
    hash, which covers the base image id) or the environment spec's content hash."""
    if not component.environment:
        return None
    identity = getattr(infra, "environment_identity", None)
    if identity is not None:
        return identity(component.environment, component.code)
    from prefect_ml import environments

    return environments.cache_identity(component.environment, start=component.code)


def decide(component: Component, inputs: Mapping[str, Any], run: RunSpec, infra: StepInfrastructure,
           root: storage.ArtifactRoot) -> Decision:
    """Compute the step's cache key and whether complete outputs for it exist (fail closed)."""
    values, raw_values, data, fingerprints = _resolve_inputs(component, inputs)

    def decision(key: str, parts: dict, published: PublishedStep | None, reason: str) -> Decision:
        return Decision(key=key, parts=parts, values=values, raw_values=raw_values, data=data,
                        fingerprints=fingerprints, published=published, reason=reason)

    try:
        for name, uri in data.items():
            if name not in fingerprints:
                fingerprints[name] = storage.fingerprint(uri)
        key, parts = cache_key.step_cache_key(
            component, code=cache_key.code_digest(component.code), environment=_environment_key(component, infra),
            values=raw_values, data=fingerprints,
        )
    except PrefectMLError:
        raise
    except Exception as exc:
        return decision("nocache-" + uuid.uuid4().hex[:24], {}, None,
                        f"cache key could not be computed ({type(exc).__name__}: {exc}); running without reuse")
    off = [who for who, on in (("component", component.cache), ("pipeline run", run.cache),
                               ("PREFECT_ML_CACHE", run.settings.cache)) if not on]
    if off:  # publish under a key of its own, so fresh outputs never lose to older ones
        return decision(f"{key}-{uuid.uuid4().hex[:8]}", parts, None, f"caching is off ({', '.join(off)}); running")
    published, why = root.check(key, list(component.outputs))
    if published:
        reason = f"cache hit: outputs of key {key} are complete at {root.step_uri(key)}"
    elif why == "no completion marker":
        reason = f"cache miss: no complete outputs for key {key}; running"
    else:
        reason = f"cache miss: key {key} has a marker but {why}; running again"
    return decision(key, parts, published, reason)


def stage_in(d: Decision, staging_home: Path) -> dict[str, Path]:
    """A local path for every data input (local data in place; remote data downloaded once)."""
    return {name: storage.stage_in(uri, staging_home, fingerprint_hint=d.fingerprints.get(name))
            for name, uri in d.data.items()}


def execute(ctx: StepContext, infra: StepInfrastructure, data_paths: dict[str, Path],
            out_paths: dict[str, Path]) -> None:
    """Run the command on the infrastructure; a non-zero exit raises `StepFailed` with the last lines."""
    component, d, run = ctx.component, ctx.decision, ctx.run
    job = StepJob(
        step_name=ctx.step_name, command=component.command, code_dir=component.code, values=d.values,
        data_inputs=data_paths, outputs=out_paths, environment=component.environment, timeout=component.timeout,
        distribution=component.distribution,
        env={
            **component.environment_variables,
            **ctx.env,
            "PREFECT_ML_STEP": ctx.step_name,
            "PREFECT_ML_CACHE_KEY": d.key,
            "PREFECT_ML_FLOW_RUN_ID": run.flow_run_id or "",
            "PREFECT_ML_TASK_RUN_ID": ctx.task_run_id,
        },
        labels={"prefect-ml.flow-run-id": run.flow_run_id or "", "prefect-ml.task-run-id": ctx.task_run_id,
                "prefect-ml.step": ctx.step_name},
    )
    ctx.log(f"running on {infra.describe()}")
    check_supported(infra, component.distribution, ctx.step_name)  # e.g. Docker: one instance per step
    outcome = infra.run(job, ctx.log)
    if outcome.exit_code != 0:
        reason = f" ({outcome.reason})" if outcome.reason else ""
        tail = "\n".join(outcome.last_lines[-10:])
        raise StepFailed(
            f"step '{ctx.step_name}' failed: exit code {outcome.exit_code}{reason}. Last lines:\n{tail}",
            exit_code=outcome.exit_code, last_lines=outcome.last_lines,
        )


def publish(ctx: StepContext, root: storage.ArtifactRoot, attempt: str, staging: Path) -> PublishedStep:
    """Commit the attempt's outputs under the step's key, the completion marker last."""
    component, d = ctx.component, ctx.decision
    rel = {name: outputs.output_rel_path(name, out) for name, out in component.outputs.items()}
    return root.publish(d.key, attempt, staging, rel, {
        "step": ctx.step_name, "component": f"{component.name}:{component.version}",
        "key_parts": d.parts, "inputs": d.data, "flow_run_id": ctx.run.flow_run_id,
        "mlflow_run_id": ctx.mlflow_run_id, "completed_at": time.time(),
    })


def run_lifecycle(component: Component, inputs: Mapping[str, Any], run: RunSpec, step_name: str, *,
                  task_run_id: str, log: Callable[[str], None], warn: Callable[[str], None],
                  observers: Sequence[StepObserver]) -> StepResult:
    """Decide, then reuse or run one step; observers see both paths the same way."""
    started = time.monotonic()
    root = storage.ArtifactRoot(run.artifact_root)
    infra = infrastructure_for(component, run)
    d = decide(component, inputs, run, infra, root)
    (log if d.reuse or d.parts else warn)(d.reason)
    ctx = StepContext(step_name=step_name, component=component, run=run, decision=d,
                      infrastructure=infra.describe(), task_run_id=task_run_id, log=log)
    for o in observers:
        o.step_started(ctx)
    staging: Path | None = None
    try:
        if d.published is not None:
            published = d.published
            metrics = outputs.published_metrics(component, published.outputs, step_name)
        else:
            staging_home = run.settings.home_path / "staging"
            attempt, staging = root.new_attempt(staging_home)
            data_paths = stage_in(d, staging_home)
            out_paths = outputs.prepare(component, staging)
            execute(ctx, infra, data_paths, out_paths)
            metrics = outputs.verify(component, out_paths, step_name)
            published = publish(ctx, root, attempt, staging)
            staging = None  # published: nothing left to discard
        result = StepResult(step=step_name, key=d.key, outputs=published.outputs, cached=d.reuse,
                            mlflow_run_id=ctx.mlflow_run_id, inputs=d.data, fingerprints=d.fingerprints,
                            duration_s=time.monotonic() - started, infrastructure=ctx.infrastructure)
    except BaseException as exc:
        if staging is not None:
            root.discard(staging)
        for o in observers:
            o.step_failed(ctx, exc)
        raise
    for o in observers:
        o.step_finished(ctx, result, metrics)
    return result
