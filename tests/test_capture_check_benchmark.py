"""benchmarks/capture_check.py on CPU: small random MPNet fold models run through the same
padded graph buffers as on CUDA (nothing is captured there) and agree with the eager forward;
no timing is asserted."""

from __future__ import annotations

import json

from aes_core.serving.torch_scorer import cuda_available
from tests.bench_support import benchmark_module


def test_capture_check_runs_on_cpu(tmp_path):
    report = benchmark_module("capture_check").main([
        "--family", "mpnet", "--small", "--heads", "mean,lstm", "--folds", "2",
        "--repeats", "2", "--bucket", "64", "--max-length", "128", "--tokens", "40",
        "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "capture_check_mpnet.json").read_text())
    assert saved == report and set(saved["heads"]) == {"mean", "lstm"}
    for r in saved["heads"].values():
        assert r["captured"] is cuda_available()
        assert r["graphs"] == 3 * 2  # batches 1, 2, 4 x lengths 64, 128
        assert r["max_abs_logit_diff"] < 1e-3
