"""prefect-ml settings, read from `PREFECT_ML_*` environment variables (Prefect's style)."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Settings that describe this machine rather than the run: a step on a Dask worker takes these from
# the worker's own environment and everything else from the run's snapshot (`for_this_machine`).
MACHINE_LOCAL = ("home", "environments_dir", "build_ca_bundle", "installer",
                 "server_host", "server_prefect_port", "server_mlflow_port", "server_start_timeout")


class PrefectMLSettings(BaseSettings):
    """Settings for prefect-ml. Each field reads `PREFECT_ML_<NAME>` from the environment."""

    model_config = SettingsConfigDict(env_prefix="PREFECT_ML_", extra="ignore")

    home: Path = Field(
        default=Path("~/.prefect-ml"),
        description="Holds the default artifact root, the MLflow store, venvs and staging dirs.",
    )
    artifact_root: str | None = Field(
        default=None,
        description="fsspec URI under which step outputs are written (file://, s3://, abfs://). "
        "Default: file://<home>/artifacts.",
    )
    infrastructure: str = Field(
        default="process",
        description="Infrastructure for steps that name none: a saved block name, or `process` / `docker`.",
    )
    cache: bool = Field(default=True, description="Reuse outputs of steps whose cache key is unchanged.")
    base_image: str = Field(
        default="python:3.11-slim", description="Base image for environments that name none."
    )
    build_ca_bundle: str | None = Field(
        default=None,
        description="CA bundle for image builds (TLS-inspecting proxies); default: the host's "
        "/etc/ssl/certs/ca-certificates.crt when present; `none` turns it off. When set, also mounted into containers.",
    )
    environments_dir: str | None = Field(
        default=None,
        description="Directories holding environments/<name>/environment.yaml, separated by os.pathsep; "
        "searched before walking up from a component's code dir.",
    )
    storage_options: str | None = Field(
        default=None,
        description="JSON object of fsspec storage options per protocol, e.g. "
        '{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}. Prefer the standard credential chains for secrets.',
    )

    storage_options_block: str | None = Field(
        default=None,
        description="Name of a saved Secret or JSON block holding storage options keyed by protocol (for secrets).",
    )
    asset_registry: str | None = Field(
        default=None, description="URI of the data asset registry. Default: <artifact root>/assets."
    )

    installer: str = Field(
        default="uv",
        description="Package installer for image builds and process venvs: `uv` (installed into the image's venv "
        "first; seconds where pip takes minutes) or `pip`. With `uv`, pip is still the fallback when uv cannot "
        "be installed or run.",
    )
    task_runner: str = Field(
        default="threads",
        description="Where a pipeline's steps run when the pipeline names no task runner: `threads` (Prefect's "
        "thread pool in the pipeline's process) or `dask` (prefect-dask's DaskTaskRunner; see dask_address).",
    )
    dask_address: str | None = Field(
        default=None,
        description="Scheduler of the Dask cluster for `task_runner=dask`, e.g. tcp://127.0.0.1:8786. Unset: "
        "a temporary local cluster on this machine.",
    )
    server_host: str = Field(
        default="127.0.0.1",
        description="Address `prefect-ml server start` binds the local Prefect and MLflow servers to (loopback).",
    )
    server_prefect_port: int = Field(
        default=4200, description="Port of the local Prefect server started by `prefect-ml server start`."
    )
    server_mlflow_port: int = Field(
        default=5000, description="Port of the local MLflow server started by `prefect-ml server start`."
    )
    server_start_timeout: float = Field(
        default=240.0,
        description="Seconds `prefect-ml server start` waits for both servers to answer their health checks.",
    )

    # MLFLOW_TRACKING_URI as it was when these settings were read: a snapshot of them (RunSpec.settings)
    # carries the tracking store to a step on another machine. Pickled with the model.
    _mlflow_tracking_uri: str | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._mlflow_tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None

    def for_this_machine(self, local: PrefectMLSettings | None = None) -> PrefectMLSettings:
        """These (a run's) settings as a step on another machine sees them: the machine-local ones
        (`MACHINE_LOCAL`: home, environment dirs, CA bundle, ...) from `local` (default: this process's
        environment), everything else, MLflow's tracking URI included, from these."""
        local = local or PrefectMLSettings()
        artifact_root = self.artifact_root or self.resolved_artifact_root  # a default root names the run's home
        view = self.model_copy(update={**{k: getattr(local, k) for k in MACHINE_LOCAL}, "artifact_root": artifact_root})
        view._mlflow_tracking_uri = self.mlflow_tracking_uri  # a default store also names the run's home
        return view

    @property
    def server_dir(self) -> Path:
        """Pid and log files of the local servers."""
        return self.home_path / "server"

    @property
    def home_path(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_artifact_root(self) -> str:
        if self.artifact_root:
            return self.artifact_root.rstrip("/")
        return (self.home_path / "artifacts").as_uri()

    @property
    def mlflow_tracking_uri(self) -> str:
        """MLFLOW_TRACKING_URI when these settings were read, else the SQLite store in the home."""
        return self._mlflow_tracking_uri or f"sqlite:///{self.home_path / 'mlflow.db'}"

    @property
    def mlflow_artifact_location(self) -> str:
        return (self.home_path / "mlartifacts").as_uri()


_active: ContextVar[PrefectMLSettings | None] = ContextVar("prefect_ml_settings", default=None)


def get_settings() -> PrefectMLSettings:
    """The settings in force: those `use_settings` activated (a pipeline run's snapshot), else the ones
    the environment gives now. Treat them as read-only: they are shared until the environment changes."""
    return _active.get() or _from_environment(_environment_key())


def _environment_key() -> tuple[tuple[str, str], ...]:
    """What the settings are read from: the PREFECT_ML_* variables (any case) and MLFLOW_TRACKING_URI."""
    return tuple(sorted((k, v) for k, v in os.environ.items()
                        if k.upper().startswith("PREFECT_ML_") or k == "MLFLOW_TRACKING_URI"))


@functools.lru_cache(maxsize=8)
def _from_environment(key: tuple[tuple[str, str], ...]) -> PrefectMLSettings:
    # building settings costs ~1 ms of CPU (pydantic-settings walks every field against the
    # environment); a step used to rebuild them a dozen times, from its thread and the background writers
    return PrefectMLSettings()


@contextlib.contextmanager
def use_settings(settings: PrefectMLSettings) -> Iterator[PrefectMLSettings]:
    """Make `settings` what `get_settings()` returns in this context (this thread, and the contexts
    copied from it), e.g. a run's snapshot while its step runs on a Dask worker."""
    token = _active.set(settings)
    try:
        yield settings
    finally:
        _active.reset(token)
