"""Components: typed, reusable step definitions (Azure ML command components).

A component is plain data: its inputs, outputs, code dir, command and environment. Calling it
inside a `@pipeline` submits a step; outside a pipeline it runs the step at once (see `__call__`).
"""

from __future__ import annotations

import importlib
import logging
import re
import shlex
import threading
import warnings
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect_ml._util import NAME_PATTERN, NAME_RULE, load_yaml_file
from prefect_ml.dsl import command_template, context
from prefect_ml.dsl.step import OutputRef, Step
from prefect_ml.errors import ComponentError, StepInputError

INPUT_TYPES = ("uri_file", "uri_folder", "mlflow_model", "string", "integer", "number", "boolean")
OUTPUT_TYPES = ("uri_file", "uri_folder", "mlflow_model", "metrics")
DATA_TYPES = ("uri_file", "uri_folder", "mlflow_model")
CALL_OPTIONS = ("infrastructure", "cache", "retries", "timeout")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
YAML_KEYS = {
    "$schema", "name", "version", "display_name", "description", "type", "tags", "inputs",
    "outputs", "code", "environment", "command", "is_deterministic", "retries", "timeout",
    "infrastructure", "resources", "distribution", "instance_count", "environment_variables",
}
# `resources:` keys other than instance_count pick the machine: here the infrastructure block does, so
# instance_type and shm_size are accepted with one warning (NO_MEANING); the rest are refused (check_resources).
DISTRIBUTION_TYPES = ("pytorch",)
# Azure distribution types that have no launcher here, and what to do instead
REFUSED_DISTRIBUTIONS = {
    "mpi": "MPI jobs are not launched here; use type: pytorch (torchrun), or start mpirun inside your command",
    "tensorflow": "TensorFlow parameter-server jobs are not launched here; use type: pytorch (torchrun)",
    "ray": "Ray clusters are not launched here; use type: pytorch (torchrun)",
}


# Azure keys accepted with one logged warning each (warn_once): they have no meaning here. Used by component
# YAML, `command(resources=...)` and pipeline YAML (dsl.azure_pipeline) alike.
NO_MEANING = {
    "services": "Azure job services (Jupyter, SSH, TensorBoard) do not exist here",
    "identity": "steps run with this machine's credentials (the storage credential chains), not an Azure identity",
    "properties": "Azure job properties are not recorded",
    "settings.default_datastore": "outputs go to the artifact root (PREFECT_ML_ARTIFACT_ROOT)",
    "outputs.mode": "outputs are always written locally and published after the step (Azure's upload)",
    "resources.instance_type": "the infrastructure block decides the machine (compute)",
    "resources.shm_size": "set shm_size on the Docker infrastructure block",
}
# `resources:` keys refused, with what to use instead (any other unknown key: REFUSED_RESOURCE)
REFUSED_RESOURCES = {
    "docker_args": "extra `docker run` arguments are not passed; set the options (gpus, mem_limit, cpus, shm_size, "
                   "network_mode, volumes, user) on a Docker infrastructure block and name it with "
                   "compute/infrastructure",
}
REFUSED_RESOURCE = "has no equivalent here; set it on the infrastructure block (named with compute or infrastructure)"

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
_log = logging.getLogger(__name__)


def warn_once(key: str, where: str, source: str | Path | None = None, logger: logging.Logger | None = None) -> None:
    """One logged warning per key with no meaning here (NO_MEANING) per file (`source`; None: per process),
    so a second file with the same key warns again and a file loaded twice does not."""
    with _warned_lock:
        if (str(source), key) in _warned:
            return
        _warned.add((str(source), key))
    (logger or _log).warning("%s: accepted but ignored (no meaning in prefect-ml: %s). This warning is shown once "
                             "per file.", where, NO_MEANING[key])


