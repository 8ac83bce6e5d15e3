"""`@pipeline`: a Prefect flow in which calling a component submits a step.

Steps are submitted to the flow's task runner and return at once; a step that takes another
step's output waits for it (Prefect resolves the future), so order follows data and independent
steps run concurrently.
"""

from __future__ import annotations

import functools
import inspect
import threading
import typing
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from prefect import flow
from prefect.futures import PrefectFuture

from prefect_ml import storage, tracking
from prefect_ml.component import Component
from prefect_ml.errors import StepFailed, StepInputError
from prefect_ml.settings import get_settings
from prefect_ml.step import UPSTREAM, Opaque, RunSpec, StepResult, run_step

_current: ContextVar[Optional["PipelineRun"]] = ContextVar("prefect_ml_pipeline_run", default=None)


@dataclass
class PipelineRun:
    """State of one running pipeline (lives in the flow's context)."""

    spec: RunSpec
    planning: bool = False  # `prefect-ml plan`: decide each step, run nothing
    steps: list["Step"] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    names: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def step_name(self, component: Component) -> str:
        with self.lock:
            self.names[component.name] += 1
            n = self.names[component.name]
        return component.name if n == 1 else f"{component.name}-{n}"


def current_run() -> Optional[PipelineRun]:
    return _current.get()


class OutputRef:
    """One output of a submitted step; pass it as another component's data input."""

    def __init__(self, step: "Step", name: str):
        self.step = step
        self.name = name

    @property
    def step_name(self) -> str:
        return self.step.name

    def uri(self) -> str:
        """Wait for the producing step and return this output's URI."""
        return self.step.result().outputs[self.name]

    def __repr__(self) -> str:
        return f"OutputRef({self.step.name}.outputs.{self.name})"


class _Outputs:
    def __init__(self, step: "Step"):
        self._step = step

    def __getattr__(self, name: str) -> OutputRef:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._step.component.outputs:
            raise AttributeError(
                f"step '{self._step.name}' has no output '{name}'; outputs are {sorted(self._step.component.outputs)}."
            )
        return OutputRef(self._step, name)

    def __getitem__(self, name: str) -> OutputRef:
        return self.__getattr__(name)

    def __iter__(self):
        return iter(self._step.component.outputs)


class Step:
    """A submitted (or, outside a pipeline, finished) call of a component."""

    def __init__(self, name: str, component: Component, future: Optional[PrefectFuture] = None,
                 result: Optional[StepResult] = None):
        self.name = name
        self.component = component
        self.future = future
        self._result = result
        self.outputs = _Outputs(self)

    def result(self) -> StepResult:
        """Wait for the step and return its `StepResult` (raises if it, or a step it needs, failed)."""
        if self._result is None:
            self.future.wait()
            state = self.future.state
            if not state.is_completed():
                _raise_root_cause(self, state)
            self._result = self.future.result()
        return self._result

    def wait(self) -> None:
        if self.future is not None:
            self.future.wait()

    def __repr__(self) -> str:
        return f"Step({self.name!r})"


def _raise_root_cause(step: "Step", state) -> None:
    """A step that never ran (an upstream failed) reports the upstream's own error, not 'not ready'."""
    run = current_run()
    for other in (run.steps if run else []):
        if other.future is not None and other.future.state.is_failed():
            other.future.state.result()  # raises the failing step's error
    if state.is_failed() or state.is_crashed() or state.is_cancelled():
        state.result()
    raise StepFailed(f"step '{step.name}' ended {state.name}: {state.message}")


