"""Where Lightning trains: CPU in tests, one GPU, or several GPUs through DDP.

``GpuResource.trainer_kwargs()`` builds the accelerator / devices / precision / strategy part
of a ``lightning.Trainer``. With ``devices > 1`` one partition trains with DDP (spawned
processes, so it works inside a Dagster run; gloo on CPU, NCCL on GPU). With one device per
partition, ``assign_device`` picks which GPU a partition uses so that several partitions can
run concurrently, one per GPU (by a hash of the partition key, or by the run tag ``aes/gpu``).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from aes_core.config import GpuSection
from aes_core.training.parallel import WorkerSlot, cpu_blocks, usable_cpus

GPU_TAG = "aes/gpu"
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def cuda_available() -> bool:
    """``torch.cuda.is_available()`` read through NVML, so this process does not initialise
    CUDA: a step may still fork GPU workers afterwards (``gpu.worker_start: fork``)."""
    import torch

    os.environ.setdefault(NVML_CHECK, "1")
    return torch.cuda.is_available()


def visible_gpus(n_cuda: int | None = None, env: Mapping[str, str] | None = None) -> list[int]:
    """Indices usable by this process (CUDA renumbers CUDA_VISIBLE_DEVICES from 0)."""
    env = os.environ if env is None else env
    if n_cuda is None:
        import torch

        n_cuda = torch.cuda.device_count() if cuda_available() else 0
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        n_listed = len([x for x in listed.split(",") if x.strip() and x.strip() != "-1"])
        n_cuda = min(n_cuda, n_listed) if n_cuda else n_listed
    return list(range(n_cuda))


def assign_device(n_gpus: int, partition_key: str | None = None,
                  tags: Mapping[str, str] | None = None, assign_by: str = "partition") -> int:
    """The GPU index for a single-device partition.

    ``tag``: the run tag ``aes/gpu`` (an int, taken modulo ``n_gpus``); ``partition``: a
    stable hash (crc32) of the partition key, so a backfill spreads partitions over GPUs and
    a re-run of a partition lands on the same GPU; ``none`` (or no key): GPU 0.
    """
    if n_gpus < 1:
        raise ValueError("assign_device: no GPU visible")
    tags = tags or {}
    if assign_by == "tag" and GPU_TAG in tags:
        try:
            return int(tags[GPU_TAG]) % n_gpus
        except ValueError as e:
            raise ValueError(f"run tag {GPU_TAG}={tags[GPU_TAG]!r} is not an integer") from e
    if assign_by in ("partition", "tag") and partition_key:
        return zlib.crc32(partition_key.encode()) % n_gpus
    return 0


class GpuResource(dg.ConfigurableResource, GpuSection):
    """Accelerator, devices, precision and strategy for every Lightning Trainer of a run, and
    the worker slots over which a step spreads fold x head partitions. Its fields are the
    ``gpu`` section of the configuration (one definition, see ``GpuSection``)."""

    def use_gpu(self) -> bool:
        if self.accelerator == "cpu":
            return False
        ok = cuda_available()
        if self.accelerator == "gpu" and not ok:
            raise RuntimeError("gpu.accelerator = gpu but CUDA is not available on this machine")
        return ok

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        if self.use_gpu():
            import torch

            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"

    def amp_name(self) -> str | None:
        """``bf16`` / ``fp16`` for mixed precision on a GPU, else None (picklable)."""
        p = self.resolved_precision()
        if not self.use_gpu():
            return None
        return "bf16" if p.startswith("bf16") else "fp16" if p.startswith("16") else None

    def amp_dtype(self):
        """The autocast dtype matching the precision (None for full precision)."""
        import torch

        p = self.resolved_precision()
        if p.startswith("bf16"):
            return torch.bfloat16 if self.use_gpu() else None
        if p.startswith("16"):
            return torch.float16 if self.use_gpu() else None
        return None

    def trainer_kwargs(self, partition_key: str | None = None,
                       tags: Mapping[str, str] | None = None,
                       device_index: int | None = None) -> dict[str, Any]:
        """``accelerator``, ``devices``, ``precision``, ``strategy`` for ``lightning.Trainer``.

        ``device_index`` pins a single-device trainer to that GPU (a worker slot's); else the
        partition key or run tag picks one (``assign_by``)."""
        gpu = self.use_gpu()
        kw: dict[str, Any] = {"accelerator": "gpu" if gpu else "cpu",
                              "precision": self.resolved_precision()}
        if self.devices > 1:
            kw["devices"] = self.devices
            kw["strategy"] = self._ddp_strategy(gpu)
            return kw
        if gpu:
            n = len(visible_gpus())
            kw["devices"] = [device_index if device_index is not None
                             else assign_device(n, partition_key, tags, self.assign_by)]
        else:
            kw["devices"] = 1
        kw["strategy"] = self.strategy if self.strategy not in ("auto", "ddp", "ddp_spawn") \
            else "auto"
        return kw

    def _ddp_strategy(self, gpu: bool):
        from lightning.pytorch.strategies import DDPStrategy

        backend = "nccl" if gpu else "gloo"
        if self.strategy in ("auto", "ddp_spawn"):
            import torch.multiprocessing as mp

            mp.set_sharing_strategy(self.sharing_strategy)
            # spawned workers: safe inside a Dagster run (plain "ddp" re-executes sys.argv)
            return DDPStrategy(start_method="spawn", process_group_backend=backend,
                               find_unused_parameters=self.find_unused_parameters)
        if self.strategy == "ddp":
            return DDPStrategy(process_group_backend=backend,
                               find_unused_parameters=self.find_unused_parameters)
        return self.strategy

    def inference_device(self, partition_key: str | None = None,
                         tags: Mapping[str, str] | None = None,
                         device_index: int | None = None) -> str:
        """Where the post-training predictions run (the partition's GPU, or CPU)."""
        if not self.use_gpu():
            return "cpu"
        kw = self.trainer_kwargs(partition_key, tags, device_index)
        dev = kw["devices"]
        return f"cuda:{dev[0]}" if isinstance(dev, list) else "cuda:0"

    def task_placement(self, slots: Sequence[WorkerSlot], partition_key: str | None = None,
                       tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``trainer_kwargs``, ``device`` and ``amp`` of a partition task trained on ``slots``:
        a worker slot sees only its own GPU (device 0); in the step's own process the
        partition key or run tag picks the GPU (``assign_by``)."""
        index = None if slots[0].in_process else 0
        return {"trainer_kwargs": self.trainer_kwargs(partition_key, tags, index),
                "device": self.inference_device(partition_key, tags, index),
                "amp": self.amp_name()}

    def worker_slots(self, n_jobs: int, workers_per_gpu: int | None = None
                     ) -> list[WorkerSlot]:
        """Where a step's partitions train at once: ``workers_per_gpu`` worker processes per
        visible GPU (the argument, e.g. a backbone's own, else the resource's; each sees only
        its GPU; with ``pin_cpus`` each GPU's workers share their own block of this process's
        CPUs), or ``cpu_workers`` on a machine without one.
        One slot with ``in_process`` = train in the step's own process (DDP across all
        devices when ``devices > 1``; one worker needs no pool)."""
        if self.use_gpu():
            gpus = visible_gpus()
            per_gpu = workers_per_gpu or self.workers_per_gpu
            if self.devices > 1 or len(gpus) * per_gpu <= 1 or n_jobs <= 1:
                return [WorkerSlot(gpu=None, in_process=True)]
            threads = self._threads(len(gpus) * per_gpu)
            blocks = (cpu_blocks(len(gpus)) if self.pin_cpus and usable_cpus() >= len(gpus)
                      else [None] * len(gpus))
            slots = [WorkerSlot(gpu=g, threads=threads, cpus=blocks[k])
                     for _ in range(per_gpu) for k, g in enumerate(gpus)]
        elif self.cpu_workers <= 1 or n_jobs <= 1 or self.devices > 1:
            return [WorkerSlot(gpu=None, in_process=True)]
        else:
            slots = [WorkerSlot(gpu=None, threads=self._threads(self.cpu_workers))
                     for _ in range(self.cpu_workers)]
        return slots[:max(1, n_jobs)]

    def _threads(self, workers: int) -> int:
        if self.threads_per_worker:
            return self.threads_per_worker
        return max(1, usable_cpus() // max(1, workers))

    @classmethod
    def from_section(cls, section: GpuSection) -> GpuResource:
        """Build from ``AesConfig.gpu``."""
        return cls(**section.model_dump())
