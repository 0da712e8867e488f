"""The seed's two-stage recipe for one fold x head, with resumable Lightning checkpoints.

Stage 1 trains on folds != i and validates on fold i with flag 1. Stage 2 starts from stage 1's
best weights, trains on folds != i with flag 1 on smoothed targets ``(1 - r) * y + r * p``
(``p`` = stage-1 prediction on those training essays) and validates on fold i with flag 0.
The final model is scored on all of fold i (the out-of-fold predictions).

Folder layout of one partition (``out_dir``)::

    run_spec.json        what this partition trains (a changed spec starts over)
    stage1/ stage2/      Lightning checkpoints: best*.ckpt, last.ckpt, done.json
    model/               EssayRegressor folder of the final model
    oof.parquet          essay_id, pred (1..6) on all of fold i
    result.json          written last: the partition is complete
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from aes_core.config import AesConfig, BackboneSection
from aes_core.metrics import qwk
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import (
    EssayRegressor,
    RegressorSpec,
    logits_to_scores,
    scores_to_targets,
)
from aes_core.training.datamodule import EssayDataset, eval_loader, predict_logits, train_loader
from aes_core.training.module import RegressorModule, prepare_encoder
from aes_core.training.resume import (
    LAST_CKPT,
    RESULT_FILE,
    checkpoint_summary,
    device_count,
    prepare_out_dir,
)

log = logging.getLogger(__name__)

OOF_FILE, DONE_FILE, MODEL_DIR = "oof.parquet", "done.json", "model"


# ----------------------------------------------------------------------------- data selection
@dataclass
class StageSplit:
    """Rows of one stage; ``skipped`` carries the reason when the stage cannot run."""

    train: pd.DataFrame
    val: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


def _check_fold(df: pd.DataFrame, fold: int) -> None:
    missing = {"essay_id", "full_text", "score", "fold", "flag"} - set(df.columns)
    if missing:
        raise ValueError(f"folded essays lack column(s) {sorted(missing)}")
    if fold not in set(df["fold"].astype(int)):
        raise ValueError(f"fold {fold} has no essays; folds present: "
                         f"{sorted(set(df['fold'].astype(int)))}")


def subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded subsample of at most ``n`` rows (all rows when ``n`` is None)."""
    if n is None or len(df) <= n:
        return df
    return df.sample(n, random_state=seed).sort_index()


def stage1_split(df: pd.DataFrame, fold: int, min_val: int = 1) -> StageSplit:
    """Train on folds != i; validate on fold i with flag 1 (all of fold i if that is empty)."""
    _check_fold(df, fold)
    train = df[df["fold"] != fold]
    val = df[(df["fold"] == fold) & (df["flag"] == 1)]
    notes = []
    if len(val) < min_val:
        notes.append(f"stage 1: fold {fold} has {len(val)} flag-1 essays (< {min_val}); "
                     f"validating on all {int((df['fold'] == fold).sum())} essays of fold {fold}")
        val = df[df["fold"] == fold]
    return StageSplit(train, val, notes)


def stage2_split(df: pd.DataFrame, fold: int, min_val: int = 1) -> StageSplit:
    """Train on folds != i with flag 1, validate on fold i with flag 0; skip if either is empty."""
    _check_fold(df, fold)
    train = df[(df["fold"] != fold) & (df["flag"] == 1)]
    val = df[(df["fold"] == fold) & (df["flag"] == 0)]
    split = StageSplit(train, val)
    if len(train) == 0:
        split.skipped = (f"stage 2 skipped: no flag-1 essays outside fold {fold} to train on "
                         f"(check folds.flag_rule)")
    elif len(val) < min_val:
        split.skipped = (f"stage 2 skipped: fold {fold} has {len(val)} flag-0 essays to "
                         f"validate on (< {min_val})")
    if split.skipped:
        split.notes.append(split.skipped)
    return split


def smooth_targets(scores: np.ndarray, stage1_pred: np.ndarray, r: float) -> np.ndarray:
    """Stage-2 targets ``(1 - r) * (score - 1) / 5 + r * p`` with ``p`` on the 0..1 scale."""
    y = (np.asarray(scores, dtype=np.float32) - 1.0) / 5.0
    return ((1.0 - r) * y + r * np.asarray(stage1_pred, dtype=np.float32)).astype(np.float32)


# ----------------------------------------------------------------------------- training
@dataclass
class FoldHeadJob:
    """Everything one fold x head partition needs, independent of Dagster."""

    cfg: AesConfig
    backbone: BackboneSection
    backbone_path: Path
    fold: int
    head: str
    out_dir: Path
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    amp_dtype: torch.dtype | None = None
    loggers: Callable[[str], list] | None = None   # stage name -> Lightning loggers
    callbacks: list[Callback] = field(default_factory=list)
    log_fn: Callable[[str], None] | None = None
    progress: bool = True


