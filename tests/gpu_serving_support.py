"""A tiny real serving bundle for the torch-path, student and benchmark tests.

Fold models are ``EssayRegressor.from_backbone(tiny BERT)`` saved like training saves them and
exported to ONNX in place (the bundle layout ``members/<member>/fold<k>-<tag>/``); the GBDT
member is really trained (a few trees, small vocabularies) on sample essays; thresholds sit
at quantiles of the blended scores so all six scores occur. Random weights: these tests check
plumbing and numerical agreement, not quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aes_core.config import GbdtSection
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.onnx import export_onnx
from aes_core.members import GBDT_MEMBER, member_name
from aes_core.models.regressor import load_regressor_tokenizer
from aes_core.serving.manifest import (
    ENSEMBLE_PATH,
    GBDT_DIR,
    MEMBERS_DIR,
    Bundle,
    MemberEntry,
    ServingManifest,
    write_manifest,
)
from aes_core.serving.onnx_scorer import OnnxScorer
from tests.serving_support import BACKBONE, make_regressor, sample_essays, spread_ensemble


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP spin contention
    (a test module that imports this fixture runs with it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_tiny_gbdt(folder: Path, n_essays: int = 60) -> Path:
    from aes_core.config import SAMPLE_DIR
    from aes_core.data import io
    from aes_core.ensemble.gbdt import fit_gbdt

    df = io.load_train(SAMPLE_DIR / "train.csv.gz").head(n_essays).reset_index(drop=True)
    df["fold"] = np.arange(len(df)) % 2
    cfg = GbdtSection(n_estimators=10, word_max_features=200, char_max_features=200,
                      early_stopping_holdout=0.0, spelling=False, num_threads=1)
    fit_gbdt(df, cfg, progress=False).member.save(folder)
    return folder


def build_tiny_bundle(root: Path, backbone_dir: Path, heads: list[str], n_folds: int = 2,
                      gbdt: bool = False, chunked_heads: tuple[str, ...] = (),
                      max_length: int = 64, stacker: bool = False) -> Bundle:
    """A committed bundle (manifest written last) with ``heads`` x ``n_folds`` fold models;
    ``stacker``: blended by a ridge stacker over the members and essay statistics."""
    root = Path(root)
    entries, dirs = [], {}
    for h, head in enumerate(heads):
        name = member_name(BACKBONE, head)
        folds = []
        for fold in range(n_folds):
            rel = f"{MEMBERS_DIR}/{name}/fold{fold}-tiny"
            d = make_regressor(backbone_dir, root / rel, head, seed=10 * fold + h,
                               max_length=max_length, chunked=head in chunked_heads)
            export_onnx(d, d)
            folds.append(rel)
        from aes_core.export.onnx import load_spec

        entries.append(MemberEntry(name=name, backbone=BACKBONE, head=head, folds=folds,
                                   spec=load_spec(root / folds[0])))
        dirs[name] = [root / f for f in folds]
    names = list(dirs)
    gbdt_rel = None
    if gbdt:
        train_tiny_gbdt(root / GBDT_DIR)
        gbdt_rel = GBDT_DIR
        names.append(GBDT_MEMBER)
    weights = list(np.linspace(1.0, 2.0, len(names)) / np.linspace(1.0, 2.0, len(names)).sum())
    probe_ens = spread_ensemble(names, np.array([1.0, 6.0]), n_folds, weights)
    probe = OnnxScorer(probe_ens, dirs, root / GBDT_DIR if gbdt else None)
    texts = sample_essays(24)["full_text"].tolist()
    ens = spread_ensemble(names, probe_ens.blend(probe.predict_members(texts)), n_folds, weights)
    if stacker:
        ens = with_stacker(ens, probe)
    (root / ENSEMBLE_PATH).parent.mkdir(parents=True, exist_ok=True)
    ens.save(root / ENSEMBLE_PATH)
    write_manifest(root, ServingManifest(members=entries, gbdt_dir=gbdt_rel, profile="test"))
    return Bundle.load(root)


def with_stacker(ens: EnsembleArtifact, probe: OnnxScorer, n_essays: int = 60):
    """``ens`` blended by a ridge stacker fitted (3-fold nested CV) on sample essays."""
    from aes_core.config import SAMPLE_DIR, EnsembleSection
    from aes_core.data import io
    from aes_core.ensemble.stacker import essay_statistics, fit_stacker

    df = io.load_train(SAMPLE_DIR / "train.csv.gz").head(n_essays)
    texts = df["full_text"].tolist()
    fit = fit_stacker(probe.predict_members(texts), essay_statistics(texts),
                      df["score"].to_numpy(), np.arange(len(df)) % 3, ens.members, "ridge",
                      EnsembleSection())
    st = fit.stacker
    return ens.model_copy(update={"method": "stacker",
                                  "thresholds": list(st.thresholds)}).attach_stacker(st)


def tokenizer_of(bundle: Bundle):
    first = bundle.member_dirs()[bundle.manifest.members[0].name][0]
    return load_regressor_tokenizer(first)


def serving_benchmark():
    """``benchmarks/serving_gpu.py`` as a module."""
    from tests.bench_support import benchmark_module

    return benchmark_module("serving_gpu")
