"""`@pipeline`: a Prefect flow in which calling a component submits a step.

Steps are submitted to the flow's task runner and return at once; a step that takes another
step's output waits for it (Prefect resolves the future), so order follows data and independent
steps run concurrently. The running pipeline activates itself in `dsl.context`, which is how a
component call reaches it.
"""

from __future__ import annotations

import functools
import inspect
import threading
import typing
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from prefect_ml import _compat, storage
from prefect_ml.dsl import context
from prefect_ml.dsl.component import Component
from prefect_ml.dsl.step import OutputRef, Step
from prefect_ml.errors import StepInputError
from prefect_ml.records import RunSpec, StepResult
from prefect_ml.runtime import tracking
from prefect_ml.runtime.lifecycle import UPSTREAM
from prefect_ml.runtime.task_runners import PipelineTaskRunner
from prefect_ml.settings import PrefectMLSettings, get_settings, use_settings


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    """What `@pipeline(...)` was given (besides Prefect's own flow options)."""

    infrastructure: str | None = None
    cache: bool = True
    experiment: str | None = None
    artifact_root: str | None = None
    # Azure's `continue_on_step_failure`: False = no step starts after the first step failure (steps
    # already running finish); True = independent steps run on. Python default True, YAML default False.
    continue_on_step_failure: bool = True


@dataclass(frozen=True, kw_only=True)
class PipelineDefinition:
    """A pipeline's undecorated body and options, kept apart from the Prefect flow object."""

    name: str
    func: Callable[..., Any]
    options: PipelineOptions


# flow.fn -> definition. Keyed by the flow's function (which `Flow.with_options` keeps), so no
# attributes are attached to Prefect's Flow objects.
_definitions: weakref.WeakKeyDictionary[Callable[..., Any], PipelineDefinition] = weakref.WeakKeyDictionary()


def definition_of(pipeline_flow: Any) -> PipelineDefinition | None:
    """The `PipelineDefinition` behind a `@pipeline` flow, or None for anything else."""
    fn = getattr(pipeline_flow, "fn", None)
    return _definitions.get(fn) if fn is not None else None


@dataclass
class PipelineRun:
    """State of one running (or planned) pipeline; active in `dsl.context` while its body runs."""

    spec: RunSpec
    planning: bool = False  # `prefect-ml plan`: decide each step, run nothing
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    names: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: FirstFailure | None = None  # continue_on_step_failure=False: the run's first failed step

    def step_name(self, component: Component) -> str:
        with self.lock:
            self.names[component.name] += 1
            n = self.names[component.name]
        return component.name if n == 1 else f"{component.name}-{n}"

    def submit(self, component: Component, kwargs: Mapping[str, Any], name: str | None = None) -> Step:
        """Validate a component call and submit it as a step (see `Component.__call__`).

        `name` overrides the step (task run) name, e.g. a sweep's `train-trial-3`."""
        params = _bind(component, kwargs)
        name = name or self.step_name(component)
        if self.planning:
            return self._plan_step(component, params, name)
        future = _step_task(component, name, stop=self.stop is not None).submit(
            quote(component), params, quote(self.spec), name)
        step = Step(name, component, future, siblings=self.steps)
        self.steps.append(step)
        return step

    def _plan_step(self, component: Component, params: dict[str, Any], name: str) -> Step:
        """Decide a step without running it; its outputs get the URIs they would have."""
        from prefect_ml.runtime.lifecycle import decide, infrastructure_for
        from prefect_ml.runtime.outputs import output_rel_path

        infra = infrastructure_for(component, self.spec)
        root = storage.ArtifactRoot(self.spec.artifact_root)
        d = decide(component, params, self.spec, infra, root)
        outputs = d.published.outputs if d.published else {
            n: storage.join(root.step_uri(d.key), "<new>", output_rel_path(n, o)) for n, o in component.outputs.items()
        }
        result = StepResult(step=name, key=d.key, outputs=outputs, cached=d.reuse, mlflow_run_id=None, inputs=d.data,
                            fingerprints=d.fingerprints, infrastructure=infra.describe())
        step = Step(name, component, result=result, siblings=self.steps)
        step.decision = d
        self.steps.append(step)
        return step


