"""NVIDIA MPS (Multi-Process Service) for a step's GPU worker processes.

Without MPS, the worker processes that share a GPU take turns on it (time slicing): one
process's kernels run at a time. Under MPS their kernels run side by side, which is what
many small fold models need to fill a large GPU. :func:`mps_daemon` starts a private
``nvidia-cuda-mps-control`` daemon (its own pipe and log folders, so it neither needs root nor
meets another user's), exports its pipe folder to the processes started inside the block,
and stops the daemon when the block ends. The daemon inherits this process's
``CUDA_VISIBLE_DEVICES`` and numbers those GPUs from 0 for its clients, so workers must name
their GPU by this process's own index (``run_jobs(..., logical_gpus=True)``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from aes_core.hardware import scoped_environ

MPS_CONTROL = "nvidia-cuda-mps-control"
PIPE_VAR, LOG_VAR = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"


@dataclass(frozen=True)
class MpsDaemon:
    """A running private MPS control daemon: where its pipe and logs are."""

    pipe_dir: Path
    log_dir: Path

    def env(self) -> dict[str, str]:
        """The variables a client process needs to reach this daemon."""
        return {PIPE_VAR: str(self.pipe_dir), LOG_VAR: str(self.log_dir)}

    def control_log(self) -> str:
        """The daemon's own log (why a client could not connect), or ``""``."""
        f = self.log_dir / "control.log"
        return f.read_text(errors="replace") if f.exists() else ""


def find_mps_control(binary: str = MPS_CONTROL) -> str:
    """The MPS control program's path; a clear error where the NVIDIA driver tools lack it."""
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"gpu.mps is on but {binary!r} is not on PATH: it ships with the "
                           f"NVIDIA driver utilities; install them, or set gpu.mps to auto "
                           f"(used where present) or off")
    return path


@contextmanager
def mps_daemon(binary: str = MPS_CONTROL, timeout_s: float = 30.0) -> Iterator[MpsDaemon]:
    """Start a private MPS control daemon, export its folders to this process's environment
    (child processes started inside the block inherit them), stop it on exit."""
    path = find_mps_control(binary)
    root = Path(tempfile.mkdtemp(prefix="aes-mps-"))  # short: the pipe is a UNIX socket
    daemon = MpsDaemon(root / "pipe", root / "log")
    daemon.pipe_dir.mkdir()
    daemon.log_dir.mkdir()
    env = {**os.environ, **daemon.env()}
    started = subprocess.run([path, "-d"], env=env, capture_output=True, text=True,
                             timeout=timeout_s, check=False)
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"{binary} -d failed (exit {started.returncode}): "
                           f"{(started.stderr or started.stdout).strip()}")
    try:
        with scoped_environ(daemon.env()):
            yield daemon
    finally:
        subprocess.run([path], input="quit\n", env=env, capture_output=True, text=True,
                       timeout=timeout_s, check=False)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def step_mps(setting: str, gpu_workers: bool,
             warn: Callable[[str], None]) -> Iterator[MpsDaemon | None]:
    """The daemon a step's GPU workers run under (``gpu.mps``), or None: ``off`` or no GPU
    workers, none; ``on``, :func:`mps_daemon` (its errors are the step's); ``auto``, the
    daemon where it is installed and starts, else ``warn`` says why and the workers sharing
    a GPU take turns on it."""
    if setting not in ("off", "auto", "on"):
        raise ValueError(f"gpu.mps {setting!r}: use off, auto or on")
    with ExitStack() as stack:
        daemon = None
        if setting == "on" and gpu_workers:
            daemon = stack.enter_context(mps_daemon())
        elif setting == "auto" and gpu_workers:
            try:
                daemon = stack.enter_context(mps_daemon())
            except RuntimeError as e:
                warn(f"gpu.mps is auto and MPS is not usable here ({e}): the workers sharing "
                     f"a GPU take turns on it")
        yield daemon
