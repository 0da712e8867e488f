"""GPU utilisation and memory sampled while a benchmark runs (``nvidia-smi``, no CUDA import).

``GpuSampler`` polls ``nvidia-smi`` in a thread; ``summary`` reports, per GPU and per time
window (e.g. the training step of a Dagster run), the mean utilisation, the mean over the
samples where the GPU was busy at all, and the peak memory. Without ``nvidia-smi`` it records
nothing and says so.
"""

from __future__ import annotations

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
class GpuSampler:
    """``with GpuSampler(interval_s=2) as s: ...`` then ``s.summary({"run": (t0, t1)})``."""

    interval_s: float = 2.0
    binary: str = "nvidia-smi"
    samples: list[Sample] = field(default_factory=list)
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
                self.samples += parse(out, time.time())
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
            out[name] = per_gpu
        return out


def parse(text: str, t: float) -> list[Sample]:
    """Rows of ``index, utilization.gpu, memory.used`` (no header, no units)."""
    rows = []
    for line in text.strip().splitlines():
        idx, util, mem = (x.strip() for x in line.split(","))
        rows.append(Sample(t, int(idx), float(util), float(mem)))
    return rows
