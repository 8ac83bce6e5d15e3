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
    assert "process" not in msg and "docs/gpu.md" not in msg  # a CPU block: no GPU hint


def test_unreachable_engine_for_a_gpu_block_points_at_the_process_infrastructure(tmp_path):
    """A GPU VM without Docker running the unchanged gpu deployment: the message also says that the
    `process` infrastructure runs it there (docs/gpu.md), in the same one line."""
    from prefect_docker import DockerHost

    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure.base import StepJob
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    infra = DockerStepInfrastructure(gpus="all", docker_host=DockerHost(base_url=f"unix://{tmp_path}/no-engine.sock"))
    for call in (lambda: infra.run(StepJob("s", "true", tmp_path, {}, {}, {}), lambda line: None),
                 lambda: infra.environment_identity("pytorch-gpu", tmp_path)):  # the cache key asks first
        with pytest.raises(InfrastructureError) as err:
            call()
        msg = str(err.value)
        assert "cannot reach the Docker engine at unix://" in msg and "Start the engine" in msg
        assert "requests GPUs (gpus='all')" in msg and "without Docker" in msg
        assert "`process` infrastructure" in msg and 'docs/gpu.md, "A GPU host without Docker"' in msg
        assert "\n" not in msg and err.value.__cause__ is None
    # another machine's engine that is down: that machine may well have Docker; no process hint
    remote = DockerStepInfrastructure(gpus="all", docker_host=DockerHost(base_url="tcp://127.0.0.1:1"))
    with pytest.raises(InfrastructureError) as err:
        remote.environment_identity("pytorch-gpu", tmp_path)
    assert "cannot reach the Docker engine at tcp://127.0.0.1:1" in str(err.value)
    assert "`process` infrastructure" not in str(err.value)


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



# --- the engine on another machine: mount or copy (issue #16) ----------------------------------------

LOCAL = ("JQXD:AAAA", "vm", "/var/lib/docker")


@pytest.mark.parametrize(("setting", "address", "target", "local", "expected"), [
    ("auto", "unix:///var/run/docker.sock", None, None, "mount"),  # a socket on this machine
    ("auto", "unix:///run/user/1000/docker.sock", ("OTHER", "vm", "/x"), LOCAL, "mount"),
    ("auto", "tcp://127.0.0.1:2375", LOCAL, LOCAL, "mount"),  # this machine's engine over tcp
    ("auto", "tcp://127.0.0.1:2376", ("KKN5:BBBB", "vm", "/var/lib/docker-remote"), LOCAL, "copy"),
    ("auto", "tcp://gpu-box:2376", (LOCAL[0], "gpu-box", LOCAL[2]), LOCAL, "copy"),  # a cloned engine ID
    ("auto", "tcp://127.0.0.1:2375", LOCAL, (LOCAL[0], "vm", "/var/lib/docker-2"), "copy"),  # 2nd engine here
    ("auto", "ssh://me@gpu-box", ("X", "gpu-box", "/var/lib/docker"), LOCAL, "copy"),
    ("auto", "tcp://gpu-box:2376", ("X", "b", "/d"), None, "copy"),  # no local engine to compare with
    ("auto", "tcp://gpu-box:2376", None, LOCAL, "copy"),  # the engine did not say who it is
    ("mount", "tcp://gpu-box:2376", ("X", "b", "/d"), LOCAL, "mount"),  # the block says: shared file system
    ("copy", "unix:///var/run/docker.sock", LOCAL, LOCAL, "copy"),
])
def test_transfer_is_mount_for_this_machines_engine_and_copy_for_any_other(setting, address, target, local,
                                                                          expected):
    from prefect_ml.infrastructure.docker_client import choose_transfer

    mode, why = choose_transfer(setting, address, target, local)
    assert mode == expected
    assert address in why or f"transfer={setting!r}" in why


def test_transfer_auto_on_a_unix_socket_does_not_ask_the_engine():
    from prefect_ml.infrastructure.docker_client import engine_transfer

    class NoInfo:
        def info(self):
            raise AssertionError("a unix socket is this machine's engine: no need to ask")

    from prefect_docker import DockerHost

    assert engine_transfer(NoInfo(), "auto", DockerHost(base_url="unix:///var/run/docker.sock"))[0] == "mount"


def test_engine_identity_is_id_host_and_data_root():
    from prefect_ml.infrastructure.docker_client import engine_identity

    assert engine_identity({"ID": "A:B", "Name": "vm", "DockerRootDir": "/d", "x": 1}) == ("A:B", "vm", "/d")
    assert engine_identity({}) is None


def test_transfer_field_is_validated_on_the_block():
    from pydantic import ValidationError

    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    assert DockerStepInfrastructure().transfer == "auto"
    assert DockerStepInfrastructure(transfer="copy").container_options("copy").transfer == "copy"
    with pytest.raises(ValidationError):
        DockerStepInfrastructure(transfer="rsync")


