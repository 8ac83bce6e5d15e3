"""`sweep(...)`: hyperparameter tuning inside a pipeline (Azure sweep jobs, SageMaker tuning steps).

Each trial is an ordinary step of the pipeline run (its own Prefect task run, MLflow child run and
cache key), so a re-run reuses every trial whose parameters come up again and only runs the rest.
The sweep keeps at most `max_concurrent` trials running, asks the sampler for the next parameters
whenever a slot frees up, and reads each finished trial's objective from its `metrics` output.

Samplers: `grid` (every combination of `choice`/`randint` values, in order), `random` (seeded, so
a re-run draws the same trials) and `tpe` (Optuna's TPE sampler through its ask/tell interface: a
maintained model-based sampler that needs no objective callback, so trials stay pipeline steps).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect_ml._util import slugify
from prefect_ml.dsl import context
from prefect_ml.dsl.component import Component, coerce
from prefect_ml.dsl.pipeline import PipelineRun
from prefect_ml.dsl.step import Outputs, Step
from prefect_ml.errors import PrefectMLError
from prefect_ml.search import Choice, MedianStopping, RandInt, SearchExpression, SearchSpaceError, Uniform

SAMPLERS = ("grid", "random", "tpe")
DIRECTIONS = {"max": True, "maximize": True, "min": False, "minimize": False}
POLL_S = 0.1
MAX_REDRAWS = 200  # draws that repeat earlier parameters before a finite space counts as exhausted


class SweepError(PrefectMLError, ValueError):
    """A sweep is misconfigured, or too many of its trials failed."""


@dataclass
class Trial:
    """One trial of a sweep: its parameters, its step and, once finished, its objective and metrics.

    `state` is `running`, `completed`, `cached` (reused), `failed`, or in `prefect-ml plan` `reuse`/`run`.
    """

    number: int
    params: dict[str, Any]
    step: Step
    state: str = "running"
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def outputs(self) -> Outputs:
        """`trial.outputs.NAME`: the trial step's outputs, to pass to other components or a gate."""
        return self.step.outputs


@dataclass
class SweepResult:
    """What `sweep(...)` returns: every trial and the best one (`best.outputs`, `best.params`, `best.metrics`)."""

    name: str
    objective: str
    direction: str
    trials: list[Trial]
    best: Trial
    stopped_early: str | None = None

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best.params)

    @property
    def best_value(self) -> float | None:
        return self.best.value

    @property
    def outputs(self) -> Outputs:
        return self.best.outputs


# --- samplers -------------------------------------------------------------------------------------

def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


class _Sampler:
    def __init__(self, space: Mapping[str, SearchExpression], seed: int, maximize: bool):
        self.space = space
        self.seed = seed
        self.maximize = maximize

    def next(self) -> dict[str, Any] | None:  # pragma: no cover - interface
        raise NotImplementedError

    def tell(self, trial: Trial) -> None:
        pass


class _Grid(_Sampler):
    def __init__(self, space, seed, maximize):
        super().__init__(space, seed, maximize)
        names = list(space)
        grids = [space[n].grid for n in names]
        self.size = math.prod(len(g) for g in grids if g is not None)
        self._it = (dict(zip(names, combo, strict=True)) for combo in itertools.product(*grids))

    def next(self):
        return next(self._it, None)


