"""benchmarks/gpu_pipeline.py runs end to end on CPU with a tiny configuration (no timings)."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import tiny_overrides, write_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_pipeline_script_on_cpu(tmp_path, tiny_backbone, monkeypatch):
    over = tiny_overrides(tmp_path, tiny_backbone)
    over["heads"]["heads"] = ["mean"]
    profile = write_profile(tmp_path, over, "tinybench")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import blend_report
        import gpu_pipeline
    finally:
        sys.path.pop(0)
    out = tmp_path / "out"
    rc = gpu_pipeline.main(["--profile", str(profile), "--workers", "1", "--skip-mlm",
                            "--work", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "gpu_pipeline.json").read_text())
    assert report["hardware"]["gpu"] == "none"
    bb = report["backbones"]["tiny"]
    assert bb["partitions"] == 2 and not bb["failed"]
    assert bb["train_tokens"] > 0
    ens = report["ensemble"]
    assert set(ens["members"]) == {"tiny__mean", "gbdt"}
    assert abs(sum(ens["weights"].values()) - 1) < 1e-6
    assert {"blend", "optimized", "equal_blend", "gbdt", "tiny__mean"} <= set(ens["test_qwk"])
    assert report["baseline_gbdt_alone"]["members"] == ["gbdt"]
    assert report["onnx_parity"]["passed"]
    oof = pd.read_parquet(out / "oof.parquet")
    assert oof["tiny__mean"].between(1, 6).all() and oof["gbdt"].notna().all()
    test = pd.read_parquet(out / "test_members.parquet")
    assert len(test) == 200 and test["tiny__mean"].notna().all()
    # the per-backbone blend table from the saved predictions
    from aes_core.config import load_config

    blends = blend_report.main(["--run-dir", str(out), "--profile", str(profile),
                                "--test-labels", load_config(profile).data.test_labels_path])
    assert list(blends) == ["tiny heads", "GBDT baseline alone",
                            "everything (transformers + GBDT)"]
    assert blends["tiny heads"]["members"] == ["tiny__mean"]
    assert blends["everything (transformers + GBDT)"]["test_qwk"]["gbdt"] == pytest.approx(
        ens["test_qwk"]["gbdt"])
    # a second run reuses every finished partition instead of training again
    rc = gpu_pipeline.main(["--profile", str(profile), "--workers", "1", "--skip-mlm",
                            "--no-gbdt", "--work", str(tmp_path / "work"), "--out", str(out)])
    again = json.loads((out / "gpu_pipeline.json").read_text())
    assert again["backbones"]["tiny"]["train_tokens"] == 0  # nothing retrained
