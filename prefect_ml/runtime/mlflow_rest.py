"""The MLflow REST API for an http(s) tracking URI, with httpx (already imported by Prefect).

Why: `import mlflow` costs 2 s on a quiet machine and 6-7 s on a loaded one, and a cached re-run
needs only a handful of calls (experiment by name, create run, log-batch, update run, search model
versions by tag, set alias). Through this module such a run never imports `mlflow`. Registering a
NEW model version (artifact upload + create_model_version) still uses the mlflow library
(`tracking.client()`).

Endpoints and message fields are those of mlflow 3.17's server (`mlflow.server.handlers.get_endpoints`,
`mlflow/protos/service.proto`, `model_registry.proto`): `/api/2.0/mlflow/...`. Errors come back as
`{"error_code": ..., "message": ...}` and raise `MlflowRestError` with both.

Auth and TLS follow MLflow's own environment variables: `MLFLOW_TRACKING_TOKEN` (bearer),
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` (basic), `MLFLOW_TRACKING_INSECURE_TLS`,
`MLFLOW_TRACKING_SERVER_CERT_PATH`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

API = "/api/2.0/mlflow"
# MLflow's LogBatch limits (mlflow/utils/validation.py): 1000 entities, at most 100 params / 100 tags.
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000


class MlflowRestError(RuntimeError):
    """The MLflow server answered with an error (or did not answer)."""

    def __init__(self, message: str, *, error_code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message  # as on MlflowException
        self.error_code = error_code
        self.status = status


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class MlflowRest:
    """A small, thread-safe client for the calls on a pipeline's hot path."""

    def __init__(self, tracking_uri: str, *, timeout: float = 30.0) -> None:
        import httpx

        self.base = tracking_uri.rstrip("/")
        headers = {}
        auth = None
        if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {token}"
        elif (user := os.environ.get("MLFLOW_TRACKING_USERNAME")) is not None:
            auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        verify: bool | str = True
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            verify = False
        elif cert := os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            verify = cert
        # a loopback server is reached directly, never through an HTTP(S)_PROXY
        loopback = self.base.split("://", 1)[-1].startswith(("127.0.0.1", "localhost", "[::1]"))
        self._http = httpx.Client(base_url=self.base + API, headers=headers, auth=auth, verify=verify,
                                  timeout=timeout, trust_env=not loopback)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Mapping[str, Any] | None = None,
              params: Mapping[str, Any] | None = None, attempts: int = 3) -> dict[str, Any]:
        import httpx

        for attempt in range(1, attempts + 1):
            try:
                resp = self._http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:  # connection refused/reset: retry, then say where
                if attempt < attempts:
                    time.sleep(0.2 * attempt)
                    continue
                raise MlflowRestError(f"MLflow server {self.base} did not answer {method} {path}: {exc}") from exc
            if resp.status_code >= 500 and attempt < attempts:
                time.sleep(0.2 * attempt)
                continue
            try:
                body = resp.json() if resp.content else {}
            except ValueError:
                body = {"message": resp.text[:500]}
            if resp.status_code >= 400:
                raise MlflowRestError(
                    f"MLflow {method} {path}: HTTP {resp.status_code} {body.get('error_code', '')}: "
                    f"{body.get('message', '')}".strip(),
                    error_code=str(body.get("error_code", "")), status=resp.status_code,
                )
            return body
        raise AssertionError("unreachable")

    # --- experiments and runs ---------------------------------------------------------------------

    def get_experiment_id(self, name: str) -> str | None:
        try:
            body = self._call("GET", "/experiments/get-by-name", params={"experiment_name": name})
        except MlflowRestError as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return str(body["experiment"]["experiment_id"])

    def create_experiment(self, name: str, artifact_location: str | None = None) -> str:
        payload: dict[str, Any] = {"name": name}
        if artifact_location:
            payload["artifact_location"] = artifact_location
        return str(self._call("POST", "/experiments/create", json=payload)["experiment_id"])

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
        all_tags = {"mlflow.runName": run_name, **tags}
        body = self._call("POST", "/runs/create", json={
            "experiment_id": experiment_id, "run_name": run_name, "start_time": _now_ms(),
            "tags": [{"key": k, "value": str(v)} for k, v in all_tags.items()],
        })
        return str(body["run"]["info"]["run_id"])

    def log_batch(self, run_id: str, *, params: Mapping[str, str] | None = None,
                  metrics: Iterable[tuple[str, float, int, int]] = (),
                  tags: Mapping[str, str] | None = None) -> None:
        """Params, metrics (key, value, timestamp ms, step) and tags, split to fit MLflow's limits."""
        p = [{"key": k, "value": v} for k, v in (params or {}).items()]
        m = [{"key": k, "value": v, "timestamp": ts, "step": st} for k, v, ts, st in metrics]
        t = [{"key": k, "value": v} for k, v in (tags or {}).items()]
        while p or m or t:
            bp, p = p[:MAX_PARAMS_PER_BATCH], p[MAX_PARAMS_PER_BATCH:]
            bt, t = t[:MAX_TAGS_PER_BATCH], t[MAX_TAGS_PER_BATCH:]
            room = MAX_ENTITIES_PER_BATCH - len(bp) - len(bt)
            bm, m = m[:room], m[room:]
            self._call("POST", "/runs/log-batch", json={"run_id": run_id, "params": bp, "metrics": bm, "tags": bt})

    def update_run(self, run_id: str, status: str) -> None:
        self._call("POST", "/runs/update", json={"run_id": run_id, "status": status, "end_time": _now_ms()})

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._call("POST", "/runs/set-tag", json={"run_id": run_id, "key": key, "value": value})

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", "/runs/get", params={"run_id": run_id})["run"])

    # --- model registry -----------------------------------------------------------------------------

    def search_model_versions(self, filter_string: str, max_results: int = 1000) -> list[dict[str, Any]]:
        """Model versions matching `filter_string` (MLflow's search syntax), every page."""
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"filter": filter_string, "max_results": max_results}
            if token:
                params["page_token"] = token
            body = self._call("GET", "/model-versions/search", params=params)
            found += body.get("model_versions", [])
            token = body.get("next_page_token")
            if not token:
                return found

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        self._call("POST", "/registered-models/alias", json={"name": name, "alias": alias, "version": str(version)})

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        # MLflow reads the arguments of a DELETE from its JSON body, not the query string
        self._call("DELETE", "/registered-models/alias", json={"name": name, "alias": alias})

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._call("POST", "/registered-models/set-tag", json={"name": name, "key": key, "value": value})


    def get_registered_model(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", "/registered-models/get", params={"name": name})["registered_model"])

    def get_model_version(self, name: str, version: str | int) -> dict[str, Any]:
        return dict(self._call("GET", "/model-versions/get",
                               params={"name": name, "version": str(version)})["model_version"])

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        self._call("POST", "/model-versions/set-tag",
                   json={"name": name, "version": str(version), "key": key, "value": value})

    def search_registered_models(self, filter_string: str = "", max_results: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"max_results": max_results}
        if filter_string:
            params["filter"] = filter_string
        return list(self._call("GET", "/registered-models/search", params=params).get("registered_models", []))


# --- the registry calls in MlflowClient's shape ------------------------------------------------------------


class RestModelVersion:
    """What `MlflowClient` returns as a `ModelVersion`, for the attributes prefect-ml reads."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        self.name = str(d.get("name", ""))
        self.version = str(d.get("version", ""))
        self.run_id = d.get("run_id") or None
        self.source = d.get("source", "")
        self.status = d.get("status", "")
        self.creation_timestamp = int(d.get("creation_timestamp") or 0)
        self.last_updated_timestamp = int(d.get("last_updated_timestamp") or 0)
        self.description = d.get("description", "")
        self.tags = {t["key"]: t.get("value", "") for t in d.get("tags", [])}
        self.aliases = list(d.get("aliases", []))


class RestRegisteredModel:
    """What `MlflowClient` returns as a `RegisteredModel`, for the attributes prefect-ml reads."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        self.name = str(d.get("name", ""))
        self.description = d.get("description", "")
        self.tags = {t["key"]: t.get("value", "") for t in d.get("tags", [])}
        self.aliases = {a["alias"]: str(a["version"]) for a in d.get("aliases", [])}
        self.latest_versions = [RestModelVersion(v) for v in d.get("latest_versions", [])]


class RestRegistry:
    """The model-registry methods of `MlflowClient` (same names and arguments) over the REST API, so
    reading and re-pointing aliases against a server never imports `mlflow`. Errors are
    `MlflowRestError` (with `error_code` and `message`, like `MlflowException`)."""

    def __init__(self, rest: MlflowRest) -> None:
        self.rest = rest

    def get_registered_model(self, name: str) -> RestRegisteredModel:
        return RestRegisteredModel(self.rest.get_registered_model(name))

    def get_model_version(self, name: str, version: str | int) -> RestModelVersion:
        return RestModelVersion(self.rest.get_model_version(name, version))

    def search_model_versions(self, filter_string: str = "", max_results: int = 1000) -> list[RestModelVersion]:
        return [RestModelVersion(v) for v in self.rest.search_model_versions(filter_string, max_results)]

    def search_registered_models(self, filter_string: str = "", max_results: int = 100) -> list[RestRegisteredModel]:
        return [RestRegisteredModel(m) for m in self.rest.search_registered_models(filter_string, max_results)]

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: Any) -> None:
        self.rest.set_model_version_tag(name, version, key, str(value))

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        self.rest.set_registered_model_alias(name, alias, version)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self.rest.delete_registered_model_alias(name, alias)

    def set_registered_model_tag(self, name: str, key: str, value: Any) -> None:
        self.rest.set_registered_model_tag(name, key, str(value))


def _now_ms() -> int:
    return int(time.time() * 1000)
