"""A distilled student: one regressor trained to reproduce the ensemble's blended score.

The ensemble of a serving bundle pseudo-labels essays (train and/or unlabelled, never test)
with its blended score (1..6); one backbone + head (``student.*``) is fine-tuned from the
backbone's ``mlm_backbone`` folder on targets ``(blended - 1) / 5`` (0..1, as in training)
with the Lightning module of the fold models (``training.stages.run_stage``: checkpoints,
early stopping on validation QWK against the rounded blended score). A seeded holdout
measures how closely it follows the ensemble. The student is saved into the bundle
(``student/<hash>/``, a regressor folder) and recorded in the manifest; serving uses it with
the ensemble's thresholds when ``serving.scorer: student``::

    job = StudentJob(cfg, backbone_path, bundle_dir, work_dir)
    entry = distill(job, folded_essays, unlabelled_essays)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aes_core.config import AesConfig, BackboneSection, StudentSection, TrainSection
from aes_core.metrics import qwk
from aes_core.serving.manifest import (
    STUDENT_DIR,
    Bundle,
    BundleError,
    StudentEntry,
    write_manifest,
)

log = logging.getLogger(__name__)
STUDENT_STAGE = "student"


def student_backbone(cfg: AesConfig) -> BackboneSection:
    """The configured backbone the student uses, with the student's length and depth (and
    without the backbone's own heads and train settings: the student has its own)."""
    name = cfg.student.backbone or cfg.backbones[0].name
    try:
        bb = cfg.backbone(name).encoder_only()
    except KeyError as e:
        raise ValueError(f"student.backbone: {e.args[0]}") from e
    update: dict[str, Any] = {"chunking": False}
    if cfg.student.max_length is not None:
        update["max_length"] = cfg.student.max_length
    if cfg.student.num_layers is not None:
        update["num_layers"] = cfg.student.num_layers
    return bb.model_copy(update=update)


def student_train_section(cfg: AesConfig) -> TrainSection:
    """The fold models' training settings with the student's epochs, rates, batch and loss."""
    s = cfg.student
    return cfg.train.model_copy(update={
        "stage1_epochs": s.epochs, "stage2_epochs": 0, "lr": s.lr, "head_lr": s.head_lr,
        "batch_size": s.batch_size, "eval_batch_size": s.eval_batch_size, "loss": s.loss,
        "freeze_layers": 0, "reinit_top_layers": 0, "max_train_essays": None,
        "seed": s.seed})


def select_essays(student: StudentSection, folded: pd.DataFrame,
                  unlabelled: pd.DataFrame | None) -> list[str]:
    """The essays to pseudo-label (``student.essays``), duplicates dropped, seeded cap."""
    texts: list[str] = []
    if student.essays in ("train", "train+unlabelled"):
        texts += folded["full_text"].astype(str).tolist()
    if student.essays in ("unlabelled", "train+unlabelled") and unlabelled is not None:
        texts += unlabelled["full_text"].astype(str).tolist()
    texts = [t for t in dict.fromkeys(texts) if t.strip()]
    if student.max_essays is not None and len(texts) > student.max_essays:
        rng = np.random.default_rng(student.seed)
        keep = np.sort(rng.choice(len(texts), student.max_essays, replace=False))
        texts = [texts[i] for i in keep]
    if len(texts) < 4:
        raise ValueError(f"student.essays = {student.essays!r} gives {len(texts)} essays; the "
                         f"student needs at least 4 (train + holdout)")
    return texts


def pseudo_labels(bundle: Bundle, cfg: AesConfig, texts: list[str]) -> np.ndarray:
    """The ensemble's blended score (1..6) of every essay, scored in process."""
    from aes_core.serving.base import score_frame
    from aes_core.serving.loader import in_process_scorer

    # no CUDA graphs: they serve requests of a few essays, labelling runs batches of hundreds,
    # and a capture that fails leaves this process's CUDA generator unusable for the dropout
    # of the training that follows (seen with an mpnet member on the GPU)
    serving = cfg.serving.model_copy(update={"scorer": "ensemble", "cuda_graphs": 0})
    scorer = in_process_scorer(bundle, serving)
    try:
        frame = pd.DataFrame({"essay_id": [str(i) for i in range(len(texts))],
                              "full_text": texts})
        return score_frame(scorer, frame).blended
    finally:
        if hasattr(scorer, "close"):
            scorer.close()


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) row indices; the holdout has at least one row."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = min(n - 1, max(1, int(round(fraction * n))))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


@dataclass
class StudentJob:
    """Everything distillation needs, independent of Dagster."""

    cfg: AesConfig
    backbone_path: Path
    bundle_dir: Path
    work_dir: Path
    trainer_kwargs: dict[str, Any] = field(default_factory=lambda: {"accelerator": "cpu",
                                                                    "devices": 1})
    device: str = "cpu"
    amp_dtype: Any = None
    log_fn: Callable[[str], None] | None = None
    progress: bool = False


def _say(job: StudentJob, msg: str) -> None:
    log.info(msg)
    if job.log_fn:
        job.log_fn(msg)