class EpochLog(Callback):
    """Writes each epoch's metrics through ``log_fn`` (e.g. Dagster's run log)."""

    def __init__(self, stage: str, log_fn: Callable[[str], None]):
        self.stage, self.log_fn = stage, log_fn

    def __getstate__(self) -> dict:
        # DDP spawn pickles the trainer: run loggers (e.g. Dagster's) may not pickle, so the
        # spawned ranks write to Python logging instead
        return {"stage": self.stage, "log_fn": log.info}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()
             if k in ("train_loss_epoch", "val_loss", "val_qwk")}
        self.log_fn(f"{self.stage} epoch {trainer.current_epoch} step {trainer.global_step}: "
                    + ", ".join(f"{k}={v:.4f}" for k, v in sorted(m.items())))


def data_fingerprint(df: pd.DataFrame) -> str:
    cols = df[["essay_id", "score", "fold", "flag"]].astype(str).agg("|".join, axis=1)
    return hashlib.sha256("\n".join(sorted(cols)).encode()).hexdigest()[:16]


def job_spec(job: FoldHeadJob, folded: pd.DataFrame) -> dict[str, Any]:
    """What determines a partition's result; a change means its checkpoints cannot resume."""
    return {"backbone": job.backbone.model_dump(), "backbone_path": str(job.backbone_path),
            "fold": job.fold, "head": job.head, "train": job.cfg.train.model_dump(),
            "heads": job.cfg.heads.model_dump(), "data": data_fingerprint(folded)}


def _log(job: FoldHeadJob, msg: str) -> None:
    log.info(msg)
    if job.log_fn:
        job.log_fn(msg)


def _targets(df: pd.DataFrame) -> np.ndarray:
    return scores_to_targets(torch.tensor(df["score"].to_numpy())).numpy()


def _load_best(module: RegressorModule, ckpt: str) -> None:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)


def run_stage(job: FoldHeadJob, stage: str, model: EssayRegressor, tokenizer,
              train_df: pd.DataFrame, train_targets: np.ndarray, val_df: pd.DataFrame,
              epochs: int) -> dict[str, Any]:
    """Fit one stage (resuming from ``last.ckpt`` when present); load its best weights."""
    cfg, bb = job.cfg.train, job.backbone
    sdir = job.out_dir / stage
    done = sdir / DONE_FILE
    module = RegressorModule(model, cfg)
    if done.exists():
        info = json.loads(done.read_text())
        _load_best(module, info["best_ckpt"])
        _log(job, f"{stage}: already complete, best val QWK {info['best_val_qwk']:.4f}")
        return {**info, "resumed": "completed earlier"}
    sdir.mkdir(parents=True, exist_ok=True)
    last = sdir / LAST_CKPT
    resume = str(last) if last.exists() else None
    if resume:
        _log(job, f"{stage}: resuming from {last}")
    nl = bb.add_newline_tokens
    train_ds = EssayDataset(train_df["full_text"].tolist(), tokenizer, bb.max_length,
                            train_targets, nl)
    val_ds = EssayDataset(val_df["full_text"].tolist(), tokenizer, bb.max_length,
                          _targets(val_df), nl)
    multi = device_count(job.trainer_kwargs) > 1
    tl = train_loader(train_ds, tokenizer, cfg.batch_size, cfg.seed + job.fold, cfg.num_workers)
    vl = eval_loader(val_ds, tokenizer, cfg.eval_batch_size, cfg.num_workers,
                     length_sorted=not multi)
    ckpt_cb = ModelCheckpoint(dirpath=sdir, filename="best", monitor="val_qwk", mode="max",
                              save_top_k=1, save_last=True)
    callbacks: list[Callback] = [ckpt_cb, EarlyStopping("val_qwk", mode="max",
                                                        patience=cfg.early_stopping_patience)]
    if job.log_fn:
        callbacks.append(EpochLog(stage, job.log_fn))
    callbacks += job.callbacks
    trainer = pl.Trainer(
        **job.trainer_kwargs, max_epochs=epochs, callbacks=callbacks,
        logger=job.loggers(stage) if job.loggers else False, default_root_dir=str(sdir),
        enable_progress_bar=job.progress, enable_model_summary=False,
        gradient_clip_val=cfg.gradient_clip_val or None,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        val_check_interval=cfg.val_check_interval, num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every_n_steps, deterministic=False,
    )
    _log(job, f"{stage}: {len(train_ds)} train essays ({train_ds.n_tokens} tokens), "
              f"{len(val_ds)} validation essays, {epochs} epoch(s)")
    module.model.train()  # HF loads in eval mode; Lightning keeps module modes as found
    trainer.fit(module, tl, vl, ckpt_path=resume)
    best = ckpt_cb.best_model_path or str(last)
    _load_best(module, best)
    # read progress from last.ckpt: spawned DDP workers do not send it back to this process
    summary = checkpoint_summary(last if last.exists() else Path(best))
    info = {"best_ckpt": best, "best_val_qwk": summary["best_model_score"],
            "epochs_run": summary["epochs"], "global_step": summary["global_step"],
            "train_essays": len(train_ds),
            "val_essays": len(val_ds), "resumed_from": resume}
    done.write_text(json.dumps(info, indent=2))
    _log(job, f"{stage}: best val QWK {info['best_val_qwk']} ({best})")
    return info


