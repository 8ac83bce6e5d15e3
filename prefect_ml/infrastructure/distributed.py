"""Distributed training inside one step: PyTorch's own launcher, M instances x N processes.

A component with `distribution: {type: pytorch, process_count_per_instance: N}` and
`resources: {instance_count: M}` (see `prefect_ml.dsl.component.Distribution`) runs as M launcher
instances, `<python> -m torch.distributed.run` (torchrun) from the step's interpreter, each starting N
worker processes. On the process infrastructure the M instances are M process groups on this machine
that rendezvous over 127.0.0.1 (torchrun's static rendezvous on a free port), so the ranks see what
Azure ML sets on a cluster: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK (torchrun) and
NODE_RANK (set here, inherited by the workers).

Rules (docs/distributed-training.md):
- the ranks share one machine, so only instance 0 writes into the step's output paths; instances > 0
  get scratch dirs in their place (deleted after the step). A component writes outputs on RANK 0 only,
  as on Azure, and only what instance 0 wrote is published;
- one instance exiting non-zero fails the step and stops every other instance's process group
  (torchrun stops its own workers when one fails; the others would wait in a collective forever).

Torch is never imported here: the launcher runs in the step's interpreter, which has torch or fails
with a message that says so. This module knows nothing about how a process is started: the
infrastructure hands it a `start` function (process.py: own process group, parent-death signal,
watchdog).
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prefect_ml.errors import InfrastructureError
from prefect_ml.infrastructure.base import LineTail, StepOutcome

if TYPE_CHECKING:
    from prefect_ml.dsl.component import Distribution
    from prefect_ml.infrastructure.base import StepInfrastructure, StepJob

LAUNCHER_MODULE = "torch.distributed.run"  # what the `torchrun` script runs
LOOPBACK = "127.0.0.1"
GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long (as a single-process step)


class Instance(Protocol):
    """One started launcher instance (a process group), as the infrastructure started it."""

    def poll_exit(self, timeout: float) -> int | None:
        """The exit code, or None while it runs after waiting up to `timeout` s."""

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the instance's whole process group (launcher and workers)."""

    def close(self) -> None:
        """Stop what is left of the group and release the instance's resources."""


def describe(dist: Distribution) -> str:
    """The step log's line: `distributed: M x N (world size W)`."""
    return f"distributed: {dist.instance_count} x {dist.process_count_per_instance} (world size {dist.world_size})"


def check_supported(infra: StepInfrastructure, dist: Distribution | None, step_name: str) -> None:
    """Refuse, before anything runs, a distributed step that this infrastructure cannot launch."""
    if dist is None:
        return
    limit = getattr(infra, "max_instances", 0)
    if limit <= 0:
        raise InfrastructureError(
            f"step '{step_name}' asks for distributed training ({dist.describe()}), but '{infra.describe()}' "
            "infrastructure does not launch torchrun; run the step on 'process' infrastructure.")
    if dist.instance_count > limit:
        raise InfrastructureError(
            f"step '{step_name}' asks for {dist.instance_count} instances, but '{infra.describe()}' infrastructure "
            f"runs at most {limit} per step; use instance_count <= {limit} and more process_count_per_instance.")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on `host` now (the rendezvous port; another process could take it before
    torchrun binds it, which fails the step with 'address already in use')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launcher_argv(python: str, dist: Distribution, command: list[str], *, node_rank: int,
                  master_port: int) -> list[str]:
    """`<python> -m torch.distributed.run ... --no-python <command>` for instance `node_rank`.

    `--no-python` runs the component's command as it is (its own interpreter, any program), once per
    local rank; static rendezvous on 127.0.0.1:`master_port`; no restarts (a failure fails the step,
    and Prefect's retries apply to the whole step).
    """
    return [
        python, "-m", LAUNCHER_MODULE,
        "--nnodes", str(dist.instance_count),
        "--nproc-per-node", str(dist.process_count_per_instance),
        "--node-rank", str(node_rank),
        "--rdzv-backend", "static",
        "--master-addr", LOOPBACK,
        "--master-port", str(master_port),
        "--max-restarts", "0",
        "--no-python",
        *command,
    ]


def instance_env(env: Mapping[str, str], dist: Distribution, *, node_rank: int, master_port: int) -> dict[str, str]:
    """The environment of launcher instance `node_rank` (its workers inherit it; torchrun adds RANK,
    LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK and sets MASTER_ADDR/MASTER_PORT again)."""
    out = dict(env)
    out.update({
        "MASTER_ADDR": LOOPBACK,
        "MASTER_PORT": str(master_port),
        "NODE_RANK": str(node_rank),  # Azure ML sets it; torchrun does not
        "WORLD_SIZE": str(dist.world_size),
        "PREFECT_ML_INSTANCE_COUNT": str(dist.instance_count),
    })
    if dist.process_count_per_instance > 1:  # what torchrun sets anyway, without its banner about it
        out.setdefault("OMP_NUM_THREADS", "1")
    # GLOO_SOCKET_IFNAME is left alone: gloo then binds where the hostname resolves (127.0.0.1 on the
    # test machines). Forcing `lo` made ranks that leave early abort at teardown (SIGABRT) in about one
    # 2 x 2 run in four there, and never without it (docs/distributed-training.md).
    return out


