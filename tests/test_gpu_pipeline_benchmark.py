"""benchmarks/gpu_pipeline.py drives the product's pipeline through Dagster on CPU (tiny
configuration) and its figures come from the run's own events and metadata."""

import json
import sys
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import tiny_overrides, write_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_pipeline_driver_on_cpu(tmp_path, tiny_backbone, monkeypatch):
    over = tiny_overrides(tmp_path, tiny_backbone)
    over["heads"]["heads"] = ["mean"]
    over["mlm"]["enabled"] = False
    over["run"] = {"executor": "multiprocess", "max_concurrent": 2}  # GBDT beside training
    profile = write_profile(tmp_path, over, "tinybench")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("AES_PROFILE", str(profile))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_pipeline
    finally:
        sys.path.pop(0)
    out = tmp_path / "run.json"
    assert gpu_pipeline.main(["--profile", str(profile), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["via"] == "dagster" and report["status"] == "SUCCESS"
    assert report["partitions"] == 2 and report["gpu"] == "none"
    assert report["wall_minutes"] > 0 and "tiny__fold_head_checkpoints" in report["stage_minutes"]
    assert {"ensemble", "gbdt_alone", "tiny__mean"} <= set(report["test_qwk"])
    assert report["training"]["tiny/fold_head_checkpoints"]["train_tokens"] > 0
    runs = dg.DagsterInstance.get().get_runs()
    assert len(runs) == 1  # the whole graph was one run
    # a second call finds everything up to date and materializes nothing
    assert gpu_pipeline.main(["--profile", str(profile), "--out", str(out)]) == 0
    assert len(dg.DagsterInstance.get().get_runs()) == 1
