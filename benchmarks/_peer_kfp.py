"""Peer worker: Kubeflow Pipelines' local SubprocessRunner on a chain of trivial steps.

Runs in benchmarks/.venvs/kfp (made by `bench_orchestration.py --setup-peers`). No
`from __future__ import annotations` here: KFP reads the real annotation types.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from kfp import dsl, local  # noqa: E402


@dsl.component(install_kfp_package=False)  # no per-step `pip install kfp` (0.5 s/step otherwise)
def noop(prev: int) -> int:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return prev + 1


def make(n: int):
    @dsl.pipeline(name=f"chain-{n}")
    def chain() -> int:
        t = noop(prev=0)
        t.set_caching_options(False)
        for _ in range(n - 1):
            t = noop(prev=t.output)
            t.set_caching_options(False)
        return t.output

    return chain


_pipelines = {}


def start(work: str):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(work) / "kfp-root"))
    _pipelines[1] = make(1)
    _pipelines[1]()
    return {}


def run(kind: str, n: int):
    if n not in _pipelines:
        _pipelines[n] = make(n)
    t0 = time.perf_counter()
    _pipelines[n]()
    return {"seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    c.serve({"start": start, "run": run})
