"""benchmarks/chunking_cost.py --tiny on CPU: token statistics and the timed comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "chunking_cost.py"


def test_chunking_cost_tiny_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--data", str(ROOT / "data/sample/test.csv.gz"),
         "--timed-essays", "12", "--batch-size", "4", "--threads", "1", "--device", "cpu",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hardware:" in proc.stdout and "cost x" in proc.stdout
    report = json.loads((tmp_path / "chunking_cost.json").read_text())
    tokens = report["tokens"]
    assert tokens["essays"] == 200 and tokens["max_length"] == 128
    assert 0 < tokens["truncated_fraction"] <= 1
    windows = [tokens["windows"][k]["mean_windows"] for k in ("0", "16", "32", "64")]
    assert windows == sorted(windows) and windows[0] > 1  # more overlap, more windows
    t = report["timing"]
    assert t["truncated"]["windows"] == 12 < t["chunked"]["windows"]
    assert t["one_window_max_abs_logit_diff"] in (None, 0.0)