def test_copy_in_archive_has_the_mount_layout_read_only_and_owned_as_mounts(tmp_path):
    import tarfile

    from prefect_ml.infrastructure.archive import Place, pack

    code = tmp_path / "code"
    code.mkdir()
    (code / "step.py").write_text("print(1)\n")
    (code / "step.py").chmod(0o664)
    (code / "link").symlink_to("step.py")
    out = tmp_path / "staging"
    (out / "model").mkdir(parents=True)
    data = tmp_path / "in.csv"
    data.write_text("a,b\n")
    places = [Place(code, "/prefect-ml/code"), Place(data, "/prefect-ml/inputs/data/in.csv"),
              Place(out, "/prefect-ml/outputs", writable=True)]
    archive, files, size = pack(places, uid=1234, gid=99, dirs=["/prefect-ml", "/prefect-ml/inputs/data"])
    with archive, tarfile.open(fileobj=archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert files == 2 and size == len("print(1)\n") + len("a,b\n")
    assert list(members)[:2] == ["prefect-ml", "prefect-ml/inputs/data"]  # parents first, root-owned
    assert members["prefect-ml"].uid == 0 and members["prefect-ml"].mode == 0o755
    assert members["prefect-ml/code/step.py"].mode & 0o222 == 0  # read-only, as a read-only mount
    assert members["prefect-ml/code/link"].issym() and members["prefect-ml/code/link"].linkname == "step.py"
    assert members["prefect-ml/inputs/data/in.csv"].isreg()
    for name in ("prefect-ml/outputs", "prefect-ml/outputs/model"):  # the container user's
        assert (members[name].uid, members[name].gid, members[name].uname) == (1234, 99, "")


def _tar_stream(entries, top: str) -> list[bytes]:
    """A get_archive-like stream: members under `top/`, in chunks."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(f"{top}/{name}" if name else top)
            info.uid = info.gid = 65534
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o777
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            elif kind == "dev":
                info.type = tarfile.CHRTYPE
                tar.addfile(info)
            else:
                info.size, info.mode = len(payload), 0o4755
                tar.addfile(info, io.BytesIO(payload))
    raw = buf.getvalue()
    return [raw[i:i + 700] for i in range(0, len(raw), 700)]


def test_copy_out_unpacks_into_the_staging_dir_as_the_host_user(tmp_path):
    import os

    from prefect_ml.infrastructure.archive import unpack

    dest = tmp_path / "staging"
    stream = _tar_stream([("", "dir", None), ("model", "dir", None), ("model/MLmodel", "file", b"flavors: {}\n"),
                          ("model/latest", "sym", "MLmodel")], "outputs")
    assert unpack(stream, "outputs", dest) == (1, len(b"flavors: {}\n"))
    mlmodel = dest / "model" / "MLmodel"
    assert mlmodel.read_text() == "flavors: {}\n" and (dest / "model" / "latest").readlink().name == "MLmodel"
    st = os.stat(mlmodel)
    assert st.st_uid == os.getuid() and st.st_mode & 0o7000 == 0  # no ownership, no setuid from the archive


def test_copy_out_refuses_to_write_through_a_link_out_of_the_outputs(tmp_path):
    import tarfile

    from prefect_ml.infrastructure.archive import unpack

    victim = tmp_path / "victim"
    victim.mkdir()
    stream = _tar_stream([("", "dir", None), ("escape", "sym", str(victim)), ("escape/owned", "file", b"x")],
                         "outputs")
    with pytest.raises(tarfile.FilterError):
        unpack(stream, "outputs", tmp_path / "staging")
    assert not (victim / "owned").exists()


def test_copy_out_skips_device_files(tmp_path):
    from prefect_ml.infrastructure.archive import unpack

    stream = _tar_stream([("", "dir", None), ("null", "dev", None), ("ok", "file", b"1")], "outputs")
    try:
        unpack(stream, "outputs", tmp_path / "staging")
    except Exception as exc:  # the data filter refuses special files: a clear refusal is fine too
        assert "special" in str(exc).lower() or "device" in str(exc).lower(), exc
    assert not (tmp_path / "staging" / "null").exists()


# --- GPU blocks: what is missing, said before any image is built (issue #17) -------------------------


def test_gpu_problem_names_the_missing_gpu_or_runtime_with_the_fix():
    from prefect_ml.infrastructure.container import gpu_problem

    who, where = "infrastructure block 'gpu' (DockerStepInfrastructure)", "unix:///var/run/docker.sock"
    ok_engine, no_engine = (True, "runtime nvidia"), (False, "runtimes: runc; no CDI devices")
    assert gpu_problem(who, "all", where, machine=(True, "/dev/nvidia0"), engine=ok_engine) is None

    no_gpu = gpu_problem(who, "all", where, machine=(False, "no /dev/nvidia* device, no nvidia-smi"),
                         engine=ok_engine)
    assert no_gpu and "this machine has no NVIDIA GPU or driver (no /dev/nvidia* device" in no_gpu
    assert "container runtime (" not in no_gpu and "docs/gpu.md" in no_gpu and "`process`" in no_gpu

    no_rt = gpu_problem(who, 1, where, machine=(True, "/dev/nvidia0"), engine=no_engine)
    assert no_rt and f"the Docker engine at {where} has no NVIDIA container runtime (runtimes: runc" in no_rt
    assert "nvidia-ctk runtime configure" in no_rt and "no NVIDIA GPU" not in no_rt and "docs/gpu.md" in no_rt

    both = gpu_problem(who, "all", where, machine=(False, "no /dev/nvidia* device"), engine=no_engine)
    assert both and "no NVIDIA GPU or driver" in both and "no NVIDIA container runtime" in both

    remote = gpu_problem(who, "all", "tcp://gpu-box:2376", machine=None, engine=no_engine)  # its GPUs unseen
    assert remote and "tcp://gpu-box:2376 has no NVIDIA container runtime" in remote and "GPU or driver" not in remote
    for msg in (no_gpu, no_rt, both, remote):
        assert "\n" not in msg and msg.startswith(who)


def test_engine_gpu_support_reads_runtimes_and_cdi():
    from prefect_ml.infrastructure.container import engine_gpu_support

    assert engine_gpu_support({"Runtimes": {"runc": {}, "nvidia": {}}}, local=False)[0]
    assert engine_gpu_support({"Runtimes": {"runc": {}}, "CDISpecDirs": ["/etc/cdi"]}, local=False)[0]
    found, seen = engine_gpu_support({"Runtimes": {"runc": {}, "io.containerd.runc.v2": {}}}, local=False)
    assert not found and seen == "runtimes: io.containerd.runc.v2, runc; no CDI devices"


def test_a_distributed_step_runs_torchrun_with_its_processes_in_one_container(tmp_path, monkeypatch):
    """Docker launches `distribution` as one torchrun instance with N processes (real runs need an image
    with torch: the process infrastructure's torchrun tests are in tests/integration/test_distributed_step.py)."""
    from prefect_ml.dsl.component import Distribution
    from prefect_ml.errors import InfrastructureError
    from prefect_ml.infrastructure import container, distributed
    from prefect_ml.infrastructure.base import StepJob, StepOutcome
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure

    seen: dict = {}

    def fake_run(client, job, image, argv, env, mounts, options, log, copied=()):
        seen.update(argv=argv, env=env)
        return StepOutcome(exit_code=0, last_lines=[])

    monkeypatch.setattr(container, "sweep_orphans", lambda client, log: 0)
    monkeypatch.setattr(container, "_run", fake_run)
    code, out = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    out.mkdir()
    job = StepJob(step_name="train", command="python train.py --model ${{outputs.model}}", code_dir=code, values={},
                  data_inputs={}, outputs={"model": out / "model"},
                  distribution=Distribution(process_count_per_instance=2))
    block = DockerStepInfrastructure()
    distributed.check_supported(block, job.distribution, "train")  # one instance: accepted
    with pytest.raises(InfrastructureError, match="at most 1 per step"):
        distributed.check_supported(block, Distribution(process_count_per_instance=2, instance_count=2), "train")
    lines: list[str] = []
    container.run_container(object(), job, "img", block.container_options(), lines.append)
    argv, env = seen["argv"], seen["env"]
    assert argv[:3] == ["python", "-m", "torch.distributed.run"]
    assert argv[argv.index("--nproc-per-node") + 1] == "2" and argv[argv.index("--nnodes") + 1] == "1"
    command = argv[argv.index("--no-python") + 1:]  # the component's command as written, once per process
    assert command[:3] == ["python", "train.py", "--model"] and command[3].startswith("/prefect-ml/"), command
    assert env["WORLD_SIZE"] == "2" and env["NODE_RANK"] == "0" and env["MASTER_ADDR"] == "127.0.0.1"
    assert env["MASTER_PORT"] == argv[argv.index("--master-port") + 1]
    assert "distributed: 1 x 2 (world size 2)" in lines


def test_the_docker_block_slug_is_known_without_importing_the_block():
    from prefect_ml.infrastructure.docker import DockerStepInfrastructure
    from prefect_ml.infrastructure.resolve import DOCKER_BLOCK_SLUG

    assert DockerStepInfrastructure.get_block_type_slug() == DOCKER_BLOCK_SLUG


def test_process_infrastructure_resolves_without_importing_prefect_docker():
    import subprocess
    import sys

    # no saved block named `process` (the API answers "not found" for both types): the built-in, and
    # prefect-docker (~0.4 s) stays unimported on a run that never uses Docker
    code = (
        "import sys\n"
        "from prefect_ml.infrastructure import resolve\n"
        "resolve._api_available = lambda: True\n"
        "resolve._load = lambda block_type, name: None\n"
        "resolve._maybe_saved = lambda name, slug: False\n"
        "infra = resolve.resolve_infrastructure('process')\n"
        "print(type(infra).__name__, 'prefect_docker' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["ProcessStepInfrastructure", "False"]
