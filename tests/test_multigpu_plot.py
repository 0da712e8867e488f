"""benchmarks/multigpu_plot.py draws the committed two-GPU results (no measurement)."""

import json
from pathlib import Path

from tests.bench_support import benchmark_module

ROOT = Path(__file__).resolve().parents[1]


def test_multigpu_plot_from_results(tmp_path):
    multigpu_plot = benchmark_module("multigpu_plot")
    report = json.loads((ROOT / "benchmarks" / "results" / "multigpu.json").read_text())
    assert {"per_hour_1gpu", "per_hour_2gpu"} <= set(report["partitions"])
    rows = multigpu_plot.speedups(report)
    assert rows[0] == ("partitions", rows[0][1], report["partitions"]["speedup"])
    assert [x for k, _, x in rows if k == "ddp"][0] == report["ddp"]["speedup"]
    out = multigpu_plot.main(["--out", str(tmp_path / "m.png")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
