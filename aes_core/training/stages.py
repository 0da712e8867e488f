"""The seed's two-stage recipe for one fold x head, with resumable Lightning checkpoints.

Stage 1 trains on folds != i and validates on fold i with flag 1. Stage 2 starts from stage 1's
best weights, trains on folds != i with flag 1 on smoothed targets ``(1 - r) * y + r * p``
(``p`` = stage-1 prediction on those training essays) and validates on fold i with flag 0.
The final model is scored on all of fold i (the out-of-fold predictions).

Stage 2 is guarded (``train.stage2_guard``): when it scores worse on its validation essays
than stage 1's weights did, the partition keeps stage 1's weights and says so in its notes.

Folder layout of one partition (``out_dir``)::

    run_spec.json        what this partition trains (a changed spec starts over)
    stage1/ stage2/      Lightning checkpoints (best*.ckpt, last.ckpt; removed once complete
                         unless train.keep_checkpoints = all), done.json, metrics.csv
    model/               EssayRegressor folder of the final model
    oof.parquet          essay_id, pred (1..6) on all of fold i
    result.json          written last: the partition is complete (a FoldHeadCheckpoint)

:func:`train_partition` is the same recipe for a worker process (see ``parallel.run_jobs``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from aes_core.config import AesConfig, BackboneSection, TrainSection
from aes_core.contracts import FoldHeadCheckpoint, StageInfo
from aes_core.data import io
from aes_core.logs import quiet_libraries
from aes_core.members import member_name
from aes_core.metrics import qwk
from aes_core.models.backbone import load_tokenizer, use_cudnn_attention
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
    fresh_trainer_kwargs,
    prepare_out_dir,
)

log = logging.getLogger(__name__)

OOF_FILE, DONE_FILE, MODEL_DIR = "oof.parquet", "done.json", "model"
PSEUDO_FILE = "pseudo_labels.parquet"  # stage 2's pseudo-labelled essays and their teacher
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    loggers: Callable[[str], list] | None = None   # stage name -> extra Lightning loggers
    callbacks: list[Callback] = field(default_factory=list)
    log_fn: Callable[[str], None] | None = None
    progress: bool = True
    token_cache: str | None = None  # folder of the step's shared token cache (shared_tokens)
    encoder: Any = None  # set by train_fold_head: where its datasets' windows come from

    @property
    def train(self) -> TrainSection:
        """This backbone's training settings (``AesConfig.train_for``)."""
        return self.cfg.train_for(self.backbone)

    def dataset(self, tokenizer, texts: list[str],
                targets: np.ndarray | None = None) -> EssayDataset:
        """The essays as this partition's model reads them (from the shared token cache when
        the step made one)."""
        return EssayDataset(texts, tokenizer, self.backbone, targets, encoder=self.encoder)


THROUGHPUT_FILE = "throughput.json"


