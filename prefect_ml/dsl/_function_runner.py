"""The runner of a function component's step: stdlib only, passed as `python -c <this source>`.

It runs wherever the step runs (a local process, a container whose image has only what the
environment lists), so it imports nothing from prefect_ml. Usage (argv after `-c`):

    MODULE QUALNAME SOURCE_SHA256 [--KIND:NAME VALUE ...]

KIND is `str`, `int`, `float`, `bool`, `path` (a data input), `out` (an output path) or `metrics`
(where the returned dict goes). Values arrive as arguments, never inside this script (no shell).
The working directory is the component's code dir; the function's module is imported from it,
with `prefect_ml` (and its submodules) replaced by a stand-in whose names are no-op decorators, so
`from prefect_ml import component, Input, Output` works in an image without prefect-ml.
"""
import hashlib
import importlib
import importlib.abc
import importlib.util
import inspect
import json
import math
import os
import sys
import types


class _Any:
    """Stands in for every prefect_ml name: a decorator returns the function it decorates."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return _Any()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any()

    def __getitem__(self, key):
        return _Any()


class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "prefect_ml" or name.startswith("prefect_ml."):
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)

        def attr(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Any()

        module.__getattr__ = attr  # type: ignore[method-assign]
        return module

    def exec_module(self, module):
        pass


def _fail(message):
    print("prefect-ml function runner: " + message, file=sys.stderr)
    sys.exit(2)


def _convert(kind, text):
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        return text == "True"
    return text


def main(argv):
    module_name, qualname, digest = argv[0], argv[1], argv[2]
    rest = argv[3:]
    kwargs = {}
    metrics_path = None
    for i in range(0, len(rest), 2):
        kind, _, name = rest[i].lstrip("-").partition(":")
        if kind == "metrics":
            metrics_path = rest[i + 1]
        else:
            kwargs[name] = _convert(kind, rest[i + 1])
    sys.meta_path.insert(0, _StandIn())
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    fn = module
    for part in qualname.split("."):
        fn = getattr(fn, part)
    fn = getattr(fn, "func", fn)
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = None
    if source is not None and hashlib.sha256(source.encode()).hexdigest()[:16] != digest:
        _fail(f"the source of {module_name}.{qualname} in the code dir differs from the one the step was keyed "
              "with; run the pipeline again from the current code.")
    result = fn(**kwargs)  # type: ignore[operator]
    if metrics_path is None:
        if result is not None:
            print(f"prefect-ml function runner: return value of {qualname} ignored (annotate the return as "
                  "-> dict to make a dict of numbers its metrics output)")
        return
    if not isinstance(result, dict):
        _fail(f"{qualname} must return a dict of metric name -> number (its return is annotated dict), "
              f"got {type(result).__name__}")
    metrics = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(f"{qualname} returned metric {key!r} = {value!r}; metrics must be finite numbers")
        metrics[str(key)] = float(value)
    with open(metrics_path, "w") as f:
        json.dump(metrics, f)


if __name__ == "__main__":
    main(sys.argv[1:])
