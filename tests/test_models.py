"""Heads (shapes, masking, registry), regressor round trip, and DeBERTa-v3 by config alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aes_core.config import (
    BUILTIN_HEADS,
    AesConfig,
    BackboneSection,
    HeadSection,
    known_heads,
    load_config,
)
from aes_core.models.backbone import encode_newlines, load_tokenizer
from aes_core.models.heads import HEADS, Head, build_head, masked_mean, register_head
from aes_core.models.regressor import EssayRegressor, RegressorSpec
from aes_core.training.datamodule import EssayDataset, predict_logits
from aes_core.training.stages import FoldHeadJob, train_fold_head
from tests.conftest import SAMPLE_DIR, sample_folded, tiny_overrides

HIDDEN, LAYERS = 16, 5


def _states(b: int = 3, t: int = 7) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    torch.manual_seed(0)
    states = tuple(torch.randn(b, t, HIDDEN) for _ in range(LAYERS))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return states, mask


@pytest.mark.parametrize("name", ["mean", "attention", "lstm", "weighted_layers"])
def test_each_head_maps_hidden_states_to_one_logit_per_essay(name):
    cfg = HeadSection(lstm_hidden=8, attention_hidden=8, weighted_last_k=3)
    head = build_head(name, HIDDEN, cfg).eval()
    states, mask = _states()
    out = head(states, mask)
    assert out.shape == (3,) and torch.isfinite(out).all()
    out.sum().backward()  # every head is differentiable end to end
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    if name != "lstm":  # pooling ignores what sits under padding
        noisy = tuple(s.clone() for s in states)
        for s in noisy:
            s[2, 2:] = 1e3
        torch.testing.assert_close(head(noisy, mask), head(states, mask))


def test_weighted_layers_uses_last_k_layers():
    cfg = HeadSection(weighted_last_k=2)
    head = build_head("weighted_layers", HIDDEN, cfg)
    states, mask = _states()
    changed = (torch.zeros_like(states[0]),) + states[1:]  # first layer is not in the last 2
    torch.testing.assert_close(head(changed, mask), head(states, mask))
    assert not torch.allclose(head(states[:-1] + (states[-1] * 2,), mask), head(states, mask))


def test_a_new_head_is_one_registered_class():
    @register_head("max_test")
    class MaxHead(Head):
        def pool(self, hidden_states, mask):
            return hidden_states[-1].masked_fill(mask.unsqueeze(-1) == 0, -1e4).max(1).values

    try:
        states, mask = _states()
        assert build_head("max_test", HIDDEN, HeadSection())(states, mask).shape == (3,)
        with pytest.raises(ValueError, match="registered twice"):
            register_head("max_test")(MaxHead)
        # a backbone of a configuration may train it, like the built-in heads
        assert set(BUILTIN_HEADS) <= set(HEADS) and "max_test" in known_heads()
        cfg = AesConfig(backbones=[BackboneSection(name="b", heads=["max_test", "mean"])])
        assert cfg.heads_for("b") == ["max_test", "mean"]
    finally:
        HEADS.pop("max_test")
    with pytest.raises(KeyError, match="registered heads"):
        build_head("nope", HIDDEN, HeadSection())
    assert masked_mean(torch.ones(1, 3, 2), torch.tensor([[1, 0, 0]])).tolist() == [[1.0, 1.0]]


def test_regressor_round_trip(tiny_backbone, tmp_path):
    tok = load_tokenizer(tiny_backbone)
    spec = RegressorSpec(head="attention", heads_cfg=HeadSection(attention_hidden=8),
                         max_length=32, backbone_name="tiny")
    model = EssayRegressor.from_backbone(tiny_backbone, spec).eval()
    ds = EssayDataset(["One essay here.", "Another, longer essay " * 10], tok, 32)
    before = predict_logits(model, ds, tok, 2)
    folder = model.save_pretrained(tmp_path / "reg", tok)
    again = EssayRegressor.from_pretrained(folder)
    np.testing.assert_allclose(predict_logits(again, ds, tok, 2), before, atol=1e-6)


def _logits_in_fresh_process(model: EssayRegressor, ids: torch.Tensor,
                             mask: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(ids, mask).numpy()


def test_regressor_unpickled_in_a_spawned_process_scores_the_same(tiny_backbone):
    """DDP spawn ranks unpickle the model in a fresh interpreter, also after it has already
    scored essays here (stage 2): the heads still get the encoder's hidden states there
    (transformers fills its output-capturing registry in __init__ and hooks them in with
    closures on the first forward), and the model still scores here afterwards."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    spec = RegressorSpec(head="weighted_layers", heads_cfg=HeadSection(weighted_last_k=2),
                         max_length=16,
                         backbone_name="tiny")
    model = EssayRegressor.from_backbone(tiny_backbone, spec).eval()
    ids = torch.randint(5, 100, (2, 16))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        here = model(ids, mask).numpy()
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        there = pool.submit(_logits_in_fresh_process, model, ids, mask).result()
    np.testing.assert_allclose(there, here, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(model(ids, mask).numpy(), here, atol=1e-6)


# ---------------------------------------------------------------- DeBERTa-v3 by config alone
def build_tiny_deberta(folder: Path, texts: list[str]) -> Path:
    """A random DebertaV2 model + a unigram tokenizer trained offline on ``texts``."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import DebertaV2Config, DebertaV2Model, DebertaV2Tokenizer

    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    tk.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=400, special_tokens=specials,
                                                          unk_token="[UNK]"))
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok = DebertaV2Tokenizer(tokenizer_object=tk, pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]",
                             bos_token="[CLS]", eos_token="[SEP]", model_max_length=512)
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=512, relative_attention=True,
                          position_buckets=64, pos_att_type=["p2c", "c2p"],
                          pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    DebertaV2Model(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory) -> Path:
    texts = pd.read_csv(SAMPLE_DIR / "train.csv.gz")["full_text"].head(200).tolist()
    return build_tiny_deberta(tmp_path_factory.mktemp("tiny_deberta"), texts)


@pytest.fixture(scope="module")
def small_folded() -> pd.DataFrame:
    return sample_folded(80, seed=1)


def test_deberta_v2_backbone_by_config_alone(tmp_path, tiny_deberta, small_folded):
    over = tiny_overrides(tmp_path, tiny_deberta)
    over["backbones"] = [{"name": "deberta", "path": str(tiny_deberta), "max_length": 64,
                          "add_newline_tokens": True}]
    over["train"] = {**over["train"], "max_train_essays": 24, "freeze_layers": 1}
    cfg = load_config(overrides=over)
    bb = cfg.backbone("deberta")
    tok = load_tokenizer(tiny_deberta, bb.add_newline_tokens)
    assert type(tok).__name__ == "DebertaV2Tokenizer"
    assert "[PARA]" in tok.get_vocab()
    enc = tok(encode_newlines("First para.\n\nSecond para.", True))["input_ids"]
    assert tok.convert_tokens_to_ids("[PARA]") in enc

    job = FoldHeadJob(cfg, bb, tiny_deberta, 0, "attention", tmp_path / "part",
                      {"accelerator": "cpu", "devices": 1}, progress=False)
    result = train_fold_head(job, small_folded)
    assert result.fold_essays == int((small_folded.fold == 0).sum())
    model = EssayRegressor.from_pretrained(result.model_dir)
    assert type(model.encoder).__name__ == "DebertaV2Model"
    assert model.encoder.get_input_embeddings().num_embeddings == len(tok)  # resized for [NL]
    oof = pd.read_parquet(result.oof_path)
    ds = EssayDataset(small_folded.loc[small_folded.fold == 0, "full_text"].tolist(), tok, 64,
                      add_newline_tokens=True)
    direct = 1 + 5 / (1 + np.exp(-predict_logits(model, ds, tok, 8)))
    np.testing.assert_allclose(oof["pred"].to_numpy(), direct, atol=1e-4)