def scratch_outputs(outputs: Mapping[str, Path], root: Path) -> dict[str, Path]:
    """Stand-ins for the step's output paths under `root`, shaped like them (a folder output is an
    existing dir; a file output's parent exists), for an instance whose writes are not published."""
    out: dict[str, Path] = {}
    for name, path in outputs.items():
        p = root / name / path.name
        if path.is_dir():
            p.mkdir(parents=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
        out[name] = p
    return out


def stop_all(instances: list[Instance], running: set[int], grace: float = GRACE_S) -> None:
    """SIGTERM every running instance's group at once, SIGKILL those still there after `grace` s."""
    for i in sorted(running):
        instances[i].signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for i in sorted(running):
        if instances[i].poll_exit(max(0.0, deadline - time.monotonic())) is None:
            instances[i].signal_group(signal.SIGKILL)
            instances[i].poll_exit(grace)
    running.clear()


def supervise(instances: list[Instance], *, poll_interval: float,
              cancelled: threading.Event | None = None, grace: float = GRACE_S) -> tuple[int, int]:
    """Wait for every instance. The first to exit non-zero stops all the others at once.

    Returns (exit code, index of the instance that failed, or -1 when all exited 0). A set `cancelled`
    event stops them all and raises `InterruptedError`.
    """
    running = set(range(len(instances)))
    while running:
        first = True
        for i in sorted(running):
            code = instances[i].poll_exit(poll_interval if first else 0.0)
            first = False
            if code is None:
                continue
            running.discard(i)
            if code != 0:
                stop_all(instances, running, grace)
                return code, i
        if cancelled is not None and cancelled.is_set():
            stop_all(instances, running, grace)
            raise InterruptedError("cancelled")
    return 0, -1


def _interpreter(bin_dir: Path, path: str) -> str:
    """The step's interpreter: `python` of the step's bin dir (the environment's venv, or the one running
    the pipeline), else whatever `python3` the step's PATH finds."""
    for name in ("python", "python3"):
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    if bin_dir == Path(sys.executable).parent:
        return sys.executable
    return shutil.which("python3", path=path) or sys.executable


def run(job: StepJob, *, command: list[str], render: Callable[[dict[str, Path]], list[str]], env: dict[str, str],
        bin_dir: Path, start: Callable[[list[str], dict[str, str], Callable[[str], None], LineTail], Instance],
        log: Callable[[str], None], poll_interval: float,
        cancelled: threading.Event | None = None) -> StepOutcome:
    """Run `job` (its `distribution` set) as M torchrun instances and supervise them.

    `command` is the component's command for instance 0 (the step's real output paths), `render(outputs)`
    the same command for other output paths; `start(argv, env, log, tail)` starts one instance in its
    own process group.
    """
    dist = job.distribution
    assert dist is not None
    python = _interpreter(bin_dir, env.get("PATH", ""))
    port = free_port()
    log(describe(dist))
    shown = launcher_argv(python, dist, [], node_rank=0, master_port=port)
    shown[shown.index("--node-rank") + 1] = f"0..{dist.instance_count - 1}" if dist.instance_count > 1 else "0"
    log(f"launcher: {shlex.join(shown)} <command>" + (
        "; instances > 0 write their outputs to scratch dirs (only instance 0's are published)"
        if dist.instance_count > 1 else ""))
    scratch: list[Path] = []
    instances: list[Instance] = []
    tails: list[LineTail] = []
    try:
        for rank in range(dist.instance_count):
            if rank == 0:
                cmd = command
            else:  # ranks share this machine: only instance 0 writes where outputs are published
                safe = re.sub(r"[^\w.-]", "_", job.step_name)
                root = Path(tempfile.mkdtemp(prefix=f"prefect-ml-{safe}-instance{rank}-"))
                scratch.append(root)
                cmd = render(scratch_outputs(job.outputs, root))
            argv = launcher_argv(python, dist, cmd, node_rank=rank, master_port=port)
            instance_log = log if dist.instance_count == 1 else _prefixed(log, f"[instance {rank}] ")
            tails.append(LineTail())
            instances.append(start(argv, instance_env(env, dist, node_rank=rank, master_port=port), instance_log,
                                   tails[-1]))
        try:
            code, failed = supervise(instances, poll_interval=poll_interval, cancelled=cancelled)
        except InterruptedError:
            raise InfrastructureError(f"step '{job.step_name}' was cancelled; its processes were stopped.") from None
    finally:
        for instance in instances:
            instance.close()
        for root in scratch:
            shutil.rmtree(root, ignore_errors=True)
    if failed < 0:
        return StepOutcome(exit_code=0, last_lines=list(tails[0]))
    lines = list(tails[failed])
    reason = (f"instance {failed} of {dist.instance_count} exited with code {code}; "
              "the other instances were stopped") if dist.instance_count > 1 else None
    if code < 0:
        reason = f"killed by signal {signal.Signals(-code).name}" + (f"; {reason}" if reason else "")
    if any("No module named torch" in line for line in lines):
        reason = f"{python} has no torch: add torch to the step's environment (it runs torch.distributed.run)"
    return StepOutcome(exit_code=code, last_lines=lines, reason=reason)


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    def write(line: str) -> None:
        log(prefix + line)

    return write
