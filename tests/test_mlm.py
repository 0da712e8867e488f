"""Masked-LM continued pretraining: blocks, masking, perplexity, resume, DDP, a loadable folder."""

from __future__ import annotations

import json
import math
import pickle

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch

from aes_core.config import MlmSection
from aes_core.mlm import BlockCollator, fixed_masking, make_blocks, run_mlm
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import EssayRegressor, RegressorSpec
from tests.conftest import SAMPLE_DIR
from tests.training_support import Interrupt


@pytest.fixture(scope="module")
def essays() -> list[str]:
    return pd.read_csv(SAMPLE_DIR / "unlabelled_essays.csv.gz")["full_text"].tolist()


def test_blocks_and_collator_masking(tiny_backbone, essays):
    tok = load_tokenizer(tiny_backbone)
    blocks = make_blocks(essays[:5], tok, 32)
    assert blocks and all(len(b) == 32 for b in blocks)
    assert all(b[0] == tok.cls_token_id and b[-1] == tok.sep_token_id for b in blocks)
    ids = torch.tensor(blocks)
    collator = pickle.loads(pickle.dumps(BlockCollator(tokenizer=tok, mlm_probability=0.15)))
    torch.manual_seed(0)
    batch = collator(list(ids))
    inputs, labels = batch["input_ids"], batch["labels"]
    chosen = labels != -100
    assert 0.08 < chosen.float().mean().item() < 0.22
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens never masked
    assert (labels[chosen] == ids[chosen]).all()
    assert 0.6 < (inputs[chosen] == tok.mask_token_id).float().mean() < 0.95
    assert (inputs[~chosen] == ids[~chosen]).all()
    assert torch.equal(batch["masked"], chosen.reshape(-1).nonzero().squeeze(1))
    # the held-out masking is fixed by its seed and leaves the global RNG alone
    state = torch.get_rng_state()
    a, b = fixed_masking(ids, collator, 4, seed=7), fixed_masking(ids, collator, 4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b, strict=True))


def test_mlm_lowers_heldout_perplexity_and_saves_a_backbone(tiny_backbone, tmp_path, essays):
    # the tiny backbone is a bare BertModel: its MLM head starts fresh
    cfg = MlmSection(block_size=32, max_texts=12, batch_size=16, epochs=1, lr=3e-3,
                     holdout_fraction=0.2)
    out = tmp_path / "mlm"
    r = run_mlm(tiny_backbone, out, essays, cfg, add_newline_tokens=True, progress=False)
    assert r["holdout_texts"] == 2 and r["train_texts"] == 10
    assert r["steps"] == math.ceil(r["train_blocks"] / 16) and r["final_loss"] > 0
    assert r["perplexity_after"] < r["perplexity_before"]
    assert json.loads((out / "result.json").read_text())["steps"] == r["steps"]
    assert not (out / "checkpoints").exists()
    tok = load_tokenizer(out, add_newline_tokens=True)
    assert "[NL]" in tok.get_vocab() and len(tok) == len(load_tokenizer(out))  # saved with tokens
    model = EssayRegressor.from_backbone(out, RegressorSpec(head="mean"), vocab_size=len(tok))
    assert model.encoder.get_input_embeddings().num_embeddings == len(tok)


class StartProbe(pl.Callback):
    def __init__(self):
        self.starts: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.starts.append(trainer.global_step)


def test_interrupted_run_resumes_from_last_checkpoint(tiny_backbone, tmp_path, essays):
    cfg = MlmSection(block_size=32, max_texts=12, batch_size=8, epochs=1, lr=3e-3,
                     holdout_fraction=0.2, checkpoint_every_n_steps=2)
    out = tmp_path / "mlm"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_mlm(tiny_backbone, out, essays, cfg, progress=False, callbacks=[Interrupt(3)])
    assert (out / "checkpoints" / "last.ckpt").exists() and not (out / "result.json").exists()

    probe = StartProbe()
    r = run_mlm(tiny_backbone, out, essays, cfg, progress=False, callbacks=[probe])
    total = math.ceil(r["train_blocks"] / 8)
    assert total > 3
    assert probe.starts == [2]  # continued at the step of the last checkpoint
    assert r["resumed_from"] == str(out / "checkpoints" / "last.ckpt")
    assert r["steps"] == total and r["perplexity_after"] < r["perplexity_before"]

    # a changed spec starts over; so does re-running a finished one
    probe2 = StartProbe()
    again = run_mlm(tiny_backbone, out, essays, cfg.model_copy(update={"lr": 1e-3}),
                    progress=False, callbacks=[probe2])
    assert probe2.starts == [0] and again["resumed_from"] is None
    assert again["notes"] == ["starting over: its configuration, data or code changed"]


@pytest.mark.slow
def test_ddp_gloo_two_processes(tiny_backbone, tmp_path, essays):
    from aes_resources.gpu import GpuResource

    cfg = MlmSection(block_size=32, max_texts=12, batch_size=8, epochs=1, lr=3e-3,
                     holdout_fraction=0.2)
    gpu = GpuResource(accelerator="cpu", devices=2)
    r = run_mlm(tiny_backbone, tmp_path / "ddp", essays, cfg, progress=False,
                trainer_kwargs=gpu.trainer_kwargs("mlm"))
    # DistributedSampler: each of the 2 ranks sees half the blocks, in batches of 8
    assert r["steps"] == math.ceil(math.ceil(r["train_blocks"] / 2) / 8)
    assert r["perplexity_after"] < r["perplexity_before"]  # weights came back from rank 0
    EssayRegressor.from_backbone(tmp_path / "ddp", RegressorSpec(head="mean"))


def test_masked_positions_loss_equals_the_full_forward(tiny_backbone, essays):
    from transformers import AutoModelForMaskedLM

    from aes_core.mlm import _mlm_head, masked_lm_loss

    tok = load_tokenizer(tiny_backbone)
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_backbone)).eval()
    assert _mlm_head(model) is model.cls
    ids = torch.tensor(make_blocks(essays[:2], tok, 32)[:4])
    batch = fixed_masking(ids, BlockCollator(tokenizer=tok), 4, seed=1)[0]
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        fast = masked_lm_loss(model, batch["input_ids"], batch["labels"], batch["masked"])
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
