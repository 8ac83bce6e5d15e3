"""Azure ML pipeline YAML (`type: pipeline`, the CLI v2 pipelineJob form) as a `@pipeline` flow.

    flow = load_pipeline_yaml("pipeline.yml")        # a Prefect flow; its parameters = the YAML's inputs
    flow(learning_rate=0.2)                           # run it, or `prefect-ml run pipeline.yml --set ...`

What each key means here (docs/azure.md has the table):
  inputs              the flow's parameters (types -> Python types; `default`/`path` -> defaults), so
                      they appear in the Prefect UI's Run form
  outputs             the flow's return value: {name: URI} of the step outputs bound to them
  settings            default_compute -> infrastructure, default_environment -> environment of
                      components that name none, force_rerun -> cache off, continue_on_step_failure
                      (Azure's default false: no step starts after the first failure, steps already
                      running finish; true: independent steps run on; either way the run fails)
  jobs.<j>            `type: command`; `component:` is `file:./x.yml`, `azureml:NAME[:VERSION|@latest]`
                      (found as components/<NAME>/component.yaml) or an inline component; or the
                      job itself has `command`/`code`/`environment`
  jobs.<j>.inputs     literals, `${{parent.inputs.x}}`, `${{parent.jobs.a.outputs.b}}`
  jobs.<j>.outputs    `${{parent.outputs.y}}` binds a pipeline output
  environment_variables, compute (-> infrastructure), limits.timeout (-> timeout), environment
  distribution + resources.instance_count   torchrun launch (docs/distributed-training.md)
Keys with no meaning here (`services`, `identity`, output `mode`, ...) are accepted with one logged
warning each, per file. Everything else is checked when the file is loaded: errors name the file and line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect_ml._util import load_yaml_file, safe_load_yaml
from prefect_ml.dsl.component import (
    IDENTIFIER,
    INPUT_MODES,
    NO_MEANING,
    OUTPUT_MODES,
    REFUSED_RESOURCE,
    REFUSED_RESOURCES,
    Component,
    Input,
    _check_mode,
    component_from_mapping,
    distribution_from,
    load_component,
    resolve_environment,
)
from prefect_ml.dsl.component import _warned as _warned  # (file, key) pairs warned about; tests clear it
from prefect_ml.dsl.component import warn_once as _warn_once
from prefect_ml.errors import ComponentError

log = logging.getLogger(__name__)

PIPELINE_KEYS = {"$schema", "type", "name", "display_name", "description", "tags", "experiment_name", "settings",
                 "inputs", "outputs", "jobs", "compute", "identity", "services", "properties"}
SETTINGS_KEYS = {"default_compute", "default_environment", "continue_on_step_failure", "force_rerun",
                 "default_datastore"}
JOB_KEYS = {"type", "component", "inputs", "outputs", "environment_variables", "compute", "limits", "name",
            "display_name", "description", "tags", "environment", "code", "command", "services", "identity",
            "resources", "distribution", "properties", "experiment_name"}
REF = re.compile(r"\$\{\{\s*parent\.(inputs|outputs|jobs)\.([^\s}]+)\s*\}\}")
TYPE_HINTS = {"string": str, "integer": int, "number": float, "boolean": bool}


def warn_once(key: str, where: str, source: Path | None = None) -> None:
    """One logged warning per key with no meaning here (NO_MEANING, shared with component YAML), per file."""
    _warn_once(key, where, source=source, logger=log)


# --- positions ----------------------------------------------------------------------------------------


class _Lines:
    """Line numbers of keys in a YAML file, by key path (('jobs', 'train', 'inputs', 'x'))."""

    def __init__(self, text: str):
        import yaml

        self.lines: dict[tuple[str, ...], int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            return
        self._walk(node, ())

    def _walk(self, node: Any, path: tuple[str, ...]) -> None:
        import yaml

        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                self.lines[key] = k.start_mark.line + 1
                self._walk(v, key)

    def at(self, *path: str) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f"line {self.lines[path[:n]]}"
        return "line 1"


@dataclass
class _Ctx:
    path: Path
    lines: _Lines

    def where(self, *keys: str) -> str:
        return f"{self.path}:{self.lines.at(*keys)}: key '{'.'.join(keys)}'" if keys else str(self.path)

    def error(self, keys: tuple[str, ...], message: str) -> ComponentError:
        return ComponentError(f"{self.where(*keys)}: {message}")


# --- the loaded pipeline ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """`${{parent.inputs.x}}` (kind 'inputs', name 'x') or `${{parent.jobs.a.outputs.b}}` (kind 'jobs')."""

    kind: str
    name: str
    output: str | None = None


@dataclass
class Job:
    name: str
    component: Component
    inputs: dict[str, Any] = field(default_factory=dict)  # literal, Ref, or a str with embedded Refs
    outputs: dict[str, str] = field(default_factory=dict)  # component output -> pipeline output
    options: dict[str, Any] = field(default_factory=dict)  # infrastructure, timeout

    def needs(self) -> set[str]:
        return {r.name for v in self.inputs.values() for r in _refs(v) if r.kind == "jobs"}


@dataclass
class AzurePipeline:
    """A parsed pipelineJob: plain data; `to_flow()` makes the Prefect flow."""

    path: Path
    name: str
    description: str
    inputs: dict[str, Input]
    outputs: dict[str, str]  # pipeline output -> type
    jobs: dict[str, Job]  # in a dependency order
    infrastructure: str | None = None
    cache: bool = True
    experiment: str | None = None
    continue_on_step_failure: bool = False  # Azure's default for a pipeline job

    def to_flow(self, **flow_kwargs: Any) -> Any:
        from prefect_ml.dsl.pipeline import pipeline

        func = _make_function(self)
        kwargs: dict[str, Any] = {"description": self.description} if self.description else {}
        kwargs["continue_on_step_failure"] = self.continue_on_step_failure
        kwargs.update(flow_kwargs)
        return pipeline(func, name=self.name, infrastructure=self.infrastructure, cache=self.cache,
                        experiment=self.experiment, **kwargs)


def _refs(value: Any) -> list[Ref]:
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, _Template):
        return value.refs
    return []


@dataclass(frozen=True)
class _Template:
    """A literal with `${{parent.inputs.x}}` inside, e.g. "--lr=${{parent.inputs.lr}}"."""

    text: str
    refs: list[Ref]


def _parse_ref(kind: str, rest: str, ctx: _Ctx, keys: tuple[str, ...]) -> Ref:
    if kind == "inputs":
        return Ref("inputs", rest)
    if kind == "outputs":
        return Ref("outputs", rest)
    parts = rest.split(".")
    if len(parts) != 3 or parts[1] != "outputs":
        raise ctx.error(keys, f"'${{{{parent.jobs.{rest}}}}}' is not of the form "
                              "${{parent.jobs.JOB.outputs.NAME}}.")
    return Ref("jobs", parts[0], parts[2])


def _value(raw: Any, ctx: _Ctx, keys: tuple[str, ...]) -> Any:
    """A job input value: a literal, one reference, or text with references inside."""
    if not isinstance(raw, str):
        return raw
    matches = list(REF.finditer(raw))
    if not matches:
        if "${{" in raw:
            raise ctx.error(keys, f"{raw!r} is not a reference of the form ${{{{parent.inputs.NAME}}}} or "
                                  "${{parent.jobs.JOB.outputs.NAME}}.")
        return raw
    refs = [_parse_ref(m.group(1), m.group(2), ctx, keys) for m in matches]
    if len(matches) == 1 and matches[0].group(0) == raw.strip():
        return refs[0]
    if any(r.kind != "inputs" for r in refs):
        raise ctx.error(keys, "a step output can only be passed whole, not inside text.")
    return _Template(raw, refs)


# --- loading --------------------------------------------------------------------------------------------


def load_pipeline(path: str | Path) -> AzurePipeline:
    """Parse and check an Azure ML pipeline YAML; every error names the file, line and key."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ComponentError(f"pipeline file {str(path)!r} does not exist; check the path.")
    text = path.read_text()
    raw = load_yaml_file(path, ComponentError, text)
    ctx = _Ctx(path, _Lines(text))
    if not isinstance(raw, Mapping):
        raise ComponentError(f"{path}: expected a pipeline job mapping (type: pipeline, inputs, jobs, ...).")
    if raw.get("type") != "pipeline":
        hint = " (a component: load it with load_component)" if raw.get("type") == "command" else ""
        raise ctx.error(("type",), f"is {raw.get('type')!r}; a pipeline YAML has `type: pipeline`{hint}.")
    unknown = sorted(set(raw) - PIPELINE_KEYS)
    if unknown:
        raise ctx.error((unknown[0],), f"unknown key(s) {unknown}; allowed: {sorted(PIPELINE_KEYS)}.")
    for key in ("services", "identity", "properties"):
        if key in raw:
            warn_once(key, ctx.where(key), ctx.path)
    settings = raw.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise ctx.error(("settings",), "must be a mapping.")
    bad = sorted(set(settings) - SETTINGS_KEYS)
    if bad:
        raise ctx.error(("settings", bad[0]), f"unknown setting(s) {bad}; allowed: {sorted(SETTINGS_KEYS)}.")
    if "default_datastore" in settings:
        warn_once("settings.default_datastore", ctx.where("settings", "default_datastore"), ctx.path)
    for flag in ("continue_on_step_failure", "force_rerun"):
        if flag in settings and not isinstance(settings[flag], bool):
            raise ctx.error(("settings", flag), f"must be true or false, got {settings[flag]!r}.")
    infrastructure = _compute(settings.get("default_compute") or raw.get("compute"))
    default_env = settings.get("default_environment")

    inputs = {n: _pipeline_input(n, v, ctx) for n, v in (raw.get("inputs") or {}).items()}
    outputs = {n: _pipeline_output(n, v, ctx) for n, v in (raw.get("outputs") or {}).items()}
    jobs_raw = raw.get("jobs")
    if not isinstance(jobs_raw, Mapping) or not jobs_raw:
        raise ctx.error(("jobs",), "give at least one job (`jobs: {NAME: {type: command, component: ...}}`).")
    jobs = {n: _job(n, j, ctx, default_env, inputs) for n, j in jobs_raw.items()}
    _check_references(jobs, inputs, outputs, ctx)
    name = str(raw.get("display_name") or raw.get("name") or path.stem)
    return AzurePipeline(
        path=path, name=re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or path.stem,
        description=str(raw.get("description") or ""), inputs=inputs, outputs=outputs, jobs=_ordered(jobs, ctx),
        infrastructure=infrastructure, cache=not settings.get("force_rerun", False),
        experiment=raw.get("experiment_name"),
        continue_on_step_failure=settings.get("continue_on_step_failure", False),
    )


