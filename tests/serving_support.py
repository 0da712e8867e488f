"""Helpers for the serving tests: tiny real regressors turned into a real serving bundle.

Regressors are EssayRegressor.from_backbone(tiny BERT) + save_pretrained: the real format the
training stage writes, with random weights (these tests check plumbing, not quality). Each is
wrapped in the training stage's result (``FoldHeadCheckpoint``), exported into a bundle with
the export stage's own ``export_member`` and committed with ``build_bundle``, so serving reads
exactly what the pipeline would give it: a manifest and the folders it names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from aes_core.config import SAMPLE_DIR, HeadSection
from aes_core.contracts import FoldHeadCheckpoint, OnnxExport, StageInfo
from aes_core.data import io
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.bundle import ExportTask, build_bundle, export_member
from aes_core.members import member_name
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import EssayRegressor, RegressorSpec
from aes_core.serving.manifest import Bundle

BACKBONE = "tiny"
HEADS_CFG = HeadSection(lstm_hidden=8, attention_hidden=8, weighted_last_k=2)
PARITY_ATOL = 1e-3


def sample_essays(n: int = 24) -> pd.DataFrame:
    return io.load_essays(SAMPLE_DIR / "test.csv.gz").head(n).reset_index(drop=True)


def make_regressor(backbone_dir: Path, out: Path, head: str, seed: int,
                   max_length: int = 64, chunked: bool = False,
                   backbone_name: str = BACKBONE) -> Path:
    """A saved regressor; ``chunked`` reads whole essays as windows (overlap 16, at most 4)."""
    import torch

    torch.manual_seed(seed)
    spec = RegressorSpec(head=head, heads_cfg=HEADS_CFG, max_length=max_length,
                         backbone_name=backbone_name, chunking=chunked, chunk_overlap=16,
                         max_chunks=4)
    model = EssayRegressor.from_backbone(backbone_dir, spec)
    with torch.no_grad():  # spread the random head's outputs so essays get different scores
        model.head.out.weight.mul_(3.0)
    return model.save_pretrained(out, load_tokenizer(backbone_dir))


def checkpoint_for(model_dir: Path, head: str, fold: int,
                   backbone: str = BACKBONE) -> FoldHeadCheckpoint:
    """The training stage's result for a regressor folder (its weights' hash as spec hash)."""
    digest = hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()
    return FoldHeadCheckpoint(
        backbone=backbone, head=head, fold=fold, member=member_name(backbone, head),
        model_dir=str(model_dir), oof_path=str(Path(model_dir).parent / "oof.parquet"),
        fold_qwk=0.0, fold_essays=0, stage1=StageInfo(), spec_hash=digest[:12])


def make_checkpoints(root: Path, backbone_dir: Path, heads: list[str],
                     n_folds: int) -> dict[str, FoldHeadCheckpoint]:
    """One tiny regressor per fold x head under ``root``, keyed by partition key (``0|mean``)."""
    out = {}
    for fold in range(n_folds):
        for h, head in enumerate(heads):
            d = make_regressor(backbone_dir, root / f"{fold}__{head}" / "model", head,
                               seed=10 * fold + h)
            out[f"{fold}|{head}"] = checkpoint_for(d, head, fold)
    return out


def export_checkpoints(bundle_dir: Path, ckpts: list[FoldHeadCheckpoint] | dict,
                       parity_texts: list[str] | None = None) -> list[OnnxExport]:
    """Each checkpoint exported into ``bundle_dir`` by the export stage's worker function."""
    texts = parity_texts or sample_essays(4)["full_text"].tolist()
    items = ckpts.values() if isinstance(ckpts, dict) else ckpts
    exports = []
    for ck in items:
        e = export_member(ExportTask(checkpoint_json=ck.model_dump_json(),
                                     bundle_dir=str(bundle_dir), opset=17, parity_texts=texts,
                                     parity_atol=PARITY_ATOL))
        assert e.parity["passed"], e.parity
        exports.append(e)
    return exports


def member_dirs(exports: list[OnnxExport]) -> dict[str, list[Path]]:
    """Member name -> exported fold folders in fold order (before any manifest exists)."""
    out: dict[str, list[Path]] = {}
    for e in sorted(exports, key=lambda e: e.fold):
        out.setdefault(e.member, []).append(Path(e.member_dir))
    return out


def spread_ensemble(members: list[str], blended_probe: np.ndarray, n_folds: int,
                    weights: list[float] | None = None) -> EnsembleArtifact:
    """An ensemble whose thresholds sit at quantiles of ``blended_probe`` (all 6 scores used)."""
    q = np.quantile(blended_probe, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    q = np.maximum.accumulate(q + np.arange(5) * 1e-6)
    w = weights or [1.0 / len(members)] * len(members)
    return EnsembleArtifact(members=members, weights=w, thresholds=[float(x) for x in q],
                            n_folds=n_folds)


def spread_ensemble_for(exports: list[OnnxExport], essays: pd.DataFrame, n_folds: int,
                        weights: list[float] | None = None) -> EnsembleArtifact:
    """:func:`spread_ensemble` with thresholds from the exported members' blend on ``essays``."""
    from aes_core.serving.base import score_frame
    from aes_core.serving.onnx_scorer import OnnxScorer

    dirs = member_dirs(exports)
    names = list(dirs)
    probe = OnnxScorer(spread_ensemble(names, np.array([1.0, 6.0]), n_folds, weights), dirs)
    return spread_ensemble(names, score_frame(probe, essays).blended, n_folds, weights)


def commit_bundle(bundle_dir: Path, ens: EnsembleArtifact, exports: list[OnnxExport],
                  gbdt_dir: Path | None = None, essay_stats: dict | None = None) -> Bundle:
    """Write the manifest (the export stage's ``build_bundle``) and load the bundle back."""
    build_bundle(bundle_dir, ens, exports, gbdt_dir, essay_stats, profile="test")
    return Bundle.load(bundle_dir)


def repeated_paragraph_essay(max_chars: int = 3000) -> tuple[str, str]:
    """(original, gamed): a real training essay of 4+ paragraphs and the same essay with every
    paragraph written twice in a row (the gaming attempt the repetition flag is for)."""
    train = io.load_train(SAMPLE_DIR / "train.csv.gz")
    for text in train["full_text"]:
        paras = [p.strip() for p in text.split("\n\n") if p.strip()]
        if len(paras) >= 4 and len(text) < max_chars:
            return text, "\n\n".join(p for p in paras for _ in range(2))
    raise AssertionError("no essay of 4+ paragraphs in the sample")
