"""What users write: components (`component`), pipelines (`pipeline`), gates (`gate`), registration (`model`).

Deliberately empty: `dsl.component`, `dsl.step` and `dsl.context` sit low in the layer order
(the runtime uses the component spec), while `dsl.pipeline`, `dsl.gate` and `dsl.model` sit
above the runtime. Importing one must not import the others.
"""
