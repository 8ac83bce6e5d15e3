"""Pipelines and flows the benchmarks run (prefect-ml side; imports Prefect and prefect-ml).

Kept apart from `_common` so peer workers (KFP, ZenML venvs) never import Prefect.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from prefect_ml import Input, Output, command, pipeline

TRIVIAL = [sys.executable, "-c", "pass"]


def code_dir(work: Path) -> Path:
    d = work / "code"
    d.mkdir(parents=True, exist_ok=True)
    return d


def noop_component(work: Path, *, name: str = "noop", infrastructure: Optional[str] = None, program: str = "python"):
    """A chained trivial step: `python -c pass`, taking the previous step's (empty) output folder."""
    return command(
        name=name,
        code=code_dir(work),
        command=f"{program} -c pass ${{{{outputs.out}}}} $[[ ${{{{inputs.prev}}}} ]]",
        inputs={"prev": Input(type="uri_folder", optional=True)},
        outputs={"out": Output(type="uri_folder")},
        infrastructure=infrastructure,
    )


def chain_pipeline(component, *, name: str = "chain", infrastructure: Optional[str] = None, cache: bool = False):
    """A pipeline of `n` chained calls of `component` (each consumes the previous one's output)."""

    @pipeline(name=name, cache=cache, infrastructure=infrastructure)
    def chain(n: int = 1):
        prev = None
        for _ in range(n):
            step = component(prev=prev) if prev is not None else component()
            prev = step.outputs.out
        return {"last": prev}

    return chain


def fanout_pipeline(component, *, name: str = "fanout", cache: bool = False):
    """A pipeline of `n` independent calls of `component` (which takes an integer input `i`)."""

    @pipeline(name=name, cache=cache)
    def fanout(n: int = 8):
        steps = [component(i=i) for i in range(n)]
        return {"outputs": [s.outputs.out for s in steps]}

    return fanout


@task(cache_policy=NO_CACHE, persist_result=False)
def bare_step(argv: list, prev: Optional[int] = None) -> int:
    """A bare Prefect task running the same subprocess."""
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return (prev or 0) + 1


@flow(name="bare-chain")
def bare_chain(n: int = 1, argv: Optional[list] = None) -> int:
    """The baseline: `n` chained Prefect tasks, each running the same subprocess."""
    argv = argv or TRIVIAL
    future = None
    for _ in range(n):
        future = bare_step.submit(argv, future)
    return future.result()


@flow(name="bare-fanout")
def bare_fanout(n: int = 8, argv: Optional[list] = None) -> list:
    """The baseline: `n` independent Prefect tasks, each running the same subprocess."""
    argv = argv or TRIVIAL
    futures = [bare_step.submit(argv, i) for i in range(n)]
    return [f.result() for f in futures]


def subprocess_seconds(argv: list = None, n: int = 5) -> float:
    """Median wall time of the bare subprocess itself."""
    argv = argv or TRIVIAL
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
