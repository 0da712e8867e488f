"""train.method = ridge: a frozen encoder with a closed-form mean head, on real sample essays."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from aes_core.config import AesConfig, load_config
from aes_core.data import io
from aes_core.data.folds import build_folded
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import EssayRegressor, logits_to_scores
from aes_core.training.datamodule import EssayDataset, predict_logits
from aes_core.training.stages import FoldHeadJob, train_fold_head
from tests.conftest import tiny_overrides


@pytest.fixture
def setup(tmp_path, tiny_backbone):
    over = tiny_overrides(tmp_path, tiny_backbone)
    over["train"] = {**over["train"], "method": "ridge", "max_train_essays": None}
    over["heads"] = {**over["heads"], "heads": ["mean"]}
    cfg = load_config(overrides=over)
    raw = io.load_train(cfg.data.train_path).head(90)
    folded, _ = build_folded(raw, io.load_persuade(cfg.data.persuade_path), cfg.folds)
    return cfg, folded


def test_ridge_head_fits_in_closed_form_and_serves_as_a_regressor(tmp_path, setup,
                                                                   tiny_backbone):
    cfg, folded = setup
    job = FoldHeadJob(cfg, cfg.backbones[0], tiny_backbone, 0, "mean", tmp_path / "part",
                      {"accelerator": "cpu", "devices": 1}, progress=False)
    result = train_fold_head(job, folded)
    assert result.stage2 is None and result.kept_stage == "stage1"
    assert result.stage1.train_essays == int((folded["fold"] != 0).sum())
    assert any("ridge" in n for n in result.notes)
    model = EssayRegressor.from_pretrained(result.model_dir)
    assert model.spec.loss == "mse"  # the head's output is the 0..1 score directly
    fold = folded[folded["fold"] == 0]
    tok = load_tokenizer(tiny_backbone)
    ds = EssayDataset(fold["full_text"].tolist(), tok, model.spec)
    direct = logits_to_scores(torch.from_numpy(predict_logits(model, ds, tok, 8)), "mse")
    oof = pd.read_parquet(result.oof_path)
    np.testing.assert_allclose(oof["pred"].to_numpy(), direct.numpy(), atol=1e-4)
    # the fitted head is the least-squares ridge solution on the frozen features
    model.head.out = torch.nn.Identity()
    train = folded[folded["fold"] != 0]
    feats = predict_logits(model, EssayDataset(train["full_text"].tolist(), tok, model.spec),
                           tok, 8)
    from sklearn.linear_model import Ridge

    ref = Ridge(alpha=cfg.train.ridge_alpha).fit(feats, (train["score"].to_numpy() - 1) / 5)
    saved = EssayRegressor.from_pretrained(result.model_dir).head.out
    np.testing.assert_allclose(saved.weight.detach().numpy().ravel(), ref.coef_, atol=1e-4)


def test_ridge_refuses_heads_it_cannot_fit(tmp_path, setup, tiny_backbone):
    cfg, folded = setup
    cfg = cfg.model_copy(update={"heads": cfg.heads.model_copy(update={"heads": ["attention"]})})
    job = FoldHeadJob(cfg, cfg.backbones[0], tiny_backbone, 0, "attention", tmp_path / "p",
                      {"accelerator": "cpu", "devices": 1}, progress=False)
    with pytest.raises(ValueError, match="ridge fits the mean head only"):
        train_fold_head(job, folded)


def test_a_backbones_own_train_settings_reach_its_partition(tmp_path, setup, tiny_backbone):
    """The profile fine-tunes; one backbone's own ``train`` makes its partitions ridge fits
    with their own alpha, and the other backbone's stay as the train section says."""
    cfg, folded = setup
    bbs = [cfg.backbones[0].model_copy(update={"name": "ft"}),
           cfg.backbones[0].model_copy(update={"name": "rd", "train": {
               "method": "ridge", "ridge_alpha": 3.0}})]
    cfg = AesConfig.model_validate({**cfg.model_dump(), "backbones": [b.model_dump() for b in bbs],
                                    "train": {**cfg.train.model_dump(), "method": "finetune"}})
    assert (cfg.train_for("ft").method, cfg.train_for("rd").method) == ("finetune", "ridge")
    job = FoldHeadJob(cfg, cfg.backbone("rd"), tiny_backbone, 0, "mean", tmp_path / "rd",
                      {"accelerator": "cpu", "devices": 1}, progress=False)
    result = train_fold_head(job, folded)
    assert any("train.method = ridge" in n for n in result.notes)
    spec = json.loads((tmp_path / "rd" / "run_spec.json").read_text())
    assert spec["train"]["ridge_alpha"] == 3.0 and "train" not in spec["backbone"]
    ft = FoldHeadJob(cfg, cfg.backbone("ft"), tiny_backbone, 0, "mean", tmp_path / "ft")
    assert ft.train == cfg.train and ft.train.method == "finetune"
