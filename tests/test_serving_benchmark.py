"""benchmarks/serving_gpu.py end to end on CPU with tiny models: it builds a bundle, distills a
student, serves both through the real tritonserver (torch repository, KIND_CPU), loads them
from client processes, runs the ONNX CPU baseline and writes its JSON and plot. Small
numbers; no timing is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.http")

from tests.gpu_serving_support import serving_benchmark  # noqa: E402


def test_serving_benchmark_runs_end_to_end_on_cpu(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = serving_benchmark().main(["--tiny", "--out", str(tmp_path / "out"),
                                    "--work", str(tmp_path / "work")])
    finally:
        torch.set_num_threads(before)
    saved = json.loads((tmp_path / "out" / "serving_gpu.json").read_text())
    assert saved["gpu"] == "none" and saved["hardware"]["cores"] and saved["completed"] is True
    ens = saved["triton_ensemble"]
    assert ens["members"] == 3 and ens["fold_models"] == 4  # 2 heads x 2 folds + GBDT
    assert ens["essays_per_s"] > 0 and ens["p99_ms_single"] >= ens["p50_ms_single"] > 0
    assert ens["instance_kind"] == "KIND_CPU" and ens["load"]["errors"] == []
    assert ens["load"]["essays"] == 64 and ens["single"]["requests"] == 10
    # where the time went, per request, from the server's metrics port
    assert ens["stages"]["load"]["requests"] == ens["load"]["requests"]
    assert ens["stages"]["load"]["essays"] == 64
    assert ens["stages"]["single"]["requests"] == 10 + 3  # and single_latency's 3 warm-ups
    assert ens["stages"]["single"]["device_ms_per_request"] > 0
    st = saved["student"]
    assert st["stages"]["single"]["tokenize_ms_per_request"] > 0
    assert st["essays_per_s"] > 0 and st["p99_ms_single"] > 0
    assert st["test_qwk"] is not None and -1 <= st["test_qwk"] <= 1
    assert saved["ensemble_test_qwk"] is not None
    assert saved["cpu_onnx_baseline_essays_per_s"] > 0
    # CPU: served and reference are both fp32
    assert saved["agreement"]["ensemble"]["max_abs_blended_diff"] < 1e-4
    assert saved["agreement"]["ensemble"]["rounded_scores_changed_fraction"] == 0.0
    assert saved["agreement"]["student"]["max_abs_blended_diff"] < 1e-4
    tok = saved["tokenization"]
    assert all(tok[k] > 0 for k in ("hf_call", "rust", "rust_cut", "words_cut", "cache_hit"))
    assert tok["ids_equal_hf"] == {"rust": True, "rust_cut": True, "words_cut": True}
    assert saved["gbdt"]["member_predict_ms_per_essay"] > 0 and saved["gbdt"]["folds"] == 2
    assert Path(saved["plot"]).stat().st_size > 10_000
    assert report["triton_ensemble"] == ens
    # the load is scored as new essays: the served models keep no token ids
    assert saved["serving"]["token_cache_size"] == 0 and saved["data"]["token_cache_size"] == 0


def test_load_pool_keeps_distinct_essays_in_order():
    pool = serving_benchmark().load_pool(["a", "b", "a"], ["c", "b"], ["d", "c", "e"])
    assert pool == ["a", "b", "c", "d", "e"]
    assert serving_benchmark().repeated(pool, 7) == ["a", "b", "c", "d", "e", "a", "b"]
