"""GPU utilisation and memory sampled while a benchmark runs (``nvidia-smi``, no CUDA import).

``GpuSampler`` polls ``nvidia-smi`` in a thread; ``summary`` reports, per GPU and per time
window (e.g. the training step of a Dagster run), the mean utilisation, the mean over the
samples where the GPU was busy at all, the peak memory, and for the host: how many of its CPUs
were busy on average, how fast it wrote to its disks and its peak dirty page cache. Without
``nvidia-smi`` it records nothing and says so.
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
class HostSample:
    t: float
    busy: int  # jiffies of all CPUs (/proc/stat) doing anything but idle or iowait
    total: int
    written: int = 0  # bytes written to the host's disks so far (/proc/diskstats)
    dirty_mib: float = 0.0  # page cache waiting to be written (/proc/meminfo Dirty)


def read_host(t: float, proc: str = "/proc", sys_block: str = "/sys/block") -> HostSample | None:
    """The host's cumulative CPU time, bytes written to its disks (whole disks, not loop or
    RAM devices) and dirty page cache; None where ``/proc/stat`` does not exist."""
    try:
        with open(f"{proc}/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    disks = {d for d in os.listdir(sys_block)
             if not d.startswith(("loop", "ram"))} if os.path.isdir(sys_block) else set()
    written = dirty = 0
    try:
        with open(f"{proc}/diskstats") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 9 and parts[2] in disks:
                    written += int(parts[9]) * 512  # sectors of 512 bytes
        with open(f"{proc}/meminfo") as f:
            for line in f:
                if line.startswith("Dirty:"):
                    dirty = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return HostSample(t, sum(fields) - idle, sum(fields), written, dirty / 1024)


def host_summary(samples: list[HostSample], t0: float, t1: float, n_cpus: int) -> dict:
    """Between the first and last sample inside [t0, t1]: mean busy CPUs, disk writes (MB/s)
    and the peak dirty page cache; empty with fewer than two samples."""
    rows = [s for s in samples if t0 <= s.t <= t1]
    if len(rows) < 2 or rows[-1].total == rows[0].total or rows[-1].t == rows[0].t:
        return {}
    a, b = rows[0], rows[-1]
    return {"host_cpus_busy": round((b.busy - a.busy) / (b.total - a.total) * n_cpus, 1),
            "host_disk_write_mb_s": round((b.written - a.written) / (b.t - a.t) / 1e6, 1),
            "host_dirty_peak_mib": round(max(s.dirty_mib for s in rows), 1)}


@dataclass
class GpuSampler:
    """``with GpuSampler(interval_s=2) as s: ...`` then ``s.summary({"run": (t0, t1)})``."""

    interval_s: float = 2.0
    binary: str = "nvidia-smi"
    samples: list[Sample] = field(default_factory=list)
    host_samples: list[HostSample] = field(default_factory=list)
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
                host = read_host(now)
                if host is not None:
                    self.host_samples.append(host)
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
            per_gpu.update(host_summary(self.host_samples, t0, t1, os.cpu_count() or 1))
            out[name] = per_gpu
        return out


def parse(text: str, t: float) -> list[Sample]:
    """Rows of ``index, utilization.gpu, memory.used`` (no header, no units)."""
    rows = []
    for line in text.strip().splitlines():
        idx, util, mem = (x.strip() for x in line.split(","))
        rows.append(Sample(t, int(idx), float(util), float(mem)))
    return rows
