"""`fail(message)`: end the pipeline run as Failed with a message (SageMaker's FailStep)."""

from __future__ import annotations

from prefect_ml.dsl import context
from prefect_ml.errors import PrefectMLError


class PipelineFailed(PrefectMLError, RuntimeError):
    """Raised by `fail(message)`: the pipeline decided to fail (the message says why)."""


def fail(message: str) -> None:
    """End the running pipeline as Failed with `message`.

    Steps already submitted finish first (no orphaned work); then the message is recorded as a Prefect
    markdown artifact (`fail`), tagged on the pipeline's MLflow run (`prefect_ml.fail`), and raised, so
    the flow run ends Failed with it as its state message. In `prefect-ml plan` it is noted instead.

    Example:
        if not gate(search.best.outputs.metrics, "auc", ">=", 0.75):
            fail("no trial reached AUC 0.75")
    """
    if not isinstance(message, str) or not message.strip():
        raise ValueError("fail(message): give a non-empty message saying why the pipeline fails.")
    run = context.active()
    if run is not None and run.planning:
        run.notes.append(f"fail: {message}")
        return
    if run is not None:
        for step in list(run.steps):
            step.wait()
        from prefect import get_run_logger
        from prefect.artifacts import create_markdown_artifact

        from prefect_ml.runtime import tracking

        try:
            create_markdown_artifact(key="fail", markdown=f"### Pipeline failed\n\n{message}",
                                     description=f"fail: {message}"[:500])
        except Exception as exc:  # the failure itself must still happen
            get_run_logger().warning(f"could not write the fail artifact: {exc}")
        if run.spec.mlflow_run_id:
            tracking.set_tags(run.spec.mlflow_run_id, {"prefect_ml.fail": message}, wait=True)
        get_run_logger().error(f"fail: {message}")
    raise PipelineFailed(message)
