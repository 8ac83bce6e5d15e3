"""Peer worker: ZenML's local orchestrator on a chain of trivial steps.

Runs in benchmarks/.venvs/zenml. ZenML resolves steps by source file relative to its source
root (where `zenml init` ran), so the driver copies this file into a scratch repo and runs it
there.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.environ.get("PREFECT_ML_BENCH_DIR", str(Path(__file__).resolve().parent)))

import _common as c  # noqa: E402
from zenml import pipeline, step  # noqa: E402


@step(enable_cache=False)
def noop(prev: int) -> int:
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return prev + 1


@pipeline(enable_cache=False)
def chain(n: int = 1):
    t = noop(prev=0)
    for _ in range(n - 1):
        t = noop(prev=t)



def start(work: str):
    here = Path(__file__).resolve().parent
    zenml = str(Path(sys.executable).parent / "zenml")
    if not (here / ".zen").exists():
        subprocess.run([zenml, "init"], check=True, cwd=here, stdout=sys.stderr, stderr=sys.stderr)
    chain(n=1)
    return {}


def run(kind: str, n: int):
    t0 = time.perf_counter()
    chain(n=n)
    return {"seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    c.serve({"start": start, "run": run})
