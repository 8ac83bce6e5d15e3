"""Batch scoring with the registered champion: resolve the alias, then score new data.

    resolve models:/NAME@ALIAS -> version N (before the step) -> batch_score(data, NAME, N)

The alias is resolved to a concrete version first and passed as an input value, so the step's cache
key holds the model version and the data's fingerprint: a second run with the same champion and
the same data is reused (Cached); after a promotion or a rollback it runs again with the new version.

Run it: `python flows/batch_score.py --data new.csv` (synthetic sample when no data is given), or
deploy it (prefect.yaml: `batch-score/nightly`, daily at 07:00 UTC).
"""

import argparse
import json
from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field
from typing_extensions import Annotated

from prefect_ml import load_component, pipeline
from prefect_ml._util import slugify
from prefect_ml.runtime import promotion
from prefect_ml.samples import credit_default_sample
from prefect_ml.settings import get_settings

COMPONENTS = Path(__file__).resolve().parent.parent / "components"
batch_score_component = load_component(COMPONENTS / "batch_score" / "component.yaml")


@task(name="resolve-model", cache_policy=NO_CACHE, persist_result=False)
def resolve_model(model_name: str, alias: str) -> int:
    """The version behind NAME@ALIAS now (a clear error when the model or the alias is unknown)."""
    version = promotion.resolve(model_name, alias)
    get_run_logger().info(f"models:/{model_name}@{alias} is version {version}")
    return version


@pipeline(name="batch-score", log_prints=True)
def batch_score(
    data: Annotated[Optional[str], Field(description="CSV file or folder of CSVs (path, URI or asset:NAME:VERSION); empty = synthetic sample")] = None,
    model_name: Annotated[str, Field(min_length=1, description="Registered model name")] = "credit_defaults_model",
    alias: Annotated[str, Field(min_length=1, description="Score with the version behind this alias")] = "champion",
) -> dict:
    """Score `data` with models:/MODEL_NAME@ALIAS (resolved to a version before the step)."""
    if not data:
        data = str(credit_default_sample(get_settings().home_path / "samples" / "credit_default_synthetic.csv"))
        print(f"no data given: scoring the synthetic sample {data}")
    version = resolve_model(model_name, alias)
    step = batch_score_component(data=data, model_name=model_name, model_version=version)
    predictions = step.outputs.predictions.uri()
    create_markdown_artifact(
        key=f"batch-score-{slugify(model_name)}",
        markdown=(f"### Batch scoring with `{model_name}` version {version} (@{alias})\n\n"
                  f"| model | data | predictions | reused |\n|---|---|---|---|\n"
                  f"| models:/{model_name}/{version} | `{data}` | `{predictions}` | {step.result().cached} |\n"),
        description=f"{model_name} v{version} @{alias}")
    return {"model_name": model_name, "alias": alias, "model_version": version, "predictions": predictions,
            "cached": step.result().cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--model-name", default="credit_defaults_model")
    parser.add_argument("--alias", default="champion")
    args = parser.parse_args()
    print(json.dumps(batch_score(data=args.data, model_name=args.model_name, alias=args.alias), indent=2, default=str))


if __name__ == "__main__":
    main()