def load_pipeline_yaml(path: str | Path, **flow_kwargs: Any) -> Any:
    """Load an Azure ML pipeline YAML as a `@pipeline` Prefect flow (parameters = the YAML's inputs)."""
    return load_pipeline(path).to_flow(**flow_kwargs)


def _compute(value: Any) -> str | None:
    """`azureml:cpu-cluster` -> `cpu-cluster`: the name of an infrastructure block (or process/docker)."""
    return str(value).removeprefix("azureml:") if value else None


def _pipeline_input(name: str, raw: Any, ctx: _Ctx) -> Input:
    keys = ("inputs", name)
    if not IDENTIFIER.match(name):
        raise ctx.error(keys, "is not a plain identifier (it becomes a flow parameter); use letters, digits, '_'.")
    if not isinstance(raw, Mapping):  # a literal: its type from the value
        kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(raw))
        if kind is None:
            raise ctx.error(keys, f"give a literal (text, number, boolean) or a mapping with 'type', got {raw!r}.")
        return Input(type=kind, default=raw)
    spec = dict(raw)
    if spec.get("type") == "mltable" or spec.get("type") in ("uri_file", "uri_folder", "mlflow_model"):
        value = spec.get("path", spec.get("default"))
        if value is not None:
            spec["path" if "path" in spec else "default"] = _data_path(str(value), ctx, keys, spec.get("type"))
    try:
        from prefect_ml.dsl.component import _input_from

        return _input_from(name, spec, str(ctx.path))
    except (ComponentError, TypeError) as exc:
        raise ctx.error(keys, str(exc).split(": key ", 1)[-1]) from None


