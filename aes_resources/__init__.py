"""Configurable Dagster resources: pipeline settings, storage, MLflow, GPU, Triton."""
