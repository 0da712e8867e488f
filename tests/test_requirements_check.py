"""Installed packages outside pyproject.toml's ranges are named (``unmet_requirements``): at
code-location load, in every MLflow run's tags and in the GPU pipeline's report. A GPU host
whose transformers was 5.17 (we require >= 5.20) ran MPNet on a path that never captures as
CUDA graphs, and nothing said so."""

from __future__ import annotations

import logging

import mlflow

from aes_core.tracking import declared_requirements, unmet_requirements

OLD_TRANSFORMERS = "transformers 5.17.0 (requires <6,>=5.20)"


def test_versions_outside_a_range_and_missing_packages_are_named():
    import transformers

    unmet = unmet_requirements([
        "transformers>=99", "tritonclient[http]>=0.1", "no-such-package-aes>=1",
        "numpy<0.1; python_version < '3.0'", "not a requirement !!"])
    assert unmet == [f"transformers {transformers.__version__} (requires >=99)",
                     "no-such-package-aes not installed (requires >=1)"]


def test_the_locked_environment_meets_pyproject():
    """requirements.lock (what CI installs) and pyproject.toml's ranges agree."""
    declared = declared_requirements()
    assert any(r.startswith("transformers>=") for r in declared)
    assert unmet_requirements() == []


def test_mlflow_runs_carry_the_unmet_requirements(tmp_path, monkeypatch):
    import aes_resources.mlflow as tracker_module

    monkeypatch.setattr(tracker_module, "unmet_requirements", lambda: [OLD_TRANSFORMERS])
    uri = f"sqlite:///{tmp_path}/m.db"
    with tracker_module.MlflowTracker(tracking_uri=uri).run("check"):
        pass
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["aes"], output_format="list")[0]
    assert run.data.tags["requirements.unmet"] == OLD_TRANSFORMERS


def test_the_code_location_warns_when_it_loads(monkeypatch, caplog):
    import aes_assets.definitions as definitions

    monkeypatch.setattr(definitions, "unmet_requirements", lambda: [OLD_TRANSFORMERS])
    with caplog.at_level(logging.WARNING, logger=definitions.__name__):
        assert definitions.warn_unmet_requirements() == [OLD_TRANSFORMERS]
    assert OLD_TRANSFORMERS in caplog.text and "requirements.lock" in caplog.text
    monkeypatch.setattr(definitions, "unmet_requirements", lambda: [])
    caplog.clear()
    assert definitions.warn_unmet_requirements() == [] and caplog.text == ""
