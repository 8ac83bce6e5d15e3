"""Environment reuse: building an unchanged environment (image and venv) must cost < 1 s.

    python benchmarks/bench_environment.py [--reps 5] [--env sklearn-cpu] [--quick]

Cases, interleaved: `environments.ensure_image` (image tag already present), `environments.ensure_venv`
(venv already built), and the CLI a user types, `prefect-ml env build NAME` (a fresh process: its
imports are part of what a user waits for). For scale: `docker image inspect` of the tag (the
floor for "does this image exist") and, once, the cold venv build in a fresh PREFECT_ML_HOME. With
`--cold-build`, also a cold image build (`docker rmi` of the tag first) with uv (the default installer)
and with pip (PREFECT_ML_INSTALLER=pip, the old path), interleaved per repetition. The
image must exist before the run (it is built on first use if not; that cold build is reported but
is not what this benchmark is about). Docker: the base image is PREFECT_ML_BASE_IMAGE (default here:
prefect-ml/base:bookworm, the local base image).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

TARGET_S = 1.0
COLD_TARGET_S = 45.0


def cold_builds(args, spec, client, run) -> dict:
    """Cold builds of the image with uv and with pip, interleaved; each starts from `docker rmi` of its tag."""
    from prefect_ml import environments

    def build(installer: str):
        def go() -> float:
            os.environ["PREFECT_ML_INSTALLER"] = installer
            try:
                base_id = client.images.get(spec.resolved_base_image()).id
                tag = environments.image.image_tag(spec, base_id)
                try:
                    client.images.remove(tag, force=True)
                except Exception:  # noqa: BLE001 - not built yet
                    pass
                # untagged images of earlier builds keep the legacy builder's layer cache: a "cold" build
                # would then reuse their `pip install` layer and take 0.1 s
                client.images.prune(filters={"dangling": True})
                t0 = time.perf_counter()
                environments.ensure_image(environments.load_environment(args.env, start=c.REPO), client)
                return time.perf_counter() - t0
            finally:
                os.environ.pop("PREFECT_ML_INSTALLER", None)
        return go

    times = c.interleave({"uv": build("uv"), "pip": build("pip")}, args.cold_reps)
    out = {k: c.stats(v) for k, v in times.items()}
    run.notes.append("cold image builds: `docker rmi` of the tag and `docker image prune` (dangling images hold the "
                     "layer cache), then `ensure_image` (legacy builder, host network; "
                     "the base image stays); uv = `pip install uv` in the image venv + `uv pip install`, "
                     "pip = `pip install` (the old path)")
    return out


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], reps=5)
    p.add_argument("--env", default="sklearn-cpu")
    p.add_argument("--cold-build", action="store_true",
                   help="also time cold image builds with uv and with pip (minutes; not part of --quick)")
    p.add_argument("--cold-reps", type=int, default=1, help="repetitions of the cold builds (default 1)")
    args = p.parse_args()
    reps = 1 if args.quick else args.reps
    run = c.Run("environment", args)
    with c.workdir(args, "environment") as work:
        env = c.bench_env(work)
        env.setdefault("PREFECT_ML_BASE_IMAGE", "prefect-ml/base:bookworm")
        if os.environ.get("PREFECT_ML_BASE_IMAGE"):
            env["PREFECT_ML_BASE_IMAGE"] = os.environ["PREFECT_ML_BASE_IMAGE"]
        c.apply_env(env)
        os.chdir(c.REPO)
        import docker

        from prefect_ml import environments

        spec = environments.load_environment(args.env, start=c.REPO)
        client = docker.from_env()
        results: dict = {"environment": args.env, "base_image": env["PREFECT_ML_BASE_IMAGE"]}
        t0 = time.perf_counter()
        tag = environments.ensure_image(spec, client)
        first = time.perf_counter() - t0
        results["first_ensure_image_s"] = first
        run.notes.append(f"first ensure_image in this run: {first:.2f} s ({'cold build' if first > 5 else 'already built'}), tag {tag}")
        t0 = time.perf_counter()
        venv = environments.ensure_venv(spec)
        cold_venv = time.perf_counter() - t0
        results["cold_venv_s"] = cold_venv
        cli = str(Path(sys.executable).parent / "prefect-ml")

        def cli_build(*extra):
            subprocess.run([cli, "env", "build", args.env, "--quiet", *extra], check=True, cwd=c.REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        cases = {
            "ensure_image (unchanged)": lambda: environments.ensure_image(environments.load_environment(args.env, start=c.REPO), client),
            "ensure_venv (unchanged)": lambda: environments.ensure_venv(environments.load_environment(args.env, start=c.REPO)),
            "prefect-ml env build (CLI, unchanged image)": cli_build,
            "prefect-ml env build --venv (CLI, unchanged)": lambda: cli_build("--venv"),
            "docker image inspect (floor)": lambda: subprocess.run(["docker", "image", "inspect", tag], check=True,
                                                                   stdout=subprocess.DEVNULL),
        }
        times = c.interleave(cases, reps, warmup=1)
        if args.cold_build:
            results["cold_build"] = cold_builds(args, spec, client, run)
        client.close()
    rows = []
    results["cases"] = {}
    for name, ts in times.items():
        s = c.stats(ts)
        results["cases"][name] = s
        target = "" if "floor" in name else f"< {TARGET_S:.0f} s: {'met' if s['median'] < TARGET_S else 'MISSED'}"
        rows.append([name, c.fmt_stat(s), target])
    rows.append(["venv, cold build in a fresh PREFECT_ML_HOME (once, for scale)", c.fmt_s(cold_venv), ""])
    for installer, s in results.get("cold_build", {}).items():
        met = "met" if s["median"] <= COLD_TARGET_S else "MISSED"
        target = f"<= {COLD_TARGET_S:.0f} s: {met}" if installer == "uv" else ""
        rows.append([f"image, cold build with {installer}", c.fmt_stat(s, 1), target])
    run.notes.append(f"venv: {venv}")
    run.write(results, c.table(["unchanged environment build", "wall (s)", "target"], rows))


if __name__ == "__main__":
    main()
