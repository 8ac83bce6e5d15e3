"""Distributed training inside a step (issue 17 part 5): the component forms, what is refused at load,
and the torchrun argv/env and instance supervision in `prefect_ml.infrastructure.distributed`.

No torch and no real launcher here (fake instances); real torchrun + gloo runs are in
tests/integration/test_distributed_step.py.
"""

from __future__ import annotations

import signal
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from prefect_ml.dsl import azure_pipeline
from prefect_ml.dsl.azure_pipeline import load_pipeline
from prefect_ml.dsl.component import Distribution, command, distribution_from, load_component
from prefect_ml.errors import ComponentError, InfrastructureError
from prefect_ml.infrastructure import distributed, process
from prefect_ml.infrastructure.base import StepInfrastructure, StepJob
from prefect_ml.infrastructure.process import ProcessStepInfrastructure
from tests.conftest import require, still_running
from tests.paths import REPO

PROBE = REPO / "tests" / "fixtures" / "components" / "ddp_probe" / "component.yaml"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path / "home"))
    azure_pipeline._warned.clear()


def write(tmp_path: Path, text: str, name: str = "c.yml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


COMPONENT = """
    name: ddp
    command: python train.py --out ${{outputs.model}}
    outputs: {model: {type: uri_folder}}
    {extra}
"""


def component(tmp_path: Path, extra: str) -> Path:
    return write(tmp_path, COMPONENT.replace("{extra}", textwrap.indent(textwrap.dedent(extra), "    ").strip()))


# --- the component forms --------------------------------------------------------------------------------


def test_probe_fixture_loads_as_two_instances_of_two_processes():
    d = load_component(PROBE).distribution
    assert d == Distribution(type="pytorch", process_count_per_instance=2, instance_count=2)
    assert d.world_size == 4
    assert distributed.describe(d) == "distributed: 2 x 2 (world size 4)"


@pytest.mark.parametrize("extra, expected", [
    ("distribution: {type: pytorch, process_count_per_instance: 3}", (3, 1)),
    ("distribution: {type: PyTorch}\nresources: {instance_count: 2, instance_type: Standard_NC6}", (1, 2)),
    ("distribution: {type: pytorch, process_count_per_instance: 2}\ninstance_count: 3", (2, 3)),  # SageMaker
    ("distribution: {type: pytorch}\nresources: {instance_count: 2}\ninstance_count: 2", (1, 2)),
    ("resources: {instance_count: 1, shm_size: 2g}", None),  # a plain command on one machine
    ("resources: {instance_type: Standard_DS3_v2}", None),
    ("", None),
])
def test_yaml_forms(tmp_path, extra, expected):
    d = load_component(component(tmp_path, extra)).distribution
    got = None if d is None else (d.process_count_per_instance, d.instance_count)
    assert got == expected
    assert d is None or d.type == "pytorch"


def test_python_forms(tmp_path):
    base = {"name": "ddp", "code": tmp_path, "command": "python train.py"}
    c = command(**base, distribution={"type": "pytorch", "process_count_per_instance": 2}, instance_count=2)
    assert c.distribution == Distribution(process_count_per_instance=2, instance_count=2)
    c = command(**base, distribution=Distribution(process_count_per_instance=4), resources={"instance_count": 2})
    assert (c.distribution.process_count_per_instance, c.distribution.instance_count) == (4, 2)
    assert command(**base).distribution is None
    assert command(**base, resources={"instance_count": 1}).distribution is None
    # the options a call can change keep the distribution
    assert c.with_options(retries=1).distribution == c.distribution


@pytest.mark.parametrize("extra, match", [
    ("distribution: {type: mpi, process_count_per_instance: 2}", "'mpi': MPI jobs are not launched here"),
    ("distribution: {type: tensorflow, worker_count: 2}", "'tensorflow': TensorFlow parameter-server"),
    ("distribution: {type: ray}", "Ray clusters are not launched"),
    ("distribution: {type: horovod}", "'horovod' is unknown; use one of \\['pytorch'\\]"),
    ("distribution: {process_count_per_instance: 2}", "has no 'type'"),
    ("distribution: {type: pytorch, process_count_per_node: 2}", "unknown field\\(s\\) \\['process_count_per_node'\\]"),
    ("distribution: {type: pytorch, process_count_per_instance: 0}", "process_count_per_instance must be a whole "
     "number >= 1, got 0"),
    ("distribution: {type: pytorch, process_count_per_instance: '2'}", "got '2'"),
    ("distribution: {type: pytorch}\nresources: {instance_count: true}", "instance_count must be a whole number"),
    ("distribution: pytorch", "must be a mapping"),
    ("resources: {instance_count: 2}", "instance_count 2 needs a launcher.*one machine.*type: pytorch"),
    ("instance_count: 2", "instance_count 2 needs a launcher"),
    ("distribution: {type: pytorch}\nresources: {instance_count: 2}\ninstance_count: 3", "disagree \\(2 vs 3\\)"),
    ("resources: [1]", "'resources' must be a mapping"),
    ("distribution: {type: pytorch}\nresources: {instance_count: 2}\ninfrastructure: docker",
     "Docker infrastructure runs a step in one container"),
])
def test_what_cannot_be_honoured_is_refused_at_load_in_one_line(tmp_path, extra, match):
    path = component(tmp_path, extra)
    with pytest.raises(ComponentError, match=match) as info:
        load_component(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"component 'ddp' ({path})")


def test_refusals_in_python_name_the_component(tmp_path):
    with pytest.raises(ComponentError, match=r"^component 'x': distribution type 'mpi'"):
        command(name="x", code=tmp_path, command="python t.py", distribution={"type": "mpi"})
    with pytest.raises(ComponentError, match=r"^component 'x': instance_count 2 needs a launcher"):
        command(name="x", code=tmp_path, command="python t.py", instance_count=2)
    with pytest.raises(ComponentError, match="Docker infrastructure"):
        command(name="x", code=tmp_path, command="python t.py", infrastructure="docker",
                distribution={"type": "pytorch"}, instance_count=2)
    ok = command(name="x", code=tmp_path, command="python t.py", distribution={"type": "pytorch"}, instance_count=2)
    with pytest.raises(ComponentError, match="Docker infrastructure"):
        ok.with_options(infrastructure="docker")
    # N processes in one container is fine to declare (the infrastructure decides at run time)
    command(name="x", code=tmp_path, command="python t.py", infrastructure="docker",
            distribution={"type": "pytorch", "process_count_per_instance": 2})
    with pytest.raises(ComponentError, match="must be a Distribution"):
        from dataclasses import replace

        replace(ok, distribution={"type": "pytorch"})


def test_distribution_from_keeps_a_given_distribution():
    d = Distribution(process_count_per_instance=2)
    assert distribution_from(d) is d
    assert distribution_from(d, {"instance_count": 3}).instance_count == 3
    assert distribution_from(None, {"instance_count": 1}, 1) is None


# --- Azure pipeline YAML: job level -----------------------------------------------------------------------

PIPELINE = """
    type: pipeline
    jobs:
      a:
        type: command
        component: file:./c.yml
        {extra}
"""


def pipeline_with(tmp_path: Path, component_extra: str, job_extra: str) -> Path:
    component(tmp_path, component_extra)
    extra = textwrap.indent(textwrap.dedent(job_extra), " " * 8).strip()
    return write(tmp_path, PIPELINE.replace("{extra}", extra), name="pipeline.yml")


@pytest.mark.parametrize("component_extra, job_extra, expected", [
    ("", "distribution: {type: pytorch, process_count_per_instance: 2}\nresources: {instance_count: 2}", (2, 2)),
    ("distribution: {type: pytorch, process_count_per_instance: 2}", "resources: {instance_count: 3}", (2, 3)),
    ("distribution: {type: pytorch}\nresources: {instance_count: 2}", "distribution: {type: pytorch, "
     "process_count_per_instance: 4}", (4, 2)),  # the component's instance_count stays
    ("distribution: {type: pytorch}\nresources: {instance_count: 2}", "resources: {instance_count: 1}", (1, 1)),
    ("distribution: {type: pytorch, process_count_per_instance: 2}", "compute: azureml:gpu", (2, 1)),
    ("", "resources: {instance_count: 1}", None),
])
def test_pipeline_job_distribution(tmp_path, component_extra, job_extra, expected):
    job = load_pipeline(pipeline_with(tmp_path, component_extra, job_extra)).jobs["a"]
    d = job.component.distribution
    assert (None if d is None else (d.process_count_per_instance, d.instance_count)) == expected


@pytest.mark.parametrize("job_extra, match", [
    ("distribution: {type: mpi}", r"line 6: key 'jobs.a.distribution': distribution type 'mpi'"),
    ("resources: {instance_count: 2}", r"line 6: key 'jobs.a.resources.instance_count': instance_count 2 needs a "
     "launcher.*one machine"),
    ("distribution: {type: pytorch}\nresources: {instance_count: 2}\ncompute: docker",
     r"key 'jobs.a.compute': Docker infrastructure runs a step in one container"),
    ("distribution: {type: pytorch}\nresources: {instance_count: 2, gpus: 1}", r"key 'jobs.a.resources.gpus'"),
])
def test_pipeline_job_refusals_name_file_line_and_key(tmp_path, job_extra, match):
    path = pipeline_with(tmp_path, "", job_extra)
    with pytest.raises(ComponentError, match=match) as info:
        load_pipeline(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


# --- argv and environment -----------------------------------------------------------------------------------


def test_launcher_argv_is_torchrun_static_rendezvous_on_loopback():
    d = Distribution(process_count_per_instance=2, instance_count=3)
    argv = distributed.launcher_argv("/venv/bin/python", d, ["/venv/bin/python", "train.py", "--x", "1"],
                                     node_rank=1, master_port=29555)
    assert argv == [
        "/venv/bin/python", "-m", "torch.distributed.run", "--nnodes", "3", "--nproc-per-node", "2",
        "--node-rank", "1", "--rdzv-backend", "static", "--master-addr", "127.0.0.1", "--master-port", "29555",
        "--max-restarts", "0", "--no-python", "/venv/bin/python", "train.py", "--x", "1",
    ]


def test_instance_env_sets_what_azure_sets_and_keeps_the_users_choices():
    d = Distribution(process_count_per_instance=2, instance_count=2)
    env = distributed.instance_env({"PATH": "/bin", "GLOO_SOCKET_IFNAME": "eth9", "OMP_NUM_THREADS": "4"}, d,
                                   node_rank=1, master_port=1234)
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "1234"
    assert env["NODE_RANK"] == "1" and env["WORLD_SIZE"] == "4"
    assert env["PATH"] == "/bin" and env["GLOO_SOCKET_IFNAME"] == "eth9" and env["OMP_NUM_THREADS"] == "4"
    assert "RANK" not in env and "LOCAL_RANK" not in env  # per process: torchrun sets them
    plain = distributed.instance_env({}, Distribution(), node_rank=0, master_port=1)
    assert "OMP_NUM_THREADS" not in plain  # one process per instance: torchrun leaves it alone too
    assert "GLOO_SOCKET_IFNAME" not in plain  # forcing `lo` made gloo abort at teardown (see the module)


def test_free_port_is_a_loopback_port_that_can_be_bound():
    import socket

    port = distributed.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_scratch_outputs_have_the_shape_of_the_real_ones(tmp_path):
    real = tmp_path / "attempt"
    (real / "model").mkdir(parents=True)
    outputs = {"model": real / "model", "metrics": real / "metrics" / "metrics.json", "m": real / "m" / "model"}
    scratch = distributed.scratch_outputs(outputs, tmp_path / "scratch")
    assert scratch["model"].is_dir() and scratch["model"].is_relative_to(tmp_path / "scratch")
    assert scratch["metrics"].name == "metrics.json" and scratch["metrics"].parent.is_dir()
    assert not scratch["metrics"].exists() and not scratch["m"].exists()  # mlflow refuses an existing dir


# --- infrastructure support ----------------------------------------------------------------------------------


class NoLaunch(StepInfrastructure):
    def describe(self) -> str:
        return "docker"


def test_infrastructure_that_cannot_launch_refuses_before_the_step_runs():
    d = Distribution(process_count_per_instance=2)
    distributed.check_supported(NoLaunch(), None, "s")  # a plain step: nothing to check
    with pytest.raises(InfrastructureError, match="step 's' asks for distributed training \\(1 x 2 \\(world size "
                       "2\\)\\), but 'docker' infrastructure does not launch torchrun; run the step on 'process'"):
        distributed.check_supported(NoLaunch(), d, "s")
    distributed.check_supported(ProcessStepInfrastructure(), Distribution(instance_count=4), "s")
    with pytest.raises(InfrastructureError, match="at most 64 per step"):
        distributed.check_supported(ProcessStepInfrastructure(), Distribution(instance_count=65), "s")


# --- supervision (fake instances) -------------------------------------------------------------------------------


class Fake:
    """An instance that exits with `code` after `polls` polls, or on a signal it does not ignore."""

    def __init__(self, code: int | None = 0, polls: int = 1, ignores_term: bool = False):
        self.code, self.polls, self.ignores_term = code, polls, ignores_term
        self.signals: list[int] = []
        self.exited: int | None = None
        self.closed = False

    def poll_exit(self, timeout: float) -> int | None:
        if self.exited is None and self.code is not None:
            self.polls -= 1
            if self.polls <= 0:
                self.exited = self.code
        return self.exited

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        if self.exited is None and not (sig == signal.SIGTERM and self.ignores_term):
            self.exited = -sig

    def close(self) -> None:
        self.closed = True


def test_all_instances_exiting_zero_is_success():
    fakes = [Fake(0, polls=3), Fake(0, polls=1)]
    assert distributed.supervise(fakes, poll_interval=0) == (0, -1)
    assert all(not f.signals for f in fakes)


def test_one_failing_instance_stops_all_the_others_at_once():
    fakes = [Fake(None), Fake(7, polls=2), Fake(None), Fake(0, polls=1)]
    assert distributed.supervise(fakes, poll_interval=0, grace=0) == (7, 1)
    assert fakes[0].signals == [signal.SIGTERM] and fakes[2].signals == [signal.SIGTERM]
    assert fakes[3].signals == []  # already exited 0


def test_an_instance_that_ignores_sigterm_gets_sigkill():
    fakes = [Fake(None, ignores_term=True), Fake(1)]
    assert distributed.supervise(fakes, poll_interval=0, grace=0) == (1, 1)
    assert fakes[0].signals == [signal.SIGTERM, signal.SIGKILL]


def test_cancel_stops_every_instance():
    cancelled = threading.Event()
    cancelled.set()
    fakes = [Fake(None), Fake(None)]
    with pytest.raises(InterruptedError):
        distributed.supervise(fakes, poll_interval=0, cancelled=cancelled, grace=0)
    assert all(f.signals == [signal.SIGTERM] for f in fakes)


def job(tmp_path: Path, dist: Distribution) -> StepJob:
    (tmp_path / "out").mkdir()
    return StepJob(step_name="ddp", command="python train.py --out ${{outputs.model}}", code_dir=tmp_path,
                   values={}, data_inputs={}, outputs={"model": tmp_path / "out"}, distribution=dist)


def test_run_gives_instance_zero_the_real_outputs_and_the_others_scratch(tmp_path):
    started: list[tuple[list[str], dict[str, str]]] = []
    lines: list[str] = []
    j = job(tmp_path, Distribution(process_count_per_instance=2, instance_count=3))

    def start(argv, env, log, tail):
        started.append((argv, env))
        log(f"hello from {env['NODE_RANK']}")
        tail.add(f"tail of {env['NODE_RANK']}")
        return Fake(0)

    def render(outputs):
        return ["/py", "train.py", "--out", str(outputs["model"])]

    outcome = distributed.run(j, command=render(j.outputs), render=render, env={"PATH": "/bin"},
                              bin_dir=Path(sys.executable).parent, start=start, log=lines.append, poll_interval=0)
    assert outcome.exit_code == 0 and outcome.last_lines == ["tail of 0"]
    assert lines[0] == "distributed: 3 x 2 (world size 6)"
    assert lines[1].startswith("launcher: ") and "--node-rank 0..2" in lines[1]
    assert "[instance 2] hello from 2" in lines
    outs = [argv[argv.index("--out") + 1] for argv, _ in started]
    assert outs[0] == str(tmp_path / "out")
    assert all(not Path(o).is_relative_to(tmp_path) for o in outs[1:]) and len(set(outs)) == 3
    assert not any(Path(o).exists() for o in outs[1:])  # scratch removed after the step
    assert [env["NODE_RANK"] for _, env in started] == ["0", "1", "2"]
    assert len({env["MASTER_PORT"] for _, env in started}) == 1
    assert all(argv[1:3] == ["-m", "torch.distributed.run"] for argv, _ in started)


def test_run_reports_the_failing_instance_and_a_missing_torch(tmp_path):
    j = job(tmp_path, Distribution(instance_count=2))
    codes = iter([None, 1])

    def start(argv, env, log, tail):
        code = next(codes)
        if code:
            tail.add("/venv/bin/python: No module named torch")
        return Fake(code)

    outcome = distributed.run(j, command=["/py"], render=lambda o: ["/py"], env={}, bin_dir=Path("/nowhere"),
                              start=start, log=lambda line: None, poll_interval=0)
    assert outcome.exit_code == 1
    assert outcome.last_lines == ["/venv/bin/python: No module named torch"]
    assert "has no torch: add torch to the step's environment" in outcome.reason


def test_run_closes_every_started_instance_when_a_start_fails(tmp_path):
    j = job(tmp_path, Distribution(instance_count=3))
    made: list[Fake] = []

    def start(argv, env, log, tail):
        if len(made) == 2:
            raise OSError("no more processes")
        made.append(Fake(None))
        return made[-1]

    with pytest.raises(OSError):
        distributed.run(j, command=["/py"], render=lambda o: ["/py"], env={}, bin_dir=Path("/nowhere"),
                        start=start, log=lambda line: None, poll_interval=0)
    assert all(f.closed for f in made)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("guard", ["setpriv", "python fallback"])
def test_process_infrastructure_runs_real_process_groups_and_stops_them(tmp_path, monkeypatch, guard):
    """The process block's own instances (no torch: a stand-in launcher module on PYTHONPATH that runs
    the command in a new session, as torchrun does): one instance failing stops the other, which would
    sleep for a minute, and its worker dies with its launcher although no group signal reaches it."""
    fake = tmp_path / "fake"
    (fake / "torch" / "distributed").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("")
    (fake / "torch" / "distributed" / "__init__.py").write_text("")
    (fake / "torch" / "distributed" / "run.py").write_text(textwrap.dedent("""
        import os, subprocess, sys
        cmd = sys.argv[sys.argv.index("--no-python") + 1:]
        # like torchrun: the worker in a session of its own, out of reach of the instance's process group
        worker = subprocess.Popen(cmd, env={**os.environ, "RANK": os.environ["NODE_RANK"]}, start_new_session=True)
        sys.exit(worker.wait())
    """))
    (tmp_path / "work.py").write_text(textwrap.dedent("""
        import os, sys, time, pathlib
        pathlib.Path(sys.argv[1], f"{os.environ['RANK']}.pid").write_text(str(os.getpid()))
        if os.environ["RANK"] == "1":
            while len(list(pathlib.Path(sys.argv[1]).iterdir())) < 2:  # both ranks started
                time.sleep(0.01)
            sys.exit(5)
        time.sleep(60)
    """))
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(fake))
    if guard == "setpriv":
        require(process._setpriv() is not None, "util-linux setpriv is not installed")
    else:
        monkeypatch.setattr(process, "_setpriv", lambda: None)
    j = StepJob(step_name="fake", command=f"python work.py {pids}", code_dir=tmp_path, values={}, data_inputs={},
                outputs={}, distribution=Distribution(instance_count=2))
    lines: list[str] = []
    outcome = ProcessStepInfrastructure().run(j, lines.append)
    assert outcome.exit_code == 5 and "instance 1 of 2 exited with code 5" in (outcome.reason or "")
    assert "distributed: 2 x 1 (world size 2)" in lines
    left = [int(p.read_text()) for p in pids.iterdir()]
    assert len(left) == 2
    assert still_running(left) == set()


def test_docker_infrastructure_launches_one_instance_per_step():
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    docker = DockerStepInfrastructure()
    distributed.check_supported(docker, None, "s")
    distributed.check_supported(docker, Distribution(process_count_per_instance=2), "s")  # N in one container
    assert docker.max_instances == 1
    with pytest.raises(InfrastructureError, match="at most 1 per step"):
        distributed.check_supported(docker, Distribution(instance_count=2), "s")


def test_the_world_size_is_part_of_the_cache_key_and_other_keys_do_not_change(tmp_path):
    from dataclasses import replace

    from prefect_ml.runtime.cache_key import component_definition

    plain = load_component(component(tmp_path, ""))
    assert "distribution" not in component_definition(plain)  # keys of existing components stay as they were
    one = replace(plain, distribution=Distribution(process_count_per_instance=2))
    two = replace(plain, distribution=Distribution(process_count_per_instance=2, instance_count=2))
    parts = [component_definition(c) for c in (plain, one, two)]
    assert parts[1]["distribution"] == ["pytorch", 1, 2]
    assert parts[0] != parts[1] != parts[2]