def build_regressor(job: FoldHeadJob, tokenizer) -> tuple[EssayRegressor, dict[str, int]]:
    spec = RegressorSpec(head=job.head, heads_cfg=job.cfg.heads, loss=job.cfg.train.loss,
                         max_length=job.backbone.max_length,
                         add_newline_tokens=job.backbone.add_newline_tokens,
                         backbone_name=job.backbone.name)
    pl.seed_everything(job.cfg.train.seed + job.fold, workers=True, verbose=False)
    model = EssayRegressor.from_backbone(job.backbone_path, spec, vocab_size=len(tokenizer),
                                         num_layers=job.backbone.num_layers)
    return model, prepare_encoder(model, job.cfg.train)


def _predict(job: FoldHeadJob, model: EssayRegressor, tokenizer, df: pd.DataFrame) -> np.ndarray:
    """Scores on the 1..6 scale for the rows of ``df`` in order."""
    ds = EssayDataset(df["full_text"].tolist(), tokenizer, job.backbone.max_length,
                      add_newline_tokens=job.backbone.add_newline_tokens)
    logits = predict_logits(model, ds, tokenizer, job.cfg.train.eval_batch_size, job.device,
                            job.amp_dtype, progress=job.progress)
    return logits_to_scores(torch.from_numpy(logits), job.cfg.train.loss).numpy()


def train_fold_head(job: FoldHeadJob, folded: pd.DataFrame) -> dict[str, Any]:
    """Run both stages for one fold x head; returns the partition's result (also result.json)."""
    if job.head not in job.cfg.heads.heads:
        raise ValueError(f"head {job.head!r} is not configured; heads.heads = "
                         f"{job.cfg.heads.heads}")
    tcfg = job.cfg.train
    notes = prepare_out_dir(job.out_dir, job_spec(job, folded))
    tokenizer = load_tokenizer(job.backbone_path, job.backbone.add_newline_tokens)
    model, counts = build_regressor(job, tokenizer)
    _log(job, f"{job.backbone.name}/{job.head} fold {job.fold}: {counts}")

    s1 = stage1_split(folded, job.fold, tcfg.min_val_essays_per_stage)
    notes += s1.notes
    train1 = subsample(s1.train, tcfg.max_train_essays, tcfg.seed + job.fold)
    info1 = run_stage(job, "stage1", model, tokenizer, train1, _targets(train1), s1.val,
                      tcfg.stage1_epochs)
    info2: dict[str, Any] | None = None
    s2 = stage2_split(folded, job.fold, tcfg.min_val_essays_per_stage)
    if tcfg.stage2_epochs == 0:
        notes.append("stage 2 skipped: train.stage2_epochs = 0")
    elif s2.skipped:
        notes += s2.notes
    else:
        train2 = subsample(s2.train, tcfg.max_train_essays, tcfg.seed + job.fold + 1000)
        p1 = (_predict(job, model, tokenizer, train2) - 1.0) / 5.0
        targets2 = smooth_targets(train2["score"].to_numpy(), p1, tcfg.smoothing_r)
        info2 = run_stage(job, "stage2", model, tokenizer, train2, targets2, s2.val,
                          tcfg.stage2_epochs)
    for n in notes:
        _log(job, n)

    fold_df = folded[folded["fold"] == job.fold]
    pred = _predict(job, model, tokenizer, fold_df)
    fold_qwk = qwk(fold_df["score"].to_numpy(), pred)
    model_dir = model.cpu().save_pretrained(job.out_dir / MODEL_DIR, tokenizer)
    oof = pd.DataFrame({"essay_id": fold_df["essay_id"].astype(str).to_numpy(),
                        "pred": pred.astype(np.float64)})
    oof.to_parquet(job.out_dir / OOF_FILE, index=False)
    result = {
        "model_dir": str(model_dir), "oof_path": str(job.out_dir / OOF_FILE),
        "backbone": job.backbone.name, "head": job.head, "fold": job.fold,
        "stage1_val_qwk": info1.get("best_val_qwk"),
        "stage2_val_qwk": info2.get("best_val_qwk") if info2 else None,
        "fold_qwk": fold_qwk, "fold_essays": len(fold_df),
        "stage1": info1, "stage2": info2, "notes": notes, **counts,
    }
    (job.out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    _log(job, f"{job.backbone.name}/{job.head} fold {job.fold}: QWK on all of fold "
              f"{job.fold} = {fold_qwk:.4f}")
    return result


def load_partition_result(folder: Path) -> dict[str, Any] | None:
    """A completed partition's result (None when it never finished)."""
    p = Path(folder) / RESULT_FILE
    return json.loads(p.read_text()) if p.exists() else None
