"""A deployable flow built from an Azure ML pipeline YAML (`type: pipeline`).

Prefect deploys a module-level flow object (`entrypoint: FILE.py:NAME`) and builds the deployment's
Run form from that flow's signature, so the flow must exist when this module is imported: it is
built here from the YAML named by `PREFECT_ML_PIPELINE_YAML` (relative to the project root;
default: flows/credit_default_pipeline.yml). Its parameters are the YAML's `inputs`.

    # prefect.yaml
    deployments:
      - name: yaml
        entrypoint: flows/azure_pipeline.py:azure_pipeline
        work_pool: {name: ml-cpu, job_variables: {env: {PREFECT_ML_PIPELINE_YAML: pipelines/train.yml}}}

Set the same variable when running `prefect deploy` (the Run form is computed then) and in the work
pool's job variables (the flow is rebuilt from the YAML for every run). For several YAML pipelines,
write one two-line module per pipeline instead (`my_flow = load_pipeline_yaml("pipelines/x.yml")`):
each then has its own entrypoint and needs no variable.
"""

import os
from pathlib import Path

from prefect_ml.dsl.azure_pipeline import load_pipeline_yaml

ROOT = Path(__file__).resolve().parent.parent
PIPELINE_YAML = ROOT / os.environ.get("PREFECT_ML_PIPELINE_YAML", "flows/credit_default_pipeline.yml")

azure_pipeline = load_pipeline_yaml(PIPELINE_YAML)

