"""Search-space expressions for `sweep(...)`, in Azure ML's sweep vocabulary.

    from prefect_ml.search import choice, loguniform, randint, uniform

    search_space = {"learning_rate": loguniform(1e-3, 0.3), "n_estimators": choice([50, 100, 200]),
                    "subsample": uniform(0.5, 1.0), "max_depth": randint(2, 8)}

Differences from Azure, on purpose: `loguniform(low, high)` takes the bounds themselves (as Optuna
and scikit-learn do), not their logarithms; `randint(low, high)` includes both ends, and
`randint(upper)` means 0 .. upper - 1 as in Azure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from prefect_ml.errors import PrefectMLError


class SearchSpaceError(PrefectMLError, ValueError):
    """A search expression is malformed (empty choice, low >= high, ...)."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SearchSpaceError(f"{what} must be a finite number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class Choice:
    """One of the listed values (grid sampling enumerates them)."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise SearchSpaceError("choice([...]) needs at least one value.")
        for v in self.values:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise SearchSpaceError(f"choice values must be str, int, float or bool, got {v!r}.")

    @property
    def grid(self) -> list[Any]:
        return list(self.values)


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        name = "loguniform" if self.log else "uniform"
        low, high = _number(self.low, f"{name} low"), _number(self.high, f"{name} high")
        if low >= high:
            raise SearchSpaceError(f"{name}({self.low!r}, {self.high!r}): low must be below high.")
        if self.log and low <= 0:
            raise SearchSpaceError(f"loguniform({self.low!r}, {self.high!r}): bounds must be > 0.")

    @property
    def grid(self) -> None:
        return None


@dataclass(frozen=True)
class RandInt:
    """An integer drawn uniformly from low .. high (both included)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for v in (self.low, self.high):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SearchSpaceError(f"randint bounds must be integers, got {v!r}.")
        if self.low > self.high:
            raise SearchSpaceError(f"randint({self.low}, {self.high}): low must not exceed high.")

    @property
    def grid(self) -> list[int]:
        return list(range(self.low, self.high + 1))


SearchExpression = Choice | Uniform | RandInt


def choice(values: Any, *more: Any) -> Choice:
    """`choice([50, 100, 200])` (or `choice(50, 100, 200)`): one of the values."""
    if more or not isinstance(values, (list, tuple, range)):
        values = (values, *more)
    return Choice(tuple(values))


def uniform(low: float, high: float) -> Uniform:
    """A float uniformly between `low` and `high`."""
    return Uniform(low, high)


def loguniform(low: float, high: float) -> Uniform:
    """A float between `low` and `high` (both > 0) whose logarithm is uniform: for learning rates."""
    return Uniform(low, high, log=True)


def randint(low: int, high: int | None = None) -> RandInt:
    """`randint(2, 8)`: an integer 2..8 (both included); `randint(8)`: 0..7 (Azure's form)."""
    if high is None:
        if isinstance(low, bool) or not isinstance(low, int) or low < 1:
            raise SearchSpaceError(f"randint(upper): upper must be an integer >= 1, got {low!r}.")
        return RandInt(0, low - 1)
    return RandInt(low, high)


@dataclass(frozen=True)
class MedianStopping:
    """Early termination at the trial level: after `delay_evaluation` finished trials, stop starting new
    trials once the last `patience` finished trials all scored worse than the median of every finished
    trial (the search has stopped finding above-median settings). Trials report only final metrics, so
    running trials are never cut short (Azure's policy also stops running jobs from their interim metrics).
    """

    delay_evaluation: int = 5
    patience: int = 3

    def __post_init__(self) -> None:
        for name in ("delay_evaluation", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SearchSpaceError(f"median_stopping({name}=...) must be an integer >= 1, got {v!r}.")

    def should_stop(self, values: list[float], maximize: bool) -> bool:
        """`values`: objectives of finished trials in finishing order."""
        if len(values) < max(self.delay_evaluation, self.patience + 1):
            return False
        ordered = sorted(values)
        n = len(ordered)
        median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        recent = values[-self.patience:]
        return all((v < median) if maximize else (v > median) for v in recent)


def median_stopping(delay_evaluation: int = 5, patience: int = 3) -> MedianStopping:
    """The `early_termination=` policy of `sweep(...)`; see `MedianStopping`."""
    return MedianStopping(delay_evaluation, patience)


__all__ = [
    "Choice",
    "MedianStopping",
    "RandInt",
    "SearchExpression",
    "SearchSpaceError",
    "Uniform",
    "choice",
    "loguniform",
    "median_stopping",
    "randint",
    "uniform",
]