def _doc_with_field_descriptions(func: Callable) -> str:
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
        out = value.step.component.outputs[value.name]
        spec = component.inputs[name]
        if out.type == "metrics" or (spec.type == "mlflow_model" and out.type != "mlflow_model"):
            raise StepInputError(
                f"component '{component.name}', input '{name}' ({spec.type}) cannot take output "
                f"'{value.name}' ({out.type}) of step '{value.step_name}'."
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


def submit_step(component: Component, kwargs: dict[str, Any]) -> Step:
    """Validate a component call and submit it as a step (see `Component.__call__`)."""
    bound = component.bind(kwargs)
    params: dict[str, Any] = {}
    for name, value in bound.items():
        spec = component.inputs[name]
        params[name] = _check_data_input(component, name, value) if spec.is_data and value is not None else value
    run = current_run()
    standalone = run is None
    if standalone:
        settings = get_settings()
        run = PipelineRun(RunSpec(component.name, None, settings.resolved_artifact_root, "prefect-ml-steps",
                                  None, None, True))
    name = run.step_name(component)
    if run.planning:
        return _plan_step(run, component, params, name)
    task = run_step.with_options(
        name=component.name,
        task_run_name=name,
        retries=component.retries,
        timeout_seconds=component.timeout,
    )
    if standalone:
        return Step(name, component, result=task(Opaque(component), params, Opaque(run.spec), name))
    future = task.submit(Opaque(component), params, Opaque(run.spec), name)
    step = Step(name, component, future)
    run.steps.append(step)
    return step


def _plan_step(run: PipelineRun, component: Component, params: dict[str, Any], name: str) -> Step:
    """Decide a step without running it; its outputs get the URIs they would have."""
    from prefect_ml.infrastructure import resolve_infrastructure
    from prefect_ml.step import decide, output_rel_path

    infra = resolve_infrastructure(component.infrastructure or run.spec.infrastructure)
    d = decide(component, params, run.spec, infra)
    root = storage.ArtifactRoot(run.spec.artifact_root)
    outputs = d.published.outputs if d.published else {
        n: storage.join(root.step_uri(d.key), "<new>", output_rel_path(n, o)) for n, o in component.outputs.items()
    }
    step = Step(name, component, result=StepResult(name, d.key, outputs, d.reuse, None, d.data, d.fingerprints,
                                                    infrastructure=infra.describe()))
    step.decision = d
    run.steps.append(step)
    return step


def _run_spec(flow_name: str, options: dict[str, Any], flow_run_id: Optional[str] = None) -> RunSpec:
    """The run's settings from the decorator's options and the PREFECT_ML_* settings."""
    settings = get_settings()
    return RunSpec(
        flow_name, flow_run_id, storage.normalize(options["artifact_root"] or settings.resolved_artifact_root),
        options["experiment"] or flow_name, None, options["infrastructure"], options["cache"] and settings.cache,
    )


def plan(pipeline_flow, parameters: Optional[dict[str, Any]] = None) -> PipelineRun:
    """Evaluate a pipeline's body in planning mode: every step's cache key and reuse decision, nothing run.

    Gates on metrics of reused steps are evaluated for real; a gate on a step that would run is
    assumed to pass (so the plan shows what follows it) and noted.
    """
    func = getattr(pipeline_flow, "__prefect_ml_pipeline__", None)
    if func is None:
        raise TypeError(f"{pipeline_flow!r} is not a @pipeline")
    run = PipelineRun(_run_spec(pipeline_flow.name, pipeline_flow.__prefect_ml_options__), planning=True)
    params = dict(parameters or {})
    if params:
        params = pipeline_flow.validate_parameters(params)
    token = _current.set(run)
    try:
        func(**params)
    finally:
        _current.reset(token)
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


def pipeline(
    fn: Optional[Callable] = None,
    *,
    name: Optional[str] = None,
    infrastructure: Optional[str] = None,
    cache: bool = True,
    experiment: Optional[str] = None,
    artifact_root: Optional[str] = None,
    **flow_kwargs: Any,
):
    """Turn a function into a pipeline: a Prefect flow whose component calls are steps.

    Args:
        name: flow name (default: the function name with '_' -> '-').
        infrastructure: default infrastructure for its steps (a saved block name, `process` or `docker`).
        cache: reuse steps whose cache key is unchanged (per-component and per-call `cache=` too).
        experiment: MLflow experiment (default: the flow name).
        artifact_root: fsspec URI for outputs (default: `PREFECT_ML_ARTIFACT_ROOT`).
        **flow_kwargs: passed to `prefect.flow` (retries, log_prints, description, ...).

    Example:
        @pipeline(infrastructure="cpu")
        def my_pipeline(data: str, learning_rate: float = 0.1):
            prep = data_prep(data=data)
            model = train(train_data=prep.outputs.train_data, learning_rate=learning_rate)
            return {"model": model.outputs.model}
    """

    options = {"infrastructure": infrastructure, "cache": cache, "experiment": experiment, "artifact_root": artifact_root}

    def decorate(func: Callable):
        flow_name = name or func.__name__.replace("_", "-")

        @functools.wraps(func)
        def body(*args: Any, **kwargs: Any):
            from prefect import runtime

            flow_run_id = str(runtime.flow_run.id)
            spec = _run_spec(flow_name, options, flow_run_id)
            storage.ArtifactRoot(spec.artifact_root)  # unknown scheme fails here, before any step
            mlflow_run_id = tracking.start_run(
                spec.experiment, f"{flow_name}-{runtime.flow_run.name}",
                {"prefect.flow_run_id": flow_run_id, "prefect_ml.pipeline": flow_name,
                 "prefect_ml.artifact_root": spec.artifact_root},
                params=dict(runtime.flow_run.parameters or {}),
            )
            run = PipelineRun(replace(spec, mlflow_run_id=mlflow_run_id))
            token = _current.set(run)
            ok = False
            try:
                result = func(*args, **kwargs)
                for step in list(run.steps):
                    step.wait()
                for step in list(run.steps):
                    step.result()  # raises the first failed step's own error, not a dependant's "not ready"
                resolved = _resolve(result)
                ok = True
                return resolved
            finally:
                try:  # the summary also helps on failed runs
                    from prefect_ml.reporting import pipeline_summary

                    pipeline_summary(run)
                except Exception as exc:  # noqa: BLE001 - a report must never change the run's outcome
                    from prefect import get_run_logger

                    get_run_logger().warning(f"could not write the pipeline summary artifact: {exc}")
                _current.reset(token)
                tracking.end_run(mlflow_run_id, ok)

        body.__doc__ = _doc_with_field_descriptions(func)
        f = flow(name=flow_name, **flow_kwargs)(body)
        f.__prefect_ml_pipeline__ = func
        f.__prefect_ml_options__ = options
        return f

    return decorate(fn) if fn is not None else decorate
