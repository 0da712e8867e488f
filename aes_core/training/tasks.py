"""What a training worker process receives and what the step reads back, without importing
Lightning or torch: the Dagster step that hands partitions to workers stays light to import
(each step process of the multiprocess executor loads the definitions again)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from aes_core.config import GpuSection
from aes_core.contracts import FoldHeadCheckpoint
from aes_core.training.mps import step_mps
from aes_core.training.parallel import JobFailure, WorkerSlot, failures, run_jobs

METRICS_FILE = "metrics.csv"  # Lightning's CSVLogger file inside each stage folder
# imported once by a forkserver for the partition workers (torch, Lightning, transformers;
# none of them touches CUDA at import)
TRAINING_MODULES = ("aes_core.training.stages",)


@dataclass
class PartitionTask:
    """One fold x head partition for a worker process: plain, picklable data."""

    cfg_json: str
    backbone: str
    backbone_path: str
    fold: int
    head: str
    out_dir: str
    folded_path: str
    trainer_kwargs: dict[str, Any]
    device: str
    amp: str | None = None
    unlabelled_path: str | None = None  # essays for pseudo-labels (train.pseudo_label_essays)
    token_cache: str | None = None  # the step's shared token cache (train.share_tokens)


def train_partition(task: PartitionTask) -> FoldHeadCheckpoint:
    """:func:`aes_core.training.stages.train_fold_head` in a worker process (see
    ``aes_core.training.parallel``)."""
    from aes_core.config import AesConfig
    from aes_core.logs import quiet_libraries
    from aes_core.training.stages import AMP_DTYPES, FoldHeadJob, train_fold_head

    quiet_libraries()
    cfg = AesConfig.model_validate_json(task.cfg_json)
    job = FoldHeadJob(cfg=cfg, backbone=cfg.backbone(task.backbone),
                      backbone_path=Path(task.backbone_path), fold=task.fold, head=task.head,
                      out_dir=Path(task.out_dir), trainer_kwargs=task.trainer_kwargs,
                      device=task.device, amp_dtype=AMP_DTYPES.get(task.amp or ""),
                      progress=False, token_cache=task.token_cache)
    unlabelled = pd.read_parquet(task.unlabelled_path) if task.unlabelled_path else None
    return train_fold_head(job, pd.read_parquet(task.folded_path), unlabelled)


def run_partitions(tasks: Sequence[PartitionTask], slots: Sequence[WorkerSlot], gpu: GpuSection,
                   on_result: Callable[[int, FoldHeadCheckpoint | JobFailure], None] | None = None,
                   before_submit: Callable[[], None] | None = None, label: str = "partitions",
                   info: Callable[[str], None] = print, warn: Callable[[str], None] = print
                   ) -> tuple[list[FoldHeadCheckpoint | JobFailure], bool]:
    """Train ``tasks`` over the worker ``slots`` (:func:`run_jobs` with ``gpu.worker_start``),
    under the step's MPS daemon where ``gpu.mps`` and GPU workers call for one; on failures
    the daemon's log goes to ``warn``. Returns the results in task order and whether MPS ran."""
    gpu_workers = any(s.gpu is not None for s in slots)
    with step_mps(gpu.mps, gpu_workers, warn) as daemon:
        if daemon is not None:
            info(f"{label}: workers share their GPUs through MPS (daemon logs in "
                 f"{daemon.log_dir})")
        results = run_jobs(train_partition, tasks, slots, on_result, start=gpu.worker_start,
                           preload=TRAINING_MODULES, before_submit=before_submit,
                           logical_gpus=daemon is not None)
        if daemon is not None and failures(results):
            warn(f"{label}: MPS control log:\n{daemon.control_log()[-2000:]}")
    return results, daemon is not None


def stage_history(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Per stage, the metric rows Lightning logged (``metrics.csv``), for experiment tracking."""
    out: dict[str, list[dict[str, Any]]] = {}
    for stage in ("stage1", "stage2"):
        f = Path(folder) / stage / METRICS_FILE
        if f.exists():
            df = pd.read_csv(f)
            out[stage] = [{k: v for k, v in row.items() if pd.notna(v)}
                          for row in df.to_dict("records")]
    return out
