"""GPU utilisation sampling for the benchmarks, with a stand-in ``nvidia-smi`` on CPU hosts."""

import os
import stat
import time

from aes_core.gpu_sampler import GpuSampler


def test_samples_are_summarized_per_window_and_gpu(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, 90, 1000'\necho '1, 0, 20'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    t0 = time.time()
    with GpuSampler(interval_s=0.05) as s:
        time.sleep(0.4)
    assert s.error is None and len(s.samples) >= 4
    out = s.summary({"step": (t0, time.time()), "before": (0.0, t0 - 1)})
    assert out["step"]["0"] == {"samples": out["step"]["0"]["samples"], "util_mean_pct": 90.0,
                                "util_busy_mean_pct": 90.0, "memory_peak_mib": 1000.0}
    assert out["step"]["1"]["util_busy_mean_pct"] == 0.0
    assert out["before"] == {}  # no sample in that window


def test_without_nvidia_smi_it_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with GpuSampler(interval_s=0.05) as s:
        pass
    assert s.summary() == {"samples": 0, "error": "nvidia-smi not found: no GPU utilisation "
                                                  "sampled"}


def test_busy_cpus_come_from_proc_stat_deltas(tmp_path):
    from aes_core.gpu_sampler import busy_cpus, read_cpu

    stat_file = tmp_path / "stat"
    # user nice system idle iowait irq softirq: 700 busy, 300 idle+iowait jiffies
    stat_file.write_text("cpu  400 0 200 250 50 50 50\ncpu0 1 2 3 4\n")
    first = read_cpu(10.0, str(stat_file))
    assert (first.busy, first.total) == (700, 1000)
    stat_file.write_text("cpu  700 0 300 650 50 50 50\n")  # +400 busy, +400 idle
    second = read_cpu(20.0, str(stat_file))
    assert busy_cpus([first, second], 0.0, 30.0, n_cpus=32) == 16.0  # half of 32 CPUs
    assert busy_cpus([first, second], 15.0, 30.0, n_cpus=32) is None  # one sample: no rate
    assert read_cpu(0.0, str(tmp_path / "absent")) is None
