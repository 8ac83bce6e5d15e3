"""Score CSV data with a registered MLflow model version; write predictions and the model version."""

import argparse
import json
from pathlib import Path

import mlflow
import pandas as pd

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--model_name", required=True)
p.add_argument("--model_version", type=int, required=True)
p.add_argument("--drop_columns", default="")
p.add_argument("--predictions", required=True)
args = p.parse_args()

data = Path(args.data)
files = sorted(data.glob("*.csv")) if data.is_dir() else [data]
if not files:
    raise SystemExit(f"no *.csv files in {data}")
df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
dropped = [c for c in args.drop_columns.split(",") if c and c in df.columns]
features = df.drop(columns=dropped)

uri = f"models:/{args.model_name}/{args.model_version}"
client = mlflow.MlflowClient()
version = client.get_model_version(args.model_name, str(args.model_version))
print(f"scoring {len(df)} rows from {len(files)} file(s) with {uri} (run {version.run_id})")
try:  # a scikit-learn classifier: the positive-class probability, as the evaluate step scores it
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(uri)
    inputs = model.feature_names_in_ if hasattr(model, "feature_names_in_") else features.columns
    X = features[list(inputs)].astype("float64")
    scores = model.predict_proba(X)[:, 1] if hasattr(model, "predict_proba") else model.predict(X)
except mlflow.exceptions.MlflowException:  # another flavour: the generic pyfunc prediction
    scores = mlflow.pyfunc.load_model(uri).predict(features)

out = Path(args.predictions)
out.mkdir(parents=True, exist_ok=True)
result = df.copy()
result["prediction"] = list(scores)
result.to_csv(out / "predictions.csv", index=False)
meta = {"model_name": args.model_name, "model_version": args.model_version, "model_uri": uri,
        "source_run": version.run_id, "rows": len(df), "files": [f.name for f in files]}
(out / "model.json").write_text(json.dumps(meta, indent=2))
print(f"wrote {out / 'predictions.csv'} ({len(df)} rows) and model.json: version {args.model_version}")