def _data_path(value: str, ctx: _Ctx, keys: tuple[str, ...], kind: str | None) -> str:
    """A relative path in the YAML is relative to the YAML file (as in Azure); an `mltable` folder
    must hold an MLTable file."""
    if "://" in value or value.startswith(("azureml:", "asset:")):
        return value
    p = (ctx.path.parent / value).resolve()
    if kind == "mltable" and p.is_dir() and not (p / "MLTable").is_file():
        raise ctx.error(keys, f"mltable folder {str(p)!r} has no MLTable file; add one or use type uri_folder.")
    return str(p)


def _pipeline_output(name: str, raw: Any, ctx: _Ctx) -> str:
    keys = ("outputs", name)
    if raw is None:
        return "uri_folder"
    if not isinstance(raw, Mapping):
        raise ctx.error(keys, "must be a mapping such as {type: uri_folder}.")
    if "mode" in raw:
        _output_mode(raw["mode"], ctx, (*keys, "mode"))
    if raw.get("path"):
        raise ctx.error((*keys, "path"), "outputs are published under the artifact root (PREFECT_ML_ARTIFACT_ROOT) "
                        "by cache key; drop 'path', and register the output as a data asset if it needs a fixed name.")
    extra = sorted(set(raw) - {"type", "mode", "path", "description", "name", "version"})
    if extra:
        raise ctx.error((*keys, extra[0]), f"unknown field(s) {extra}.")
    return str(raw.get("type", "uri_folder"))


