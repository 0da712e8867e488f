"""Chunked reading of whole essays: windows, pooling, every head, training, ONNX export and the
in-process scorer (the Triton path: tests/test_serving_chunked.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from aes_core.config import BackboneSection, ServingSection
from aes_core.export.onnx import check_parity, export_onnx
from aes_core.export.triton_repo import member_config
from aes_core.models.backbone import encode_newlines, load_tokenizer
from aes_core.models.heads import HEADS
from aes_core.models.regressor import EssayRegressor, RegressorSpec, logits_to_scores
from aes_core.models.tokens import (
    TokenPlan,
    collate,
    concat_batches,
    encode_batch,
    pooling_matrix,
    tokenize,
    tokenize_windows,
)
from aes_core.serving.onnx_scorer import OnnxScorer
from aes_core.training.datamodule import EssayDataset, predict_logits
from aes_core.training.stages import train_fold_head
from tests.conftest import sample_folded, tiny_fold_job
from tests.serving_support import HEADS_CFG, make_regressor, sample_essays, spread_ensemble

MAX_LEN, OVERLAP = 64, 16
SHORT = ["A short essay.", "Another short one, with a few more words in it."]


def _chunked(spec: RegressorSpec, max_chunks: int = 4) -> RegressorSpec:
    return spec.model_copy(update={"chunking": True, "chunk_overlap": OVERLAP,
                                   "max_chunks": max_chunks})


@pytest.mark.parametrize("newlines", [False, True])
def test_windows_cover_the_whole_essay_with_the_configured_overlap(tiny_backbone, newlines):
    tok = load_tokenizer(tiny_backbone, newlines)
    texts = sample_essays(12)["full_text"].tolist() + ["A short essay.\n\nTwo paragraphs."]
    plan = TokenPlan(MAX_LEN, newlines, chunking=True, chunk_overlap=OVERLAP, max_chunks=100)
    windows = tokenize_windows(tok, texts, plan)
    truncated = tokenize(tok, texts, plan)
    bodies = tok([encode_newlines(t, newlines) for t in texts],
                 add_special_tokens=False)["input_ids"]
    body = MAX_LEN - 2  # [CLS] ... [SEP]
    for ws, trunc, ids in zip(windows, truncated, bodies, strict=True):
        assert ws[0] == trunc  # window 0 is exactly what a truncating model reads
        assert all(w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id for w in ws)
        inner = [w[1:-1] for w in ws]
        assert all(len(x) == body for x in inner[:-1]) and 0 < len(inner[-1]) <= body
        for a, b in zip(inner, inner[1:], strict=False):
            assert a[-OVERLAP:] == b[:OVERLAP]
        assert inner[0] + [t for x in inner[1:] for t in x[OVERLAP:]] == list(ids)
        assert len(ws) == 1 + max(0, math.ceil((len(ids) - body) / (body - OVERLAP)))
    assert max(len(ws) for ws in windows) >= 5 and len(windows[-1]) == 1
    if newlines:
        assert tok.convert_tokens_to_ids("[PARA]") in windows[-1][0]
    capped = tokenize_windows(tok, texts, replace(plan, max_chunks=2))
    assert capped == [ws[:2] for ws in windows]
    with pytest.raises(ValueError, match="chunk_overlap 62 must be below the 62 essay tokens"):
        tokenize_windows(tok, texts, replace(plan, chunk_overlap=body))


def test_chunk_settings_are_validated():
    BackboneSection(max_length=64, chunk_overlap=40)  # chunking off: not checked
    with pytest.raises(ValidationError, match="chunk_overlap 40 exceeds half of max_length 64"):
        BackboneSection(max_length=64, chunk_overlap=40, chunking=True)
    with pytest.raises(ValidationError, match="max_chunks"):
        BackboneSection(chunking=True, max_chunks=0)


def test_pooling_matrix_and_batches():
    np.testing.assert_allclose(pooling_matrix([2, 1], [64, 32, 10]),
                               [[64 / 96, 32 / 96, 0], [0, 0, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="3 windows counted but 2 lengths"):
        pooling_matrix([2, 1], [64, 32])
    with pytest.raises(ValueError, match="at least one window"):
        pooling_matrix([2, 0], [64, 32])
    essays = [[[101, 5, 102], [101, 6, 7, 102]], [[101, 8, 102]]]
    b = collate(essays, 0, chunked=True)
    assert b.input_ids.shape == (3, 4) and b.n_essays == 2
    np.testing.assert_array_equal(b.attention_mask.sum(1), [3, 4, 3])
    np.testing.assert_allclose(b.window_weights, [[3 / 7, 4 / 7, 0], [0, 0, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="one window per essay"):
        collate(essays, 0, chunked=False)
    extra = [[[101, 9, 9, 9, 9, 102]]]
    whole = collate(essays + extra, 0, chunked=True)
    joined = concat_batches([b, collate(extra, 0, chunked=True)], 0)
    for name, arr in whole.feeds().items():
        np.testing.assert_array_equal(joined.feeds()[name], arr, err_msg=name)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_pools_windows_per_essay(tiny_backbone, head):
    tok = load_tokenizer(tiny_backbone)
    torch.manual_seed(0)
    spec = RegressorSpec(head=head, heads_cfg=HEADS_CFG, max_length=MAX_LEN)
    model = EssayRegressor.from_backbone(tiny_backbone, spec).eval()
    chunked = _chunked(spec)
    # an essay of one window scores exactly as under truncation (same weights)
    np.testing.assert_array_equal(predict_logits(model, EssayDataset(SHORT, tok, chunked), tok, 8),
                                  predict_logits(model, EssayDataset(SHORT, tok, spec), tok, 8))
    # long essays: the logit of the token-weighted mean of the per-window pooled vectors
    texts = sample_essays(3)["full_text"].tolist()
    b = encode_batch(tok, texts, chunked)
    assert b.input_ids.shape[0] > len(texts) == b.n_essays
    ids, mask, w = (torch.from_numpy(x) for x in b.feeds().values())
    with torch.no_grad():
        got = model(ids, mask, w)
        hs = model.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                           return_dict=True).hidden_states
        want = model.head.out(w @ model.head.pool(hs, mask)).squeeze(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if head != "lstm":  # (the BiLSTM's backward pass runs over padding: batch-dependent)
        alone = [predict_logits(model, EssayDataset([t], tok, chunked), tok, 1)[0] for t in texts]
        np.testing.assert_allclose(got.numpy(), alone, atol=1e-5)


@pytest.fixture(scope="module")
def folded() -> pd.DataFrame:
    return sample_folded(60, seed=3)


def test_tiny_chunked_model_trains_end_to_end(tmp_path, tiny_backbone, folded):
    job = tiny_fold_job(tmp_path, tiny_backbone, "attention", max_length=MAX_LEN,
                        chunking=True, chunk_overlap=OVERLAP, max_chunks=4)
    result = train_fold_head(job, folded)
    assert result.stage2 is not None and result.stage1.train_essays == 20
    model = EssayRegressor.from_pretrained(result.model_dir)
    assert (model.spec.chunking, model.spec.chunk_overlap, model.spec.max_chunks) == (True, 16, 4)
    fold = folded[folded.fold == 0]
    tok = load_tokenizer(tiny_backbone)
    ds = EssayDataset(fold["full_text"].tolist(), tok, model.spec)
    assert sum(len(w) for w in ds.windows) > 2 * len(ds)  # the essays were read in windows
    direct = logits_to_scores(torch.from_numpy(predict_logits(model, ds, tok, 8)), "bce").numpy()
    oof = pd.read_parquet(result.oof_path)
    assert oof["essay_id"].tolist() == fold["essay_id"].astype(str).tolist()
    np.testing.assert_allclose(oof["pred"].to_numpy(), direct, atol=1e-4)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_chunked_export_parity(tmp_path, tiny_backbone, head):
    reg = make_regressor(tiny_backbone, tmp_path / "reg", head, seed=1, chunked=True)
    onnx_path = export_onnx(reg, tmp_path / "member")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask",
                                                   "window_weights"]
    report = check_parity(reg, onnx_path, sample_essays(6)["full_text"].tolist(), atol=1e-4,
                          batch_size=4)
    assert report.passed, report.to_dict()


def test_in_process_scorer_reads_chunked_members_in_windows(tmp_path, tiny_backbone):
    folds = []
    for fold in range(2):
        reg = make_regressor(tiny_backbone, tmp_path / f"reg{fold}", "attention", seed=fold,
                             chunked=True)
        export_onnx(reg, tmp_path / f"member{fold}")
        folds.append(reg)
    essays = sample_essays(10)
    ens = spread_ensemble(["tiny__attention"], np.array([1.0, 6.0]), 2)
    scorer = OnnxScorer(ens, {"tiny__attention": [tmp_path / "member0", tmp_path / "member1"]},
                        batch_size=4)
    got = scorer.predict_members(essays["full_text"].tolist())[:, 0]
    tok = load_tokenizer(tiny_backbone)
    want = np.mean([logits_to_scores(torch.from_numpy(predict_logits(
        m, EssayDataset(essays["full_text"].tolist(), tok, m.spec), tok, 4)), "bce").numpy()
        for m in map(EssayRegressor.from_pretrained, folds)], axis=0)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_member_config_of_a_chunked_model():
    serving = ServingSection(max_batch_size=8)
    py = member_config("m", serving, "python", MAX_LEN, chunked=True)
    assert "max_batch_size: 0" in py and "dynamic_batching" not in py
    assert 'name: "input_ids" data_type: TYPE_INT64 dims: [ -1, -1 ]' in py
    assert 'name: "window_weights" data_type: TYPE_FP32 dims: [ -1, -1 ]' in py
    assert 'name: "logits" data_type: TYPE_FP32 dims: [ -1 ]' in py
    native = member_config("m", serving, "native", MAX_LEN, chunked=True)
    assert 'platform: "onnxruntime_onnx"' in native and "reshape" not in native
    plain = member_config("m", serving, "python", MAX_LEN)
    assert "max_batch_size: 8" in plain and "window_weights" not in plain
