"""Azure ML datastores -> URIs: `azureml://datastores/<name>/paths/<path>` through a datastore map.

Azure files address data on a registered datastore. Here a datastore is a name for a root URI,
listed in a `datastores.yaml` (the first found: the current directory and its parents, then
`<PREFECT_ML_HOME>/datastores.yaml`):

    workspaceblobstore: abfs://azureml-blobstore-0000      # Azure Blob / ADLS (adlfs)
    training_data: s3://my-bucket/azure-data                # S3
    local_share: /mnt/shared/data                           # a local folder (relative: to this file's folder)

so `azureml://datastores/training_data/paths/credit/2024.csv` reads
`s3://my-bucket/azure-data/credit/2024.csv`. The long workspace form
(`azureml://subscriptions/../workspaces/../datastores/<name>/paths/<path>`) resolves the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from prefect_ml._util import load_yaml_file
from prefect_ml.errors import StorageError

MAP_FILE = "datastores.yaml"
DATASTORE_URI = re.compile(r"^azureml://(?:.*/)?datastores/(?P<name>[^/]+)/paths/(?P<path>.*)$")


def map_files() -> list[Path]:
    """Where datastore maps are looked for, in order (existing or not)."""
    from prefect_ml.settings import get_settings

    here = Path.cwd().resolve()
    found = [d / MAP_FILE for d in (here, *here.parents) if (d / MAP_FILE).is_file()][:1]
    return [*found, get_settings().home_path / MAP_FILE]


def load_map() -> tuple[dict[str, str], list[Path]]:
    """datastore name -> root URI (the first map that names it wins), and the files searched. A relative
    local root (`local_share: ./data`) is relative to the folder of the map that names it, not the cwd."""
    files = map_files()
    out: dict[str, str] = {}
    for f in files:
        if not f.is_file():
            continue
        raw = load_yaml_file(f, StorageError) or {}
        if not isinstance(raw, Mapping) or not all(isinstance(v, str) for v in raw.values()):
            raise StorageError(f"{f}: a datastore map maps names to root URIs (`workspaceblobstore: abfs://container`).")
        for k, v in raw.items():
            out.setdefault(str(k), _root(v, f))
    return out, files


def _root(value: str, map_file: Path) -> str:
    """A root URI as written in `map_file`; a local path becomes a file:// URI, relative to the map's folder."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return (path if path.is_absolute() else map_file.resolve().parent / path).resolve().as_uri()


def resolve_datastore_uri(uri: str) -> str:
    """The URI behind `azureml://datastores/<name>/paths/<path>`; other azureml:// URIs are refused."""
    m = DATASTORE_URI.match(uri)
    if not m:
        raise StorageError(
            f"{uri!r}: only azureml://datastores/<name>/paths/<path> URIs are known here (a data asset is "
            "written azureml:NAME:VERSION or azureml:NAME@latest)."
        )
    stores, files = load_map()
    name = m.group("name")
    if name not in stores:
        raise StorageError(
            f"{uri!r}: datastore {name!r} is not in a datastore map; add `{name}: <root URI>` (abfs://, s3:// or a "
            f"local path) to {files[0]} (searched: {', '.join(str(f) for f in files)})."
        )
    root = stores[name]
    return root.rstrip("/") + "/" + m.group("path").lstrip("/")
