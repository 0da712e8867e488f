"""benchmarks/single_essay_latency.py on CPU: a tiny bundle with its student (built by
``serving_gpu.py --build-only``), one essay per request for two configurations. On a CPU
nothing is captured, so both configurations score the same (on a CUDA host the graphs are
captured); no timing is asserted.
"""

from __future__ import annotations

import json

from aes_core.config import SAMPLE_DIR
from aes_core.serving.torch_scorer import cuda_available
from tests.bench_support import benchmark_module
from tests.gpu_serving_support import one_torch_thread, serving_benchmark  # noqa: F401


def test_single_essay_benchmark_runs_on_cpu(tmp_path):
    built = serving_benchmark().main(["--tiny", "--build-only", "--work", str(tmp_path / "w"),
                                      "--out", str(tmp_path / "o")])
    assert built["student_note"] is None
    assert not (tmp_path / "o" / "serving_gpu.json").exists()  # built, nothing measured
    report = benchmark_module("single_essay_latency").main([
        "--bundle", built["bundle"], "--data", str(SAMPLE_DIR / "test.csv.gz"),
        "--requests", "6", "--configs", "eager,graphs:2+streams:2", "--gbdt-workers", "0",
        "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "single_essay_gpu.json").read_text())
    assert (tmp_path / "out" / "single_essay_gpu.png").stat().st_size > 10_000
    cuda = cuda_available()
    assert saved == report and saved["cuda"] is cuda
    assert (saved["requests"], saved["batch"]) == (6, 1)
    for model in ("ensemble", "student"):
        eager, graphs = saved[model]
        assert (eager["config"], graphs["config"]) == ("eager", "graphs:2+streams:2")
        assert graphs["graphed"] is cuda and graphs["graph_error"] is None
        assert graphs["request"]["p99_ms"] >= graphs["request"]["p50_ms"] > 0
        assert 0 < eager["device"]["p50_ms"] <= eager["request"]["max_ms"]
        if not cuda:  # the same eager forward twice
            assert graphs["agreement"]["max_abs_blended_diff"] == 0.0
            assert graphs["agreement"]["rounded_scores_changed_fraction"] == 0.0


def test_large_requests_and_per_model_times(tmp_path):
    """``--batch`` sends several essays per request (essays/s), ``--per-model`` times each
    fold model; the ensemble only, with a bundle the benchmark builds without a student."""
    built = serving_benchmark().main(["--tiny", "--build-only", "--no-student", "--work",
                                      str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    assert built["student_note"] == "--no-student"
    report = benchmark_module("single_essay_latency").main([
        "--bundle", built["bundle"], "--data", str(SAMPLE_DIR / "test.csv.gz"),
        "--requests", "2", "--batch", "8", "--configs", "eager", "--per-model",
        "--gbdt-workers", "0", "--name", "batch8", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "batch8.json").exists() and "student" not in report
    (row,) = report["ensemble"]
    assert report["batch"] == 8 and row["essays_per_s"] > 0
    assert len(row["per_model_ms"]) == 4  # 2 heads x 2 folds of the tiny bundle
    assert all(ms > 0 for ms in row["per_model_ms"].values())