def check_resources(resources: Any) -> list[str]:
    """The `resources:` keys (other than instance_count) that are accepted with a warning; raises
    ComponentError (no location: callers add it) for a key that is refused, saying what to use."""
    if resources is None:
        return []
    if not isinstance(resources, Mapping):
        raise ComponentError(f"'resources' must be a mapping such as {{instance_count: 2}}, got {resources!r}.")
    warned = []
    for key in sorted(set(resources) - {"instance_count"}):
        if f"resources.{key}" in NO_MEANING:
            warned.append(key)
        else:
            raise ComponentError(f"key 'resources.{key}': {REFUSED_RESOURCES.get(key, REFUSED_RESOURCE)}.")
    return warned


class CommandWarning(UserWarning):
    """A component's command is valid but unsafe (e.g. a value inside a `bash -c` script)."""


# Azure ML SDK spellings (see docs/azure.md): `type: mltable` is a folder with an MLTable file, staged
# like uri_folder; `mode` is how Azure mounts data: a step here always sees a local path, which is
# what these modes mean; `direct` (the URI itself) and the eval_* modes have no equivalent.
AZURE_TYPES = {"mltable": "uri_folder"}
INPUT_MODES = {"ro_mount", "download", "rw_mount", "mount"}
OUTPUT_MODES = {"rw_mount", "upload", "mount"}
ENVIRONMENT_RESOLVER = "prefect_ml.environments.aliases:resolve"  # a name: that code sits above this layer


def _check_mode(mode: str | None, allowed: set[str], what: str) -> None:
    if mode is not None and mode not in allowed:
        raise ComponentError(
            f"{what} mode {mode!r} has no equivalent here: a step always reads and writes local paths (inputs "
            f"staged in, outputs published after the step). Drop 'mode' or use one of {sorted(allowed)}."
        )


@dataclass(frozen=True)
class Input:
    """A typed component input.

    `path` and `mode` are the Azure ML SDK's spellings: `path` is the default data (as `default`);
    `mode` may be ro_mount/download (what a step here always gets: a local path).

    Example:
        Input(type="number", default=0.1, min=0.0, max=1.0, description="Learning rate")

    In a function component the type may come from the annotation instead:
    `Annotated[float, Input(min=0.0, max=1.0)]` (see `prefect_ml.dsl.function`).
    """

    type: str = ""  # "" only until a function component fills it from the annotation; validate() refuses it
    default: Any = None
    optional: bool = False
    enum: list | None = None
    min: float | None = None
    max: float | None = None
    description: str = ""
    path: InitVar[str | None] = None
    mode: InitVar[str | None] = None

    def __post_init__(self, path: str | None, mode: str | None) -> None:
        _check_mode(mode, INPUT_MODES, "input")
        if self.type in AZURE_TYPES:
            object.__setattr__(self, "type", AZURE_TYPES[self.type])
        if path is not None:
            if self.default is not None and self.default != path:
                raise ComponentError(f"Input: give 'path' or 'default', not both ({path!r} vs {self.default!r}).")
            object.__setattr__(self, "default", str(path))

    @property
    def is_data(self) -> bool:
        return self.type in DATA_TYPES

    @property
    def required(self) -> bool:
        return not self.optional and self.default is None


@dataclass(frozen=True)
class Output:
    """A typed component output: `uri_file`, `uri_folder`, `mlflow_model` or `metrics` (JSON name -> number)."""

    type: str = "uri_folder"
    description: str = ""
    path: InitVar[str | None] = None
    mode: InitVar[str | None] = None

    def __post_init__(self, path: str | None, mode: str | None) -> None:
        _check_mode(mode, OUTPUT_MODES, "output")
        if self.type in AZURE_TYPES:
            object.__setattr__(self, "type", AZURE_TYPES[self.type])
        if path is not None:
            raise ComponentError(
                f"Output(path={path!r}): outputs are published under the artifact root by cache key "
                "(PREFECT_ML_ARTIFACT_ROOT, or @pipeline(artifact_root=...)); drop 'path', and register the output "
                "as a data asset if it needs a fixed name."
            )

    @property
    def is_file(self) -> bool:
        return self.type in ("uri_file", "metrics")


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ComponentError(f"{what} must be a whole number >= 1, got {value!r}.")
    return value


