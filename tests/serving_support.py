"""Helpers for the serving tests: tiny real regressors laid out like the pipeline stores them.

Regressors are EssayRegressor.from_backbone(tiny BERT) + save_pretrained: the real format the
training stage writes, with random weights (these tests check plumbing, not quality).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from aes_core.config import SAMPLE_DIR, HeadSection
from aes_core.data import io
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.onnx import export_onnx
from aes_core.members import member_name
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import EssayRegressor, RegressorSpec

BACKBONE = "tiny"
HEADS_CFG = HeadSection(lstm_hidden=8, attention_hidden=8, weighted_last_k=2)


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


def write_checkpoints(storage: Path, backbone_dir: Path, heads: list[str],
                      n_folds: int) -> dict[str, dict]:
    """Regressor folders + the ``tiny/fold_head_checkpoints`` tables the IO manager reads."""
    out = {}
    for fold in range(n_folds):
        for h, head in enumerate(heads):
            pk = f"{fold}__{head}"
            d = make_regressor(backbone_dir, storage / "ckpt" / pk, head, seed=10 * fold + h)
            meta = {"model_dir": str(d), "backbone": BACKBONE, "head": head, "fold": fold}
            path = storage / "tables" / BACKBONE / "fold_head_checkpoints" / f"{pk}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(meta))
            out[pk] = meta
    return out


def export_members(storage: Path, checkpoints: dict[str, dict]) -> dict[str, list[Path]]:
    """ONNX member folders + ``tiny/onnx_models`` tables, as the onnx_models asset writes."""
    members: dict[str, list[Path]] = {}
    for pk, meta in sorted(checkpoints.items(), key=lambda kv: kv[1]["fold"]):
        out = storage / "artifacts" / BACKBONE / "onnx_models" / pk
        export_onnx(meta["model_dir"], out)
        name = member_name(BACKBONE, meta["head"])
        table = storage / "tables" / BACKBONE / "onnx_models" / f"{pk}.json"
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(json.dumps({"member_dir": str(out), "fold": meta["fold"],
                                     "head": meta["head"], "member": name,
                                     "backbone": BACKBONE}))
        members.setdefault(name, []).append(out)
    return members


def spread_ensemble(members: list[str], blended_probe: np.ndarray, n_folds: int,
                    weights: list[float] | None = None) -> EnsembleArtifact:
    """An ensemble whose thresholds sit at quantiles of ``blended_probe`` (all 6 scores used)."""
    q = np.quantile(blended_probe, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    q = np.maximum.accumulate(q + np.arange(5) * 1e-6)
    w = weights or [1.0 / len(members)] * len(members)
    return EnsembleArtifact(members=members, weights=w, thresholds=[float(x) for x in q],
                            n_folds=n_folds)


def save_ensemble(storage: Path, ens: EnsembleArtifact) -> Path:
    path = storage / "tables" / "ensemble_weights.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ens.model_dump_json(indent=2))
    return path
