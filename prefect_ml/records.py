"""Plain records shared by the layers: what a run is, what a step decided, what it produced.

Keyword-only dataclasses with no behaviour beyond small derived properties, so every layer can
use them without importing the code that makes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect_ml.settings import PrefectMLSettings, get_settings

STEP_FINGERPRINT_PREFIX = "step:"


def step_fingerprint(key: str, output: str) -> str:
    """The fingerprint of a step output used as an input: `step:<producer key>/<output>`.

    It chains cache keys through a pipeline without reading the output's bytes.
    """
    return f"{STEP_FINGERPRINT_PREFIX}{key}/{output}"


def is_step_fingerprint(fingerprint: str) -> bool:
    """True when a fingerprint names a step output (see `step_fingerprint`), not external data."""
    return fingerprint.startswith(STEP_FINGERPRINT_PREFIX)


def parse_step_fingerprint(fingerprint: str) -> tuple[str, str] | None:
    """`(key, output)` of a step-output fingerprint, or None for any other fingerprint."""
    if not is_step_fingerprint(fingerprint):
        return None
    key, _, output = fingerprint[len(STEP_FINGERPRINT_PREFIX):].partition("/")
    return (key, output) if key and output else None


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What a step needs to know about the pipeline run it belongs to (resolved once per run)."""

    pipeline: str
    flow_run_id: str | None
    artifact_root: str
    experiment: str
    mlflow_run_id: str | None = None
    infrastructure: str | None = None
    cache: bool = True
    settings: PrefectMLSettings = field(default_factory=get_settings)


@dataclass(frozen=True, kw_only=True)
class PublishedStep:
    """A complete set of outputs under the artifact root: the key, its attempt and output URIs."""

    key: str
    attempt: str
    outputs: dict[str, str]  # output name -> URI


@dataclass(kw_only=True)
class StepResult:
    """What a finished step returns (also the value a `Cached` state carries)."""

    step: str
    key: str
    outputs: dict[str, str]
    cached: bool
    mlflow_run_id: str | None
    inputs: dict[str, str] = field(default_factory=dict)  # data input name -> URI
    fingerprints: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    infrastructure: str = ""


@dataclass(kw_only=True)
class Decision:
    """What a step will do: its cache key, the parts it was made of, and reuse or run (and why)."""

    key: str
    parts: dict[str, Any]
    values: dict[str, str | None]  # primitive inputs as command-line text (None: unset)
    raw_values: dict[str, Any]  # primitive inputs as typed values
    data: dict[str, str]  # data input name -> URI
    fingerprints: dict[str, str]  # data input name -> fingerprint
    published: PublishedStep | None
    reason: str

    @property
    def reuse(self) -> bool:
        return self.published is not None
