"""Running a step: the lifecycle (decide -> stage-in -> execute -> verify -> publish), the Prefect
task around it, observers (MLflow tracking, lineage, Prefect artifacts) and model registration."""