@dataclass(frozen=True)
class Distribution:
    """Distributed training inside one step, launched with PyTorch's own launcher (torchrun).

    Azure ML's `distribution: {type: pytorch, process_count_per_instance: N}` with
    `resources: {instance_count: M}` (SageMaker: `instance_count`): M launcher instances with N
    processes each, world size M x N. The process infrastructure runs the M instances on this machine
    (rendezvous over 127.0.0.1); see docs/distributed-training.md.

    Example:
        command(..., distribution=Distribution(process_count_per_instance=2, instance_count=2))
    """

    type: str = "pytorch"
    process_count_per_instance: int = 1
    instance_count: int = 1

    def __post_init__(self) -> None:
        kind = str(self.type).lower()
        if kind in REFUSED_DISTRIBUTIONS:
            raise ComponentError(f"distribution type {self.type!r}: {REFUSED_DISTRIBUTIONS[kind]}.")
        if kind not in DISTRIBUTION_TYPES:
            raise ComponentError(f"distribution type {self.type!r} is unknown; use one of {list(DISTRIBUTION_TYPES)}.")
        object.__setattr__(self, "type", kind)
        _count(self.process_count_per_instance, "distribution.process_count_per_instance")
        _count(self.instance_count, "resources.instance_count")

    @property
    def world_size(self) -> int:
        return self.process_count_per_instance * self.instance_count

    def describe(self) -> str:
        return f"{self.instance_count} x {self.process_count_per_instance} (world size {self.world_size})"


def distribution_from(distribution: Any = None, resources: Any = None,
                      instance_count: Any = None) -> Distribution | None:
    """A `Distribution` from the Azure/SageMaker spellings: `distribution` (a mapping such as
    {type: pytorch, process_count_per_instance: 2}, or a Distribution), `resources` (a mapping; only
    its `instance_count` matters here) and a SageMaker-style `instance_count`. Raises ComponentError
    (no location: callers add it) for what cannot be honoured."""
    counts: list[Any] = []
    if resources is not None:
        if not isinstance(resources, Mapping):
            raise ComponentError(f"'resources' must be a mapping such as {{instance_count: 2}}, got {resources!r}.")
        if "instance_count" in resources:
            counts.append(resources["instance_count"])
    if instance_count is not None:
        counts.append(instance_count)
    for n in counts:
        _count(n, "instance_count")
    if len(set(counts)) > 1:
        raise ComponentError(f"'resources.instance_count' and 'instance_count' disagree ({counts[0]} vs {counts[1]}); "
                             "give one.")
    count = counts[0] if counts else None
    if distribution is None:
        if count is not None and count > 1:
            raise ComponentError(
                f"instance_count {count} needs a launcher: a plain command runs once, on one machine; add "
                "distribution: {type: pytorch, process_count_per_instance: N} (torchrun), or use instance_count 1.")
        return None
    if isinstance(distribution, Distribution):
        return distribution if count is None else replace(distribution, instance_count=count)
    if not isinstance(distribution, Mapping):
        raise ComponentError("'distribution' must be a mapping such as {type: pytorch, "
                             f"process_count_per_instance: 2}}, got {distribution!r}.")
    kind = str(distribution.get("type") or "")
    if not kind:
        raise ComponentError("'distribution' has no 'type'; write {type: pytorch, process_count_per_instance: N}.")
    if kind.lower() in REFUSED_DISTRIBUTIONS:
        raise ComponentError(f"distribution type {kind!r}: {REFUSED_DISTRIBUTIONS[kind.lower()]}.")
    extra = sorted(set(distribution) - {"type", "process_count_per_instance"})
    if extra:
        raise ComponentError(f"'distribution': unknown field(s) {extra}; a pytorch distribution has "
                             "type and process_count_per_instance.")
    return Distribution(type=kind, process_count_per_instance=distribution.get("process_count_per_instance", 1),
                        instance_count=1 if count is None else count)


