"""Head + tail truncation (``backbones[].tail_tokens``): an essay longer than the window keeps
its first tokens and its last ``tail_tokens``; settings are validated, kept out of the config
dump when off, carried by the trained model's spec and read the same way in training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from aes_core.config import BackboneSection
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import EssayRegressor, logits_to_scores
from aes_core.models.tokens import TokenPlan, head_and_tail, tokenize, tokenize_windows
from aes_core.training.datamodule import EssayDataset, predict_logits
from aes_core.training.stages import train_fold_head
from tests.conftest import sample_folded, tiny_fold_job
from tests.serving_support import sample_essays

MAX_LEN, TAIL = 64, 24
BODY = MAX_LEN - 2  # [CLS] ... [SEP]


def test_long_essays_keep_their_start_and_their_end(tiny_backbone):
    tok = load_tokenizer(tiny_backbone)
    texts = sample_essays(10)["full_text"].tolist() + ["A short essay.", ""]
    plan = TokenPlan(MAX_LEN, tail_tokens=TAIL)
    got = tokenize(tok, texts, plan)
    head_only = tokenize(tok, texts, TokenPlan(MAX_LEN))
    bodies = tok(texts, add_special_tokens=False)["input_ids"]
    long = 0
    for ids, first, body in zip(got, head_only, bodies, strict=True):
        body = list(body)
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        if len(body) <= BODY:  # fits: the same as plain truncation
            assert ids == first
            continue
        long += 1
        assert len(ids) == MAX_LEN
        assert ids[1:1 + BODY - TAIL] == first[1:1 + BODY - TAIL]  # the start, as before
        assert ids[-1 - TAIL:-1] == body[-TAIL:]  # and the essay's last tokens
    assert long >= 5
    assert tokenize_windows(tok, texts, plan) == [[ids] for ids in got]
    with pytest.raises(ValueError, match="tail_tokens 62 must be below the 62 essay tokens"):
        head_and_tail(list(range(100)), BODY, BODY)


def test_a_chunked_plan_ignores_tail_tokens():
    spec = BackboneSection(max_length=MAX_LEN, chunking=True, chunk_overlap=8)
    assert TokenPlan.of(spec).tail_tokens == 0
    assert TokenPlan.of(BackboneSection(max_length=MAX_LEN, tail_tokens=TAIL)).head_tail


def test_tail_settings_are_validated_and_off_by_default():
    with pytest.raises(ValidationError, match="tail_tokens 8 applies to truncated essays"):
        BackboneSection(max_length=MAX_LEN, chunking=True, chunk_overlap=8, tail_tokens=8)
    with pytest.raises(ValidationError, match="tail_tokens 60 leaves no room"):
        BackboneSection(max_length=MAX_LEN, tail_tokens=60)
    with pytest.raises(ValidationError, match="tail_tokens"):
        BackboneSection(tail_tokens=-1)
    # off: the dump (config hashes, code versions) is the one from before the setting existed
    assert "tail_tokens" not in BackboneSection().model_dump()
    assert BackboneSection(tail_tokens=TAIL).model_dump()["tail_tokens"] == TAIL


@pytest.fixture(scope="module")
def folded() -> pd.DataFrame:
    return sample_folded(60, seed=5)


def test_a_head_tail_model_trains_and_predicts_as_it_reads(tmp_path, tiny_backbone, folded):
    job = tiny_fold_job(tmp_path, tiny_backbone, "mean", max_length=MAX_LEN, tail_tokens=TAIL)
    result = train_fold_head(job, folded)
    model = EssayRegressor.from_pretrained(result.model_dir)
    assert (model.spec.tail_tokens, model.spec.chunking) == (TAIL, False)
    fold = folded[folded.fold == 0]
    texts = fold["full_text"].tolist()
    tok = load_tokenizer(tiny_backbone)
    ds = EssayDataset(texts, tok, model.spec)
    ends = [list(b[-TAIL:]) for b in tok(texts, add_special_tokens=False)["input_ids"]]
    assert all(w[0][-1 - TAIL:-1] == e for w, e in zip(ds.windows, ends, strict=True))
    direct = logits_to_scores(torch.from_numpy(predict_logits(model, ds, tok, 8)), "bce").numpy()
    oof = pd.read_parquet(result.oof_path)
    np.testing.assert_allclose(oof["pred"].to_numpy(), direct, atol=1e-4)
