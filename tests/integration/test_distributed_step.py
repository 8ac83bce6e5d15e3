"""Distributed training inside a step (issue 17 part 5): real torchrun + gloo on CPU, on the process
infrastructure, 2 instances x 2 processes that rendezvous over 127.0.0.1, through a real pipeline run.

The probe component (tests/fixtures/components/ddp_probe/) all_reduces and all_gathers across the
ranks and writes what every rank saw on rank 0; every rank also drops `rank-<RANK>.txt` into its
output dir, which shows that only instance 0's writes are published.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import pytest

from prefect_ml import load_component, pipeline
from prefect_ml.dsl.component import Distribution
from prefect_ml.errors import StepFailed
from prefect_ml.infrastructure.base import StepJob, StepOutcome
from prefect_ml.infrastructure.process import ProcessStepInfrastructure
from tests.conftest import alive, require, still_running
from tests.paths import REPO

PROBE = REPO / "tests" / "fixtures" / "components" / "ddp_probe" / "component.yaml"
TRAIN_TORCH = REPO / "components" / "train_torch" / "component.yaml"


@pytest.fixture(autouse=True)
def torch_installed():
    require(find_spec("torch") is not None, "torch is not installed in this interpreter (it runs torchrun)")


@pytest.fixture(scope="module")
def home(prefect_api, tmp_path_factory) -> Path:
    """One prefect-ml home (artifact root, MLflow store) for this module's pipelines: a fresh MLflow
    store costs its schema migrations per test, and the steps' keys differ anyway."""
    home = tmp_path_factory.mktemp("distributed") / "prefect-ml-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_ML_HOME", str(home))
        mp.delenv("PREFECT_ML_ARTIFACT_ROOT", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_two_instances_of_two_processes_see_each_other_and_publish_rank_zeros_output(home):
    probe = load_component(PROBE)

    @pipeline(infrastructure="process")
    def ddp_probe():
        return {"result": probe().outputs.result}

    out = local(ddp_probe()["result"])
    result = json.loads((out / "result.json").read_text())
    assert result["all_reduce"] == 1 + 2 + 3 + 4  # every rank took part
    ranks = result["ranks"]
    assert [r["RANK"] for r in ranks] == ["0", "1", "2", "3"]
    assert {r["WORLD_SIZE"] for r in ranks} == {"4"} and {r["LOCAL_WORLD_SIZE"] for r in ranks} == {"2"}
    assert [r["LOCAL_RANK"] for r in ranks] == ["0", "1", "0", "1"]
    assert [r["NODE_RANK"] for r in ranks] == ["0", "0", "1", "1"]
    assert {r["MASTER_ADDR"] for r in ranks} == {"127.0.0.1"}
    assert len({r["MASTER_PORT"] for r in ranks}) == 1 and len({r["pid"] for r in ranks}) == 4
    # one published output: instance 0's (ranks 0 and 1); instance 1 wrote into a scratch dir
    assert sorted(p.name for p in out.iterdir()) == ["rank-0.txt", "rank-1.txt", "result.json"]


def test_a_failing_rank_fails_the_step_and_leaves_no_process_behind(home, tmp_path):
    probe = load_component(PROBE)
    pids = tmp_path / "pids"
    pids.mkdir()

    @pipeline(infrastructure="process")
    def ddp_probe_fails():
        # rank 3 (instance 1) exits 3 before joining; ranks 0-2 would wait for it in init_process_group
        return {"result": probe(fail_rank=3, pid_dir=str(pids)).outputs.result}

    with pytest.raises(StepFailed, match=r"failed: exit code 1 \(instance 1 of 2 exited with code 1; the other "
                       r"instances were stopped\)") as info:
        ddp_probe_fails()
    # the failing instance's torchrun names the rank that failed first and its exit code
    summary = "\n".join(info.value.last_lines)
    assert re.search(r"rank\s*:\s*3 \(local_rank: 1\)", summary) and re.search(r"exitcode\s*:\s*3\b", summary)
    started = {int(n) for f in pids.iterdir() for n in f.read_text().split()}  # each rank and its launcher
    assert len(started) == 4 + 2
    assert still_running(started) == set()


def test_a_torchrun_killed_hard_takes_its_workers_and_the_other_instance_with_it(tmp_path):
    """SIGKILL of one instance's torchrun (no chance to stop its workers, which torchrun starts in
    sessions of their own): its workers die with it (parent-death signal), the other instance is
    stopped, and the step fails. At the infrastructure level: no Prefect API needed."""
    probe = load_component(PROBE)
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "out").mkdir()
    job = StepJob(step_name="probe", command=probe.command, code_dir=probe.code, data_inputs={},
                  values={"fail_rank": None, "pid_dir": str(pids), "hold": "True"},
                  outputs={"result": tmp_path / "out"}, distribution=probe.distribution)
    lines: list[str] = []
    done: dict[str, StepOutcome] = {}
    runner = threading.Thread(target=lambda: done.update(outcome=ProcessStepInfrastructure().run(job, lines.append)))
    runner.start()
    try:
        deadline = time.monotonic() + 120
        # two workers share their torchrun's output: their lines may run together
        while sum(line.count("holding") for line in lines) < 4 and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(line.count("holding") for line in lines) == 4, "\n".join(lines[-20:])
        pairs = [tuple(map(int, f.read_text().split())) for f in pids.iterdir()]
        launchers = sorted({launcher for _, launcher in pairs})
        assert len(pairs) == 4 and len(launchers) == 2
        os.kill(launchers[0], signal.SIGKILL)
        runner.join(timeout=120)
        assert not runner.is_alive()
        outcome = done["outcome"]
        assert outcome.exit_code == -signal.SIGKILL and "the other instances were stopped" in (outcome.reason or "")
        assert still_running({p for pair in pairs for p in pair}) == set()
        assert not (tmp_path / "out" / "result.json").exists()
    finally:
        for f in pids.iterdir():
            for pid in map(int, f.read_text().split()):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_train_torch_two_by_two_matches_a_single_process(home, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "train"
    data.mkdir()
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    rows = ["a,b,c,d,default payment next month"] + [
        ",".join(f"{v:.5f}" for v in r) + f",{t}" for r, t in zip(x, y, strict=True)]
    (data / "data.csv").write_text("\n".join(rows) + "\n")
    train = load_component(TRAIN_TORCH)
    train_ddp = replace(train, distribution=Distribution(process_count_per_instance=2, instance_count=2))
    args = {"train_data": str(data), "epochs": 30, "hidden": 8, "layers": 1, "device": "cpu"}

    # caching on: the distribution is part of the step's cache key, so the 2 x 2 step with the same
    # inputs is a step of its own, not a cache hit of the single process's
    @pipeline(infrastructure="process")
    def single_and_ddp():
        return {"single": train(**args).outputs.model, "ddp": train_ddp(**args).outputs.model}

    out = single_and_ddp()
    assert local(out["ddp"]) != local(out["single"])  # two keys, two published models
    import mlflow.sklearn

    models = {k: mlflow.sklearn.load_model(str(local(v))) for k, v in out.items()}
    columns = ["a", "b", "c", "d"]
    import pandas as pd

    frame = pd.DataFrame(x, columns=columns)
    p_single = models["single"].predict_proba(frame)[:, 1]
    p_ddp = models["ddp"].predict_proba(frame)[:, 1]
    # full batch: DDP's averaged gradient is the single process's gradient (up to float summation order)
    assert np.max(np.abs(p_single - p_ddp)) < 1e-3
    # the loss all ranks agree on (all_reduce'd) is the single process's
    assert models["ddp"].named_steps["mlp"].loss_ == pytest.approx(models["single"].named_steps["mlp"].loss_, rel=1e-3)
    assert sorted(p.name for p in local(out["ddp"]).iterdir()) == sorted(p.name for p in local(out["single"]).iterdir())


def test_docker_runs_the_processes_of_one_instance_in_one_container(home, docker_client):
    """On Docker a distributed step is one container with torchrun and its N processes (network none:
    the ranks rendezvous on the container's own loopback). The image is the base image with this
    machine's interpreter and .venv (which has torch) mounted read-only at the same paths."""
    import sys

    from prefect_ml.infrastructure.docker import DockerStepInfrastructure
    from tests.integration.conftest import ours
    from tests.servers import DEFAULT_BASE_IMAGE

    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    mounts = sorted({sys.base_prefix, sys.prefix})
    block = DockerStepInfrastructure(
        image=image, pull_policy="never", user="0:0",  # root: this machine's interpreter may live under /root
        volumes=[f"{p}:{p}:ro" for p in mounts], env={"PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin"},
    )
    probe = replace(load_component(PROBE), distribution=Distribution(process_count_per_instance=2))

    @pipeline(infrastructure=block, cache=False)
    def ddp_probe_in_docker():
        return {"result": probe().outputs.result}

    out = local(ddp_probe_in_docker()["result"])
    result = json.loads((out / "result.json").read_text())
    assert result["all_reduce"] == 1 + 2  # both ranks took part
    ranks = result["ranks"]
    assert [r["RANK"] for r in ranks] == ["0", "1"] and {r["WORLD_SIZE"] for r in ranks} == {"2"}
    assert {r["NODE_RANK"] for r in ranks} == {"0"} and {r["MASTER_ADDR"] for r in ranks} == {"127.0.0.1"}
    assert sorted(p.name for p in out.iterdir()) == ["rank-0.txt", "rank-1.txt", "result.json"]
    assert not ours(docker_client, **{"prefect-ml.step": "ddp_probe"}), "a step container was left behind"
