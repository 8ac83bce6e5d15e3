"""The package's import graph: no cycles, and every import points down the documented layer order.

Function-level imports count too (a lazy import is still a dependency). The layer order is the
one in the README's "Layout" section; change both together.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "prefect_ml"

# bottom to top: a module may import modules of its own layer or of layers listed before it
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["prefect_ml._util", "prefect_ml._compat", "prefect_ml.errors", "prefect_ml.settings",
                    "prefect_ml.records"]),
    ("spec", ["prefect_ml.dsl", "prefect_ml.dsl.command_template", "prefect_ml.dsl.step", "prefect_ml.dsl.context",
              "prefect_ml.dsl.component", "prefect_ml.dsl.function", "prefect_ml.dsl._function_runner",
              "prefect_ml.search"]),
    ("storage", ["prefect_ml.storage", "prefect_ml.storage.*"]),
    ("data", ["prefect_ml.assets", "prefect_ml.asset_registry", "prefect_ml.samples"]),
    ("environments", ["prefect_ml.environments", "prefect_ml.environments.*"]),
    ("infrastructure", ["prefect_ml.infrastructure", "prefect_ml.infrastructure.*"]),
    ("runtime", ["prefect_ml.runtime", "prefect_ml.runtime.*"]),
    ("pipelines", ["prefect_ml.dsl.pipeline", "prefect_ml.dsl.gate", "prefect_ml.dsl.model", "prefect_ml.dsl.sweep",
                   "prefect_ml.dsl.fail", "prefect_ml.dsl.azure_pipeline"]),
    ("entry points", ["prefect_ml", "prefect_ml.blocks", "prefect_ml.cli", "prefect_ml.cli.*"]),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in candidates if t in mods and t != name and not name.startswith(t + ".")}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    # `import prefect_ml.x` names the package too; the package's own lazy exports are not a dependency
    return {m: _imports(m, f, mods) - {"prefect_ml"} for m, f in mods.items()}


def _layer(module: str) -> int:
    matches = [i for i, (_, patterns) in enumerate(LAYERS) for p in patterns if fnmatch.fnmatchcase(module, p)]
    assert matches, f"module {module} is in no layer: add it to LAYERS (and the README's layout)"
    return max(matches)  # the most specific pattern is listed in the highest layer that names it


def test_every_module_has_a_layer():
    for module in _graph():
        _layer(module)


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            if _layer(target) > _layer(module):
                wrong.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
