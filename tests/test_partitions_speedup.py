"""benchmarks/partitions_speedup.py: one GPU against two, from two driver reports."""

import json

import pytest

from tests.bench_support import benchmark_module


def report(step_seconds: float, gpus: int, run_id: str, partitions: int = 4) -> dict:
    util = {str(g): {"samples": 5, "util_mean_pct": 80.0, "util_busy_mean_pct": 90.0,
                     "memory_peak_mib": 1000.0 + g} for g in range(gpus)}
    return {"run_id": run_id, "hardware": {"gpu": f"{gpus} x GPU"},
            "training": {"minilm/fold_head_checkpoints": {
                "partitions": partitions, "step_seconds": step_seconds, "tokens_per_s": 10,
                "partition_seconds": {f"{i}|mean": 10.0 + i for i in range(partitions)},
                "timeline": {"before_first_s": 1.0}}},
            "gpu_util": {"minilm__fold_head_checkpoints": {**util, "host_cpus_busy": 3.5}}}


def test_speedup_and_the_kept_previous_entry(tmp_path):
    mod = benchmark_module("partitions_speedup")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text(json.dumps(report(120.0, 1, "a")))
    two.write_text(json.dumps(report(75.0, 2, "b")))
    into = tmp_path / "multigpu.json"
    into.write_text(json.dumps({"gpus": 2, "partitions": {
        "speedup": 1.75, "per_hour_1gpu": 410, "mpnet_four_partitions": {"what": "x"}}}))
    assert mod.main(["--one", str(one), "--two", str(two), "--what", "test", "--into",
                     str(into), "--previous-as", "before"]) == 0
    part = json.loads(into.read_text())["partitions"]
    assert part["per_hour_1gpu"] == 120.0 and part["per_hour_2gpu"] == 192.0
    assert part["speedup"] == 1.6
    assert part["host_cpus_busy_2gpu"] == 3.5 and part["peak_memory_mib_2gpu"]["1"] == 1001.0
    assert part["partition_seconds_range_1gpu"] == [10.0, 13.0]
    assert part["before"] == {"speedup": 1.75, "per_hour_1gpu": 410}
    assert part["mpnet_four_partitions"] == {"what": "x"}  # stays where the plot finds it
    two.write_text(json.dumps(report(75.0, 2, "b", partitions=3)))
    with pytest.raises(ValueError, match="trained 4 and 3 partitions"):
        mod.main(["--one", str(one), "--two", str(two)])