def _output_mode(mode: Any, ctx: _Ctx, keys: tuple[str, ...]) -> None:
    """An output `mode` is checked like `Output(mode=...)` (e.g. `direct` is refused), then warned about once:
    a step writes local paths, published after it (Azure's upload)."""
    try:
        _check_mode(mode, OUTPUT_MODES, "output")
    except ComponentError as exc:
        raise ctx.error(keys, str(exc)) from None
    warn_once("outputs.mode", ctx.where(*keys), ctx.path)


def _job(name: str, raw: Any, ctx: _Ctx, default_env: Any, parent_inputs: Mapping[str, Input]) -> Job:
    keys = ("jobs", name)
    if not isinstance(raw, Mapping):
        raise ctx.error(keys, "must be a mapping (type: command, component: ...).")
    kind = raw.get("type", "command")
    if kind != "command":
        raise ctx.error((*keys, "type"), f"job type {kind!r} is not supported; only `type: command` jobs run here "
                        "(write a sweep with prefect_ml.dsl.sweep in Python, a sub-pipeline as a Python @pipeline).")
    unknown = sorted(set(raw) - JOB_KEYS)
    if unknown:
        raise ctx.error((*keys, unknown[0]), f"unknown key(s) {unknown}; allowed: {sorted(JOB_KEYS)}.")
    for key in ("services", "identity", "properties"):
        if key in raw:
            warn_once(key, ctx.where(*keys, key), ctx.path)
    both = [k for k in ("command", "code") if k in raw] if "component" in raw else []
    if both:
        raise ctx.error((*keys, both[0]), f"the job names a `component:`, which has its own command and code; "
                        f"move {' and '.join(both)} into the component, or drop `component:` to write an inline "
                        "command job (command, code, environment on the job).")
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise ctx.error((*keys, "resources"), "must be a mapping.")
    for key in sorted(set(resources) - {"instance_count"}):
        if f"resources.{key}" not in NO_MEANING:
            raise ctx.error((*keys, "resources", key), REFUSED_RESOURCES.get(key, REFUSED_RESOURCE) + ".")
        warn_once(f"resources.{key}", ctx.where(*keys, "resources", key), ctx.path)
    component = _job_component(name, raw, ctx, parent_inputs)
    component = _job_distribution(component, raw, resources, ctx, keys)
    env = raw.get("environment") if "component" in raw else None
    if env is None and component.environment is None and default_env is not None:
        env = default_env
    if env is not None:
        try:
            resolved = resolve_environment(env, source=ctx.path, start=component.code, where=f"job '{name}'")
        except ComponentError as exc:
            raise ctx.error((*keys, "environment"), str(exc)) from None
        component = replace(component, environment=resolved)
    variables = raw.get("environment_variables") or {}
    if not isinstance(variables, Mapping):
        raise ctx.error((*keys, "environment_variables"), "must be a mapping of NAME: text.")
    if variables:
        component = replace(component, environment_variables={**component.environment_variables,
                                                              **{str(k): str(v) for k, v in variables.items()}})
    options: dict[str, Any] = {}
    if raw.get("compute"):
        options["infrastructure"] = _compute(raw["compute"])
        dist = component.distribution
        if options["infrastructure"] == "docker" and dist and dist.instance_count > 1:
            raise ctx.error((*keys, "compute"), "Docker infrastructure runs a step in one container, but the job has "
                            f"instance_count {dist.instance_count}; use instance_count 1 or compute 'process'.")
    limits = raw.get("limits") or {}
    if not isinstance(limits, Mapping) or set(limits) - {"timeout"}:
        raise ctx.error((*keys, "limits"), "only `limits.timeout` (seconds) is known here.")
    if "timeout" in limits:
        t = limits["timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise ctx.error((*keys, "limits", "timeout"), f"must be a number of seconds > 0, got {t!r}.")
        options["timeout"] = float(t)
    inputs: dict[str, Any] = {}
    for iname, ivalue in (raw.get("inputs") or {}).items():
        ikeys = (*keys, "inputs", iname)
        if iname not in component.inputs:
            raise ctx.error(ikeys, f"component '{component.name}' has no input '{iname}'; its inputs: "
                            f"{sorted(component.inputs)}.")
        if isinstance(ivalue, Mapping):
            try:
                _check_mode(ivalue.get("mode"), INPUT_MODES, "input")
            except ComponentError as exc:
                raise ctx.error((*ikeys, "mode"), str(exc)) from None
            if "path" in ivalue:
                ivalue = ivalue["path"]
            elif "value" in ivalue:
                ivalue = ivalue["value"]
            else:
                raise ctx.error(ikeys, "give a value, a reference, or a mapping with 'path'.")
        value = _value(ivalue, ctx, ikeys)
        if isinstance(value, str) and component.inputs[iname].is_data:
            value = _data_path(value, ctx, ikeys, None)
        inputs[iname] = value
    outputs: dict[str, str] = {}
    for oname, ovalue in (raw.get("outputs") or {}).items():
        okeys = (*keys, "outputs", oname)
        if oname not in component.outputs:
            raise ctx.error(okeys, f"component '{component.name}' has no output '{oname}'; its outputs: "
                            f"{sorted(component.outputs)}.")
        if isinstance(ovalue, Mapping):
            if "mode" in ovalue:
                _output_mode(ovalue["mode"], ctx, (*okeys, "mode"))
            if ovalue.get("path"):
                raise ctx.error((*okeys, "path"), "outputs are published under the artifact root by cache key; "
                                "drop 'path' (bind it to a pipeline output with ${{parent.outputs.NAME}}).")
            continue
        if ovalue is None:
            continue
        ref = _value(ovalue, ctx, okeys)
        if not isinstance(ref, Ref) or ref.kind != "outputs":
            raise ctx.error(okeys, "a job output binds a pipeline output: write ${{parent.outputs.NAME}}.")
        outputs[oname] = ref.name
    return Job(name=name, component=component, inputs=inputs, outputs=outputs, options=options)


def _job_distribution(component: Component, raw: Mapping[str, Any], resources: Mapping[str, Any], ctx: _Ctx,
                      keys: tuple[str, ...]) -> Component:
    """The job's `distribution` and `resources.instance_count` over the component's (torchrun launch,
    docs/distributed-training.md); a job that gives neither keeps the component's."""
    if "distribution" not in raw and "instance_count" not in resources:
        return component
    current = component.distribution
    spec = raw.get("distribution", current)
    count = resources.get("instance_count", current.instance_count if current else None)
    try:
        dist = distribution_from(spec, None, count)
    except ComponentError as exc:
        at = (*keys, "distribution") if "distribution" in raw else (*keys, "resources", "instance_count")
        raise ctx.error(at, str(exc)) from None
    return replace(component, distribution=dist)


def _job_component(name: str, raw: Mapping[str, Any], ctx: _Ctx, parent_inputs: Mapping[str, Input]) -> Component:
    keys = ("jobs", name, "component")
    spec = raw.get("component")
    try:
        if spec is None:
            if "command" not in raw:
                raise ctx.error(keys, "is missing; give `component: file:./x.yml`, `azureml:NAME`, an inline "
                                "component, or write `command:` on the job.")
            inline = {k: raw[k] for k in ("command", "code", "environment", "inputs", "outputs") if k in raw}
            inline["inputs"] = {k: _inline_input(v, parent_inputs) for k, v in (raw.get("inputs") or {}).items()}
            inline["outputs"] = {k: {"type": "uri_folder"} for k in (raw.get("outputs") or {})}
            inline["name"] = name
            return component_from_mapping(inline, ctx.path, where=f"{ctx.where('jobs', name)} (inline command job)")
        if isinstance(spec, Mapping):
            body = {k: v for k, v in spec.items() if k != "$schema"}
            body.setdefault("name", name)
            return component_from_mapping(body, ctx.path, where=f"{ctx.where(*keys)} (inline component)")
        ref = str(spec)
        if ref.startswith("file:") or ref.endswith((".yml", ".yaml")):
            return load_component(ctx.path.parent / ref.removeprefix("file:"))
        return load_component(find_component(ref, ctx.path.parent))
    except ComponentError as exc:
        text = str(exc)
        raise (exc if text.startswith(str(ctx.path)) else ctx.error(keys, text)) from None


def _inline_input(value: Any, parent_inputs: Mapping[str, Input]) -> Any:
    """The declared type of an input of an inline command job, from the value given to it."""
    if isinstance(value, Mapping):
        return {"type": value.get("type", "uri_folder")}
    if isinstance(value, str):
        m = REF.fullmatch(value.strip())
        if m and m.group(1) == "jobs":
            return {"type": "uri_folder"}
        if m and m.group(1) == "inputs" and m.group(2) in parent_inputs:
            return {"type": parent_inputs[m.group(2)].type}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    return {"type": "string"}


def find_component(ref: str, start: Path) -> Path:
    """`azureml:NAME:VERSION` / `azureml:NAME@latest` / `NAME` -> a component YAML in a components/
    dir (walking up from `start`, then from the current directory): `components/NAME/component.yaml`,
    or any components/**/*.yml whose `name:` is NAME."""
    body = ref.removeprefix("azureml:")
    if body.startswith("//"):
        raise ComponentError(f"component {ref!r}: registry components are not fetched; copy its YAML into "
                             "components/ and write `component: file:./components/.../component.yaml`.")
    name, version = (body.split("@", 1)[0], None) if "@" in body else (body.partition(":")[0], body.partition(":")[2])
    dirs: list[Path] = []
    for origin in (start, Path.cwd()):
        for d in (origin.resolve(), *origin.resolve().parents):
            if (d / "components").is_dir():
                dirs.append(d / "components")
                break
    for d in dict.fromkeys(dirs):
        candidates = [d / name / "component.yaml", d / name / "component.yml",
                      *sorted(d.glob("**/*.yml")), *sorted(d.glob("**/*.yaml"))]
        for c in candidates:
            if c.is_file() and _yaml_name(c) == name:
                if version and _yaml_version(c) != version:
                    raise ComponentError(f"component {ref!r}: {c} is version {_yaml_version(c)!r}, not {version!r}; "
                                         f"write azureml:{name}@latest or fix the version.")
                return c
    raise ComponentError(f"component {ref!r} not found: no component named {name!r} in "
                         f"{[str(d) for d in dirs] or 'any components/ dir'}; write `file:./path/to/component.yml`.")


def _yaml_head(path: Path) -> Mapping[str, Any]:
    try:
        raw = safe_load_yaml(path.read_text())
    except Exception:
        return {}
    return raw if isinstance(raw, Mapping) else {}


def _yaml_name(path: Path) -> str | None:
    raw = _yaml_head(path)
    return str(raw.get("name")) if raw.get("type", "command") == "command" and raw.get("name") else None


def _yaml_version(path: Path) -> str:
    return str(_yaml_head(path).get("version", "1"))


def _check_references(jobs: dict[str, Job], inputs: dict[str, Input], outputs: dict[str, str], ctx: _Ctx) -> None:
    bound: dict[str, str] = {}
    for job in jobs.values():
        for iname, value in job.inputs.items():
            keys = ("jobs", job.name, "inputs", iname)
            for r in _refs(value):
                if r.kind == "inputs" and r.name not in inputs:
                    raise ctx.error(keys, f"${{{{parent.inputs.{r.name}}}}}: the pipeline has no input {r.name!r}; "
                                    f"its inputs: {sorted(inputs)}.")
                if r.kind == "outputs":
                    raise ctx.error(keys, "a job input cannot read a pipeline output; use "
                                    "${{parent.jobs.JOB.outputs.NAME}}.")
                if r.kind == "jobs":
                    if r.name not in jobs:
                        raise ctx.error(keys, f"no job {r.name!r}; jobs: {sorted(jobs)}.")
                    if r.output not in jobs[r.name].component.outputs:
                        raise ctx.error(keys, f"job {r.name!r} has no output {r.output!r}; its outputs: "
                                        f"{sorted(jobs[r.name].component.outputs)}.")
                    if not job.component.inputs[iname].is_data:
                        raise ctx.error(keys, f"input {iname!r} is of type {job.component.inputs[iname].type!r}; "
                                        "only data inputs take a step's output.")
        for oname, target in job.outputs.items():
            keys = ("jobs", job.name, "outputs", oname)
            if target not in outputs:
                raise ctx.error(keys, f"the pipeline has no output {target!r}; declare it under `outputs:`.")
            if target in bound:
                raise ctx.error(keys, f"pipeline output {target!r} is already bound by job {bound[target]!r}.")
            bound[target] = job.name
    for name in outputs:
        if name not in bound:
            raise ctx.error(("outputs", name), "no job binds it; write `outputs: {X: ${{parent.outputs."
                            f"{name}}}}}` on the job that produces it.")


def _ordered(jobs: dict[str, Job], ctx: _Ctx) -> dict[str, Job]:
    """Jobs in an order where each comes after the jobs it reads (a cycle is an error)."""
    done: dict[str, Job] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name):], name]
            raise ctx.error(("jobs", name), f"jobs read each other's outputs in a cycle: {' -> '.join(cycle)}.")
        visiting.append(name)
        for dep in sorted(jobs[name].needs()):
            visit(dep)
        visiting.pop()
        done[name] = jobs[name]

    for name in jobs:
        visit(name)
    return done