def coerce(value: Any, spec: Input, *, where: str) -> Any:
    """Check a primitive value against its spec and return it in canonical form; raise with a fix."""
    t = spec.type
    got = f"{type(value).__name__} {value!r}"
    if t == "boolean":
        if not isinstance(value, bool):
            raise StepInputError(f"{where}: expects a boolean (true/false), got {got}; pass True or False.")
    elif t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise StepInputError(f"{where}: expects an integer, got {got}; pass a whole number such as 100.")
    elif t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StepInputError(f"{where}: expects a number, got {got}; pass a number such as 0.1, not a string.")
        value = float(value)
    elif t == "string" and not isinstance(value, str):
        raise StepInputError(f"{where}: expects a string, got {got}; pass text (str).")
    if spec.enum is not None and value not in spec.enum:
        raise StepInputError(f"{where}: {value!r} is not one of the allowed values {spec.enum}.")
    if spec.min is not None and value < spec.min:
        raise StepInputError(f"{where}: {value!r} is below the minimum {spec.min}; pass a value >= {spec.min}.")
    if spec.max is not None and value > spec.max:
        raise StepInputError(f"{where}: {value!r} is above the maximum {spec.max}; pass a value <= {spec.max}.")
    return value


def render_value(value: Any) -> str:
    """The text a primitive value takes on the command line."""
    return str(value)


