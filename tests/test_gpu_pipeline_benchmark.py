"""benchmarks/gpu_pipeline.py drives the product's pipeline through Dagster on CPU (tiny
configuration) and its figures come from the run's own events and metadata."""

import json
from pathlib import Path

import dagster as dg
import pytest

from aes_assets.summary import print_summary
from aes_core.config import load_config
from aes_core.contracts import FoldHeadCheckpoint
from tests.bench_support import benchmark_module
from tests.conftest import tiny_overrides, write_profile


@pytest.mark.slow
def test_gpu_pipeline_driver_on_cpu(tmp_path, tiny_backbone, monkeypatch):
    over = tiny_overrides(tmp_path, tiny_backbone)
    over["heads"]["heads"] = ["mean"]
    # a second backbone training another head, stage 1 only (as mpnet in gpu-two-backbones):
    # the driver makes two runs, reported as one
    over["backbones"].append({"name": "beta", "path": str(tiny_backbone), "max_length": 64,
                              "heads": ["attention"], "train": {"stage2_epochs": 0}})
    over["mlm"]["enabled"] = False
    over["run"] = {"executor": "multiprocess", "max_concurrent": 2}  # GBDT beside training
    over["train"]["pseudo_label_essays"] = 12  # stage 2 pseudo-labels in the workers too
    profile = write_profile(tmp_path, over, "tinybench")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("AES_PROFILE", str(profile))
    gpu_pipeline = benchmark_module("gpu_pipeline")
    out = tmp_path / "run.json"
    assert gpu_pipeline.main(["--profile", str(profile), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["via"] == "dagster" and report["status"] == "SUCCESS"
    assert report["partitions"] == 4 and report["gpu"] == "none"
    runs = dg.DagsterInstance.get().get_runs()  # newest first
    assert len(runs) == 2 and report["job"] == ["pipeline_beta", "pipeline_tiny"]
    assert report["run_id"] == [r.run_id for r in reversed(runs)]
    assert [r["partitions"] for r in report["runs"]] == [2, 2]
    # the runs in sequence, inside the whole window (each figure rounded to 0.01 minutes)
    in_runs = sum(r["wall_minutes"] for r in report["runs"])
    assert in_runs > 0 and report["wall_minutes"] >= in_runs - 0.02
    assert {"tiny__fold_head_checkpoints", "beta__fold_head_checkpoints",
            "submission"} <= set(report["stage_minutes"])
    assert {"ensemble", "gbdt", "tiny__mean", "beta__attention"} <= set(report["test_qwk"])
    assert "gbdt_alone" not in report["test_qwk"]  # rounded member, not the thresholded GBDT
    for b in ("tiny", "beta"):
        assert report["training"][f"{b}/fold_head_checkpoints"]["train_tokens"] > 0
    pseudo = sorted(tmp_path.glob("storage/**/pseudo_labels.parquet"))
    assert len(pseudo) == 2  # one per stage 2 (tiny's partitions), from its own stage-1 model
    assert all("/tiny/" in str(p) for p in pseudo)
    beta = [FoldHeadCheckpoint.model_validate_json(p.read_text())
            for p in tmp_path.glob("storage/**/beta/**/result.json")]
    assert len(beta) == 2 and all(r.stage2 is None and r.kept_stage == "stage1" for r in beta)
    assert all("stage 2 skipped" in "; ".join(r.notes) for r in beta)
    # the closing summary reads the run's metadata: QWKs, the blend, where the files are
    said: list[str] = []
    s = print_summary(load_config(str(profile)), dg.DagsterInstance.get(), runs[0].run_id, 1.0,
                      out=said.append)
    assert s["method"] in ("nelder_mead", "stacker") and f"blend: {s['method']}" in said[0]
    assert f"test {s['test_qwk']:.4f}" in said[0] and 0 < s["oof_qwk"] <= 1
    assert Path(s["submission"]).exists() and f"submission        {s['submission']}" in said[0]
    assert (Path(s["report_dir"]) / "summary.md").exists()
    # a second call finds everything up to date, materializes nothing and reports no timing
    # (the last run's figures would read as this call's)
    before = out.read_text()
    assert gpu_pipeline.main(["--profile", str(profile), "--out", str(out)]) == 2
    assert len(dg.DagsterInstance.get().get_runs()) == 2
    assert out.read_text() == before

    # a stored value deleted behind the instance's back runs again instead of being skipped
    # as fresh: a table, and one partition of a single-run backfill
    from aes_assets.definitions import build_definitions
    from aes_assets.pipeline import plan

    defs = build_definitions(load_config(str(profile)))
    tables = tmp_path / "storage" / "tables"
    assert plan(defs, dg.DagsterInstance.get(), "*", True)[0] == []
    (tables / "oof_predictions.parquet").unlink()
    next(tables.glob("beta/fold_head_checkpoints/*/attention.*")).unlink()
    run, fresh = plan(defs, dg.DagsterInstance.get(), "*", True)
    names = {k.to_user_string() for k in run}
    assert {"beta/fold_head_checkpoints", "oof_predictions", "ensemble_weights"} <= names
    assert {"raw_essays", "folded_essays", "tiny/fold_head_checkpoints"} <= {
        k.to_user_string() for k in fresh}
