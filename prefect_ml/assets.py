"""Data assets: named, versioned pointers to data at a URI (like Azure ML data assets).

A pipeline input names one as `data_asset("credit-card", "1")`, which is the string
`asset:credit-card:1` (Azure's `azureml:credit-card:1` and `azureml:credit-card@latest` work too),
so it survives as a Prefect parameter and from the UI or `prefect deployment run --param`.
`azureml://datastores/...` is a datastore path, not an asset (see `prefect_ml.storage.datastores`).
"""

from __future__ import annotations

import re

from prefect_ml.errors import DataAssetError

PREFIXES = ("asset:", "azureml:")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def data_asset(name: str, version: str = "latest") -> str:
    """A reference to version `version` (or `latest`) of the data asset `name`."""
    if not NAME.match(name):
        raise DataAssetError(f"data asset name {name!r} is invalid; use letters, digits, '_', '-', '.'.")
    return f"asset:{name}:{version}"


def is_asset_ref(value: str) -> bool:
    return value.startswith(PREFIXES) and not value.startswith("azureml://")


def parse_ref(ref: str) -> tuple[str, str]:
    """`asset:NAME:VERSION`, `azureml:NAME:VERSION`, `azureml:NAME@latest` -> (NAME, VERSION or 'latest')."""
    body = ref.split(":", 1)[1]
    if "@" in body:
        name, _, label = body.partition("@")
        if label != "latest":
            raise DataAssetError(f"data asset {ref!r}: label '@{label}' is unknown; use @latest or :VERSION.")
        return name, "latest"
    name, _, version = body.partition(":")
    return name, version or "latest"


def resolve_asset(ref: str) -> str:
    """The URI behind an asset reference; raises DataAssetError naming the fix."""
    from prefect_ml.asset_registry import AssetRegistry

    name, version = parse_ref(ref)
    return AssetRegistry.default().resolve(name, version)
