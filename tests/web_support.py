"""Shared pieces of the web tests: a real tiny serving bundle, as the export stage writes it.

Two heads x two folds of a random tiny BERT regressor are saved under
``<storage_root>/regressors/<fold>__<head>``, exported into the serving bundle
(``<storage_root>/serving``, the default ``serving.bundle_dir``) with the export stage's own
``export_member`` and committed with ``build_bundle`` together with an ensemble and the typical
essay statistics of the sample's training essays, so ``load_scorer(cfg)`` and the page find
them exactly as they find the pipeline's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from aes_core.config import SAMPLE_DIR, AesConfig, HeadSection, WebSection, load_config
from aes_core.data.io import load_train
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.bundle import build_bundle, typical_stats
from aes_core.members import member_name
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import EssayRegressor, RegressorSpec
from tests.serving_support import checkpoint_for, export_checkpoints

HEADS = ("mean", "attention")
N_FOLDS = 2
WEIGHTS = (0.6, 0.4)
BUNDLE = "serving"  # <storage_root>/serving: the default serving.bundle_dir


def train_stats() -> dict:
    """The bundle's typical essay statistics, from the sample's training essays."""
    web = WebSection()
    return typical_stats(load_train(SAMPLE_DIR / "train.csv.gz"), web.typical_low_q,
                         web.typical_high_q)


def commit(root: Path, ens: EnsembleArtifact, flagger_dir: Path | None = None) -> Path:
    """(Re)commit the bundle under ``root`` for ``ens`` (and the saved flagger in
    ``flagger_dir``) from the regressors there (exports already in the bundle are reused);
    returns the manifest path."""
    ckpts = [checkpoint_for(root / "regressors" / f"{fold}__{head}", head, fold)
             for head in HEADS for fold in range(N_FOLDS)]
    exports = export_checkpoints(root / BUNDLE, ckpts)
    build_bundle(root / BUNDLE, ens, exports, None, train_stats(), flagger_dir=flagger_dir,
                 profile="test")
    return root / BUNDLE / "manifest.json"


def build_storage(root: Path, backbone: Path, flags: bool = False) -> Path:
    """Write a scoreable bundle under ``root`` (the storage_root); returns ``root``. With
    ``flags`` the bundle holds an essay flagger fitted on the sample's PERSUADE reference (as
    the essay_flagger asset does)."""
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
            model.save_pretrained(root / "regressors" / f"{fold}__{head}", tokenizer=tok)
    flagger_dir = None
    if flags:
        from aes_core.config import FlagsSection
        from aes_core.data.io import load_persuade
        from aes_core.flags import fit_flagger

        persuade = load_persuade(SAMPLE_DIR / "persuade_reference.csv.gz")
        flagger_dir = fit_flagger(persuade, FlagsSection()).save(root / "flagger")
    commit(root, default_ensemble(), flagger_dir)
    return root


def default_ensemble() -> EnsembleArtifact:
    return EnsembleArtifact(members=[member_name("tiny", h) for h in HEADS],
                            weights=list(WEIGHTS), thresholds=[2.0, 2.8, 3.5, 4.2, 5.0],
                            n_folds=N_FOLDS, oof_qwk={"blend": 0.5})


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