def student_hash(job: StudentJob, bundle: Bundle, n_texts: int) -> str:
    from aes_core.tracking import code_hash

    spec = {"student": job.cfg.student.model_dump(), "backbone": student_backbone(
        job.cfg).model_dump(), "backbone_path": str(job.backbone_path),
        "train": student_train_section(job.cfg).model_dump(), "heads": job.cfg.heads.model_dump(),
        "bundle": bundle.ensemble_identity(), "texts": n_texts, "code": code_hash()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def distill(job: StudentJob, folded: pd.DataFrame,
            unlabelled: pd.DataFrame | None = None) -> StudentEntry:
    """Pseudo-label, train, measure on the holdout, save into the bundle, update the manifest."""
    from aes_core.logs import quiet_libraries
    from aes_core.members import member_name
    from aes_core.models.backbone import load_tokenizer
    from aes_core.models.regressor import logits_to_scores
    from aes_core.training.datamodule import EssayDataset, predict_logits
    from aes_core.training.stages import FoldHeadJob, build_regressor, run_stage

    quiet_libraries()
    t0 = time.time()
    cfg, scfg = job.cfg, job.cfg.student
    bundle = Bundle.load(job.bundle_dir)
    texts = select_essays(scfg, folded, unlabelled)
    tag = student_hash(job, bundle, len(texts))
    known = bundle.manifest.student
    if known is not None and known.folder == f"{STUDENT_DIR}/{tag}":
        _say(job, f"student: the bundle already holds this student ({known.folder})")
        return known
    _say(job, f"student: pseudo-labelling {len(texts)} essays with the ensemble "
              f"({len(bundle.ensemble.members)} members)")
    blended = pseudo_labels(bundle, cfg, texts)
    tr, ho = holdout_split(len(texts), scfg.holdout_fraction, scfg.seed)
    frame = pd.DataFrame({"full_text": texts, "score": blended})
    train_df, val_df = frame.iloc[tr], frame.iloc[ho]
    targets = np.clip((train_df["score"].to_numpy() - 1.0) / 5.0, 0.0, 1.0).astype(np.float32)

    backbone = student_backbone(cfg)
    tcfg = student_train_section(cfg)
    run_cfg = cfg.model_copy(update={"train": tcfg})
    out = job.work_dir / tag
    out.mkdir(parents=True, exist_ok=True)
    fjob = FoldHeadJob(cfg=run_cfg, backbone=backbone, backbone_path=job.backbone_path, fold=0,
                       head=scfg.head, out_dir=out, trainer_kwargs=job.trainer_kwargs,
                       device=job.device, amp_dtype=job.amp_dtype, log_fn=job.log_fn,
                       progress=job.progress)
    tokenizer = load_tokenizer(job.backbone_path, backbone.add_newline_tokens)
    model, counts = build_regressor(fjob, tokenizer)
    _say(job, f"student: {member_name(backbone.name, scfg.head)}, {len(train_df)} train / "
              f"{len(val_df)} holdout essays, {counts}")
    info, _ = run_stage(fjob, STUDENT_STAGE, model, tokenizer, train_df, targets, val_df,
                        tcfg.stage1_epochs)

    ds = EssayDataset(val_df["full_text"].tolist(), tokenizer, backbone)
    logits = predict_logits(model, ds, tokenizer, tcfg.eval_batch_size, job.device,
                            job.amp_dtype)
    import torch

    pred = logits_to_scores(torch.from_numpy(logits), tcfg.loss).numpy().astype(np.float64)
    ens = bundle.ensemble
    rmse = float(np.sqrt(np.mean((pred - val_df["score"].to_numpy()) ** 2)))
    agree = qwk(ens.to_scores(val_df["score"].to_numpy()), ens.to_scores(pred))

    current = Bundle.load(job.bundle_dir)
    if current.version() != bundle.version():
        raise BundleError(f"the serving bundle changed while the student trained "
                          f"({bundle.version()} -> {current.version()}): materialize "
                          f"student_model again")
    rel = f"{STUDENT_DIR}/{tag}"
    dest = job.bundle_dir / rel
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.cpu().save_pretrained(tmp, tokenizer)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    entry = StudentEntry(folder=rel, spec=model.spec, backbone=backbone.name,
                         distilled_from=bundle.ensemble_identity(), train_essays=len(train_df),
                         holdout_essays=len(val_df), holdout_rmse=rmse,
                         holdout_agreement_qwk=float(agree),
                         seconds=round(time.time() - t0, 2))
    manifest = current.manifest.model_copy(update={
        "student": entry, "created_at": dt.datetime.now(dt.UTC).isoformat()})
    write_manifest(job.bundle_dir, manifest)
    for old in (job.bundle_dir / STUDENT_DIR).iterdir():
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)  # only an interrupted run resumes from here
    _say(job, f"student: holdout RMSE {rmse:.3f} vs the blended score, agreement QWK "
              f"{agree:.3f}, best val QWK {info.best_val_qwk} in {entry.seconds:.0f}s")
    return entry