@dataclass(frozen=True)
class Component:
    """A reusable, typed ML step. Build one with `command(...)` or `load_component(path)`."""

    name: str
    command: str
    code: Path
    inputs: Mapping[str, Input] = field(default_factory=dict)
    outputs: Mapping[str, Output] = field(default_factory=dict)
    version: str = "1"
    display_name: str | None = None
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    environment: str | None = None
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    infrastructure: str | None = None
    cache: bool = True
    retries: int = 0
    timeout: float | None = None
    source: Path | None = None
    distribution: Distribution | None = None  # torchrun launch (docs/distributed-training.md)

    def __post_init__(self) -> None:
        validate(self)

    # --- calling ---------------------------------------------------------------------------
    def with_options(self, **options: Any) -> Component:
        """A copy with other call options (`infrastructure`, `cache`, `retries`, `timeout`).

        Like Prefect's `Task.with_options`.
        """
        unknown = set(options) - set(CALL_OPTIONS)
        if unknown:
            raise ComponentError(f"component '{self.name}': unknown option(s) {sorted(unknown)}; use "
                f"{list(CALL_OPTIONS)}.")
        return replace(self, **options)

    def bind(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate call arguments against the spec: every problem is reported before anything runs."""
        unknown = [k for k in kwargs if k not in self.inputs]
        if unknown:
            raise StepInputError(
                f"component '{self.name}': unknown input(s) {unknown}; declared inputs are {sorted(self.inputs)}."
            )
        bound: dict[str, Any] = {}
        for name, spec in self.inputs.items():
            where = f"component '{self.name}', input '{name}'"
            value = kwargs.get(name, spec.default)
            if value is None:
                if spec.required:
                    raise StepInputError(
                        f"{where} is required but was not given; pass {name}=... when calling '{self.name}'."
                    )
                bound[name] = None
                continue
            if spec.is_data:
                bound[name] = value  # a URI, a path, a step output or a data asset; checked when staged
            else:
                if isinstance(value, OutputRef):
                    raise StepInputError(
                        f"{where}: is of type '{spec.type}' but got the output '{value.name}' of step "
                        f"'{value.step_name}'; only uri_file/uri_folder/mlflow_model inputs take step outputs."
                    )
                bound[name] = coerce(value, spec, where=where)
        return bound

    def __call__(self, **kwargs: Any) -> Step:
        """Submit this component as a step of the running pipeline and return a `Step` at once.

        Outside a pipeline the step runs at once in a standalone Prefect task and the returned
        `Step` is already finished (handy to try a component on its own).
        """
        options = {k: kwargs.pop(k) for k in CALL_OPTIONS if k in kwargs}
        return context.submit(self.with_options(**options) if options else self, kwargs)


def _where(component_name: str, source: Path | None) -> str:
    return f"component '{component_name}'" + (f" ({source})" if source else "")


def validate(c: Component) -> None:
    """Check everything that can be checked without running: names, types, defaults, placeholders, code dir."""
    where = _where(c.name, c.source)
    if not c.name or not NAME_PATTERN.match(c.name):
        raise ComponentError(f"{where}: name {c.name!r} is invalid; {NAME_RULE}.")
    if not c.command or not c.command.strip():
        raise ComponentError(f"{where}: key 'command' is empty; give the command to run, e.g. 'python train.py'.")
    kinds: tuple[tuple[str, Mapping[str, Input | Output], tuple[str, ...]], ...] = (
        ("inputs", c.inputs, INPUT_TYPES), ("outputs", c.outputs, OUTPUT_TYPES))
    for kind, specs, allowed in kinds:
        for name, spec in specs.items():
            key = f"{where}: key '{kind}.{name}'"
            if not IDENTIFIER.match(name):
                raise ComponentError(
                    f"{key}: {name!r} is not a plain identifier; use letters, digits and '_' (e.g. 'train_data')."
                )
            if kind == "inputs" and name in CALL_OPTIONS:
                raise ComponentError(
                    f"{key}: '{name}' is reserved for call options {list(CALL_OPTIONS)}; rename the input.")
            if spec.type not in allowed:
                raise ComponentError(f"{key}: unknown type {spec.type!r}; use one of {list(allowed)}.")
    for name, spec in c.inputs.items():
        key = f"{where}: key 'inputs.{name}'"
        if spec.is_data and (spec.enum or spec.min is not None or spec.max is not None):
            raise ComponentError(f"{key}: enum/min/max apply to primitive inputs only, not '{spec.type}'.")
        if (spec.min is not None or spec.max is not None) and spec.type not in ("integer", "number"):
            raise ComponentError(f"{key}: min/max apply to integer and number inputs only.")
        if spec.enum is not None and not spec.is_data:
            for option in spec.enum:
                try:
                    coerce(option, Input(type=spec.type), where=f"{key} enum value")
                except StepInputError as exc:
                    raise ComponentError(f"{exc} Fix the enum in the component.") from None
        if spec.default is not None and not spec.is_data:
            try:
                coerce(spec.default, spec, where=f"{key} default")
            except StepInputError as exc:
                raise ComponentError(f"{exc} Fix the default in the component.") from None
    _check_options(c, where)
    _check_distribution(c, where)
    overlap = set(c.inputs) & set(c.outputs)
    if overlap:
        raise ComponentError(f"{where}: {sorted(overlap)} declared as both input and output; rename one.")
    problem = command_template.check_syntax(c.command)
    if problem:
        raise ComponentError(f"{where}: key 'command': {problem}.")
    for p in command_template.placeholders(c.command):
        declared = c.inputs if p.kind == "inputs" else c.outputs
        if p.name not in declared:
            raise ComponentError(
                f"{where}: key 'command' uses ${{{{{p.kind}.{p.name}}}}} but no {p.kind[:-1]} '{p.name}' is declared; "
                f"declared {p.kind}: {sorted(declared) or 'none'}. Declare it under '{p.kind}' or fix the name."
            )
        if p.kind == "inputs" and not p.optional_fragment:
            spec = c.inputs[p.name]
            if spec.optional and spec.default is None:
                raise ComponentError(
                    f"{where}: key 'command': optional input '{p.name}' is used outside an optional fragment; "
                    f"wrap it as $[[ --{p.name} ${{{{inputs.{p.name}}}}} ]] so it vanishes when unset."
                )
    ops = command_template.shell_operators(c.command)
    if ops:
        raise ComponentError(
            f"{where}: key 'command' contains shell operator(s) {ops}; commands run without a shell so values "
            "stay literal. Put the pipeline into a script in the code dir, or run a shell with the values as "
            f"arguments, never inside the script: {command_template.SAFE_SHELL_FORM}"
        )
    injected = command_template.placeholders_in_shell_scripts(c.command)
    if injected:
        warnings.warn(
            f"{where}: key 'command' puts {', '.join(injected)} inside a shell's -c script: the shell would run "
            f"a value as code. Pass values as arguments: {command_template.SAFE_SHELL_FORM}",
            CommandWarning, stacklevel=4,
        )
    if not c.code.is_dir():
        raise ComponentError(
            f"{where}: key 'code': directory {str(c.code)!r} does not exist; create it or fix the path "
            "(relative paths are resolved against the component file)."
        )


def _check_options(c: Component, where: str) -> None:
    """Wrong-typed options are load errors, never silently coerced ('false' is not False)."""
    if not isinstance(c.cache, bool):
        raise ComponentError(
            f"{where}: key 'is_deterministic' (cache) must be true or false, got {c.cache!r}; "
            "write it without quotes."
        )
    if isinstance(c.retries, bool) or not isinstance(c.retries, int) or c.retries < 0:
        raise ComponentError(f"{where}: key 'retries' must be a whole number >= 0, got {c.retries!r}.")
    if c.timeout is not None and (isinstance(c.timeout, bool) or not isinstance(c.timeout, (int, float))
                                  or c.timeout <= 0):
        raise ComponentError(f"{where}: key 'timeout' must be a number of seconds > 0, got {c.timeout!r}.")
    for key, value in c.environment_variables.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ComponentError(f"{where}: key 'environment_variables': {key!r} must map to text.")


def _check_distribution(c: Component, where: str) -> None:
    d = c.distribution
    if d is None:
        return
    if not isinstance(d, Distribution):
        raise ComponentError(f"{where}: key 'distribution' must be a Distribution (use distribution_from), got {d!r}.")
    if d.instance_count > 1 and c.infrastructure == "docker":
        raise ComponentError(
            f"{where}: key 'resources.instance_count' is {d.instance_count}, but Docker infrastructure runs a step "
            "in one container; use instance_count 1 (N processes in the container) or infrastructure 'process'.")


def _input_from(name: str, raw: Any, where: str) -> Input:
    if isinstance(raw, Input):
        return raw
    if isinstance(raw, str):
        return Input(type=raw)
    if not isinstance(raw, Mapping):
        raise ComponentError(f"{where}: key 'inputs.{name}' must be a mapping with at least 'type'.")
    allowed = {"type", "default", "optional", "enum", "min", "max", "description", "path", "mode"}
    extra = set(raw) - allowed
    if extra:
        raise ComponentError(f"{where}: key 'inputs.{name}': unknown field(s) {sorted(extra)}; allowed: "
            f"{sorted(allowed)}.")
    if "type" not in raw:
        raise ComponentError(f"{where}: key 'inputs.{name}' has no 'type'; use one of {list(INPUT_TYPES)}.")
    try:
        return Input(**raw)
    except ComponentError as exc:
        raise ComponentError(f"{where}: key 'inputs.{name}': {exc}") from None


def _output_from(name: str, raw: Any, where: str) -> Output:
    if isinstance(raw, Output):
        return raw
    if isinstance(raw, str):
        return Output(type=raw)
    if not isinstance(raw, Mapping):
        raise ComponentError(f"{where}: key 'outputs.{name}' must be a mapping with at least 'type'.")
    extra = set(raw) - {"type", "description", "mode", "path"}
    if extra:
        raise ComponentError(f"{where}: key 'outputs.{name}': unknown field(s) {sorted(extra)}; allowed: type, "
            "description, mode, path.")
    try:
        return Output(type=raw.get("type", "uri_folder"), description=raw.get("description", ""),
                      path=raw.get("path"), mode=raw.get("mode"))
    except ComponentError as exc:
        raise ComponentError(f"{where}: key 'outputs.{name}': {exc}") from None


def command(
    *,
    name: str,
    command: str,
    code: str | Path = ".",
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    version: str = "1",
    environment: str | None = None,
    display_name: str | None = None,
    description: str = "",
    tags: Mapping[str, str] | None = None,
    environment_variables: Mapping[str, str] | None = None,
    infrastructure: str | None = None,
    cache: bool = True,
    retries: int = 0,
    timeout: float | None = None,
    distribution: Mapping[str, Any] | Distribution | None = None,
    resources: Mapping[str, Any] | None = None,
    instance_count: int | None = None,
) -> Component:
    """Define a component in Python (like `azure.ai.ml.command`).

    `distribution` ({"type": "pytorch", "process_count_per_instance": N} or a `Distribution`) with
    `instance_count` (or `resources={"instance_count": M}`) launches the command with torchrun, M x N
    processes (docs/distributed-training.md).

    Example:
        prep = command(
            name="data_prep", code="components/data_prep", environment="sklearn-cpu",
            command="python prep.py --data ${{inputs.data}} --out ${{outputs.train_data}}",
            inputs={"data": Input(type="uri_file")}, outputs={"train_data": Output(type="uri_folder")},
        )
    """
    where = f"component '{name}'"
    try:
        for key in check_resources(resources):
            warn_once(f"resources.{key}", f"{where}: command(resources={{'{key}': ...}})", source=where)
        dist = distribution_from(distribution, resources, instance_count)
    except ComponentError as exc:
        raise ComponentError(f"{where}: {exc}") from None
    return Component(
        name=name,
        command=command,
        code=Path(code).expanduser().resolve(),
        inputs={k: _input_from(k, v, where) for k, v in (inputs or {}).items()},
        outputs={k: _output_from(k, v, where) for k, v in (outputs or {}).items()},
        version=str(version),
        environment=environment,
        display_name=display_name,
        description=description,
        tags=dict(tags or {}),
        environment_variables=dict(environment_variables or {}),
        infrastructure=infrastructure,
        cache=cache,
        retries=retries,
        timeout=timeout,
        distribution=dist,
    )


def load_component(path: str | Path | None = None, *, source: str | Path | None = None) -> Component:
    """Load a component from YAML in the Azure ML CLI v2 `commandComponent` form.

    Relative `code` paths resolve against the YAML file's directory; a missing `code` means that
    directory. Errors name the file, the key and the fix. `source=` is the Azure ML SDK's spelling
    of `path`. The environment is resolved and checked now (Azure forms: see docs/azure.md).
    """
    if (path is None) == (source is None):
        raise ComponentError("load_component: give the YAML file's path (or source=...), once.")
    given = str(path if path is not None else source)
    path = Path(given).expanduser().resolve()
    if not path.is_file():
        raise ComponentError(f"component file {str(path)!r} does not exist; check the path.")
    source_text = path.read_text()
    raw = load_yaml_file(path, ComponentError, source_text)
    if not isinstance(raw, Mapping):
        raise ComponentError(f"{path}: expected a mapping of component keys (name, command, inputs, ...).")
    if raw.get("type") == "pipeline" or "jobs" in raw:
        raise ComponentError(f"{path} is a pipeline YAML (type: pipeline, jobs:), not a component: load it with "
                             f"prefect_ml.load_pipeline_yaml({given!r}) or run it with "
                             f"`prefect-ml run {shlex.quote(given)}`.")
    lines = {m.group(1): n for n, text in enumerate(source_text.splitlines(), 1)
             if (m := re.match(r"^([A-Za-z_$][\w$]*)\s*:", text))}
    return component_from_mapping(raw, path, lines=lines)


def component_from_mapping(raw: Mapping[str, Any], path: Path, *, where: str | None = None,
                           lines: Mapping[str, int] | None = None) -> Component:
    """A component from its parsed YAML keys; `path` is the file its relative paths resolve against
    (an inline component in a pipeline YAML: the pipeline's file); `lines`: top-level key -> line."""
    name = str(raw.get("name") or "")
    where = where or f"component '{name}' ({path})"
    unknown = set(raw) - YAML_KEYS
    if unknown:
        raise ComponentError(f"{where}: unknown key(s) {sorted(unknown)}; allowed keys: {sorted(YAML_KEYS)}.")
    kind = raw.get("type", "command")
    if kind != "command":
        raise ComponentError(f"{where}: key 'type' is {kind!r}; only 'command' components are supported.")
    if not name:
        raise ComponentError(f"{path}: key 'name' is missing; give the component a name.")
    if "command" not in raw:
        raise ComponentError(f"{where}: key 'command' is missing; give the command to run.")
    code = Path(str(raw.get("code", "."))).expanduser()
    code = (path.parent / code).resolve() if not code.is_absolute() else code
    at = f" line {lines['environment']}" if lines and "environment" in lines else ""
    env = resolve_environment(raw.get("environment"), source=path, start=code, where=where + at)
    try:
        ignored = check_resources(raw.get("resources"))
    except ComponentError as exc:
        at = f" line {lines['resources']}" if lines and "resources" in lines else ""
        raise ComponentError(f"{where}{at}: {exc}") from None
    for key in ignored:
        at = f" line {lines['resources']}" if lines and "resources" in lines else ""
        warn_once(f"resources.{key}", f"{where}{at}: key 'resources.{key}'", source=path)
    try:
        dist = distribution_from(raw.get("distribution"), raw.get("resources"), raw.get("instance_count"))
    except ComponentError as exc:
        key = next((k for k in ("distribution", "resources", "instance_count") if k in raw), "distribution")
        at = f" line {lines[key]}" if lines and key in lines else ""
        raise ComponentError(f"{where}{at}: {exc}") from None
    component = Component(
        name=name,
        command=str(raw["command"]).strip(),
        code=code,
        inputs={k: _input_from(k, v, where) for k, v in (raw.get("inputs") or {}).items()},
        outputs={k: _output_from(k, v, where) for k, v in (raw.get("outputs") or {}).items()},
        version=str(raw.get("version", "1")),
        display_name=raw.get("display_name"),
        description=str(raw.get("description") or ""),
        tags={str(k): str(v) for k, v in (raw.get("tags") or {}).items()},
        environment=env,
        environment_variables={str(k): str(v) for k, v in (raw.get("environment_variables") or {}).items()},
        infrastructure=raw.get("infrastructure"),
        cache=raw.get("is_deterministic", True),
        retries=raw.get("retries", 0),
        timeout=raw.get("timeout"),
        source=path,
        distribution=dist,
    )
    return component


def resolve_environment(env: Any, *, source: Path | None, start: Path | None, where: str) -> str | None:
    """The local environment name for a component's `environment:` in any Azure form (a name,
    `azureml:NAME:VERSION`, `NAME@latest`, a registry URI through the alias map, an inline spec),
    checked now so that a missing or invalid environment fails at load."""
    from prefect_ml.errors import PrefectMLError

    if env is None or env == "":
        return None
    module, _, func = ENVIRONMENT_RESOLVER.partition(":")
    try:
        return getattr(importlib.import_module(module), func)(env, source=source, start=start)
    except PrefectMLError as exc:
        raise ComponentError(f"{where}: key 'environment': {exc}") from None