def _step_task(component: Component, task_run_name: str, stop: bool = False):  # -> prefect Task
    from prefect_ml.runtime.task import run_step

    options: dict[str, Any] = {"name": component.name, "task_run_name": task_run_name, "retries": component.retries,
                               "timeout_seconds": component.timeout}
    if not stop:
        return run_step.with_options(**options)
    # continue_on_step_failure=False: the same task, its function behind a check made when the step would
    # start (after its producers finished), and a hook that records the run's first failed step
    from prefect import Task

    return Task(fn=run_step_unless_stopped, cache_policy=run_step.cache_policy, persist_result=False,
                on_failure=[_record_failure], **options)


# --- continue_on_step_failure=False ---------------------------------------------------------------------

NOT_RUN = "NotRun"


class FirstFailure:
    """The first step of a run that failed (after its retries); once set, no further step starts."""

    def __init__(self) -> None:
        self.step: str | None = None
        self._lock = threading.Lock()

    def record(self, step: str) -> None:
        with self._lock:
            if self.step is None:
                self.step = step


# flow run id -> its FirstFailure, for the runs of this process with continue_on_step_failure=False
_first_failures: dict[str, FirstFailure] = {}


def _record_failure(task: Any, task_run: Any, state: Any) -> None:
    """Prefect on_failure hook of a step (called once its final state is Failed)."""
    stop = _first_failures.get(str(task_run.flow_run_id))
    if stop is not None:
        stop.record(task_run.name)


def failed_step(flow_run_id: str) -> str | None:
    """The run's first failed step, or None. A step on another process (a Dask worker) asks the Prefect
    API for a failed task run of this attempt of the flow run; if that cannot be asked, the step runs."""
    stop = _first_failures.get(flow_run_id)
    if stop is not None:
        return stop.step
    try:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            TaskRunFilter,
            TaskRunFilterState,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        with get_client(sync_client=True) as client:
            attempt = client.read_flow_run(UUID(flow_run_id)).run_count
            failed = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                    type=TaskRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED]))),
                limit=200,
            )
        # a retried flow run keeps its id: the failures of an earlier attempt do not stop this one
        failed = [t for t in failed if t.flow_run_run_count == attempt]
        first = min(failed, key=lambda t: str(t.end_time or t.created or ""), default=None)  # ISO times sort
        return first.name if first is not None else None
    except Exception:
        return None


def run_step_unless_stopped(component: Component, inputs: dict[str, Any], run: RunSpec, step_name: str) -> Any:
    """The step task's function when continue_on_step_failure is False: a step that would start after
    another step failed ends `Cancelled` (named NotRun) without running; otherwise it runs as usual."""
    from prefect import runtime
    from prefect.states import Cancelled

    from prefect_ml.runtime.task import run_step

    if runtime.task_run.run_count <= 1:  # a retry of a step that already started is not a new step
        failed = failed_step(str(runtime.flow_run.id))
        if failed is not None:
            return Cancelled(name=NOT_RUN, message=f"not started: step '{failed}' failed and "
                             "continue_on_step_failure is false")
    return run_step.fn(component, inputs, run, step_name)


