"""Score the model on the test split: metrics JSON and an ROC curve PNG."""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow.sklearn  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as m  # noqa: E402

TARGET = "default payment next month"

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--test_data", required=True)
p.add_argument("--metrics", required=True)
p.add_argument("--report", required=True)
args = p.parse_args()

df = pd.read_csv(Path(args.test_data) / "data.csv")
X, y = df.drop(columns=[TARGET]).astype("float64"), df[TARGET]
model = mlflow.sklearn.load_model(args.model)
proba = model.predict_proba(X)[:, 1]
pred = (proba >= 0.5).astype(int)
scores = {
    "auc": m.roc_auc_score(y, proba),
    "accuracy": m.accuracy_score(y, pred),
    "precision": m.precision_score(y, pred, zero_division=0),
    "recall": m.recall_score(y, pred, zero_division=0),
    "f1": m.f1_score(y, pred, zero_division=0),
}
Path(args.metrics).write_text(json.dumps(scores, indent=2))
print(json.dumps(scores))
fpr, tpr, _ = m.roc_curve(y, proba)
fig, ax = plt.subplots(figsize=(5, 5))
ax.plot(fpr, tpr, label=f"AUC = {scores['auc']:.3f}")
ax.plot([0, 1], [0, 1], "--", color="grey")
ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
ax.legend(loc="lower right")
Path(args.report).mkdir(parents=True, exist_ok=True)
fig.savefig(Path(args.report) / "roc_curve.png", dpi=100)
print(f"wrote {Path(args.report) / 'roc_curve.png'}")