class _Random(_Sampler):
    def __init__(self, space, seed, maximize):
        super().__init__(space, seed, maximize)
        self.rng = random.Random(seed)
        self.seen: set[tuple] = set()
        self.finite = all(d.grid is not None for d in space.values())

    def _draw(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, d in self.space.items():
            if isinstance(d, Choice):
                out[name] = self.rng.choice(d.values)
            elif isinstance(d, RandInt):
                out[name] = self.rng.randint(d.low, d.high)
            elif d.log:
                out[name] = math.exp(self.rng.uniform(math.log(d.low), math.log(d.high)))
            else:
                out[name] = self.rng.uniform(d.low, d.high)
        return out

    def next(self):
        for _ in range(MAX_REDRAWS if self.finite else 1):
            params = self._draw()
            if _key(params) not in self.seen:
                self.seen.add(_key(params))
                return params
        return None


class _TPE(_Sampler):
    """Optuna's TPE sampler through ask/tell; a repeated suggestion is told the known value, not run again."""

    def __init__(self, space, seed, maximize):
        super().__init__(space, seed, maximize)
        import optuna
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                         sampler=optuna.samplers.TPESampler(seed=seed))
        self.distributions: dict[str, Any] = {}
        for name, d in space.items():
            if isinstance(d, Choice):
                self.distributions[name] = CategoricalDistribution(list(d.values))
            elif isinstance(d, RandInt):
                self.distributions[name] = IntDistribution(d.low, d.high)
            else:
                self.distributions[name] = FloatDistribution(d.low, d.high, log=d.log)
        self.known: dict[tuple, float | None] = {}  # finished parameters -> objective (None: failed)
        self.waiting: dict[tuple, list[Any]] = {}  # running parameters -> optuna trials to tell
        self.asked: dict[int, Any] = {}

    def next(self):
        for _ in range(MAX_REDRAWS):
            ot = self.study.ask(self.distributions)
            params = dict(ot.params)
            k = _key(params)
            if k in self.known:
                self._tell(ot, self.known[k])
            elif k in self.waiting:
                self.waiting[k].append(ot)
            else:
                self.waiting[k] = [ot]
                return params
        return None

    def _tell(self, ot: Any, value: float | None) -> None:
        if value is None:
            self.study.tell(ot, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(ot, value)

    def tell(self, trial: Trial) -> None:
        k = _key(trial.params)
        self.known[k] = trial.value
        for ot in self.waiting.pop(k, []):
            self._tell(ot, trial.value)


_SAMPLER_TYPES: dict[str, type[_Sampler]] = {"grid": _Grid, "random": _Random, "tpe": _TPE}


# --- validation -----------------------------------------------------------------------------------

def _check_space(component: Component, space: Any, fixed: Mapping[str, Any], where: str) -> dict[str, SearchExpression]:
    if not isinstance(space, Mapping) or not space:
        raise SweepError(f"{where}: search_space is empty; give at least one parameter, e.g. "
                         "search_space={'learning_rate': loguniform(1e-3, 0.3)}.")
    checked: dict[str, SearchExpression] = {}
    for name, expr in space.items():
        key = f"{where}: search_space[{name!r}]"
        if name not in component.inputs:
            raise SweepError(f"{key}: component '{component.name}' has no input {name!r}; its inputs are "
                             f"{sorted(component.inputs)}.")
        if name in fixed:
            raise SweepError(f"{key}: {name!r} is also given in inputs=; a parameter is either searched or fixed.")
        spec = component.inputs[name]
        if spec.is_data:
            raise SweepError(f"{key}: input {name!r} is data ({spec.type}); only string/integer/number/boolean "
                             "inputs can be searched.")
        if not isinstance(expr, (Choice, Uniform, RandInt)):
            raise SweepError(f"{key}: {expr!r} is not a search expression; use choice([...]), uniform(low, high), "
                             "loguniform(low, high) or randint(low, high) from prefect_ml.search (fixed values "
                             "go in inputs=).")
        if isinstance(expr, Uniform) and spec.type != "number":
            raise SweepError(f"{key}: {'loguniform' if expr.log else 'uniform'} draws floats but input {name!r} is "
                             f"'{spec.type}'; use {'randint' if spec.type == 'integer' else 'choice'}.")
        if isinstance(expr, RandInt) and spec.type not in ("integer", "number"):
            raise SweepError(f"{key}: randint draws integers but input {name!r} is '{spec.type}'; use choice.")
        values = expr.values if isinstance(expr, Choice) else (expr.low, expr.high)
        for v in values:
            coerce(v, spec, where=key)  # StepInputError: out of min/max/enum or of the wrong type
        checked[name] = expr
    return checked


def _objective(objective: Any, where: str) -> tuple[str, bool]:
    if (not isinstance(objective, (tuple, list)) or len(objective) != 2 or not isinstance(objective[0], str)
            or objective[1] not in DIRECTIONS):
        raise SweepError(f"{where}: objective must be (metric, 'max' | 'min'), e.g. objective=('auc', 'max'); "
                         f"got {objective!r}.")
    return objective[0], DIRECTIONS[objective[1]]


def _metrics_output(component: Component, where: str) -> str:
    names = [n for n, o in component.outputs.items() if o.type == "metrics"]
    if not names:
        raise SweepError(f"{where}: component '{component.name}' has no metrics output to read the objective "
                         "from; declare one (a function component: return a dict of metrics).")
    return "metrics" if "metrics" in names else names[0]


def _positive_int(value: Any, what: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SweepError(f"{where}: {what} must be an integer >= {minimum}, got {value!r}.")
    return value


# --- running --------------------------------------------------------------------------------------

def _done(step: Step) -> bool:
    wrapped = getattr(step.future, "wrapped_future", None)
    return bool(wrapped.done()) if wrapped is not None else bool(step.future.state.is_final())


def _read_objective(trial: Trial, output: str, metric: str, where: str) -> None:
    from prefect_ml.runtime.outputs import read_metrics

    result = trial.step.result()
    trial.metrics = read_metrics(result.outputs[output], where=f"{where}, trial {trial.number} ({trial.name})")
    if metric not in trial.metrics:
        raise SweepError(f"{where}: objective metric '{metric}' is missing from the metrics of trial {trial.number} "
                         f"(step '{trial.name}'); its metrics are {sorted(trial.metrics)}. Make the component "
                         "write it or fix objective=.")
    trial.value = trial.metrics[metric]


def _final_state(step: Step) -> Any:
    """The step's final state: the runner's future is done a moment before the state says so."""
    step.wait()
    deadline = time.monotonic() + 30
    state = step.future.state
    while not state.is_final() and time.monotonic() < deadline:
        time.sleep(POLL_S)
        state = step.future.state
    return state


def _short_error(message: str) -> str:
    """A failed step's message in one line: what failed, and the last line of its output (the exception)."""
    message = message.removeprefix("Task run encountered an exception ")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1:
        return f"{lines[0]} ... {lines[-1]}"[:500]
    return (lines[0] if lines else "failed")[:500]


def _finish(trial: Trial, output: str, metric: str, where: str) -> None:
    state = _final_state(trial.step)
    result = trial.step.result() if state.is_completed() else None
    if result is None:
        trial.state = "failed"
        trial.error = _short_error(state.message or state.name or "failed")
        return
    trial.state = "cached" if result.cached else "completed"
    trial.duration_s = result.duration_s
    _read_objective(trial, output, metric, where)


def _best(trials: list[Trial], maximize: bool) -> Trial | None:
    scored = [t for t in trials if t.value is not None]
    if not scored:
        return None
    return sorted(scored, key=lambda t: (-t.value if maximize else t.value, t.number))[0]  # type: ignore[operator]


def _rows(trials: list[Trial], metric: str, maximize: bool) -> list[dict[str, Any]]:
    def order(t: Trial) -> tuple:
        return (t.value is None, -(t.value or 0.0) if maximize else (t.value or 0.0), t.number)

    return [{"trial": t.number, "step": t.name, "state": t.state, metric: t.value,
             **{f"param.{k}": v for k, v in t.params.items()},
             "duration_s": None if t.duration_s is None else round(t.duration_s, 2),
             "error": t.error or ""} for t in sorted(trials, key=order)]


def _record(run: PipelineRun, result: SweepResult, maximize: bool) -> None:
    """The sweep's table artifact and the parent MLflow run's best params/value (never fails the sweep)."""
    from prefect import get_run_logger
    from prefect.artifacts import create_table_artifact

    logger = get_run_logger()
    best = result.best
    try:
        create_table_artifact(
            key=f"sweep-{slugify(result.name)}", table=_rows(result.trials, result.objective, maximize),
            description=(f"sweep {result.name}: {len(result.trials)} trials, objective {result.objective} "
                         f"({result.direction}); best trial {best.number} {result.objective}={best.value}"))
    except Exception as exc:
        logger.warning(f"could not write the sweep table artifact: {exc}")
    run_id = run.spec.mlflow_run_id
    if run_id:
        try:
            from prefect_ml.runtime import tracking

            prefix = f"sweep.{result.name}"
            params = {f"{prefix}.best.{k}": str(v) for k, v in best.params.items()}
            metrics = [(f"{prefix}.best_{result.objective}", float(best.value), int(time.time() * 1000), 0)] \
                if best.value is not None else []
            tags = {f"{prefix}.best_trial": best.name, f"{prefix}.trials": str(len(result.trials))}
            tracking.backend().log_batch(run_id, params, metrics, tags)
        except Exception as exc:
            logger.warning(f"could not log the sweep's best trial to MLflow: {exc}")


def _plan(run: PipelineRun, component: Component, name: str, sampler: _Sampler, inputs: dict,
          max_trials: int, output: str, metric: str, maximize: bool, kind: str) -> SweepResult:
    """`prefect-ml plan`: the trials grid/random sampling would run, each decided (reuse or run)."""
    limit = max_trials if kind != "tpe" else min(max_trials, 10)  # TPE's first 10 are its seeded random start-up
    trials: list[Trial] = []
    while len(trials) < limit and (params := sampler.next()) is not None:
        number = len(trials) + 1
        step = run.submit(component, {**inputs, **params}, name=f"{name}-trial-{number}")
        trial = Trial(number=number, params=params, step=step)
        trial.state = "reuse" if step.result().cached else "run"
        if trial.state == "reuse":
            try:
                _read_objective(trial, output, metric, f"sweep '{name}'")
            except Exception as exc:  # a plan reports, it does not fail
                run.notes.append(f"sweep '{name}': trial {number}: {exc}")
        trials.append(trial)
        if kind == "tpe":
            sampler.tell(trial)
    reused = sum(t.state == "reuse" for t in trials)
    extra = f"; TPE picks up to {max_trials - limit} more from results" if kind == "tpe" and max_trials > limit else ""
    run.notes.append(f"sweep '{name}': {len(trials)} trials ({reused} reused, {len(trials) - reused} to run), "
                     f"sampler {kind}{extra}")
    best = _best(trials, maximize)
    if best is None or reused < len(trials):
        run.notes.append(f"sweep '{name}': best trial unknown until its trials run (the plan follows trial 1)")
        best = trials[0]
    return SweepResult(name=name, objective=metric, direction="max" if maximize else "min", trials=trials, best=best)


def sweep(
    component: Component,
    *,
    search_space: Mapping[str, SearchExpression],
    objective: tuple[str, str],
    inputs: Mapping[str, Any] | None = None,
    max_trials: int | None = None,
    max_concurrent: int = 4,
    sampler: str = "random",
    seed: int = 0,
    early_termination: MedianStopping | None = None,
    max_failed_trials: int | None = None,
    name: str | None = None,
) -> SweepResult:
    """Tune a component's inputs: run trials as steps, at most `max_concurrent` at once; return the best.

    Args:
        component: a component with a `metrics` output (a function component that returns a dict).
        search_space: input name -> `choice`/`uniform`/`loguniform`/`randint` (from `prefect_ml.search`).
        objective: `(metric, "max" | "min")`, read from each trial's metrics output.
        inputs: the fixed inputs of every trial (values, data paths, step outputs).
        max_trials: how many trials (default: every combination when all parameters are choice/randint;
            required when one is uniform/loguniform).
        max_concurrent: trials running at once (>= 1).
        sampler: `grid`, `random` (seeded by `seed`) or `tpe` (Optuna's TPE, seeded by `seed`).
        early_termination: `median_stopping(...)`: stop starting trials once recent ones stay below the median.
        max_failed_trials: fail the sweep when more trials than this fail (default None: only when all fail).
        name: the sweep's name in trial step names, the table artifact and MLflow (default: the component's).

    Returns a `SweepResult`; `result.best.outputs.NAME` is the best trial's output, `result.best.params`,
    `result.best.metrics` and `result.best_value` its parameters and scores. The call returns when every
    trial has ended (steps submitted before it keep running meanwhile).

    Example:
        search = sweep(train_and_score, inputs={"train_data": prep.outputs.train_data},
                       search_space={"learning_rate": loguniform(1e-3, 0.3), "n_estimators": choice([50, 100])},
                       objective=("auc", "max"), max_trials=12, max_concurrent=4)
        if gate(search.best.outputs.metrics, "auc", ">=", 0.75): ...
    """
    label = str(name or getattr(component, "name", "sweep"))
    where = f"sweep '{label}'"
    if not isinstance(component, Component):
        raise SweepError(f"{where}: expects a component (from @component, command() or load_component), got "
                         f"{type(component).__name__}.")
    run = context.active()
    if not isinstance(run, PipelineRun):
        raise SweepError(f"{where}: sweep(...) runs inside a @pipeline (its trials are steps of the pipeline run).")
    fixed = dict(inputs or {})
    metric, maximize = _objective(objective, where)
    try:
        space = _check_space(component, search_space, fixed, where)
    except SearchSpaceError as exc:
        raise SweepError(f"{where}: {exc}") from None
    if sampler not in SAMPLERS:
        raise SweepError(f"{where}: unknown sampler {sampler!r}; use one of {list(SAMPLERS)}.")
    _positive_int(max_concurrent, "max_concurrent", where)
    if max_failed_trials is not None:
        _positive_int(max_failed_trials, "max_failed_trials", where, minimum=0)
    if early_termination is not None and not isinstance(early_termination, MedianStopping):
        raise SweepError(f"{where}: early_termination must be median_stopping(...) from prefect_ml.search.")
    if sampler == "grid":
        uniform_names = [n for n, d in space.items() if d.grid is None]
        if uniform_names:
            raise SweepError(f"{where}: grid sampling needs choice or randint for every parameter; "
                             f"{uniform_names} are continuous. Use sampler='random' or 'tpe', or choice([...]).")
    output = _metrics_output(component, where)
    samp = _SAMPLER_TYPES[sampler](space, seed, maximize)
    if max_trials is None:
        if any(d.grid is None for d in space.values()):
            raise SweepError(f"{where}: give max_trials (required when the space has uniform/loguniform "
                             "parameters).")
        max_trials = math.prod(len(d.grid or ()) for d in space.values())  # every combination
    _positive_int(max_trials, "max_trials", where)
    if run.planning:
        return _plan(run, component, label, samp, fixed, max_trials, output, metric, maximize, sampler)

    from prefect import get_run_logger

    logger = get_run_logger()
    trials: list[Trial] = []
    pending: list[Trial] = []
    values: list[float] = []
    failed = 0
    stopped: str | None = None
    too_many_failed = False
    while True:
        while stopped is None and len(pending) < max_concurrent and len(trials) < max_trials:
            params = samp.next()
            if params is None:
                stopped = "search space exhausted"
                break
            number = len(trials) + 1
            step = run.submit(component, {**fixed, **params}, name=f"{label}-trial-{number}")
            trial = Trial(number=number, params=params, step=step)
            trials.append(trial)
            pending.append(trial)
        if not pending:
            break
        done = [t for t in pending if _done(t.step)]
        if not done:
            time.sleep(POLL_S)
            continue
        for trial in done:
            pending.remove(trial)
            _finish(trial, output, metric, where)
            samp.tell(trial)
            if trial.state == "failed":
                failed += 1
                if trial.step in run.steps:  # tolerated: the pipeline's end-of-run check must not re-raise it
                    run.steps.remove(trial.step)
                logger.warning(f"{where}: trial {trial.number} ({trial.name}) failed: {trial.error}")
                if max_failed_trials is not None and failed > max_failed_trials and stopped is None:
                    stopped = f"{failed} trials failed (max_failed_trials={max_failed_trials})"
                    too_many_failed = True
            else:
                values.append(trial.value)  # type: ignore[arg-type]
                logger.info(f"{where}: trial {trial.number} ({trial.state}) {metric}={trial.value:.6g} "
                            f"params={trial.params}")
                if early_termination is not None and stopped is None \
                        and early_termination.should_stop(values, maximize):
                    stopped = (f"median stopping: the last {early_termination.patience} trials scored worse than "
                               "the median")
                    logger.info(f"{where}: {stopped}; no new trials")
    best = _best(trials, maximize)
    if too_many_failed or best is None:
        errors = "; ".join(f"trial {t.number}: {t.error}" for t in trials if t.state == "failed")[:2000]
        why = stopped if too_many_failed else f"every trial failed ({len(trials)})"
        raise SweepError(f"{where}: {why}: {errors}")
    result = SweepResult(name=label, objective=metric, direction="max" if maximize else "min", trials=trials,
                         best=best, stopped_early=stopped if stopped and not stopped.startswith("search") else None)
    logger.info(f"{where}: best trial {best.number} ({best.name}) {metric}={best.value:.6g} params={best.params}")
    _record(run, result, maximize)
    return result
