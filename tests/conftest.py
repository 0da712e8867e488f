"""Shared fixtures: a tiny random BERT backbone built offline, and per-test profiles.

Tests run real components (Dagster instance, MLflow SQLite store, ONNX Runtime, Triton) on
small data: slices of the bundled sample and models with a few thousand parameters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from aes_core.config import SAMPLE_DIR, deep_merge  # noqa: E402
from aes_core.models.tiny import build_tiny_bert  # noqa: E402,F401  (re-exported for tests)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def tiny_overrides(tmp: Path, backbone: Path) -> dict[str, Any]:
    """A profile that materializes the whole graph in seconds on 2 cores."""
    return {
        "storage_root": str(tmp / "storage"),
        "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "data": {"max_train_essays": 120},
        "folds": {"n_folds": 2, "flag_rule": "fraction", "flag_fraction": 0.4},
        "backbones": [{"name": "tiny", "path": str(backbone), "max_length": 64}],
        "mlm": {"enabled": True, "block_size": 32, "max_texts": 40, "batch_size": 8},
        "heads": {"heads": ["mean", "attention"], "lstm_hidden": 8, "attention_hidden": 8},
        "train": {"method": "finetune", "stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 8,
                  "freeze_layers": 0,
                  "lr": 1e-3, "max_train_essays": 60},
        "gbdt": {"n_estimators": 30, "word_max_features": 500, "char_max_features": 500},
        # near-random tiny models: a blend need not beat its best member here (the blocking
        # check itself is tested failing and passing in test_stacker.py)
        "ensemble": {"restarts": 2, "max_iter": 200, "min_gain_over_best": -1.0},
        "export": {"parity_essays": 4},
        "serving": {"triton_repo": str(tmp / "triton_repo"), "inbox_dir": str(tmp / "inbox"),
                    "outbox_dir": str(tmp / "outbox"), "rejected_dir": str(tmp / "rejected"),
                    "use_triton": False},
    }


def sample_folded(n_essays: int, seed: int, n_folds: int = 2):
    """``n_essays`` essays of the bundled sample, joined to PERSUADE and folded (cpu-small)."""
    from aes_core.config import load_config
    from aes_core.data import io
    from aes_core.data.folds import build_folded

    cfg = load_config("cpu-small", overrides={"folds": {"n_folds": n_folds}})
    raw = io.load_train(cfg.data.train_path).sample(n_essays, random_state=seed)
    df, _ = build_folded(raw, io.load_persuade(cfg.data.persuade_path), cfg.folds)
    return df


def tiny_fold_job(tmp: Path, backbone: Path, head: str, max_train_essays: int = 20,
                  **backbone_settings: Any):
    """Fold 0 x ``head`` of the tiny backbone with these backbone settings, trained on the
    CPU into ``tmp / "part"`` (a ``FoldHeadJob`` for ``train_fold_head``)."""
    from aes_core.config import load_config
    from aes_core.training.stages import FoldHeadJob

    over = tiny_overrides(tmp, backbone)
    over["backbones"] = [{"name": "tiny", "path": str(backbone), **backbone_settings}]
    over["train"] = {**over["train"], "max_train_essays": max_train_essays}
    cfg = load_config(overrides=over)
    return FoldHeadJob(cfg, cfg.backbones[0], backbone, 0, head, tmp / "part",
                       {"accelerator": "cpu", "devices": 1}, progress=False)


def write_profile(tmp: Path, overrides: dict[str, Any], name: str = "test") -> Path:
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "profiles" /
                           "cpu-small.yaml").read_text())
    merged = deep_merge(base, overrides)
    merged["profile"] = name
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merged))
    return path


def folded_sample(n: int, n_folds: int = 3):
    """``n`` essays of the bundled sample, joined to PERSUADE and folded (``n_folds``) as the
    pipeline folds them."""
    from aes_core.config import load_config
    from aes_core.data import io
    from aes_core.data.folds import build_folded

    train = io.load_train(SAMPLE_DIR / "train.csv.gz").sample(n, random_state=0)
    persuade = io.load_persuade(SAMPLE_DIR / "persuade_reference.csv.gz")
    folded, _ = build_folded(train.reset_index(drop=True), persuade,
                             load_config("cpu-small").folds.model_copy(update={"n_folds": n_folds}))
    return folded


@pytest.fixture
def tiny_profile(tmp_path, tiny_backbone) -> Path:
    return write_profile(tmp_path, tiny_overrides(tmp_path, tiny_backbone))


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "aes2" / "train.csv.gz").exists():
        pytest.skip(f"shared data not at {SHARED_DATA}")
    return SHARED_DATA


@contextmanager
def records_of(*names: str) -> Iterator[list[logging.LogRecord]]:
    """Every record the named loggers pass on (after their own filters), whatever prints them."""
    got: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = got.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield got
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
