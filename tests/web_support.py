"""Shared pieces of the web tests: a real tiny exported ensemble laid out like the pipeline's.

Two heads x two folds of a random tiny BERT regressor are saved, exported to ONNX with the
project exporter and placed under ``<storage_root>/artifacts/tiny/onnx_models/<fold>__<head>``
next to ``tables/ensemble_weights.json``, so ``load_scorer(cfg)`` finds them exactly as it
finds the pipeline's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from aes_core.config import SAMPLE_DIR, AesConfig, HeadSection, load_config
from aes_core.data.io import load_train
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.onnx import export_onnx
from aes_core.members import member_name
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import EssayRegressor, RegressorSpec

HEADS = ("mean", "attention")
N_FOLDS = 2
WEIGHTS = (0.6, 0.4)


def build_storage(root: Path, backbone: Path) -> Path:
    """Write a scoreable ensemble under ``root`` (the storage_root); returns ``root``."""
    tok = load_tokenizer(backbone)
    heads_cfg = HeadSection(heads=list(HEADS), attention_hidden=8, lstm_hidden=8)
    for h_i, head in enumerate(HEADS):
        for fold in range(N_FOLDS):
            torch.manual_seed(100 * h_i + fold)
            spec = RegressorSpec(head=head, heads_cfg=heads_cfg, max_length=64,
                                 backbone_name="tiny")
            model = EssayRegressor.from_backbone(backbone, spec)
            with torch.no_grad():  # spread the tiny random model's outputs over the scale
                for p in model.head.parameters():
                    p.mul_(8.0)
            src = root / "regressors" / f"{fold}__{head}"
            model.save_pretrained(src, tokenizer=tok)
            export_onnx(src, root / "artifacts" / "tiny" / "onnx_models" / f"{fold}__{head}")
    ens = EnsembleArtifact(members=[member_name("tiny", h) for h in HEADS],
                           weights=list(WEIGHTS), thresholds=[2.0, 2.8, 3.5, 4.2, 5.0],
                           n_folds=N_FOLDS, oof_qwk={"blend": 0.5})
    (root / "tables").mkdir(parents=True, exist_ok=True)
    ens.save(root / "tables" / "ensemble_weights.json")
    return root


def web_overrides(tmp: Path, storage_root: Path, **web: Any) -> dict[str, Any]:
    """Profile overrides for a web test: tiny limits so every limit can be hit cheaply."""
    return {
        "storage_root": str(storage_root),
        "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "serving": {"use_triton": False, "ort_threads": 1},
        "web": {"keep_dir": str(tmp / "kept"), "prefer_triton": False, "max_rows": 40,
                "max_essay_chars": 8000, "max_upload_bytes": 120_000, "batch_rows": 4,
                **web},
    }


def web_config(tmp: Path, storage_root: Path, **web: Any) -> AesConfig:
    return load_config("cpu-small", web_overrides(tmp, storage_root, **web))


def sample_essays(n: int, max_chars: int = 6000) -> pd.DataFrame:
    """``n`` real essays (shorter than ``max_chars``) from the bundled sample."""
    df = load_train(SAMPLE_DIR / "train.csv.gz")
    df = df[df["full_text"].str.len() < max_chars]
    return df.groupby("score", group_keys=False).head(max(1, n // 6 + 1)).head(n)
