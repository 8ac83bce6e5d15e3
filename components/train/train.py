"""Train a GradientBoostingClassifier on the train folder and save it as an MLflow model."""

import argparse
import logging
from pathlib import Path

import mlflow.sklearn
import pandas as pd
import sklearn
from mlflow.models import infer_signature
from sklearn.ensemble import GradientBoostingClassifier

TARGET = "default payment next month"

p = argparse.ArgumentParser()
p.add_argument("--train_data", required=True)
p.add_argument("--n_estimators", type=int, default=100)
p.add_argument("--learning_rate", type=float, default=0.1)
p.add_argument("--max_depth", type=int, default=3)
p.add_argument("--model", required=True)
args = p.parse_args()

df = pd.read_csv(Path(args.train_data) / "data.csv")
X, y = df.drop(columns=[TARGET]).astype("float64"), df[TARGET]  # float columns: missing values stay valid in the signature
print(f"training on {len(df)} rows: n_estimators={args.n_estimators} learning_rate={args.learning_rate} max_depth={args.max_depth}")
clf = GradientBoostingClassifier(
    n_estimators=args.n_estimators, learning_rate=args.learning_rate, max_depth=args.max_depth, random_state=0
).fit(X, y)
print(f"train accuracy {clf.score(X, y):.4f}")
# cloudpickle, not MLflow's default skops: skops refuses GradientBoosting's tree internals
# (sklearn.tree._tree.Tree) as untrusted at load time; silence MLflow's generic warning about it
logging.getLogger("mlflow.sklearn").setLevel(logging.ERROR)
# explicit requirements: MLflow would otherwise infer them in a subprocess (seconds per model)
mlflow.sklearn.save_model(
    clf,
    args.model,
    signature=infer_signature(X.head(50), clf.predict_proba(X.head(50))[:, 1]),
    pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}", f"mlflow=={mlflow.__version__}"],
    serialization_format="cloudpickle",
)
print(f"saved MLflow model to {args.model}")