# --- the flow -------------------------------------------------------------------------------------------


def _make_function(p: AzurePipeline) -> Any:
    """A plain function whose signature is the pipeline's inputs (what Prefect shows in the Run form)."""
    import inspect

    params = []
    for name, spec in p.inputs.items():
        annotation: Any = TYPE_HINTS.get(spec.type, str)
        if spec.optional and spec.default is None:
            annotation = annotation | None
        default = spec.default if (spec.default is not None or spec.optional) else inspect.Parameter.empty
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

    def body(**values: Any) -> dict[str, Any]:
        return run_jobs(p, values)

    body.__name__ = re.sub(r"\W", "_", p.name)
    body.__qualname__ = body.__name__
    body.__doc__ = (p.description or f"Pipeline {p.name} from {p.path.name}.") + _args_doc(p)
    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__annotations__ = {prm.name: prm.annotation for prm in params}
    return body


def _args_doc(p: AzurePipeline) -> str:
    lines = [f"    {n}: {s.description}" for n, s in p.inputs.items() if s.description]
    return "\n\nArgs:\n" + "\n".join(lines) if lines else ""


def run_jobs(p: AzurePipeline, values: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline body: call each job's component in order; return the bound pipeline outputs."""
    from prefect_ml.dsl import context
    from prefect_ml.dsl.pipeline import PipelineRun

    params = {n: values.get(n, s.default) for n, s in p.inputs.items()}
    missing = [n for n, s in p.inputs.items() if params[n] is None and s.required]
    if missing:
        raise ComponentError(f"pipeline {p.name} ({p.path}): input(s) {missing} are required; pass them "
                             f"(`--set inputs.{missing[0]}=...`, or a parameter).")
    steps: dict[str, Any] = {}
    for job in p.jobs.values():
        kwargs: dict[str, Any] = {}
        for iname, value in job.inputs.items():
            kwargs[iname] = _bind(value, params, steps)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        component = job.component.with_options(**job.options) if job.options else job.component
        run = context.active()
        if isinstance(run, PipelineRun):  # the step (task run) is named after the job, as in Azure ML studio
            steps[job.name] = run.submit(component, kwargs, name=job.name)
        else:
            steps[job.name] = component(**kwargs)
    if p.outputs:
        return {target: steps[job.name].outputs[oname] for job in p.jobs.values()
                for oname, target in job.outputs.items()}
    return {f"{job}.{o}": step.outputs[o] for job, step in steps.items() for o in step.component.outputs}


def _bind(value: Any, params: Mapping[str, Any], steps: Mapping[str, Any]) -> Any:
    if isinstance(value, Ref):
        if value.kind == "inputs":
            return params.get(value.name)
        return steps[value.name].outputs[value.output]
    if isinstance(value, _Template):
        return REF.sub(lambda m: str(params.get(m.group(2), "")), value.text)
    return value