class Throughput(Callback):
    """Training tokens per second of a fit, written to ``<stage dir>/throughput.json``
    (spawned DDP ranks cannot hand values back). Only training batches count: the clock
    stops for validation (and the checkpointing after it) and restarts at the next training
    batch, and the first ``skip_batches`` batches (warm-up) are left out. Tokens are summed
    over the ranks at the end (their slices of a length-grouped global batch differ in
    length). The device is synchronized only where the clock starts or stops."""

    def __init__(self, path: Path, skip_batches: int = 2):
        self.path = path
        self.skip_batches = skip_batches
        self.seen = 0
        self.started: float | None = None
        self.seconds = 0.0
        self.tokens: torch.Tensor | int = 0  # summed on the device: no sync per step

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def _stop(self) -> None:
        if self.started is not None:
            self.seconds += self._now() - self.started
            self.started = None

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.num_training_batches * max(trainer.max_epochs or 1, 1)
        if math.isfinite(total):  # a short fit still measures its last batch
            self.skip_batches = min(self.skip_batches, max(int(total) - 1, 0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.started is None and self.seen >= self.skip_batches:
            self.started = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.started is not None:
            self.tokens = self.tokens + batch["attention_mask"].sum()
        self.seen += 1

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._stop()
        tokens = torch.as_tensor(self.tokens, device=trainer.strategy.root_device)  # the model
        # may be back on the CPU by now; NCCL reduces only on the GPU
        total = int(trainer.strategy.reduce(tokens, reduce_op="sum"))  # every rank takes part
        if trainer.is_global_zero and self.seconds > 0:
            self.path.write_text(json.dumps({
                "tokens": total, "seconds": self.seconds, "tokens_per_s": total / self.seconds,
                "world_size": trainer.world_size, "skipped_batches": self.skip_batches}))


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


def job_spec(job: FoldHeadJob, folded: pd.DataFrame,
             unlabelled: pd.DataFrame | None = None) -> dict[str, Any]:
    """What determines a partition's result; a change means it cannot resume or be reused."""
    from aes_core.tracking import code_hash

    spec = {"backbone": job.backbone.encoder_only().model_dump(),
            "backbone_path": str(job.backbone_path),
            "fold": job.fold, "head": job.head, "train": job.train.model_dump(
                exclude={"reuse_completed", "keep_checkpoints", "num_workers",
                         "log_every_n_steps"}),
            "heads": job.cfg.heads.model_dump(), "data": data_fingerprint(folded),
            "code": code_hash()}
    if job.train.pseudo_label_essays and unlabelled is not None:
        spec["unlabelled"] = io.fingerprint(unlabelled[["full_text"]])
    return spec


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
              epochs: int) -> tuple[StageInfo, str]:
    """Fit one stage (resuming from ``last.ckpt`` when present); load its best weights.

    Returns the stage's summary and the path of its best checkpoint."""
    from lightning.pytorch.loggers import CSVLogger

    cfg = job.train
    sdir = job.out_dir / stage
    done = sdir / DONE_FILE
    module = RegressorModule(model, cfg)
    if done.exists():
        info = json.loads(done.read_text())
        _load_best(module, info["best_ckpt"])
        _log(job, f"{stage}: already complete, best val QWK {info['stage']['best_val_qwk']}")
        return StageInfo.model_validate(info["stage"]), info["best_ckpt"]
    sdir.mkdir(parents=True, exist_ok=True)
    last = sdir / LAST_CKPT
    resume = str(last) if last.exists() else None
    if resume:
        _log(job, f"{stage}: resuming from {last}")
    train_ds = job.dataset(tokenizer, train_df["full_text"].tolist(), train_targets)
    val_ds = job.dataset(tokenizer, val_df["full_text"].tolist(), _targets(val_df))
    # training: global batches of batch_size x devices, sharded by our own sampler (Lightning
    # must not swap in its DistributedSampler); validation: each rank's EvalShardSampler shard
    multi = device_count(job.trainer_kwargs) > 1
    tl = train_loader(train_ds, tokenizer, cfg.batch_size, cfg.seed + job.fold, cfg.num_workers,
                      group_batches=cfg.length_group_batches)
    vl = eval_loader(val_ds, tokenizer, cfg.eval_batch_size, cfg.num_workers,
                     length_sorted=not multi)
    # the best epoch's weights only: resuming reads last.ckpt, so the optimizer state (twice
    # the weights) need not be written again with every improvement
    ckpt_cb = ModelCheckpoint(dirpath=sdir, filename="best", monitor="val_qwk", mode="max",
                              save_top_k=1, save_weights_only=True)
    # last.ckpt after every validation: Lightning's save_last writes it only when the best
    # checkpoint improved, so a resumed stage and the epochs it reports would lag behind
    last_cb = ModelCheckpoint(dirpath=sdir, filename=Path(LAST_CKPT).stem, monitor=None,
                              save_top_k=1, enable_version_counter=False)
    callbacks: list[Callback] = [ckpt_cb, last_cb, EarlyStopping("val_qwk", mode="max",
                                                        patience=cfg.early_stopping_patience),
                                 Throughput(sdir / THROUGHPUT_FILE,
                                            cfg.throughput_skip_batches)]
    if job.log_fn:
        callbacks.append(EpochLog(stage, job.log_fn))
    callbacks += job.callbacks
    loggers = [CSVLogger(str(sdir), name="", version="")]
    if job.loggers:
        loggers += job.loggers(stage)
    trainer = pl.Trainer(
        **fresh_trainer_kwargs(job.trainer_kwargs), max_epochs=epochs, callbacks=callbacks,
        logger=loggers, default_root_dir=str(sdir),
        enable_progress_bar=job.progress, enable_model_summary=False,
        gradient_clip_val=cfg.gradient_clip_val or None,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        val_check_interval=cfg.val_check_interval, num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every_n_steps, deterministic=False,
        use_distributed_sampler=False,
    )
    _log(job, f"{stage}: {len(train_ds)} train essays ({train_ds.n_tokens} tokens), "
              f"{len(val_ds)} validation essays, {epochs} epoch(s)")
    module.model.train()  # HF loads in eval mode; Lightning keeps module modes as found
    t0 = time.time()
    trainer.fit(module, tl, vl, ckpt_path=resume)
    seconds = time.time() - t0
    best = ckpt_cb.best_model_path or str(last)
    _load_best(module, best)
    # read progress from last.ckpt: spawned DDP workers do not send it back to this process
    summary = checkpoint_summary(last if last.exists() else Path(best))
    epochs_run = summary["epochs"]
    thr = sdir / THROUGHPUT_FILE
    steady = json.loads(thr.read_text())["tokens_per_s"] if thr.exists() else None
    info = StageInfo(best_val_qwk=summary["best_model_score"], epochs_run=epochs_run,
                     global_step=summary["global_step"], train_essays=len(train_ds),
                     val_essays=len(val_ds), train_tokens=epochs_run * train_ds.n_tokens,
                     seconds=round(seconds, 2), steady_tokens_per_s=steady,
                     resumed_from=resume)
    done.write_text(json.dumps({"best_ckpt": best, "stage": info.model_dump()}, indent=2))
    _log(job, f"{stage}: best val QWK {info.best_val_qwk} in {seconds:.0f}s")
    return info, best


def build_regressor(job: FoldHeadJob, tokenizer) -> tuple[EssayRegressor, dict[str, int]]:
    ridge = job.train.method == "ridge"
    spec = RegressorSpec(head=job.head, heads_cfg=job.cfg.heads,
                         loss="mse" if ridge else job.train.loss,
                         max_length=job.backbone.max_length,
                         add_newline_tokens=job.backbone.add_newline_tokens,
                         backbone_name=job.backbone.name, chunking=job.backbone.chunking,
                         chunk_overlap=job.backbone.chunk_overlap,
                         max_chunks=job.backbone.max_chunks,
                         tail_tokens=job.backbone.tail_tokens)
    pl.seed_everything(job.train.seed + job.fold, workers=True, verbose=False)
    model = EssayRegressor.from_backbone(job.backbone_path, spec, vocab_size=len(tokenizer),
                                         num_layers=job.backbone.num_layers)
    return model, prepare_encoder(model, job.train)


def _predict(job: FoldHeadJob, model: EssayRegressor, tokenizer, df: pd.DataFrame) -> np.ndarray:
    """Scores on the 1..6 scale for the rows of ``df`` in order."""
    if job.train.method == "ridge":  # frozen encoder: its features are cached per essay
        feats = frozen_features(job, model, tokenizer, df["full_text"].astype(str).tolist())
        out = model.head.out
        logits = feats @ out.weight.detach().cpu().numpy().ravel() + float(out.bias.detach())
        return logits_to_scores(torch.from_numpy(logits), model.spec.loss).numpy()
    ds = job.dataset(tokenizer, df["full_text"].tolist())
    logits = predict_logits(model, ds, tokenizer, job.train.eval_batch_size, job.device,
                            job.amp_dtype, progress=job.progress)
    return logits_to_scores(torch.from_numpy(logits), model.spec.loss).numpy()


def pseudo_labels(job: FoldHeadJob, model: EssayRegressor, tokenizer, unlabelled: pd.DataFrame,
                  folded: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` unlabelled essays scored by ``model`` as it is (the partition's stage-1
    weights: trained on folds != i only), with ``target`` on the training scale.

    Texts equal (normalized) to a labelled essay's are left out, so no fold-i essay comes
    back into training under a pseudo-label; written to ``pseudo_labels.parquet``."""
    from aes_core.data.normalize import normalize_text

    labelled = set(folded["full_text"].astype(str).map(normalize_text))
    fresh = unlabelled[~unlabelled["full_text"].astype(str).map(normalize_text).isin(labelled)]
    fresh = subsample(fresh.drop_duplicates("full_text"), n,
                      job.train.seed + job.fold + 2000)
    out = pd.DataFrame({"full_text": fresh["full_text"].astype(str).to_numpy()})
    out["pseudo_score"] = _predict(job, model, tokenizer, out) if len(out) else np.empty(0)
    out["target"] = (out["pseudo_score"] - 1.0) / 5.0
    out.assign(teacher="stage1", fold=job.fold).to_parquet(job.out_dir / PSEUDO_FILE,
                                                           index=False)
    return out


def _stage2(job: FoldHeadJob, model: EssayRegressor, tokenizer, folded: pd.DataFrame,
            best1: str, notes: list[str], unlabelled: pd.DataFrame | None = None
            ) -> tuple[StageInfo | None, str]:
    """Stage 2 with smoothed targets (plus pseudo-labelled essays), guarded; returns its info
    and the stage whose weights the model now holds."""
    tcfg = job.train
    s2 = stage2_split(folded, job.fold, tcfg.min_val_essays_per_stage)
    if tcfg.stage2_epochs == 0:
        notes.append("stage 2 skipped: train.stage2_epochs = 0")
        return None, "stage1"
    if s2.skipped:
        notes.extend(s2.notes)
        return None, "stage1"
    train2 = subsample(s2.train, tcfg.max_train_essays, tcfg.seed + job.fold + 1000)
    p1 = (_predict(job, model, tokenizer, train2) - 1.0) / 5.0
    targets2 = smooth_targets(train2["score"].to_numpy(), p1, tcfg.smoothing_r)
    if tcfg.pseudo_label_essays and unlabelled is not None and len(unlabelled):
        pseudo = pseudo_labels(job, model, tokenizer, unlabelled, folded,
                               tcfg.pseudo_label_essays)
        train2 = pd.concat([train2[["full_text"]], pseudo[["full_text"]]], ignore_index=True)
        targets2 = np.concatenate([targets2, pseudo["target"].to_numpy()])
        notes.append(f"stage 2: {len(pseudo)} pseudo-labelled essays from the stage-1 model")
    stage1_on_val2 = qwk(s2.val["score"].to_numpy(), _predict(job, model, tokenizer, s2.val))
    info2, _ = run_stage(job, "stage2", model, tokenizer, train2, targets2, s2.val,
                         tcfg.stage2_epochs)
    if (tcfg.stage2_guard and info2.best_val_qwk is not None
            and info2.best_val_qwk < stage1_on_val2):
        _load_best(RegressorModule(model, tcfg), best1)
        notes.append(f"stage 2 validated worse than stage 1 on its {len(s2.val)} validation "
                     f"essays (QWK {info2.best_val_qwk:.4f} < {stage1_on_val2:.4f}): kept "
                     f"stage 1's weights (train.stage2_guard)")
        return info2, "stage1"
    return info2, "stage2"


_RIDGE_FEATURES: dict[tuple, dict[str, np.ndarray]] = {}


def frozen_features(job: FoldHeadJob, model: EssayRegressor, tokenizer,
                    texts: list[str]) -> np.ndarray:
    """The mean head's pooled features of ``texts`` under the frozen encoder, each essay
    encoded once per process (every fold's ridge partition shares the same encoder)."""
    key = (str(job.backbone_path), job.backbone.model_dump_json(), job.device,
           str(job.amp_dtype))
    cache = _RIDGE_FEATURES.setdefault(key, {})
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    todo = sorted({d: t for d, t in zip(digests, texts, strict=True) if d not in cache}.items())
    if todo:
        ds = job.dataset(tokenizer, [t for _, t in todo])
        out, model.head.out = model.head.out, torch.nn.Identity()
        try:
            feats = predict_logits(model, ds, tokenizer, job.train.eval_batch_size,
                                   job.device, job.amp_dtype)
        finally:
            model.head.out = out
        cache.update({d: f for (d, _), f in zip(todo, feats, strict=True)})
    return np.stack([cache[d] for d in digests])


def fit_ridge_head(job: FoldHeadJob, model: EssayRegressor, tokenizer, train_df: pd.DataFrame,
                   val_df: pd.DataFrame) -> StageInfo:
    """Frozen encoder, closed-form head: ridge on the mean head's pooled features of the
    training essays, targets ``(score - 1) / 5`` (the spec's loss is ``mse``: identity)."""
    from sklearn.linear_model import Ridge

    if job.head != "mean":
        raise ValueError(f"train.method = ridge fits the mean head only; head {job.head!r} "
                         f"needs train.method = finetune (or heads [mean] for backbone "
                         f"{job.backbone.name!r})")
    t0 = time.time()
    texts = train_df["full_text"].astype(str).tolist()
    reg = Ridge(alpha=job.train.ridge_alpha).fit(
        frozen_features(job, model, tokenizer, texts), _targets(train_df))
    out = model.head.out
    with torch.no_grad():
        out.weight.copy_(torch.as_tensor(reg.coef_, dtype=out.weight.dtype).view_as(out.weight))
        out.bias.fill_(float(reg.intercept_))
    val = frozen_features(job, model, tokenizer, val_df["full_text"].astype(str).tolist())
    val_qwk = qwk(val_df["score"].to_numpy(), 1.0 + 5.0 * reg.predict(val))
    _log(job, f"ridge head on {len(train_df)} essays: validation QWK {val_qwk:.4f}")
    return StageInfo(best_val_qwk=val_qwk, epochs_run=1, train_essays=len(train_df),
                     val_essays=len(val_df), seconds=round(time.time() - t0, 2))


def _drop_checkpoints(out: Path) -> None:
    for ckpt in out.glob("stage*/*.ckpt"):
        ckpt.unlink()


class PhaseClock:
    """Wall seconds of a partition's consecutive phases (``mark`` ends the current one)."""

    def __init__(self, start: float):
        self._last = start
        self.seconds: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        now = time.time()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._last, 3)
        self._last = now


def _token_counts(job: FoldHeadJob) -> dict[str, int]:
    """Essays read from the step's token cache and essays this partition tokenized itself
    (frozen-feature partitions tokenize each essay once per process, not counted)."""
    if job.encoder is None or job.encoder.cache is None:
        return {}
    cache = job.encoder.cache
    return {"essays_from_token_cache": cache.hits, "essays_tokenized": cache.misses}


def worker_name(device: str) -> str:
    """Which process and GPU ran a partition (CUDA_VISIBLE_DEVICES names the physical GPU of a
    pinned worker, whose own device is always cuda:0)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu = f" gpu {visible}" if visible and device.startswith("cuda") else ""
    return f"pid {os.getpid()}{gpu}"


def train_fold_head(job: FoldHeadJob, folded: pd.DataFrame,
                    unlabelled: pd.DataFrame | None = None) -> FoldHeadCheckpoint:
    """Run both stages for one fold x head; returns the partition's result (also result.json).

    ``unlabelled``: essays that stage 2 pseudo-labels (``train.pseudo_label_essays``).

    A completed partition of the identical spec is returned as it is (``reused``) when
    ``train.reuse_completed``; an interrupted one resumes from its last checkpoint."""
    quiet_libraries()
    heads = job.cfg.heads_for(job.backbone)
    if job.head not in heads:
        raise ValueError(f"head {job.head!r} is not configured for backbone "
                         f"{job.backbone.name!r}; its heads: {heads}")
    t0 = time.time()
    tcfg = job.train
    spec = job_spec(job, folded, unlabelled)
    notes, completed = prepare_out_dir(job.out_dir, spec, tcfg.reuse_completed)
    name = f"{job.backbone.name}/{job.head} fold {job.fold}"
    reused = load_partition_result(job.out_dir) if completed else None
    if reused is not None:
        _log(job, f"{name}: reusing the completed result (same configuration, data and code)")
        return reused.model_copy(update={"reused": True})
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    use_cudnn_attention(tcfg.cudnn_attention)  # predictions here; RegressorModule for training
    tokenizer = load_tokenizer(job.backbone_path, job.backbone.add_newline_tokens)
    if job.token_cache:
        from aes_core.training.shared_tokens import shared_encoder

        job.encoder = shared_encoder(tokenizer, job.backbone, job.token_cache,
                                     max_entries=len(folded) + (0 if unlabelled is None
                                                                else len(unlabelled)))
    model, counts = build_regressor(job, tokenizer)
    _log(job, f"{name}: {counts}")
    clock = PhaseClock(t0)
    clock.mark("setup")

    s1 = stage1_split(folded, job.fold, tcfg.min_val_essays_per_stage)
    notes += s1.notes
    train1 = subsample(s1.train, tcfg.max_train_essays, tcfg.seed + job.fold)
    if tcfg.method == "ridge":
        info1, info2, kept = fit_ridge_head(job, model, tokenizer, train1, s1.val), None, "stage1"
        notes.append("train.method = ridge: frozen encoder, closed-form head (no stage 2)")
    else:
        info1, best1 = run_stage(job, "stage1", model, tokenizer, train1, _targets(train1),
                                 s1.val, tcfg.stage1_epochs)
        clock.mark("stage1")
        info2, kept = _stage2(job, model, tokenizer, folded, best1, notes, unlabelled)
    clock.mark("stage2")
    for n in notes:
        _log(job, n)

    fold_df = folded[folded["fold"] == job.fold]
    pred = _predict(job, model, tokenizer, fold_df)
    fold_qwk = qwk(fold_df["score"].to_numpy(), pred)
    collapsed = collapse_note(pred, tcfg.collapse_pred_std, fold_qwk)
    if collapsed:
        notes.append(collapsed)
        _log(job, f"{name}: {collapsed}")
    model_dir = model.cpu().save_pretrained(job.out_dir / MODEL_DIR, tokenizer)
    oof = pd.DataFrame({"essay_id": fold_df["essay_id"].astype(str).to_numpy(),
                        "pred": pred.astype(np.float64)})
    oof.to_parquet(job.out_dir / OOF_FILE, index=False)
    if tcfg.keep_checkpoints == "best":
        _drop_checkpoints(job.out_dir)
    clock.mark("predict_save")
    result = FoldHeadCheckpoint(
        backbone=job.backbone.name, head=job.head, fold=job.fold,
        member=member_name(job.backbone.name, job.head), model_dir=str(model_dir),
        oof_path=str(job.out_dir / OOF_FILE), stage1_val_qwk=info1.best_val_qwk,
        stage2_val_qwk=info2.best_val_qwk if info2 else None, kept_stage=kept,
        fold_qwk=fold_qwk, fold_essays=len(fold_df), stage1=info1, stage2=info2, notes=notes,
        trainable_params=counts["trainable_params"], frozen_params=counts["frozen_params"],
        encoder_layers=counts["encoder_layers"],
        train_tokens=info1.train_tokens + (info2.train_tokens if info2 else 0),
        seconds=round(time.time() - t0, 2), device=job.device,
        peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available() else 0.0,
        spec_hash=spec_hash(spec), started_at=t0, finished_at=time.time(),
        phase_seconds=clock.seconds, worker=worker_name(job.device),
        **_token_counts(job))
    (job.out_dir / RESULT_FILE).write_text(result.model_dump_json(indent=2))
    if job.encoder is not None and job.encoder.cache is not None:
        job.encoder.cache.close()
    _log(job, f"{name}: QWK on all of fold {job.fold} = {fold_qwk:.4f} ({kept} weights)")
    return result


def collapse_note(pred: np.ndarray, min_std: float, fold_qwk: float) -> str | None:
    """A warning when a fold model predicts (almost) one score for every essay of its fold.

    Training can diverge into a constant (seen with all-mpnet-base-v2 at lr 5e-5 from its MLM
    weights: fold QWK 0.000); the ensemble would then carry a member that says nothing."""
    if min_std <= 0 or len(pred) < 2:
        return None
    std = float(np.std(pred))
    if std >= min_std:
        return None
    return (f"predictions collapsed to one score (std {std:.4f} < train.collapse_pred_std "
            f"{min_std}, mean {float(np.mean(pred)):.2f}, fold QWK {fold_qwk:.4f}): training "
            "diverged; a lower train.lr (or layerwise_lr_decay < 1) usually avoids it")


def load_partition_result(folder: Path) -> FoldHeadCheckpoint | None:
    """A completed partition's result (None when it never finished or is of an old format)."""
    p = Path(folder) / RESULT_FILE
    if not p.exists():
        return None
    try:
        return FoldHeadCheckpoint.model_validate_json(p.read_text())
    except ValueError:
        return None
