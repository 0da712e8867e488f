"""MLflow tracking as a resource: one run per asset (or partition), git commit and config logged."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dagster as dg

from aes_core.tracking import flatten, git_commit, package_versions


class MlflowTracker(dg.ConfigurableResource):
    """A local (SQLite/file) or remote MLflow tracking server."""

    tracking_uri: str
    experiment: str = "aes"
    enabled: bool = True

    @contextlib.contextmanager
    def run(self, name: str, params: dict[str, Any] | None = None,
            tags: dict[str, str] | None = None) -> Iterator[Any]:
        """Start a run that records params, the git commit and package versions."""
        if not self.enabled:
            yield None
            return
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.tracking_uri.removeprefix("sqlite:///")),
                        exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment)
        all_tags = {"git_commit": git_commit(), **{f"version.{k}": v
                                                   for k, v in package_versions().items()}}
        all_tags.update(tags or {})
        with mlflow.start_run(run_name=name, tags=all_tags) as run:
            if params:
                flat = flatten(params)
                items = list(flat.items())
                for i in range(0, len(items), 100):  # mlflow caps a batch at 100 params
                    mlflow.log_params({k: str(v)[:6000] for k, v in items[i:i + 100]})
            yield run
