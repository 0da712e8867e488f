"""What a training worker process receives and what the step reads back, without importing
Lightning or torch: the Dagster step that hands partitions to workers stays light to import
(each step process of the multiprocess executor loads the definitions again)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from aes_core.contracts import FoldHeadCheckpoint

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
