"""The credit-default pipeline with a hyperparameter sweep (an Azure sweep job / SageMaker tuning step).

    data_prep -> sweep over train_and_score (>= 12 trials, max_concurrent at once) -> gate on the best
    trial's AUC -> register the best model (or fail the run with the reason)

Run it: `python flows/credit_default_sweep.py` (synthetic sample) or
`python flows/credit_default_sweep.py --data path/to/credit_default.csv --max-trials 16`.
See which trials a run would reuse: `prefect-ml plan flows/credit_default_sweep.py:credit_default_sweep`.
"""

import argparse
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field
from typing_extensions import Annotated

from prefect_ml import fail, gate, load_component, load_function_component, pipeline, register_model, sweep
from prefect_ml.samples import credit_default_sample
from prefect_ml.search import choice, loguniform, randint, uniform
from prefect_ml.settings import get_settings

COMPONENTS = Path(__file__).resolve().parent.parent / "components"
data_prep = load_component(COMPONENTS / "data_prep" / "component.yaml")
train_and_score = load_function_component(f"{COMPONENTS / 'train_score' / 'train_score.py'}:train_and_score")


@pipeline(name="credit-default-sweep", log_prints=True)
def credit_default_sweep(
    data: Annotated[Optional[str], Field(description="CSV (path, URI or asset:NAME:VERSION) with the UCI credit-default columns; empty = synthetic sample")] = None,
    max_trials: Annotated[int, Field(ge=1, le=500, description="Trials in the sweep")] = 12,
    max_concurrent: Annotated[int, Field(ge=1, le=64, description="Trials running at once")] = 4,
    sampler: Annotated[Literal["random", "tpe"], Field(description="random (seeded: a re-run reuses every trial) or tpe (Optuna)")] = "random",
    seed: Annotated[int, Field(description="Sampler seed")] = 0,
    min_auc: Annotated[float, Field(ge=0.0, le=1.0, description="Register the best model only if its test AUC >= this")] = 0.7,
    registered_model_name: Annotated[str, Field(min_length=1, description="MLflow registered model name")] = "credit_defaults_model",
) -> dict:
    """Credit-default sweep: data_prep -> sweep(train_and_score) -> gate (best auc >= min_auc) -> register."""
    if not data:
        sample = get_settings().home_path / "samples" / "credit_default_synthetic.csv"
        data = str(sample if sample.is_file() else credit_default_sample(sample))
        print(f"no data given: using the synthetic sample {data}")
    prep = data_prep(data=data, test_train_ratio=0.25)
    search = sweep(
        train_and_score,
        inputs={"train_data": prep.outputs.train_data, "test_data": prep.outputs.test_data},
        search_space={"learning_rate": loguniform(0.01, 0.3), "n_estimators": choice([50, 100, 150]),
                      "max_depth": randint(2, 4), "subsample": uniform(0.6, 1.0)},
        objective=("auc", "max"), max_trials=max_trials, max_concurrent=max_concurrent, sampler=sampler, seed=seed,
    )
    best = search.best
    print(f"best trial {best.number} ({best.name}): auc={best.value} params={best.params}")
    if not gate(best.outputs.metrics, "auc", ">=", min_auc):
        fail(f"no trial reached AUC {min_auc} (best: {best.value}, trial {best.number})")
    registered = register_model(best.outputs.model, name=registered_model_name, metrics=best.outputs.metrics,
                                tags={"sweep.best_trial": best.name, **{f"sweep.{k}": str(v) for k, v in best.params.items()}})
    return {"best_params": best.params, "best_auc": best.value, "model": best.outputs.model, "registered": registered,
            "trials": [{"trial": t.number, "state": t.state, "auc": t.value, **t.params} for t in search.trials]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--max-trials", type=int, default=12)
    parser.add_argument("--max-concurrent", type=int, default=4)
    parser.add_argument("--sampler", default="random", choices=["random", "tpe"])
    parser.add_argument("--min-auc", type=float, default=0.7)
    args = parser.parse_args()
    out = credit_default_sweep(data=args.data, max_trials=args.max_trials, max_concurrent=args.max_concurrent,
                               sampler=args.sampler, min_auc=args.min_auc)
    print(json.dumps(out, indent=2, default=str))
    print(f"\nRegistered model: {out['registered']['uri']} (version {out['registered']['version']})")


if __name__ == "__main__":
    main()
