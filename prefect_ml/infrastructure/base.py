"""The executor interface: what a step hands to infrastructure, and what comes back.

Like KFP's `ITaskHandler`, infrastructure has one method, `run(job, log) -> StepOutcome`; the step
task does everything else (inputs, cache, publish, tracking), so process and Docker behave the same.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from prefect_ml.dsl import command_template

if TYPE_CHECKING:
    from prefect_ml.dsl.component import Distribution

LAST_LINES = 20


@dataclass
class StepJob:
    """Everything needed to run one step's command, in host terms."""

    step_name: str
    command: str  # the component's command template
    code_dir: Path
    values: dict[str, str | None]  # primitive inputs as text; None when unset
    data_inputs: dict[str, Path]  # data input name -> host path
    outputs: dict[str, Path]  # output name -> host path (file or dir) to write
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    environment: str | None = None
    timeout: float | None = None
    distribution: Distribution | None = None  # launch with torchrun, M instances x N processes (distributed.py)

    def argv(self, path: Callable[[Path], str] = str, env: Mapping[str, str] | None = None) -> list[str]:
        """The command as an argv list; `path` maps host paths to the runtime's paths, and `$VAR`s in
        the template are expanded from `env` (the step's environment as the runtime sets it)."""
        inputs = dict(self.values)
        inputs.update({k: path(v) for k, v in self.data_inputs.items()})
        outputs = {k: path(v) for k, v in self.outputs.items()}
        return command_template.render(self.command, inputs, outputs, env)


@dataclass
class StepOutcome:
    exit_code: int
    last_lines: list[str]
    reason: str | None = None  # e.g. "killed: out of memory (limit 64m)"


class LineTail:
    """Keeps the last lines of a step's output for the failure message."""

    def __init__(self, n: int = LAST_LINES):
        self.lines: deque[str] = deque(maxlen=n)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def __iter__(self):
        return iter(list(self.lines))


class StepInfrastructure:
    """Mixin for infrastructure blocks: run one step's job and stream its output to `log`."""

    # How many torchrun instances one step may have here (`job.distribution.instance_count`); 0: this
    # infrastructure does not launch distributed steps, and the step is refused before it starts.
    max_instances: ClassVar[int] = 0

    def run(self, job: StepJob, log: Callable[[str], None]) -> StepOutcome:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__
