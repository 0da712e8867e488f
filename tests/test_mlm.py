"""Masked-LM continued pretraining: blocks, masking, perplexity, a loadable HF folder."""

from __future__ import annotations

import pandas as pd
import torch

from aes_core.config import MlmSection
from aes_core.mlm import make_blocks, mask_tokens, run_mlm
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import EssayRegressor, RegressorSpec
from tests.conftest import SAMPLE_DIR


def test_blocks_and_masking(tiny_backbone):
    tok = load_tokenizer(tiny_backbone)
    texts = pd.read_csv(SAMPLE_DIR / "unlabelled_essays.csv.gz")["full_text"].head(5).tolist()
    blocks = make_blocks(texts, tok, 32)
    assert blocks and all(len(b) == 32 for b in blocks)
    assert all(b[0] == tok.cls_token_id and b[-1] == tok.sep_token_id for b in blocks)
    ids = torch.tensor(blocks)
    inputs, labels = mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(0))
    chosen = labels != -100
    rate = chosen.float().mean().item()
    assert 0.08 < rate < 0.22
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens never masked
    assert (labels[chosen] == ids[chosen]).all()
    assert (inputs[chosen] == tok.mask_token_id).float().mean() > 0.6
    assert (inputs[~chosen] == ids[~chosen]).all()


def test_mlm_lowers_heldout_perplexity_and_saves_a_backbone(tiny_backbone, tmp_path):
    texts = pd.read_csv(SAMPLE_DIR / "unlabelled_essays.csv.gz")["full_text"].tolist()
    cfg = MlmSection(block_size=32, max_texts=12, batch_size=16, epochs=1, lr=3e-3,
                     holdout_fraction=0.2)
    out = tmp_path / "mlm"
    r = run_mlm(tiny_backbone, out, texts, cfg, add_newline_tokens=True, progress=False)
    assert r["holdout_texts"] == 2 and r["train_texts"] == 10 and r["steps"] > 0
    assert r["perplexity_after"] < r["perplexity_before"]
    tok = load_tokenizer(out, add_newline_tokens=True)
    assert "[NL]" in tok.get_vocab() and len(tok) == len(load_tokenizer(out))  # saved with tokens
    model = EssayRegressor.from_backbone(out, RegressorSpec(head="mean"), vocab_size=len(tok))
    assert model.encoder.get_input_embeddings().num_embeddings == len(tok)


def test_masked_positions_loss_equals_the_full_forward(tiny_backbone):
    from transformers import AutoModelForMaskedLM

    from aes_core.mlm import _mlm_head, masked_lm_loss

    tok = load_tokenizer(tiny_backbone)
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_backbone)).eval()
    assert _mlm_head(model) is model.cls
    texts = pd.read_csv(SAMPLE_DIR / "unlabelled_essays.csv.gz")["full_text"].head(2).tolist()
    ids = torch.tensor(make_blocks(texts, tok, 32)[:4])
    inputs, labels = mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=inputs, labels=labels).loss
        fast = masked_lm_loss(model, inputs, labels)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
