"""The Docker step infrastructure without an engine: `gpus` validation at block creation, device
requests, and an unreachable engine as a one-line message (the engine itself:
tests/integration/test_docker_infrastructure.py)."""

from __future__ import annotations

import pytest


def test_unreachable_engine_is_a_message_not_a_traceback(tmp_path):
    from prefect_docker import DockerHost

    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    infra = DockerStepInfrastructure(docker_host=DockerHost(base_url=f"unix://{tmp_path}/no-engine.sock"))
    with pytest.raises(InfrastructureError) as err:
        infra.run(StepJob("s", "true", tmp_path, {}, {}, {}), lambda line: None)
    msg = str(err.value)
    assert "cannot reach the Docker engine at unix://" in msg and "no-engine.sock" in msg and "Start the engine" in msg
    assert "Traceback" not in msg and err.value.__cause__ is None


@pytest.mark.parametrize("gpus", ["lots", 0, -1, True, "0,x"])
def test_invalid_gpus_value_is_refused_at_block_creation(gpus):
    from pydantic import ValidationError

    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    with pytest.raises(ValidationError, match=r"gpus=.* is not valid"):
        DockerStepInfrastructure(gpus=gpus)


def test_valid_gpus_values_become_device_requests():
    from prefect_ml.infrastructure.docker import parse_gpus

    assert parse_gpus(None) is None and parse_gpus("none") is None
    assert parse_gpus("all") == {"count": -1, "capabilities": [["gpu"]]}
    assert parse_gpus(2) == {"count": 2, "capabilities": [["gpu"]]}
    assert parse_gpus(["0", "1"]) == {"device_ids": ["0", "1"], "capabilities": [["gpu"]]}


