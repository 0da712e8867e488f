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


def test_host_figures_come_from_proc_deltas(tmp_path):
    from aes_core.gpu_sampler import host_summary, read_host

    proc, block = tmp_path / "proc", tmp_path / "block"
    proc.mkdir()
    (block / "vda").mkdir(parents=True)
    (block / "loop0").mkdir()

    def write(busy_user: int, idle: int, vda_sectors: int, dirty_kb: int) -> None:
        # user nice system idle iowait irq softirq
        (proc / "stat").write_text(f"cpu  {busy_user} 0 200 {idle} 50 50 50\ncpu0 1 2 3 4\n")
        (proc / "diskstats").write_text(
            f" 253 0 vda 10 0 80 5 20 0 {vda_sectors} 9 0 0 0\n"
            f" 253 1 vda1 10 0 80 5 20 0 {vda_sectors} 9 0 0 0\n"  # a partition: not summed
            " 7 0 loop0 1 0 8 1 1 0 999999 1 0 0 0\n")
        (proc / "meminfo").write_text(f"MemTotal: 100 kB\nDirty: {dirty_kb} kB\n")

    write(400, 250, 1000, 2048)
    first = read_host(10.0, str(proc), str(block))
    assert (first.busy, first.total, first.written) == (700, 1000, 512_000)
    write(700, 350, 21000, 4096)  # +300 busy, +100 idle, +10.24 MB in 10 s
    second = read_host(20.0, str(proc), str(block))
    out = host_summary([first, second], 0.0, 30.0, n_cpus=32)
    assert out == {"host_cpus_busy": 24.0, "host_disk_write_mb_s": 1.0,
                   "host_dirty_peak_mib": 4.0}
    assert host_summary([first, second], 15.0, 30.0, n_cpus=32) == {}  # one sample: no rate
    assert read_host(0.0, str(tmp_path / "absent")) is None