def _bind(component: Component, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Validated task parameters for a component call: values coerced, literal data checked now."""
    bound = component.bind(kwargs)
    return {name: _check_data_input(component, name, value) if component.inputs[name].is_data and value is not None
            else value for name, value in bound.items()}


def submit_standalone(component: Component, kwargs: Mapping[str, Any]) -> Step:
    """A component called outside any pipeline: run its step at once in a standalone task."""
    params = _bind(component, kwargs)
    spec = _run_spec(component.name, PipelineOptions(experiment="prefect-ml-steps"))
    result = _step_task(component, component.name)(quote(component), params, quote(spec), component.name)
    return Step(component.name, component, result=result)


def _doc_with_field_descriptions(func: Callable[..., Any]) -> str:
    """The function's docstring plus an `Args:` section from `Annotated[..., Field(description=...)]`,
    which is where Prefect reads parameter descriptions for the UI's Run form."""
    from pydantic.fields import FieldInfo

    doc = inspect.getdoc(func) or ""
    if "\nArgs:" in f"\n{doc}":
        return doc
    hints = typing.get_type_hints(func, include_extras=True)
    lines = [f"    {n}: {m.description}" for n in inspect.signature(func).parameters
             for m in getattr(hints.get(n), "__metadata__", ()) if isinstance(m, FieldInfo) and m.description]
    # griffe (Prefect's docstring parser) needs a summary line before the Args section
    return doc if not lines else (doc or f"Pipeline {func.__name__}.") + "\n\nArgs:\n" + "\n".join(lines)


def _check_data_input(component: Component, name: str, value: Any) -> Any:
    """Literal data inputs must exist now: fail before anything starts."""
    from prefect_ml.assets import is_asset_ref, resolve_asset

    if isinstance(value, OutputRef):
        spec = component.inputs[name]
        if value.type == "metrics" or (spec.type == "mlflow_model" and value.type != "mlflow_model"):
            raise StepInputError(
                f"component '{component.name}', input '{name}' ({spec.type}) cannot take output "
                f"'{value.name}' ({value.type}) of step '{value.step_name}'."
            )
        producer = value.step.future if value.step.future is not None else value.step.result()
        return {UPSTREAM: producer, "output": value.name}
    if isinstance(value, str) and is_asset_ref(value):
        value = resolve_asset(value)
    if not isinstance(value, (str, Path)):
        raise StepInputError(
            f"component '{component.name}', input '{name}': expects a URI or path (str), a data asset or a step "
            f"output, got {type(value).__name__}."
        )
    uri = storage.normalize(str(value))
    if not storage.exists(uri):
        raise StepInputError(
            f"component '{component.name}', input '{name}': data {str(value)!r} does not exist; "
            "check the path or URI (or register it as a data asset)."
        )
    return uri


def _run_spec(flow_name: str, options: PipelineOptions, flow_run_id: str | None = None,
              settings: PrefectMLSettings | None = None) -> RunSpec:
    """The run's settings from the decorator's options and the PREFECT_ML_* settings (read once here)."""
    settings = settings or get_settings()
    return RunSpec(
        pipeline=flow_name, flow_run_id=flow_run_id,
        artifact_root=storage.normalize(options.artifact_root or settings.resolved_artifact_root),
        experiment=options.experiment or flow_name, infrastructure=options.infrastructure,
        cache=options.cache and settings.cache, settings=settings,
    )


def plan(pipeline_flow: Any, parameters: dict[str, Any] | None = None) -> PipelineRun:
    """Evaluate a pipeline's body in planning mode: every step's cache key and reuse decision, nothing run.

    Gates on metrics of reused steps are evaluated for real; a gate on a step that would run is
    assumed to pass (so the plan shows what follows it) and noted.
    """
    definition = definition_of(pipeline_flow)
    if definition is None:
        raise TypeError(f"{pipeline_flow!r} is not a @pipeline")
    run = PipelineRun(_run_spec(pipeline_flow.name, definition.options), planning=True)
    params = dict(parameters or {})
    if params:
        params = pipeline_flow.validate_parameters(params)
    with context.activate(run):
        definition.func(**params)
    return run


def _resolve(value: Any) -> Any:
    """Replace step outputs in a pipeline's return value with their URIs."""
    if isinstance(value, OutputRef):
        return value.uri()
    if isinstance(value, Step):
        return dict(value.result().outputs)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    return value


def _run_body(flow_name: str, func: Callable[..., Any], options: PipelineOptions,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The flow body: an MLflow parent run, the user's function with this run active, then wait."""
    from prefect import runtime

    flow_run_id = str(runtime.flow_run.id)
    spec = _run_spec(flow_name, options, flow_run_id)
    storage.ArtifactRoot(spec.artifact_root)  # unknown scheme fails here, before any step
    _check_task_runner(spec)  # a distributed run that its workers could not serve fails here too
    mlflow_run_id = tracking.start_run(
        spec.experiment, f"{flow_name}-{runtime.flow_run.name}",
        {"prefect.flow_run_id": flow_run_id, "prefect_ml.pipeline": flow_name,
         "prefect_ml.artifact_root": spec.artifact_root},
        params=dict(runtime.flow_run.parameters or {}),
    )
    run = PipelineRun(replace(spec, mlflow_run_id=mlflow_run_id))
    if not options.continue_on_step_failure:
        run.stop = _first_failures[flow_run_id] = FirstFailure()
    ok = False
    try:
        # the run's settings, read once: every step and observer sees the same (and skips re-reading them)
        with context.activate(run), use_settings(spec.settings):
            result = func(*args, **kwargs)
            for step in list(run.steps):
                step.wait()
            _raise_first_failure(run)
            for step in list(run.steps):
                step.result()  # raises the first failed step's own error, not a dependant's "not ready"
            resolved = _resolve(result)
        ok = True
        return resolved
    finally:
        _first_failures.pop(flow_run_id, None)
        try:  # the summary also helps on failed runs
            from prefect_ml.runtime.artifacts import pipeline_summary

            pipeline_summary(run.spec, run.steps)
        except Exception as exc:
            from prefect import get_run_logger

            get_run_logger().warning(f"could not write the pipeline summary artifact: {exc}")
        tracking.end_run(mlflow_run_id, ok)
        # every queued MLflow write (steps' params, metrics, ends; gate tags; this run's end) lands
        # before the flow returns, on success and on failure alike
        from prefect import get_run_logger

        tracking.flush(warn=get_run_logger().warning)


def _raise_first_failure(run: PipelineRun) -> None:
    """continue_on_step_failure=False: name the steps that were not started, then raise the error of the
    step that failed first (by when it failed, not by when it was submitted). The failed steps' final
    states are read from their futures, so this also holds for steps that ran on Dask workers (whose
    failure hook ran there, not here)."""
    if run.stop is None:
        return
    failed = [s for s in run.steps if s.future is not None and s.future.state.is_failed()]
    if not failed:
        return
    first = min(failed, key=lambda s: s.future.state.timestamp)
    from prefect import get_run_logger

    not_run = [s.name for s in run.steps if s.future is not None and s.future.state.name == NOT_RUN]
    get_run_logger().error(
        f"step '{first.name}' failed; continue_on_step_failure is false, so no step started after it"
        + (f" (not run: {', '.join(not_run)})" if not_run else "")
        + "; steps that had started ran to the end (a re-run reuses those that completed).")
    first.future.state.result()  # raises its own error


def _check_task_runner(spec: RunSpec) -> None:
    """Refuse, before any step or MLflow run, a distributed run whose workers could not share its outputs."""
    from prefect import get_run_logger
    from prefect.context import FlowRunContext

    from prefect_ml.runtime import task_runners

    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    if runner is None or not task_runners.is_distributed(runner):
        return
    from prefect.settings import get_current_settings

    where = task_runners.describe(runner)
    task_runners.check_distributed_run(spec.artifact_root, spec.settings.mlflow_tracking_uri, where,
                                       prefect_api_url=get_current_settings().api.url)
    get_run_logger().info(f"steps run on {where}; artifact root {storage.redact(spec.artifact_root)}")


# Azure ML SDK `@dsl.pipeline` keyword arguments: accepted with the same meaning (AZURE_ALIASES), or refused
# with what to use here
AZURE_PIPELINE_KWARGS = {
    "experiment_name": "the MLflow experiment: experiment=",
    "compute": "the steps' infrastructure: infrastructure=",
    "force_rerun": "cache=False",
    "display_name": "the flow run name: flow_run_name=",
    "default_datastore": "outputs go to the artifact root: use artifact_root='s3://...' (an fsspec URI; an Azure "
                         "datastore's root as listed in datastores.yaml) or PREFECT_ML_ARTIFACT_ROOT",
    "tags": "tag runs with prefect.tags(...) around the call, or `tags:` on the deployment in prefect.yaml",
    "default_compute_target": "use infrastructure= (a block name, `process` or `docker`)",
    "non_pipeline_inputs": "every parameter is a pipeline input here; compute other values inside the function",
    "on_init": "there is no init step; call the component first in the pipeline function",
    "on_finalize": "there is no finalize step; use Prefect's on_completion=/on_failure= flow hooks",
}
AZURE_ALIASES = {"experiment_name", "compute", "force_rerun", "display_name"}


def pipeline(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    infrastructure: str | None = None,
    cache: bool = True,
    experiment: str | None = None,
    artifact_root: str | None = None,
    default_compute: str | None = None,
    continue_on_step_failure: bool = True,
    task_runner: Any = None,
    **flow_kwargs: Any,
) -> Any:
    """Turn a function into a pipeline: a Prefect flow whose component calls are steps.

    Args:
        name: flow name (default: the function name with '_' -> '-').
        infrastructure: default infrastructure for its steps (a saved block name, `process` or `docker`).
        cache: reuse steps whose cache key is unchanged (per-component and per-call `cache=` too).
        experiment: MLflow experiment (default: the flow name).
        artifact_root: fsspec URI for outputs (default: `PREFECT_ML_ARTIFACT_ROOT`).
        default_compute: the Azure ML SDK's name for `infrastructure` (same meaning; give one of them).
        continue_on_step_failure: True (the default for Python pipelines): after a step fails, steps that do
            not need it still run. False (the default of an Azure pipeline YAML): no step starts after the
            first failure; steps already running finish (their outputs are reused by a re-run), the rest end
            `NotRun`, and the run fails with the failed step's error.
        task_runner: where the steps run, as for a Prefect flow: a `TaskRunner` (e.g. prefect-dask's
            `DaskTaskRunner(address="tcp://127.0.0.1:8786")`) or a name, `"threads"` or `"dask"` (at
            `PREFECT_ML_DASK_ADDRESS`). Default: the setting `PREFECT_ML_TASK_RUNNER`, read when a run starts.
        **flow_kwargs: passed to `prefect.flow` (retries, log_prints, description, version, ...). The Azure ML
            SDK's `experiment_name`, `compute`, `force_rerun` and `display_name` are accepted with their meaning
            here (experiment, infrastructure, not cache, the flow run name); others (`default_datastore`, `tags`,
            ...) are refused with what to use (`AZURE_PIPELINE_KWARGS`).

    Example:
        @pipeline(infrastructure="cpu")
        def my_pipeline(data: str, learning_rate: float = 0.1):
            prep = data_prep(data=data)
            model = train(train_data=prep.outputs.train_data, learning_rate=learning_rate)
            return {"model": model.outputs.model}
    """
    azure = {k: flow_kwargs.pop(k) for k in list(flow_kwargs) if k in AZURE_PIPELINE_KWARGS}
    for key in (k for k in azure if k not in AZURE_ALIASES):
        raise TypeError(f"@pipeline({key}=...), from the Azure ML SDK, has no equivalent here: "
                        f"{AZURE_PIPELINE_KWARGS[key]}.")
    compute = [(k, str(v)) for k, v in (("default_compute", default_compute), ("compute", azure.get("compute")))
               if v is not None]
    given = "infrastructure"
    for key, value in compute:
        value = value.removeprefix("azureml:")  # the Azure name of a compute target: a block name here
        if infrastructure is not None and infrastructure != value:
            raise TypeError(f"@pipeline: {given}= and {key}= name the same thing (the infrastructure) differently "
                            f"({infrastructure!r} vs {value!r}); give one of them.")
        infrastructure, given = value, key
    if "experiment_name" in azure:
        if experiment is not None and experiment != azure["experiment_name"]:
            raise TypeError("@pipeline: give experiment= or experiment_name= (the Azure ML SDK's name for it), "
                            f"not both ({experiment!r} vs {azure['experiment_name']!r}).")
        experiment = str(azure["experiment_name"])
    if "force_rerun" in azure:
        if not isinstance(azure["force_rerun"], bool):
            raise TypeError(f"@pipeline(force_rerun=...) must be True or False, got {azure['force_rerun']!r}.")
        cache = cache and not azure["force_rerun"]
    if "display_name" in azure:  # Azure: the run's name in the studio (adjective-noun if omitted), as here
        if "flow_run_name" in flow_kwargs:
            raise TypeError("@pipeline: give flow_run_name= or display_name= (the Azure ML SDK's name for it), "
                            "not both.")
        # Prefect formats flow_run_name with the parameters: braces in an Azure display name are literal
        flow_kwargs["flow_run_name"] = str(azure["display_name"]).replace("{", "{{").replace("}", "}}")
    options = PipelineOptions(infrastructure=infrastructure, cache=cache, experiment=experiment,
                              artifact_root=artifact_root, continue_on_step_failure=continue_on_step_failure)
    runner = PipelineTaskRunner(task_runner)  # an unknown name fails here, at decoration

    def decorate(func: Callable[..., Any]) -> Any:
        flow_name = name or func.__name__.replace("_", "-")

        @functools.wraps(func)
        def body(*args: Any, **kwargs: Any) -> Any:
            return _run_body(flow_name, func, options, args, kwargs)

        body.__doc__ = _doc_with_field_descriptions(func)
        f = flow(name=flow_name, task_runner=runner, **flow_kwargs)(body)
        _definitions[f.fn] = PipelineDefinition(name=flow_name, func=func, options=options)
        _compat.skip_heartbeat_join(lambda flow: definition_of(flow) is not None)
        return f

    return decorate(fn) if fn is not None else decorate
