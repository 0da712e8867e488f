"""MLflow tracking as a resource: one MLflow run per asset (or partition), with the resolved
config, the git commit, package versions and the Dagster run id.

Assets never import mlflow: ``MlflowTracker.run()`` yields a :class:`RunLog` whose methods
do nothing when tracking is disabled. Runs are written only by the step's own process (the
training step's worker processes hand their metric history back), so a SQLite store never
sees concurrent writers from one step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from aes_core.tracking import flatten, git_commit, package_versions, unmet_requirements

PARAM_BATCH = 100      # MLflow accepts at most 100 params per call
PARAM_MAX_CHARS = 6000


class RunLog:
    """Logging into one MLflow run (or nowhere, when tracking is off)."""

    def __init__(self, run: Any | None):
        self.run = run
        self.run_id = run.info.run_id if run is not None else None

    def _mlflow(self):
        import mlflow

        return mlflow

    def params(self, params: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        items = [(k, str(v)[:PARAM_MAX_CHARS]) for k, v in flatten(dict(params)).items()]
        for i in range(0, len(items), PARAM_BATCH):
            self._mlflow().log_params(dict(items[i:i + PARAM_BATCH]))

    def metrics(self, metrics: Mapping[str, float | None], step: int | None = None) -> None:
        if self.run is None:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            self._mlflow().log_metrics(clean, step=step)

    def history(self, rows: list[dict[str, Any]], prefix: str = "") -> None:
        """Metric rows ``{"step": n, name: value, ...}`` (e.g. a Lightning CSV log)."""
        for row in rows:
            step = int(row.get("step", 0))
            self.metrics({f"{prefix}{k}": v for k, v in row.items()
                          if k not in ("step", "epoch") and isinstance(v, (int, float))},
                         step=step)

    def tags(self, tags: Mapping[str, Any]) -> None:
        if self.run is not None:
            self._mlflow().set_tags({k: str(v)[:PARAM_MAX_CHARS] for k, v in tags.items()})

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.run is None:
            return
        path = Path(path)
        if path.is_dir():
            self._mlflow().log_artifacts(str(path), folder)
        elif path.exists():
            self._mlflow().log_artifact(str(path), folder)


class MlflowTracker(dg.ConfigurableResource):
    """A local (SQLite) or remote MLflow tracking server."""

    tracking_uri: str
    experiment: str = "aes"
    artifact_location: str | None = None
    enabled: bool = True

    def _artifact_location(self) -> str | None:
        if self.artifact_location:
            return Path(self.artifact_location).resolve().as_uri()
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            return (db.parent / "mlflow-artifacts").resolve().as_uri()
        return None

    def _experiment_id(self) -> str:
        import mlflow

        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return mlflow.create_experiment(self.experiment,
                                            artifact_location=self._artifact_location())
        except Exception:  # noqa: BLE001 - created meanwhile by a concurrent step
            exp = mlflow.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    @contextlib.contextmanager
    def run(self, name: str, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None) -> Iterator[RunLog]:
        """One MLflow run with the git commit, package versions, ``tags`` and ``params``."""
        if not self.enabled:
            yield RunLog(None)
            return
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.tracking_uri.removeprefix("sqlite:///")) or ".",
                        exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        unmet = unmet_requirements()
        all_tags = {"git_commit": git_commit(),
                    **{f"version.{k}": v for k, v in package_versions().items()},
                    **({"requirements.unmet": "; ".join(unmet)} if unmet else {}),
                    **(tags or {})}
        with mlflow.start_run(run_name=name, experiment_id=self._experiment_id(),
                              tags=all_tags) as run:
            log = RunLog(run)
            if params:
                log.params(params)
            yield log

    @classmethod
    def from_config(cls, cfg) -> MlflowTracker:
        """Built from the top-level tracking fields of an ``AesConfig``."""
        return cls(tracking_uri=cfg.mlflow_tracking_uri, experiment=cfg.mlflow_experiment,
                   artifact_location=cfg.mlflow_artifact_location, enabled=cfg.mlflow_enabled)
