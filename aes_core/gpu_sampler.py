"""GPU utilisation and memory sampled while a benchmark runs (``nvidia-smi``, no CUDA import).

``GpuSampler`` polls ``nvidia-smi`` in a thread; ``summary`` reports, per GPU and per time
window (e.g. the training step of a Dagster run), the mean utilisation, the mean over the
samples where the GPU was busy at all, the peak memory, and how many of the host's CPUs were
busy on average (``/proc/stat``). Without ``nvidia-smi`` it records
nothing and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

QUERY = ["--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


@dataclass
class Sample:
    t: float
    gpu: int
    util_pct: float
    memory_mib: float


@dataclass
class CpuSample:
    t: float
    busy: int  # jiffies of all CPUs (/proc/stat) doing anything but idle or iowait
    total: int


def read_cpu(t: float, stat: str = "/proc/stat") -> CpuSample | None:
    """The host's cumulative CPU time from ``/proc/stat`` (None where it does not exist)."""
    try:
        with open(stat) as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return CpuSample(t, sum(fields) - idle, sum(fields))


def busy_cpus(samples: list[CpuSample], t0: float, t1: float, n_cpus: int) -> float | None:
    """Mean number of busy CPUs between the first and last sample inside [t0, t1]."""
    rows = [s for s in samples if t0 <= s.t <= t1]
    if len(rows) < 2 or rows[-1].total == rows[0].total:
        return None
    return round((rows[-1].busy - rows[0].busy) / (rows[-1].total - rows[0].total) * n_cpus, 1)


@dataclass
class GpuSampler:
    """``with GpuSampler(interval_s=2) as s: ...`` then ``s.summary({"run": (t0, t1)})``."""

    interval_s: float = 2.0
    binary: str = "nvidia-smi"
    samples: list[Sample] = field(default_factory=list)
    cpu_samples: list[CpuSample] = field(default_factory=list)
    error: str | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        path = shutil.which(self.binary)
        if path is None:
            self.error = f"{self.binary} not found: no GPU utilisation sampled"
            return self
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 10)

    def _run(self, path: str) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run([path, *QUERY], capture_output=True, text=True,
                                     timeout=30, check=True).stdout
                now = time.time()
                self.samples += parse(out, now)
                cpu = read_cpu(now)
                if cpu is not None:
                    self.cpu_samples.append(cpu)
            except (subprocess.SubprocessError, OSError, ValueError) as e:
                self.error = f"{type(e).__name__}: {e}"
                return
            self._stop.wait(self.interval_s)

    def summary(self, windows: dict[str, tuple[float, float]] | None = None) -> dict:
        """Per window (name -> (start, end) epoch seconds; default: all samples) and GPU."""
        if not self.samples:
            return {"samples": 0, "error": self.error or "no samples"}
        if not windows:
            windows = {"all": (self.samples[0].t, self.samples[-1].t)}
        out: dict = {"interval_s": self.interval_s}
        for name, (t0, t1) in windows.items():
            rows = [s for s in self.samples if t0 <= s.t <= t1]
            per_gpu = {}
            for g in sorted({s.gpu for s in rows}):
                mine = [s for s in rows if s.gpu == g]
                busy = [s.util_pct for s in mine if s.util_pct > 0]
                per_gpu[str(g)] = {
                    "samples": len(mine),
                    "util_mean_pct": round(sum(s.util_pct for s in mine) / len(mine), 1),
                    "util_busy_mean_pct": round(sum(busy) / len(busy), 1) if busy else 0.0,
                    "memory_peak_mib": max(s.memory_mib for s in mine)}
            cpus = busy_cpus(self.cpu_samples, t0, t1, os.cpu_count() or 1)
            if cpus is not None:
                per_gpu["host_cpus_busy"] = cpus  # of os.cpu_count() on the host
            out[name] = per_gpu
        return out


def parse(text: str, t: float) -> list[Sample]:
    """Rows of ``index, utilization.gpu, memory.used`` (no header, no units)."""
    rows = []
    for line in text.strip().splitlines():
        idx, util, mem = (x.strip() for x in line.split(","))
        rows.append(Sample(t, int(idx), float(util), float(mem)))
    return rows
