"""Run a step in a local subprocess: the embedded default when there is no Docker engine."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field

from prefect_ml.errors import StepFailed
from prefect_ml.infrastructure.base import LineTail, StepInfrastructure, StepJob, StepOutcome


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

    def run(self, job: StepJob, log: Callable[[str], None]) -> StepOutcome:
        bin_dir = self._bin_dir(job)
        env = {**os.environ, **self.env, **job.env, "PYTHONUNBUFFERED": "1"}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        argv = job.argv()
        if os.sep not in argv[0]:
            found = _which(argv[0], env["PATH"])
            if not found:
                raise StepFailed(
                    f"step '{job.step_name}': program '{argv[0]}' not found on PATH; install it in the environment "
                    "or give its full path in the component's command.",
                    exit_code=127,
                )
            argv[0] = found
        log(f"command: {shlex.join(job.argv())}")
        tail = LineTail()
        proc = subprocess.Popen(
            argv, cwd=job.code_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, bufsize=1, errors="replace", start_new_session=True,
        )
        reader = threading.Thread(target=_stream, args=(proc.stdout, log, tail), daemon=True)
        reader.start()
        try:
            # poll instead of a blocking wait so Prefect's timeout/cancellation can interrupt this thread
            while True:
                try:
                    code = proc.wait(timeout=self.poll_interval)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            reader.join(timeout=5)
        reason = f"killed by signal {signal.Signals(-code).name}" if code < 0 else None
        return StepOutcome(exit_code=code, last_lines=list(tail), reason=reason)

    def _bin_dir(self, job: StepJob) -> Path:
        if self.use_environment_venv and job.environment:
            from prefect_ml.environments import ensure_venv

            return ensure_venv(job.environment, start=job.code_dir) / "bin"
        return Path(sys.executable).parent

    def describe(self) -> str:
        return "process"


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
