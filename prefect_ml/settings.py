"""prefect-ml settings, read from `PREFECT_ML_*` environment variables (Prefect's style)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
        import os

        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home_path / 'mlflow.db'}"

    @property
    def mlflow_artifact_location(self) -> str:
        return (self.home_path / "mlartifacts").as_uri()


def get_settings() -> PrefectMLSettings:
    """Fresh settings from the current environment (cheap; read at each use so tests can change env)."""
    return PrefectMLSettings()
