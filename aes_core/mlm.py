"""Masked-LM continued pretraining of a backbone on essay texts (train + unlabelled, never test).

Backbones without MLM head weights (the packaged MiniLM) get a freshly initialised head from
``AutoModelForMaskedLM``. The result is a Hugging Face folder (weights + tokenizer) that the
fine-tuning stage loads like any other backbone. Perplexity on held-out texts is measured with
one fixed masking before and after training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aes_core.config import MlmSection
from aes_core.logs import explain_loading, quiet_libraries
from aes_core.models.backbone import encode_newlines, load_tokenizer
from aes_core.models.regressor import encoder_overrides
from aes_core.training.module import lr_lambda

log = logging.getLogger(__name__)


def make_blocks(texts: Sequence[str], tokenizer, block_size: int) -> list[list[int]]:
    """Concatenate tokenized texts (separated by SEP) and cut them into ``block_size`` blocks."""
    inner = block_size - 2 if tokenizer.cls_token_id is not None else block_size
    sep = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
    stream: list[int] = []
    # whole essays may exceed the model's max length: they are cut into blocks below, so the
    # tokenizer's "longer than the specified maximum" warning does not apply (verbose=False)
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        stream.extend(ids + sep)
    blocks = []
    for s in range(0, len(stream) - inner + 1, inner):
        chunk = stream[s:s + inner]
        if tokenizer.cls_token_id is not None:
            chunk = [tokenizer.cls_token_id] + chunk + [tokenizer.sep_token_id]
        blocks.append(chunk)
    return blocks


def mask_tokens(ids: torch.Tensor, tokenizer, prob: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: ``prob`` of non-special tokens; 80% [MASK], 10% random, 10% kept."""
    if tokenizer.mask_token_id is None:
        raise ValueError("masked-LM pretraining needs a tokenizer with a mask token")
    labels = ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in tokenizer.all_special_ids:
        special |= ids == sid
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & ~special
    labels[~chosen] = -100
    inputs = ids.clone()
    r = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (r < 0.8)] = tokenizer.mask_token_id
    rand_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    swap = chosen & (r >= 0.8) & (r < 0.9)
    inputs[swap] = rand_ids[swap]
    return inputs, labels


def _mlm_head(model) -> torch.nn.Module | None:
    """The MLM head module (BERT ``cls``, RoBERTa/MPNet ``lm_head``, DeBERTa ``cls`` or
    ``lm_predictions``): the one child that is not the base model, else None."""
    prefix = getattr(model, "base_model_prefix", "")
    others = [m for n, m in model.named_children() if n != prefix]
    return others[0] if len(others) == 1 else None


def masked_lm_loss(model, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at masked positions, projecting only those onto the vocabulary
    (several times cheaper than the full ``ForMaskedLM`` forward on CPU)."""
    head = _mlm_head(model)
    mask = inputs.new_ones(inputs.shape)
    if head is None:  # unknown layout: the model's own forward
        return model(input_ids=inputs, attention_mask=mask, labels=labels).loss
    hidden = model.base_model(input_ids=inputs, attention_mask=mask).last_hidden_state
    sel = labels != -100
    logits = head(hidden[sel])
    return torch.nn.functional.cross_entropy(logits.float(), labels[sel])


@torch.no_grad()
def perplexity(model, batches: list[tuple[torch.Tensor, torch.Tensor]], device: str) -> float:
    """exp(mean masked-token cross-entropy) over pre-masked batches."""
    model.eval()
    total, count = 0.0, 0
    for inputs, labels in batches:
        n = int((labels != -100).sum())
        if n == 0:
            continue
        loss = masked_lm_loss(model, inputs.to(device), labels.to(device))
        total += float(loss) * n
        count += n
    return float(math.exp(total / max(count, 1))) if count else float("nan")


def run_mlm(backbone_path: str | Path, out_dir: str | Path, texts: Sequence[str],
            cfg: MlmSection, add_newline_tokens: bool = False, device: str = "cpu",
            amp_dtype: torch.dtype | None = None, progress: bool = True,
            num_layers: int | None = None) -> dict[str, Any]:
    """Continue masked-LM pretraining; save an HF folder with tokenizer in ``out_dir``.

    ``num_layers`` keeps only the first N encoder layers (see ``BackboneSection.num_layers``).
    """
    from transformers import AutoModelForMaskedLM

    texts = [encode_newlines(str(t), add_newline_tokens) for t in texts if str(t).strip()]
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(texts))
    if cfg.max_texts is not None:
        order = order[:cfg.max_texts]
    texts = [texts[i] for i in order]
    n_hold = max(1, int(round(cfg.holdout_fraction * len(texts))))
    if len(texts) - n_hold < 1:
        raise ValueError(f"masked-LM pretraining needs at least 2 texts, got {len(texts)}")
    tokenizer = load_tokenizer(backbone_path, add_newline_tokens)
    held, train = texts[:n_hold], texts[n_hold:]
    train_blocks = make_blocks(train, tokenizer, cfg.block_size)
    held_blocks = make_blocks(held, tokenizer, cfg.block_size)
    if not train_blocks or not held_blocks:
        raise ValueError(f"mlm.block_size={cfg.block_size} is longer than the texts provide "
                         f"({len(train)} train / {len(held)} held-out texts)")
    torch.manual_seed(cfg.seed)
    quiet_libraries()
    model, info = AutoModelForMaskedLM.from_pretrained(str(backbone_path), local_files_only=True,
                                                       output_loading_info=True,
                                                       **encoder_overrides(num_layers))
    explain_loading(model, info, str(backbone_path))
    if len(tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.to(device)

    g_eval = torch.Generator().manual_seed(cfg.seed + 1)
    held_t = torch.tensor(held_blocks, dtype=torch.long)
    eval_batches = [mask_tokens(held_t[s:s + cfg.batch_size], tokenizer, cfg.mlm_probability,
                                g_eval) for s in range(0, len(held_t), cfg.batch_size)]
    ppl_before = perplexity(model, eval_batches, device)

    train_t = torch.tensor(train_blocks, dtype=torch.long)
    steps_per_epoch = math.ceil(len(train_t) / cfg.batch_size)
    total = max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2
                                                              and "norm" not in n.lower())]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda("linear", int(cfg.warmup_ratio * total), total))
    g = torch.Generator().manual_seed(cfg.seed)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="mlm", disable=not progress)
    step, losses, t0 = 0, [], time.time()
    model.train()
    device_type = torch.device(device).type
    while step < total:
        perm = torch.randperm(len(train_t), generator=g)
        for s in range(0, len(perm), cfg.batch_size):
            if step >= total:
                break
            inputs, labels = mask_tokens(train_t[perm[s:s + cfg.batch_size]], tokenizer,
                                         cfg.mlm_probability, g)
            with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                loss = masked_lm_loss(model, inputs.to(device), labels.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    seconds = time.time() - t0
    ppl_after = perplexity(model, eval_batches, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.cpu().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    result = {
        "path": str(out_dir), "base_path": str(backbone_path),
        "perplexity_before": ppl_before, "perplexity_after": ppl_after,
        "train_texts": len(train), "holdout_texts": len(held), "train_blocks": len(train_blocks),
        "holdout_blocks": len(held_blocks), "steps": step, "seconds": round(seconds, 2),
        "final_loss": float(np.mean(losses[-20:])) if losses else None, "mlm_trained": True,
    }
    log.info("mlm: perplexity %.2f -> %.2f in %d steps", ppl_before, ppl_after, step)
    return result
