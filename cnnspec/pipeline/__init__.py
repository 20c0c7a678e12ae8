"""The pipeline part: what the DVC stages share. It owns params.yaml and its schema
(params, params_schema.json), the resolved params train and evaluate run with (resolved),
the batch fitted to the data (fit), training recipes (recipes) and the headline metric
(headline).

It may import every part below it; only the stages, cnnspec.cli and cnnspec/__init__.py
sit above it.
"""
