"""Run a step in a local subprocess: the embedded default when there is no Docker engine.

A step dies with its pipeline:
- kill -9 of the pipeline process: the kernel sends the step's process SIGKILL (parent-death signal,
  `prctl(PR_SET_PDEATHSIG)`, Linux; set by util-linux `setpriv --pdeathsig KILL` in front of the
  command, or by a preexec_fn where setpriv is missing), and a watchdog process that holds the read end of a pipe from
  the pipeline kills the step's whole process group when that pipe closes (what the step started in
  the background too);
- a cancelled or terminated flow run (a worker's SIGTERM): the step watches Prefect's cancel event,
  stops its process group and raises, so nothing is published;
- a timeout, or the interpreter exiting: the process group is stopped (SIGTERM, SIGKILL after 5 s).

A component with a `distribution` runs as torchrun instances, each one such process group
(`infrastructure/distributed.py`): one failing instance stops them all.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field

from prefect_ml._compat import task_cancel_event
from prefect_ml.errors import InfrastructureError, StepFailed
from prefect_ml.infrastructure import distributed
from prefect_ml.infrastructure.base import LineTail, StepInfrastructure, StepJob, StepOutcome

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Process groups of steps this process started and has not reaped: stopped at interpreter exit too.
_live_groups: set[int] = set()
_live_lock = threading.Lock()


def _stop_live_groups() -> None:
    with _live_lock:
        groups = list(_live_groups)
        _live_groups.clear()
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


atexit.register(_stop_live_groups)

_prctl: Callable[..., int] | None = None
_prctl_loaded = False


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up in the parent (a child between fork and exec must not import or load)."""
    global _prctl, _prctl_loaded
    if not _prctl_loaded:
        _prctl_loaded = True
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # not Linux
            _prctl = None
    return _prctl


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when the thread that started it ends (the step's task thread
    waits for the child, so in practice: when the pipeline process dies)."""
    prctl = _load_prctl()

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(137)

    return preexec


_setpriv_path: list[str | None] = []


def _setpriv() -> str | None:
    """util-linux `setpriv` (it has --pdeathsig since 2.33), or None."""
    if not _setpriv_path:
        import shutil

        _setpriv_path.append(shutil.which("setpriv") if sys.platform.startswith("linux") else None)
    return _setpriv_path[0]


# Where setpriv is missing: a tiny Python that sets the parent-death signal and execs the command.
PDEATHSIG_EXEC = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0); "
                  "os.execvp(sys.argv[1], sys.argv[1:])")


def _worker_guard() -> list[str]:
    """What goes in front of a torchrun worker's command so that the worker dies with its torchrun
    (torchrun starts workers in sessions of their own: a signal to the instance's group misses them)."""
    setpriv = _setpriv()
    if setpriv:
        return [setpriv, "--pdeathsig", "KILL", "--"]
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", PDEATHSIG_EXEC]
    return []


# The watchdog: a shell that reads its stdin (a pipe whose write end only the pipeline holds) until EOF,
# i.e. until the pipeline closes it after the step or dies, then kills the step's process group.
# `sh` starts in ~1 ms (a Python watchdog cost ~70 ms per step on the 2-core machine).
WATCHDOG = 'read -r _; kill -9 "-$1" 2>/dev/null'


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_watchdog(pgid: int) -> tuple[subprocess.Popen | None, int | None]:
    """A watchdog for the step's process group and the pipe end that keeps it waiting (None, None when
    it could not start: the parent-death signal still covers the step's own process)."""
    r, w = os.pipe()  # not inheritable (PEP 446): only this process holds `w`
    try:
        dog = subprocess.Popen(["/bin/sh", "-c", WATCHDOG, "prefect-ml-watchdog", str(pgid)], stdin=r,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        os.close(w)
        return None, None
    finally:
        os.close(r)
    return dog, w


def _stream(pipe, log: Callable[[str], None], tail: LineTail) -> None:
    for raw in iter(pipe.readline, ""):
        line = raw.rstrip("\n")
        tail.add(line)
        log(line)
    pipe.close()


class ProcessStepInfrastructure(Block, StepInfrastructure):
    """Runs a step's command in a local subprocess, in the component's code dir.

    The command runs without a shell. `python` resolves to the interpreter of the environment's
    venv when `use_environment_venv` is on, else to the interpreter running the pipeline.

    Example:
        ProcessStepInfrastructure(env={"OMP_NUM_THREADS": "1"}).save("process")
    """

    _block_type_name = "ML Step Process Infrastructure"
    _block_type_slug = "ml-step-process-infrastructure"
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/356e6766a91baf20e1d08bbe16e8b5aaef4d8643-48x48.png"  # type: ignore[assignment]  # Prefect types it HttpUrl; str is how blocks set it
    _description = "Runs prefect-ml steps as local subprocesses (no container)."

    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the step.")
    use_environment_venv: bool = Field(
        default=False,
        description="Run in a venv built from the component's environment (keyed by its content hash) "
        "instead of the interpreter running the pipeline.",
    )
    poll_interval: float = Field(default=0.1, description="Seconds between checks for the end of the process.")

    # a distributed step's torchrun instances are process groups on this machine (distributed.py)
    max_instances: ClassVar[int] = 64

    def run(self, job: StepJob, log: Callable[[str], None]) -> StepOutcome:
        bin_dir = self._bin_dir(job)
        env = {**os.environ, **self.env, **job.env, "PYTHONUNBUFFERED": "1"}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        argv = job.argv(env=env)
        shown = shlex.join(argv)  # as the component wrote it, before the program is looked up
        if os.sep not in argv[0]:
            found = _which(argv[0], env["PATH"])
            if not found:
                raise StepFailed(
                    f"step '{job.step_name}': program '{argv[0]}' not found on PATH; install it in the environment "
                    "or give its full path in the component's command.",
                    exit_code=127,
                )
            argv[0] = found
        log(f"command: {shown}")
        cancelled = task_cancel_event()
        if job.distribution is not None:  # torchrun, M instances x N processes (distributed.py)
            # torchrun starts each worker in a session of its own, out of reach of the instance's group:
            # the parent-death signal makes a worker die with its torchrun, however that ends (kill -9 too)
            guard = _worker_guard()
            found = argv[0]

            def render(outputs: dict[str, Path]) -> list[str]:
                again = replace(job, outputs=outputs).argv(env=env)
                return [*guard, found, *again[1:]]

            def start(argv: list[str], env: dict[str, str], log: Callable[[str], None], tail: LineTail) -> _Started:
                return _Started(argv, env, log, tail, cwd=job.code_dir)

            return distributed.run(job, command=[*guard, *argv], render=render, env=env, bin_dir=bin_dir, start=start,
                                   log=log, poll_interval=self.poll_interval, cancelled=cancelled)
        tail = LineTail()
        started = _Started(argv, env, log, tail, cwd=job.code_dir)
        try:
            # wait in slices so Prefect's timeout/cancellation can interrupt this thread
            while True:
                code = started.poll_exit(self.poll_interval)
                if code is not None:
                    break
                if cancelled is not None and cancelled.is_set():
                    _kill_group(started.proc)
                    raise InfrastructureError(
                        f"step '{job.step_name}' was cancelled; its process was stopped.") from None
        finally:
            started.close()
        reason = f"killed by signal {signal.Signals(-code).name}" if code < 0 else None
        return StepOutcome(exit_code=code, last_lines=list(tail), reason=reason)

    def _bin_dir(self, job: StepJob) -> Path:
        if self.use_environment_venv and job.environment:
            from prefect_ml.environments import ensure_venv

            return ensure_venv(job.environment, start=job.code_dir) / "bin"
        if job.environment:
            _check_interpreter(job.environment, job.code_dir)
        return Path(sys.executable).parent

    def describe(self) -> str:
        return "process"


class _Started:
    """One command started in its own process group (the group is what gets stopped): the kernel
    kills it if the pipeline dies (parent-death signal), a watchdog kills its group when the pipeline
    closes the watchdog's pipe, and a thread streams its output to `log`. `distributed.Instance`."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Callable[[str], None], tail: LineTail,
                 cwd: Path | None = None):
        setpriv = _setpriv()
        if setpriv:  # sets the parent-death signal and execs the command: keeps Popen's fast vfork path
            argv, preexec = [setpriv, "--pdeathsig", "KILL", "--", *argv], None
        else:  # a preexec_fn forces fork(): ~80 ms for a pipeline process with Prefect and MLflow loaded
            preexec = _die_with_parent(os.getpid())
        self.proc = proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, bufsize=1, errors="replace", start_new_session=True,
            # safe here: the function only calls the pre-loaded prctl, getppid and _exit (no imports, no locks)
            preexec_fn=preexec,  # noqa: PLW1509
        )
        with _live_lock:
            _live_groups.add(proc.pid)
        self.dog, self.dog_pipe = _start_watchdog(proc.pid)
        self.reader = threading.Thread(target=_stream, args=(proc.stdout, log, tail), daemon=True)
        self.reader.start()
        self._exited = _exit_waiter(proc)

    def poll_exit(self, timeout: float) -> int | None:
        return self._exited(timeout)

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):  # the group is gone
            pass

    def close(self) -> None:
        proc = self.proc
        self._exited(None)  # closes the pidfd
        if proc.poll() is None:
            _kill_group(proc)
        with _live_lock:
            _live_groups.discard(proc.pid)
        if self.dog_pipe is not None:
            os.close(self.dog_pipe)  # the watchdog sees EOF, kills what is left of the group and exits
            self.dog_pipe = None
        if self.dog is not None:  # reaped in the background: the step does not wait for it
            threading.Thread(target=_reap, args=(self.dog,), daemon=True).start()
            self.dog = None
        self.reader.join(timeout=5)


def _exit_waiter(proc: subprocess.Popen[str]) -> Callable[[float | None], int | None]:
    """A function `wait(timeout)` -> exit code, or None when the process still runs after `timeout` s.

    It waits on a pidfd where Linux has them, so it returns the moment the step exits;
    `Popen.wait(timeout)` sleeps in growing steps of up to 50 ms instead, which a short step pays
    in full. `wait(None)` releases the pidfd.
    """
    import select

    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: Popen's own polling
        def poll_wait(timeout: float | None) -> int | None:
            if timeout is None:
                return None
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None

        return poll_wait
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    closed = False

    def wait(timeout: float | None) -> int | None:
        nonlocal closed
        if timeout is None:
            if not closed:
                closed = True
                os.close(pidfd)
            return None
        if closed or poller.poll(int(timeout * 1000)):
            return proc.wait()
        return None

    return wait


_satisfied: set[tuple[str, str]] = set()  # environments the running interpreter was found to satisfy


def _check_interpreter(environment: str, code_dir: Path) -> None:
    """Fail before the command starts when this interpreter lacks what the environment lists
    (instead of an ImportError 30 s into the step). Successes are remembered per process."""
    key = (environment, str(code_dir))
    if key in _satisfied:
        return
    from prefect_ml.environments.requirements_check import check_interpreter

    check_interpreter(environment, start=code_dir)
    _satisfied.add(key)


def _which(program: str, path: str) -> str | None:
    import shutil

    return shutil.which(program, path=path)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
