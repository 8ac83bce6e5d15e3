"""A function component: train a GradientBoostingClassifier and score it on the test folder.

The sweep in flows/credit_default_sweep.py tunes it. Heavy imports sit inside the function, so
loading this module (in the pipeline process, or in the step before the call) stays cheap; the
step's image needs only the sklearn-cpu environment (the runner serves `prefect_ml` itself).
"""

from typing import Annotated

from prefect_ml import Input, Output, component

TARGET = "default payment next month"


@component(environment="sklearn-cpu")
def train_and_score(
    train_data: Input("uri_folder"),
    test_data: Input("uri_folder"),
    model: Output("mlflow_model"),
    learning_rate: Annotated[float, Input(min=0.0001, max=1.0)] = 0.1,
    n_estimators: Annotated[int, Input(min=1, max=5000)] = 100,
    max_depth: Annotated[int, Input(min=1, max=16)] = 3,
    subsample: Annotated[float, Input(min=0.1, max=1.0)] = 1.0,
) -> dict:
    """Fit on train_data, save the MLflow model, return test AUC/accuracy and train accuracy."""
    import logging
    from pathlib import Path

    import mlflow
    import mlflow.sklearn
    import pandas as pd
    import sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import accuracy_score, roc_auc_score

    train = pd.read_csv(Path(train_data) / "data.csv")
    test = pd.read_csv(Path(test_data) / "data.csv")
    X, y = train.drop(columns=[TARGET]).astype("float64"), train[TARGET]
    Xt, yt = test.drop(columns=[TARGET]).astype("float64"), test[TARGET]
    clf = GradientBoostingClassifier(learning_rate=learning_rate, n_estimators=n_estimators, max_depth=max_depth,
                                     subsample=subsample, random_state=0).fit(X, y)
    proba = clf.predict_proba(Xt)[:, 1]
    scores = {"auc": float(roc_auc_score(yt, proba)), "accuracy": float(accuracy_score(yt, proba >= 0.5)),
              "train_accuracy": float(clf.score(X, y))}
    print(f"lr={learning_rate:.4g} n={n_estimators} depth={max_depth} subsample={subsample:.3g}: {scores}")
    logging.getLogger("mlflow.sklearn").setLevel(logging.ERROR)
    mlflow.sklearn.save_model(
        clf, model, signature=infer_signature(X.head(50), proba[:50]),
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}",
                          f"mlflow=={mlflow.__version__}"],
        serialization_format="cloudpickle",
    )
    return scores
