"""Remote staging: prefect-ml's stage in (`storage.stage_in`) and stage out
(`ArtifactRoot.publish`) on S3 (moto server) and Azure Blob (Azurite) vs raw s3fs/adlfs
`get`/`put` of the same bytes, interleaved in one run. Target: >= 80 % of raw throughput.

    python benchmarks/bench_staging.py [--reps 5] [--file-mib 64] [--folder 16x4] [--quick]

Shapes: one file, and a folder of several files. prefect-ml's side includes what it does around
the bytes (fingerprint listing before a download; on publish: the completion check, the upload
verification listing and the completion marker), since that is what a step pays.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _common as c  # noqa: E402

TARGET = 0.80


def make_data(work: Path, file_mib: int, n_files: int, each_mib: int) -> dict[str, tuple[Path, int]]:
    src = work / "src"
    (src / "folder").mkdir(parents=True, exist_ok=True)
    with open(src / "file.bin", "wb") as f:
        for _ in range(file_mib):
            f.write(os.urandom(2**20))
    for i in range(n_files):
        with open(src / "folder" / f"part-{i:03d}.bin", "wb") as f:
            for _ in range(each_mib):
                f.write(os.urandom(2**20))
    return {"file": (src / "file.bin", file_mib * 2**20), "folder": (src / "folder", n_files * each_mib * 2**20)}


def link_tree(src: Path, dest: Path) -> None:
    """Hard-link `src` (file or folder) to `dest`: a staging dir without copying bytes."""
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=os.link)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dest)


def bench_store(store: str, raw_fs, scheme: str, data: dict, work: Path, reps: int) -> dict[str, list[float]]:
    from prefect_ml import storage

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    raw_fs.mkdir(bucket)
    remote_src = {}
    for shape, (path, _) in data.items():  # the objects that stage_in and raw get will read
        dest = f"{bucket}/src/{path.name}"
        raw_fs.put(str(path) + ("/" if path.is_dir() else ""), dest + ("/" if path.is_dir() else ""), recursive=path.is_dir())
        remote_src[shape] = dest
    root = storage.ArtifactRoot(f"{scheme}://{bucket}/root")
    cases = {}
    for shape, (path, _) in data.items():
        def ours_in(shape=shape):
            home = work / f"staging-{uuid.uuid4().hex[:8]}"
            import time

            t0 = time.perf_counter()
            storage.stage_in(f"{scheme}://{remote_src[shape]}", home)
            t = time.perf_counter() - t0
            shutil.rmtree(home)
            return t

        def raw_in(shape=shape, path=path):
            dest = work / f"raw-{uuid.uuid4().hex[:8]}" / path.name
            dest.parent.mkdir()
            import time

            t0 = time.perf_counter()
            if path.is_dir():
                raw_fs.get(remote_src[shape] + "/", str(dest) + "/", recursive=True)
            else:
                raw_fs.get(remote_src[shape], str(dest))
            t = time.perf_counter() - t0
            shutil.rmtree(dest.parent)
            return t

        def ours_out(shape=shape, path=path):
            staging = work / f"out-{uuid.uuid4().hex[:8]}"
            link_tree(path, staging / "data")
            key = uuid.uuid4().hex
            import time

            t0 = time.perf_counter()
            root.publish(key, uuid.uuid4().hex[:12], staging, {"data": "data"}, {"bench": True})
            return time.perf_counter() - t0

        def raw_out(shape=shape, path=path):
            dest = f"{bucket}/raw/{uuid.uuid4().hex}/{path.name}"
            import time

            t0 = time.perf_counter()
            if path.is_dir():
                raw_fs.put(str(path) + "/", dest + "/", recursive=True)
            else:
                raw_fs.put(str(path), dest)
            return time.perf_counter() - t0

        cases.update({f"{store}:{shape}:in:prefect-ml": ours_in, f"{store}:{shape}:in:raw": raw_in,
                      f"{store}:{shape}:out:prefect-ml": ours_out, f"{store}:{shape}:out:raw": raw_out})
    return c.interleave(cases, reps, warmup=1)


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=5)
    p.add_argument("--file-mib", type=int, default=64)
    p.add_argument("--folder", default="16x4", help="FILESxMIB (default 16x4)")
    args = p.parse_args()
    reps = 1 if args.quick else args.reps
    file_mib, (n_files, each) = (4, (4, 1)) if args.quick else (args.file_mib, map(int, args.folder.split("x")))
    run = c.Run("staging", args)
    import servers  # tests/servers.py: real moto and Azurite on 127.0.0.1

    times: dict[str, list[float]] = {}
    skipped = []
    with c.workdir(args, "staging") as work:
        data = make_data(work, file_mib, n_files, each)
        env = c.bench_env(work)
        c.apply_env(env)
        import adlfs
        import s3fs

        with servers.moto_server() as endpoint:
            os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                               "AWS_ENDPOINT_URL": endpoint})
            raw = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint},
                                    skip_instance_cache=True)
            times.update(bench_store("s3 (moto)", raw, "s3", data, work, reps))
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
                os.environ.pop(k)
        try:
            with servers.azurite(work / "azurite") as az:
                os.environ["AZURE_STORAGE_CONNECTION_STRING"] = az["connection_string"]
                raw = adlfs.AzureBlobFileSystem(connection_string=az["connection_string"], skip_instance_cache=True)
                times.update(bench_store("abfs (Azurite)", raw, "abfs", data, work, reps))
        except servers.ServiceUnavailable as exc:
            skipped.append(f"Azurite: {exc}")
    results = {"sizes_mib": {"file": file_mib, "folder": n_files * each}, "folder_files": n_files, "cases": {},
               "skipped": skipped}
    rows = []
    for key in sorted({k.rsplit(":", 1)[0] for k in times}):
        store, shape, direction = key.split(":")
        mib = file_mib if shape == "file" else n_files * each
        ours, raw = c.stats(times[f"{key}:prefect-ml"]), c.stats(times[f"{key}:raw"])
        ratio = raw["median"] / ours["median"]
        results["cases"][key] = {"prefect_ml": ours, "raw": raw, "throughput_ratio": ratio,
                                 "prefect_ml_mib_s": mib / ours["median"], "raw_mib_s": mib / raw["median"]}
        what = "stage_in vs get" if direction == "in" else "publish vs put"
        shape_txt = f"{mib} MiB file" if shape == "file" else f"{n_files} x {each} MiB folder"
        rows.append([store, shape_txt, what, c.fmt_stat(ours), c.fmt_stat(raw),
                     f"{mib / ours['median']:.0f} / {mib / raw['median']:.0f}", f"{ratio:.0%}",
                     f">= {TARGET:.0%}: {'met' if ratio >= TARGET else 'MISSED'}"])
    run.notes += skipped
    run.notes.append("throughput ratio = raw time / prefect-ml time for the same bytes; one warm-up each")
    run.write(results, c.table(["store", "data", "operation", "prefect-ml (s)", "raw (s)", "MiB/s ours / raw",
                                "throughput vs raw", "target"], rows))


if __name__ == "__main__":
    main()
