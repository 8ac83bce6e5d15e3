"""The credit-default pipeline (the seed's Azure ML pipeline) as a Prefect flow.

    data_prep -> train (scikit-learn) or train_torch (PyTorch) -> evaluate -> gate (auc >= min_auc) -> register

Run it: `python flows/credit_default.py` (synthetic sample) or
`python flows/credit_default.py --data path/to/credit_default.csv`;
`--trainer torch [--device cuda] [--epochs 400]` trains the PyTorch MLP instead (see docs/gpu.md).
"""

import argparse
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field
from typing_extensions import Annotated

from prefect_ml import gate, load_component, pipeline, register_model
from prefect_ml.samples import credit_default_sample
from prefect_ml.settings import get_settings

COMPONENTS = Path(__file__).resolve().parent.parent / "components"
data_prep = load_component(COMPONENTS / "data_prep" / "component.yaml")
train = load_component(COMPONENTS / "train" / "component.yaml")
train_torch = load_component(COMPONENTS / "train_torch" / "component.yaml")
evaluate = load_component(COMPONENTS / "evaluate" / "component.yaml")


@pipeline(name="credit-default", log_prints=True)
def credit_default(
    data: Annotated[Optional[str], Field(description="CSV (path, URI or asset:NAME:VERSION) with the UCI credit-default columns; empty = synthetic sample")] = None,
    test_train_ratio: Annotated[float, Field(gt=0.0, lt=1.0, description="Share of rows held out for evaluation")] = 0.25,
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0, description="Gradient boosting learning rate")] = 0.1,
    n_estimators: Annotated[int, Field(ge=1, le=5000, description="Number of boosting stages")] = 100,
    min_auc: Annotated[float, Field(ge=0.0, le=1.0, description="Register the model only if test AUC >= this")] = 0.7,
    registered_model_name: Annotated[str, Field(min_length=1, description="MLflow registered model name")] = "credit_defaults_model",
    train_infrastructure: Annotated[Optional[str], Field(description="Infrastructure block for the train step (e.g. gpu); empty = the pipeline default")] = None,
    request_promotion: Annotated[bool, Field(description="Compare with @champion on auc; when the new model wins, start the promote-model/approval deployment")] = False,
    trainer: Annotated[Literal["sklearn", "torch"], Field(description="sklearn: gradient boosting (components/train); torch: a PyTorch MLP (components/train_torch), on the GPU when there is one")] = "sklearn",
    epochs: Annotated[int, Field(ge=1, le=100000, description="trainer=torch: training epochs (full batch)")] = 200,
    hidden: Annotated[int, Field(ge=1, le=8192, description="trainer=torch: units per hidden layer (2 layers)")] = 64,
    torch_learning_rate: Annotated[float, Field(gt=0.0, le=1.0, description="trainer=torch: Adam learning rate")] = 0.01,
    device: Annotated[Literal["auto", "cuda", "cpu"], Field(description="trainer=torch: auto = CUDA when the train step's host has it; cuda fails the step when it has not")] = "auto",
) -> dict:
    """Credit-default: data_prep -> train (sklearn or torch) -> evaluate -> gate (auc >= min_auc) -> register."""
    if not data:
        sample = get_settings().home_path / "samples" / "credit_default_synthetic.csv"
        # made once; `credit_default_sample` imports numpy and pandas (1-5 s) even when the file exists
        data = str(sample if sample.is_file() else credit_default_sample(sample))
        print(f"no data given: using the synthetic sample {data}")
    prep = data_prep(data=data, test_train_ratio=test_train_ratio)
    if trainer == "torch":
        model = train_torch(train_data=prep.outputs.train_data, epochs=epochs, hidden=hidden,
                            learning_rate=torch_learning_rate, device=device, infrastructure=train_infrastructure)
    else:
        model = train(train_data=prep.outputs.train_data, learning_rate=learning_rate, n_estimators=n_estimators,
                      infrastructure=train_infrastructure)
    report = evaluate(model=model.outputs.model, test_data=prep.outputs.test_data)
    result = {"model": model.outputs.model, "metrics": report.outputs.metrics, "report": report.outputs.report}
    if gate(report.outputs.metrics, "auc", ">=", min_auc):
        result["registered"] = register_model(model.outputs.model, name=registered_model_name, metrics=report.outputs.metrics,
                                              compare_with="champion", metric="auc", direction="max")
        if request_promotion and (result["registered"].get("comparison") or {}).get("wins"):
            from prefect_ml.runtime.promotion import request_approval
            result["promotion_run"] = request_approval(registered_model_name, result["registered"]["version"], log=print)
    else:
        result["registered"] = None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--min-auc", type=float, default=0.7)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--trainer", choices=["sklearn", "torch"], default="sklearn")
    parser.add_argument("--epochs", type=int, default=200, help="trainer torch")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="trainer torch")
    parser.add_argument("--train-infrastructure", default=None, help="infrastructure block of the train step")
    args = parser.parse_args()
    out = credit_default(data=args.data, min_auc=args.min_auc, learning_rate=args.learning_rate,
                         trainer=args.trainer, epochs=args.epochs, device=args.device,
                         train_infrastructure=args.train_infrastructure)
    print(json.dumps(out, indent=2, default=str))
    uri = get_settings().mlflow_tracking_uri
    if out["registered"]:
        print(f"\nRegistered model: {out['registered']['uri']} (version {out['registered']['version']})")
        print(f"Load it:   MLFLOW_TRACKING_URI={uri} python -c \"import mlflow; "
              f"print(mlflow.pyfunc.load_model('{out['registered']['uri']}'))\"")
    else:
        print(f"\nThe gate failed (auc < {args.min_auc}): no model version was registered.")
    import os

    if uri.startswith("http"):
        print(f"MLflow UI: {uri}")
    else:
        print(f"MLflow UI: mlflow ui --backend-store-uri {uri}")
    api = os.environ.get("PREFECT_API_URL", "")
    if api:
        print(f"Prefect UI: {api.removesuffix('/api')}")
    else:
        print("Prefect UI: prefect server start  (then open http://127.0.0.1:4200)")
    if uri.startswith("http://127.0.0.1") or api.startswith("http://127.0.0.1"):
        print("Stop the local servers: prefect-ml server stop")


if __name__ == "__main__":
    main()
