"""Function components: `@component` turns a typed Python function into a `Component`.

The result is an ordinary command component (same validation, same cache key, same step
contract), whose command runs a small stdlib-only runner with `python -c`: the runner imports
the function's module from the code dir (the step's working directory) and calls the function
with the step's values and paths. So it runs on every infrastructure, and a container image
needs nothing beyond what the component's environment lists.

    from typing import Annotated
    from prefect_ml import Input, Output, component

    @component(environment="sklearn-cpu")
    def train(train_data: Input("uri_folder"), model: Output("mlflow_model"),
              learning_rate: Annotated[float, Input(min=1e-4, max=1.0)] = 0.1,
              n_estimators: int = 100) -> dict:
        ...                                   # train_data is a local path; write the model to `model`
        return {"train_accuracy": 0.93}       # becomes the `metrics` output

Parameters map to inputs and outputs:

| annotation | component spec |
|---|---|
| `str`, `int`, `float`, `bool` (optionally `X | None`) | `string`, `integer`, `number`, `boolean` input |
| `Annotated[float, Input(min=..., max=..., enum=...)]` | the same, with bounds |
| `Input("uri_folder")` / `Input(type="uri_file", optional=True)` | a data input: the function gets a local path (str) |
| `Output("mlflow_model")` | an output: the function gets a local path (str) to write |
| return `-> dict` (or `dict[str, float]`, `Mapping`) | a `metrics` output named `metrics` |

A default (`= 0.1`) becomes the input's default; `= None` makes the input optional. A return that
is not annotated as a dict is ignored (the runner prints a note when it is not None).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import shlex
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect_ml.dsl.component import CALL_OPTIONS, INPUT_TYPES, OUTPUT_TYPES, Component, Input, Output
from prefect_ml.errors import ComponentError

PY_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
RUNNER_KINDS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}
METRICS_OUTPUT = "metrics"


def runner_source() -> str:
    """The runner's code as passed to `python -c` (docstrings and comments dropped: it is logged with the command)."""
    import ast

    tree = ast.parse(Path(__file__).with_name("_function_runner.py").read_text())
    for node in ast.walk(tree):  # docstrings go: the source is logged with every step's command
        body_ = getattr(node, "body", None)
        if isinstance(body_, list) and body_ and isinstance(body_[0], ast.Expr) \
                and isinstance(body_[0].value, ast.Constant) and isinstance(body_[0].value.value, str):
            body_.pop(0)
            if not body_:
                body_.append(ast.Pass())
    lines = []
    for line in ast.unparse(tree).splitlines():  # unparse indents by 4 and writes strings on one line
        if line.strip():
            stripped = line.lstrip(" ")
            lines.append(" " * ((len(line) - len(stripped)) // 4) + stripped)
    body = "\n".join(lines)
    # the command template would read these as placeholders or fragments
    assert "${{" not in body and "$[[" not in body and "]]" not in body, "runner source must stay template-safe"
    return body


@dataclass(frozen=True)
class FunctionComponent(Component):
    """A `Component` made from a Python function by `@component`; `func` is the plain function."""

    func: Callable[..., Any] | None = None
    module: str = ""  # dotted module name, importable from the code dir

    def __repr__(self) -> str:
        return f"FunctionComponent({self.name!r}, {self.module}:{getattr(self.func, '__qualname__', '?')})"


def _source_digest(fn: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


def _module_and_code(fn: Callable[..., Any], code: str | Path | None, where: str) -> tuple[str, Path]:
    """The module name to import and the dir it is importable from (the component's code dir)."""
    try:
        file = Path(inspect.getsourcefile(fn) or "").resolve()
    except TypeError:
        file = Path()
    if not file.is_file() or file.suffix != ".py":
        raise ComponentError(f"{where}: its source file cannot be found; define the function in a .py module "
                             "(not in a notebook cell or the interactive prompt).")
    if code is not None:
        root = Path(code).expanduser().resolve()
        if not file.is_relative_to(root):
            raise ComponentError(f"{where}: its module {str(file)!r} is not inside code dir {str(root)!r}; "
                                 "the step imports the module from the code dir.")
    else:
        module_name = fn.__module__
        depth = 0 if module_name == "__main__" or module_name.startswith("_prefect_ml_fn_") else module_name.count(".")
        if file.name == "__init__.py":
            depth += 1
        root = file.parent
        for _ in range(depth):
            root = root.parent
    rel = file.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    if not parts or not all(p.isidentifier() for p in parts):
        raise ComponentError(f"{where}: {str(file.relative_to(root))!r} is not importable as a module from "
                             f"{str(root)!r}; use a file name that is a Python identifier.")
    return ".".join(parts), root


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(ann)) == 2:
            return args[0], True
    return ann, False


def _describe(ann: Any) -> str:
    return getattr(ann, "__name__", None) or repr(ann)


def _param_spec(p: inspect.Parameter, ann: Any, where: str) -> Input | Output:
    """The input or output spec of one parameter, from its annotation and default."""
    key = f"{where}: parameter '{p.name}'"
    usage = ("annotate it as str, int, float or bool (optionally Annotated[float, Input(min=..., max=...)]), "
             "Input('uri_folder') for data, or Output('mlflow_model') for an output")
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
        raise ComponentError(f"{key}: *args, **kwargs and positional-only parameters cannot be component inputs; "
                             "declare each input as a named parameter.")
    if ann is inspect.Parameter.empty:
        raise ComponentError(f"{key} has no type annotation; {usage}.")
    meta: list[Any] = []
    if typing.get_origin(ann) is typing.Annotated:
        ann, *meta = typing.get_args(ann)
    ann, optional = _unwrap_optional(ann)
    has_default = p.default is not inspect.Parameter.empty
    default = p.default if has_default else None
    if ann is Output or ann is Input:
        types_ = OUTPUT_TYPES if ann is Output else INPUT_TYPES
        raise ComponentError(f"{key}: {ann.__name__} without a type; write {ann.__name__}('uri_folder') (or another "
                             f"type: {', '.join(types_)}).")
    if isinstance(ann, Output):
        if has_default:
            raise ComponentError(f"{key}: an output takes no default (the step passes it a path to write).")
        return ann
    specs = [m for m in meta if isinstance(m, Input)]
    if isinstance(default, Input):
        specs.append(default)
        default = default.default
    if isinstance(ann, Input):
        spec = ann
    elif isinstance(ann, type) and ann in PY_TYPES:
        spec = Input(type=PY_TYPES[ann])
    else:
        raise ComponentError(f"{key}: unsupported annotation {_describe(ann)}; {usage}.")
    for extra in specs:
        if extra.type and extra.type != spec.type:
            raise ComponentError(f"{key}: annotation says '{spec.type}' but Input(...) says '{extra.type}'; "
                                 "make them agree (or leave the Input's type out).")
        spec = replace(extra, type=spec.type, default=extra.default if extra.default is not None else spec.default)
    if default is not None:
        if spec.default is not None and spec.default != default:
            raise ComponentError(f"{key}: two defaults ({spec.default!r} in Input(...) and {default!r}); keep one.")
        spec = replace(spec, default=default)
    if (has_default and p.default is None) or optional:
        spec = replace(spec, optional=True)
    return spec


def _returns_metrics(ann: Any, where: str) -> bool:
    if ann is inspect.Signature.empty or ann is None or ann is type(None):
        return False
    ann, _ = _unwrap_optional(ann)
    origin = typing.get_origin(ann) or ann
    if origin in (dict, Mapping, typing.Dict) or (isinstance(origin, type) and issubclass(origin, Mapping)):  # noqa: UP006
        return True
    raise ComponentError(f"{where}: return annotation {_describe(ann)} is not supported; return a dict of "
                         "metric name -> number (annotate -> dict) or nothing (-> None); write files to Output "
                         "parameters.")


def _command(module: str, qualname: str, digest: str, inputs: Mapping[str, Input],
             outputs: Mapping[str, Output], metrics: bool) -> str:
    words = ["python3", "-c", shlex.quote(runner_source()), shlex.quote(module), shlex.quote(qualname), digest]
    for name, spec in inputs.items():
        kind = "path" if spec.is_data else RUNNER_KINDS.get(spec.type, "str")
        words.append(f"$[[--{kind}:{name} ${{{{inputs.{name}}}}}]]")
    for name in outputs:
        kind = "metrics" if metrics and name == METRICS_OUTPUT else "out"
        words.append(f"--{kind}:{name} ${{{{outputs.{name}}}}}")
    return " ".join(words)


def function_component(fn: Callable[..., Any], *, name: str | None = None, environment: str | None = None,
                       code: str | Path | None = None, version: str = "1", display_name: str | None = None,
                       description: str | None = None, tags: Mapping[str, str] | None = None,
                       environment_variables: Mapping[str, str] | None = None, infrastructure: str | None = None,
                       cache: bool = True, retries: int = 0, timeout: float | None = None) -> FunctionComponent:
    """Build the `FunctionComponent` for `fn` (what `@component` does)."""
    comp_name = str(name or getattr(fn, "__name__", ""))
    try:
        src_file = inspect.getsourcefile(fn)
    except TypeError:
        src_file = None
    where = f"component '{comp_name}'" + (f" ({src_file})" if src_file else "")
    if not inspect.isfunction(fn):
        raise ComponentError(f"{where}: @component decorates a function, got {type(fn).__name__}.")
    if "<locals>" in fn.__qualname__ or "<lambda>" in fn.__qualname__:
        raise ComponentError(f"{where}: define the function at the top level of a module (the step imports it by "
                             f"name), not inside another function: {fn.__qualname__}.")
    module, code_dir = _module_and_code(fn, code, where)
    try:
        annotations = inspect.get_annotations(fn, eval_str=True)
    except Exception as exc:
        raise ComponentError(f"{where}: its annotations cannot be evaluated ({type(exc).__name__}: {exc}).") from None
    sig = inspect.signature(fn)
    inputs: dict[str, Input] = {}
    outputs: dict[str, Output] = {}
    for p in sig.parameters.values():
        if p.name in CALL_OPTIONS:
            raise ComponentError(f"{where}: key 'inputs.{p.name}': '{p.name}' is reserved for call options "
                                 f"{list(CALL_OPTIONS)}; rename the parameter.")
        spec = _param_spec(p, annotations.get(p.name, inspect.Parameter.empty), where)
        if isinstance(spec, Output):
            outputs[p.name] = spec
        else:
            inputs[p.name] = spec
    metrics = _returns_metrics(annotations.get("return", inspect.Signature.empty), where)
    if metrics:
        if METRICS_OUTPUT in outputs or METRICS_OUTPUT in inputs:
            raise ComponentError(f"{where}: the returned dict becomes the output '{METRICS_OUTPUT}', which a "
                                 "parameter already uses; rename the parameter.")
        outputs[METRICS_OUTPUT] = Output(type="metrics", description="the function's returned dict")
    try:
        digest = _source_digest(fn)
    except OSError as exc:
        raise ComponentError(f"{where}: its source cannot be read ({exc}).") from None
    return FunctionComponent(
        name=comp_name,
        command=_command(module, fn.__qualname__, digest, inputs, outputs, metrics),
        code=code_dir,
        inputs=inputs,
        outputs=outputs,
        version=str(version),
        display_name=display_name,
        description=description if description is not None else (inspect.getdoc(fn) or ""),
        tags=dict(tags or {}),
        environment=environment,
        environment_variables=dict(environment_variables or {}),
        infrastructure=infrastructure,
        cache=cache,
        retries=retries,
        timeout=timeout,
        source=Path(src_file) if src_file else None,
        func=fn,
        module=module,
    )


@typing.overload
def component(fn: Callable[..., Any], /) -> FunctionComponent: ...


@typing.overload
def component(*, name: str | None = None, environment: str | None = None, code: str | Path | None = None,
              version: str = "1", display_name: str | None = None, description: str | None = None,
              tags: Mapping[str, str] | None = None, environment_variables: Mapping[str, str] | None = None,
              infrastructure: str | None = None, cache: bool = True, retries: int = 0,
              timeout: float | None = None) -> Callable[[Callable[..., Any]], FunctionComponent]: ...


def component(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Turn a typed function into a component (like Azure's `@command_component`, KFP's `@dsl.component`).

    Args:
        name: component name (default: the function's name).
        environment: the environment its step runs in (`environments/<name>/`), as for YAML components.
        code: the code dir (default: the dir the function's module is importable from, i.e. the module's
            folder, or for a package module the folder holding the top package). It is the step's working
            directory, mounted read-only in a container, and part of the cache key.
        version, display_name, description, tags, environment_variables, infrastructure, cache, retries,
            timeout: as for `command(...)`.

    Example:
        @component(environment="sklearn-cpu")
        def train(train_data: Input("uri_folder"), model: Output("mlflow_model"), learning_rate: float = 0.1) -> dict:
            ...
            return {"train_accuracy": acc}
    """
    if fn is not None:
        return function_component(fn, **options)
    return lambda f: function_component(f, **options)


def load_function_component(ref: str | Path) -> FunctionComponent:
    """Load a function component from `path/to/module.py:function_name` (like `load_component` for YAML).

    The module is imported from its file (its folder is the code dir); the function may be decorated with
    `@component(...)` (its options are kept) or be a plain typed function.
    """
    text = str(ref)
    path_text, sep, func_name = text.rpartition(":")
    if not sep or not path_text.endswith(".py") or not func_name:
        raise ComponentError(f"load_function_component: {text!r} must be 'path/to/module.py:function_name'.")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ComponentError(f"component file {str(path)!r} does not exist; check the path.")
    module_name = "_prefect_ml_fn_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    obj = getattr(module, func_name, None)
    if obj is None:
        raise ComponentError(f"{path}: no function {func_name!r}; defined names: "
                             f"{sorted(n for n in vars(module) if not n.startswith('_'))}.")
    if isinstance(obj, FunctionComponent):
        return obj
    return function_component(obj)
