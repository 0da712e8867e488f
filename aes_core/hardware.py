"""Describe the hardware a benchmark ran on (printed with every benchmark's numbers)."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def hardware() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 ** 2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    out = {"cpu": cpu, "cores": str(usable_cpus()), "cores_on_host": str(os.cpu_count()),
           "memory": mem,
           "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        out["torch"] = torch.__version__
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            gib = p.total_memory / 2**30
            out["gpu"] = f"{torch.cuda.device_count()} x {p.name} ({gib:.0f} GiB)"
        else:
            out["gpu"] = "none"
    except ImportError:  # pragma: no cover
        out["gpu"] = "unknown (no torch)"
    return out


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity, e.g. under taskset or a container):
    what a benchmark's numbers depend on and what worker pools are sized from."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block (child processes started inside inherit
    them); each one's earlier value, or its absence, comes back afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
