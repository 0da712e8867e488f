"""The training throughput benchmark runs (tiny model, a few steps, no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_throughput_script_runs_without_dagster(tmp_path):
    out = tmp_path / "bench.json"
    # -S-like isolation is not needed: the script itself must not import dagster or mlflow
    code = ("import sys, runpy; sys.argv = ['train_throughput.py', '--tiny', '--steps', '3', "
            "'--essays', '96', '--max-length', '64', '--warmup', '1', '--profile-steps', '2', "
            "'--json', "
            f"{str(out)!r}]; runpy.run_path({str(ROOT / 'benchmarks' / 'train_throughput.py')!r}, "
            "run_name='__main__'); "
            "bad = [m for m in ('dagster', 'mlflow') if m in sys.modules]; "
            "assert not bad, f'benchmark imported {bad}'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens/s" in proc.stdout and "seconds/epoch" in proc.stdout
    res = json.loads(out.read_text())
    assert res["timed_steps"] == 3 and res["tokens_per_s"] > 0  # after 1 warm-up step
    prof = res["profile"]  # 2 more steps under the profiler: host ops, no device on CPU
    assert prof["steps"] == 2 and prof["wall_ms_per_step"] > 0
    assert prof["device_busy_ms_per_step"] == 0 and len(prof["top_host_ops_ms_per_step"]) > 3
    assert res["fused_optimizer"] is True  # asked for; AdamW uses it only on CUDA
    assert res["device"] and res["precision"] == "32-true" and res["essays"] == 96
