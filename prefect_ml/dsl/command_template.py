"""Azure ML-style command templates: `${{inputs.x}}`, `${{outputs.y}}` and optional `$[[ ... ]]` fragments.

A template is split into arguments *before* values are substituted, so a value always reaches
the program as one literal argument: no shell ever sees it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.([^\s}]*)\s*\}\}")
FRAGMENT = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<", "&", "2>", "2>&1", "1>&2"}


@dataclass(frozen=True)
class Placeholder:
    kind: str  # "inputs" or "outputs"
    name: str
    optional_fragment: bool


def placeholders(template: str) -> list[Placeholder]:
    """Every placeholder in `template`, marked with whether it sits inside a `$[[ ]]` fragment."""
    found: list[Placeholder] = []
    inside = set()
    for fragment in FRAGMENT.finditer(template):
        for m in PLACEHOLDER.finditer(fragment.group(1)):
            inside.add((m.group(1), m.group(2)))
            found.append(Placeholder(m.group(1), m.group(2), True))
    outside = FRAGMENT.sub(" ", template)
    for m in PLACEHOLDER.finditer(outside):
        found.append(Placeholder(m.group(1), m.group(2), False))
    return found


def shell_operators(template: str) -> list[str]:
    """Shell operators that appear as separate words (they would be passed literally, not interpreted)."""
    try:
        words = shlex.split(FRAGMENT.sub(lambda m: m.group(1), template))
    except ValueError:
        return []
    return [w for w in words if w in SHELL_OPERATORS]


SHELLS = {"sh", "bash", "dash", "zsh", "ksh"}
SAFE_SHELL_FORM = "bash -c 'echo \"$1\" | wc -c' _ ${{inputs.x}}"


def placeholders_in_shell_scripts(template: str) -> list[str]:
    """Placeholders written inside the script string of `sh -c`/`bash -c` (after substitution the
    shell would parse the value as code: shell injection). Pass them as arguments instead."""
    try:
        words = shlex.split(FRAGMENT.sub(lambda m: m.group(1), template))
    except ValueError:
        return []
    found = []
    for i, word in enumerate(words[:-1]):
        program = words[i - 1].rsplit("/", 1)[-1] if i else ""
        is_c_flag = word.startswith("-") and not word.startswith("--") and "c" in word[1:]
        if program in SHELLS and is_c_flag:
            found += [m.group(0) for m in PLACEHOLDER.finditer(words[i + 1])]
    return found


def check_syntax(template: str) -> str | None:
    """Return a description of a syntax problem, or None."""
    if template.count("$[[") != template.count("]]"):
        return "unbalanced optional fragment: each '$[[' needs a closing ']]'"
    try:
        shlex.split(FRAGMENT.sub(lambda m: m.group(1), template))
    except ValueError as exc:
        return f"cannot split the command into arguments ({exc}); check its quotes"
    leftover = PLACEHOLDER.sub("", template)
    if "${{" in leftover:
        return "a '${{' that is not a placeholder of the form ${{inputs.NAME}} or ${{outputs.NAME}}"
    return None


# `$NAME` / `${NAME}` (never `${{...}}`): expanded from the step's environment, as Azure's shell would
ENV_VAR = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")


def expand_env(word: str, env: Mapping[str, str]) -> str:
    """`word` with `$NAME`/`${NAME}` replaced by their values in `env`; unknown names stay literal
    (so a `bash -c` script still sees its own `$HOME`)."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return env.get(name, m.group(0))

    return ENV_VAR.sub(value, word)


def render(template: str, inputs: Mapping[str, str | None], outputs: Mapping[str, str],
           env: Mapping[str, str] | None = None) -> list[str]:
    """Render `template` into an argv list.

    `inputs` maps every input name to its text form (None when unset); `outputs` maps every
    output name to its path. A fragment whose inputs are not all set is dropped whole. With `env`,
    `$NAME`/`${NAME}` in the template are expanded from it first (by us: there is no shell), so
    a value substituted afterwards is never expanded.
    """

    def keep_fragment(m: re.Match) -> str:
        names = [p.group(2) for p in PLACEHOLDER.finditer(m.group(1)) if p.group(1) == "inputs"]
        return m.group(1) if all(inputs.get(n) is not None for n in names) else " "

    expanded = FRAGMENT.sub(keep_fragment, template)

    def value(m: re.Match) -> str:
        kind, name = m.group(1), m.group(2)
        v = inputs.get(name) if kind == "inputs" else outputs.get(name)
        if v is None:
            raise KeyError(f"{kind}.{name}")
        return v

    words = shlex.split(expanded)
    if env is not None:
        words = [expand_env(word, env) for word in words]
    return [PLACEHOLDER.sub(value, word) for word in words]
