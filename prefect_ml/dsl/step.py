"""Handles on submitted steps: `Step` (one call of a component) and `OutputRef` (one of its outputs).

They hold a future from the task runner and know nothing of how the step runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prefect_ml.errors import StepFailed
from prefect_ml.records import StepResult


class _Spec(Protocol):
    """The part of a `Component` a step handle needs (the component module imports this one)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def outputs(self) -> Mapping[str, Any]: ...


WAIT_SLICE_S = 0.25


class OutputRef:
    """One output of a submitted step; pass it as another component's data input."""

    def __init__(self, step: Step, name: str):
        self.step = step
        self.name = name

    @property
    def step_name(self) -> str:
        return self.step.name

    @property
    def type(self) -> str:
        """The output's declared type (`uri_folder`, `metrics`, ...)."""
        return self.step.component.outputs[self.name].type

    def uri(self) -> str:
        """Wait for the producing step and return this output's URI."""
        return self.step.result().outputs[self.name]

    def __repr__(self) -> str:
        return f"OutputRef({self.step.name}.outputs.{self.name})"


class Outputs:
    """`step.outputs.NAME` / `step.outputs["NAME"]`: an `OutputRef` per declared output."""

    def __init__(self, step: Step):
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

    def __iter__(self) -> Iterator[str]:
        return iter(self._step.component.outputs)


class Step:
    """A submitted (or, outside a pipeline, finished) call of a component.

    `future` is the task runner's future; `siblings` lists the other steps of the same run, so a
    step that never ran because an upstream failed can report the upstream's own error.
    """

    def __init__(self, name: str, component: _Spec, future: Any = None,
                 result: StepResult | None = None, siblings: list[Step] | None = None):
        self.name = name
        self.component = component
        self.future = future
        self.decision: Any = None  # set when the step was planned, not run
        self._result = result
        self._siblings = siblings if siblings is not None else []
        self.outputs = Outputs(self)

    def result(self) -> StepResult:
        """Wait for the step and return its `StepResult` (raises if it, or a step it needs, failed)."""
        if self._result is None:
            self.wait()
            state = self.future.state
            if not state.is_completed():
                self._raise_root_cause(state)
            self._result = self.future.result()
        return self._result

    def wait(self) -> None:
        """Wait until the step ends, in short slices: an untimed wait would keep the main thread in C
        code, where Python's signal handlers (Prefect's SIGTERM handling: cancel and crash the run)
        never run, so a terminated pipeline would ignore the signal."""
        if self.future is None:
            return
        wrapped = getattr(self.future, "wrapped_future", None)
        while not (wrapped.done() if wrapped is not None else self.future.state.is_final()):
            self.future.wait(timeout=WAIT_SLICE_S)
        self.future.wait()  # returns at once now; it records the final state, so `state` is not read from the API

    def finished_result(self) -> StepResult | None:
        """The `StepResult` if the step completed, None if it failed or never ran (does not raise)."""
        if self.future is not None and not self.future.state.is_completed():
            return None
        return self.result()

    def _raise_root_cause(self, state: Any) -> None:
        """A step that never ran (an upstream failed) reports the upstream's own error, not 'not ready'."""
        for other in self._siblings:
            if other.future is not None and other.future.state.is_failed():
                other.future.state.result()  # raises the failing step's error
        if state.is_failed() or state.is_crashed() or state.is_cancelled():
            state.result()
        raise StepFailed(f"step '{self.name}' ended {state.name}: {state.message}")

    def __repr__(self) -> str:
        return f"Step({self.name!r})"
