"""benchmarks/inference_throughput.py --tiny on CPU: report shape, score checks, skip reasons."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "inference_throughput.py"


def test_inference_throughput_tiny_cpu(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--n-essays", "24", "--batch-sizes", "4,8",
         "--data", str(ROOT / "data/sample/test.csv.gz"), "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hardware:" in proc.stdout and "essays/s" in proc.stdout

    report = json.loads((out / "inference_throughput.json").read_text())
    for key in ("hardware", "device", "model", "data", "config", "token_stats", "tokenizer",
                "results", "skipped", "plot", "complete"):
        assert key in report, key
    assert report["complete"] is True
    assert report["device"] == "cpu"
    assert report["tokenizer"]["whole_list_essays_per_s"] > 0
    assert set(report["tokenizer"]["per_batch_pad512_essays_per_s"]) == {"4", "8"}

    ok = [r for r in report["results"] if r["status"] == "ok"]
    measured = {r["path"] for r in ok}
    assert {"naive_fp32_pad512", "bf16_sdpa_pad512", "bf16_sdpa_dynamic_sorted",
            "bf16_packed", "bf16_mp_pipelined", "gpu_forward_only"} <= measured
    assert report["path_info"]["parallel_tokenizer"]["essays_per_s"] > 0
    for r in ok:
        assert r["batch_size"] in (4, 8)
        for k in ("essays_per_s", "p50_ms", "p99_ms", "padding_efficiency", "n_batches",
                  "identical_rounded_fraction", "score_max_abs_diff", "n_compared",
                  "peak_gpu_mib", "warmup_s"):
            assert k in r, (r["path"], k)
        assert r["essays_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert 0.0 <= r["identical_rounded_fraction"] <= 1.0
        assert r["score_max_abs_diff"] >= 0.0
    ref = [r for r in ok if r["path"] == "naive_fp32_pad512"]
    assert all(r["identical_rounded_fraction"] == 1.0 and r["score_max_abs_diff"] == 0.0
               for r in ref)
    # dynamic padding pads less than padding every essay to max_length
    eff = {r["path"]: r["padding_efficiency"] for r in ok if r["batch_size"] == 8}
    assert eff["bf16_sdpa_dynamic_sorted"] >= eff["naive_fp32_pad512"]
    # tiny scores from bf16 paths stay on the reference's rounded scores
    assert all(r["identical_rounded_fraction"] >= 0.9 for r in ok)

    # CUDA-only paths skip on CPU, each with a reason
    for name in ("bf16_sdpa_dynamic_compiled", "bf16_mp_pipelined_compiled",
                 "gpu_forward_only_compiled", "tensorrt"):
        assert name in report["skipped"], name
        assert report["skipped"][name].strip()
    assert "tensorrt" in report["skipped"]["tensorrt"]
    for r in report["results"]:
        if r["status"] != "ok":
            assert r.get("reason")

    png = Path(report["plot"])
    assert png.exists() and png.parent == out and png.stat().st_size > 1000
