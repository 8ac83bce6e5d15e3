"""prefect_ml.storage in a pipeline on a local (file://) artifact root, against the session's Prefect API:
zero-copy passing between steps (the storage code on its own: tests/unit/test_storage.py)."""

import json
import textwrap

from prefect_ml import Input, Output, command, pipeline, storage


def test_one_gib_passes_step_to_step_without_a_copy(env, tmp_path):
    """A 1 GiB (sparse) file from one step to the next on a file:// root: same inode, zero bytes staged."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "big.py").write_text(textwrap.dedent("""
        import json, os, sys
        with open(sys.argv[1], "wb") as f:
            f.truncate(1 << 30)  # sparse: 1 GiB that costs no disk
        st = os.stat(sys.argv[1])
        json.dump({"inode": st.st_ino, "size": st.st_size}, open(sys.argv[2], "w"))
    """))
    make = command(name="make-big", code=code, command="python big.py ${{outputs.big}} ${{outputs.info}}",
                   outputs={"big": Output(type="uri_file"), "info": Output(type="metrics")})
    (code / "use.py").write_text(textwrap.dedent("""
        import json, os, sys
        st = os.stat(sys.argv[1])
        json.dump({"inode": st.st_ino, "size": st.st_size}, open(sys.argv[2], "w"))
    """))
    use = command(name="use-big", code=code, command="python use.py ${{inputs.big}} ${{outputs.info}}",
                  inputs={"big": Input(type="uri_file")}, outputs={"info": Output(type="metrics")})

    @pipeline
    def big_pipe():
        a = make()
        b = use(big=a.outputs.big)
        return {"big": a.outputs.big, "made": a.outputs.info, "seen": b.outputs.info}

    storage.reset_transfer_stats()
    out = big_pipe()
    made = json.loads(storage.local_path(out["made"]).read_text())
    seen = json.loads(storage.local_path(out["seen"]).read_text())
    published = storage.local_path(out["big"]).stat()
    assert published.st_size == seen["size"] == 1 << 30
    assert made["inode"] == seen["inode"] == published.st_ino  # the consumer read the producer's file
    stats = storage.transfer_stats()
    assert stats.bytes_in == stats.bytes_out == 0
