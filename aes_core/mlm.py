"""Masked-LM continued pretraining of a backbone on essay texts (train + unlabelled, never test).

Texts are packed into fixed-length blocks; ``BlockCollator`` (transformers'
``DataCollatorForLanguageModeling``) masks them and ``MlmModule`` trains with the same Lightning
Trainer settings as fine-tuning (accelerator / devices / precision / strategy passed in, DDP
spawn included), gradient clipping, and warmup + linear decay. Backbones without MLM head
weights (the packaged MiniLM) get a freshly initialised head from ``AutoModelForMaskedLM``.

The output folder is a Hugging Face folder (weights + tokenizer) that fine-tuning loads like any
other backbone. While training it also holds ``run_spec.json`` and ``checkpoints/last.ckpt``: a
run interrupted with the same spec resumes there; ``result.json`` marks a finished run (its
checkpoints are then removed). Perplexity on held-out texts is measured with one fixed, seeded
masking before and after training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling

from aes_core.config import MlmSection
from aes_core.logs import explain_loading, quiet_libraries
from aes_core.models.backbone import encode_newlines, load_tokenizer
from aes_core.models.regressor import encoder_overrides
from aes_core.training.module import NO_DECAY, lr_lambda
from aes_core.training.resume import (
    LAST_CKPT,
    RESULT_FILE,
    device_count,
    prepare_out_dir,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FINAL_LOSS_STEPS = 20  # ``final_loss`` = mean training loss of the last this many steps
# settings of a run that do not change its result (a change keeps the resume point)
RUN_ONLY_FIELDS = {"checkpoint_every_n_steps", "log_every_n_steps"}


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


@dataclass
class BlockCollator(DataCollatorForLanguageModeling):
    """BERT masking of equal-length blocks (80% [MASK], 10% random, 10% kept).

    Stacks the blocks and finds special tokens with one vectorised lookup (the base class asks
    the tokenizer row by row), then masks with ``torch_mask_tokens``: ``labels`` are the original
    ids at masked positions and -100 elsewhere. ``masked`` holds the flat indices of the masked
    positions, computed here on the host so the loss can select them on a GPU without a
    device-to-host sync. Masking draws from torch's global RNG (seeded by Lightning per rank).
    """

    def __post_init__(self):
        super().__post_init__()
        if self.seed is not None:
            raise ValueError("BlockCollator draws from torch's global RNG; seed it instead")
        self.special_ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))

    def torch_call(self, examples: Sequence[Sequence[int] | torch.Tensor]) -> dict[str, Any]:
        ids = torch.stack([torch.as_tensor(e, dtype=torch.long) for e in examples])
        special = torch.isin(ids, self.special_ids)
        inputs, labels = self.torch_mask_tokens(ids, special_tokens_mask=special)
        masked = (labels.reshape(-1) != -100).nonzero().squeeze(1)
        return {"input_ids": inputs, "labels": labels, "masked": masked}


def fixed_masking(blocks: torch.Tensor, collator: BlockCollator, batch_size: int,
                  seed: int) -> list[dict[str, Any]]:
    """Masked batches of ``blocks`` drawn once with ``seed`` (the global RNG is left as found)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [collator(list(blocks[s:s + batch_size]))
                for s in range(0, len(blocks), batch_size)]


def _mlm_head(model) -> torch.nn.Module | None:
    """The MLM head module (BERT ``cls``, RoBERTa/MPNet ``lm_head``, DeBERTa ``cls`` or
    ``lm_predictions``): the one child that is not the base model, else None."""
    prefix = getattr(model, "base_model_prefix", "")
    others = [m for n, m in model.named_children() if n != prefix]
    return others[0] if len(others) == 1 else None


def masked_lm_loss(model, inputs: torch.Tensor, labels: torch.Tensor,
                   masked: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy at masked positions, projecting only those onto the vocabulary
    (several times cheaper than the full ``ForMaskedLM`` forward on CPU).

    Blocks carry no padding, so no attention mask is passed. ``masked``: flat indices of the
    positions whose label is not -100 (computed from ``labels`` when not given).
    """
    head = _mlm_head(model)
    if head is None:  # unknown layout: the model's own forward
        return model(input_ids=inputs, labels=labels).loss
    hidden = model.base_model(input_ids=inputs).last_hidden_state
    if masked is None:
        masked = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    logits = head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked))
    return torch.nn.functional.cross_entropy(logits.float(),
                                             labels.reshape(-1).index_select(0, masked))


@torch.no_grad()
def perplexity(model, batches: list[dict[str, Any]], device: str | torch.device = "cpu",
               amp_dtype: torch.dtype | None = None) -> float:
    """exp(mean masked-token cross-entropy) over pre-masked batches (one host sync)."""
    was_training = model.training
    model.eval()
    device_type = torch.device(device).type
    total, count = torch.zeros((), device=device), 0
    for b in batches:
        n = len(b["masked"])
        if n == 0:
            continue
        with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            loss = masked_lm_loss(model, b["input_ids"].to(device), b["labels"].to(device),
                                  b["masked"].to(device))
        total += loss.float() * n
        count += n
    model.train(was_training)
    return float(math.exp(float(total) / count)) if count else float("nan")


class MlmModule(pl.LightningModule):
    """Trains an ``AutoModelForMaskedLM`` on masked blocks; logs ``train_loss`` and, at the end
    of each epoch, ``final_loss`` (the last steps' mean over all ranks) and ``global_step``."""

    def __init__(self, model: torch.nn.Module, cfg: MlmSection):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self._recent: list[torch.Tensor] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = masked_lm_loss(self.model, batch["input_ids"], batch["labels"], batch["masked"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch["input_ids"].shape[0])
        self._recent = [*self._recent[-(FINAL_LOSS_STEPS - 1):], loss.detach()]
        return loss

    def on_train_epoch_end(self) -> None:
        if self._recent:
            self.log("final_loss", torch.stack(self._recent).float().mean(), sync_dist=True)
        self.log("global_step", float(self.trainer.global_step), sync_dist=True)

    def configure_optimizers(self):
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                wd = 0.0 if (NO_DECAY.search(name) or p.ndim < 2) else self.cfg.weight_decay
                groups.setdefault(wd, []).append(p)
        opt = torch.optim.AdamW([{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
                                lr=self.cfg.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda("linear", int(self.cfg.warmup_ratio * total), total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainer_kwargs_for(device: str | torch.device,
                       amp_dtype: torch.dtype | None) -> dict[str, Any]:
    """Single-device Trainer kwargs matching an inference ``device`` and autocast dtype."""
    dev = torch.device(device)
    precision = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}.get(amp_dtype,
                                                                              "32-true")
    if dev.type == "cuda":
        return {"accelerator": "gpu", "devices": [dev.index or 0], "precision": precision}
    return {"accelerator": "cpu", "devices": 1, "precision": precision}


def select_texts(texts: Sequence[str], cfg: MlmSection,
                 add_newline_tokens: bool) -> tuple[list[str], list[str]]:
    """(held-out, train) texts: non-empty, newline-encoded, seeded order, ``max_texts`` cap."""
    texts = [encode_newlines(str(t), add_newline_tokens) for t in texts if str(t).strip()]
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    if cfg.max_texts is not None:
        order = order[:cfg.max_texts]
    texts = [texts[i] for i in order]
    n_hold = max(1, int(round(cfg.holdout_fraction * len(texts))))
    if len(texts) - n_hold < 1:
        raise ValueError(f"masked-LM pretraining needs at least 2 texts, got {len(texts)}")
    return texts[:n_hold], texts[n_hold:]


def load_mlm_model(backbone_path: str | Path, tokenizer, num_layers: int | None,
                   seed: int) -> torch.nn.Module:
    """``AutoModelForMaskedLM`` of the backbone (a missing MLM head starts from ``seed``)."""
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(seed)
    quiet_libraries()
    model, info = AutoModelForMaskedLM.from_pretrained(str(backbone_path), local_files_only=True,
                                                       output_loading_info=True,
                                                       **encoder_overrides(num_layers))
    explain_loading(model, info, str(backbone_path))
    if len(tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def run_spec(backbone_path: str | Path, cfg: MlmSection, add_newline_tokens: bool,
             num_layers: int | None, world_size: int, texts: Sequence[str]) -> dict[str, Any]:
    """What determines an MLM run's result; a change means its checkpoint cannot resume."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    return {"backbone_path": str(backbone_path), "mlm": cfg.model_dump(exclude=RUN_ONLY_FIELDS),
            "add_newline_tokens": add_newline_tokens, "num_layers": num_layers,
            "world_size": world_size, "texts": digest}


def run_mlm(backbone_path: str | Path, out_dir: str | Path, texts: Sequence[str],
            cfg: MlmSection, add_newline_tokens: bool = False, device: str = "cpu",
            amp_dtype: torch.dtype | None = None, progress: bool = True,
            num_layers: int | None = None, *, trainer_kwargs: dict[str, Any] | None = None,
            loggers: Callable[[str], list] | None = None,
            callbacks: Sequence[Callback] = (),
            log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Continue masked-LM pretraining; save an HF folder with tokenizer in ``out_dir``.

    ``trainer_kwargs``: Lightning ``accelerator/devices/precision/strategy`` (e.g.
    ``GpuResource.trainer_kwargs()``; several devices = DDP); when None, one device from
    ``device`` / ``amp_dtype``. Held-out perplexity is measured in this process on ``device``
    with autocast ``amp_dtype``. ``loggers``: stage name ("mlm") -> Lightning loggers.
    ``num_layers`` keeps only the first N encoder layers (see ``BackboneSection.num_layers``).
    """
    def say(msg: str) -> None:
        log.info(msg)
        if log_fn:
            log_fn(msg)

    held, train = select_texts(texts, cfg, add_newline_tokens)
    tokenizer = load_tokenizer(backbone_path, add_newline_tokens)
    train_blocks = make_blocks(train, tokenizer, cfg.block_size)
    held_blocks = make_blocks(held, tokenizer, cfg.block_size)
    if not train_blocks or not held_blocks:
        raise ValueError(f"mlm.block_size={cfg.block_size} is longer than the texts provide "
                         f"({len(train)} train / {len(held)} held-out texts)")
    kwargs = dict(trainer_kwargs) if trainer_kwargs is not None else trainer_kwargs_for(
        device, amp_dtype)
    world = device_count(kwargs)
    out_dir = Path(out_dir)
    notes, _ = prepare_out_dir(out_dir, run_spec(backbone_path, cfg, add_newline_tokens,
                                                 num_layers, world, held + train))
    ckpt_dir = out_dir / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CKPT
    resume = str(last) if last.exists() else None
    for n in notes + ([f"mlm: resuming from {last}"] if resume else []):
        say(n)

    model = load_mlm_model(backbone_path, tokenizer, num_layers, cfg.seed)
    collator = BlockCollator(tokenizer=tokenizer, mlm_probability=cfg.mlm_probability)
    eval_batches = fixed_masking(torch.tensor(held_blocks, dtype=torch.long), collator,
                                 cfg.batch_size, cfg.seed + 1)
    model.to(device)
    ppl_before = perplexity(model, eval_batches, device, amp_dtype)
    model.cpu()

    # DistributedSampler gives each rank ceil(n / world) blocks
    steps_per_epoch = math.ceil(math.ceil(len(train_blocks) / world) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    on_gpu = kwargs.get("accelerator") in ("gpu", "cuda")
    loader = DataLoader(torch.tensor(train_blocks, dtype=torch.long), batch_size=cfg.batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(cfg.seed),
                        collate_fn=collator, pin_memory=on_gpu)
    run_loggers = loggers("mlm") if loggers else False
    cbs: list[Callback] = [ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                                           every_n_train_steps=cfg.checkpoint_every_n_steps)]
    if run_loggers:
        cbs.append(LearningRateMonitor(logging_interval="step"))
    if progress:  # the bar reads the loss from the device each time it refreshes
        cbs.append(TQDMProgressBar(refresh_rate=cfg.log_every_n_steps))
    trainer = pl.Trainer(
        **kwargs, max_steps=total, max_epochs=math.ceil(cfg.epochs),
        callbacks=[*cbs, *callbacks], logger=run_loggers, default_root_dir=str(ckpt_dir),
        enable_progress_bar=progress, enable_model_summary=False,
        gradient_clip_val=cfg.gradient_clip_val or None,
        log_every_n_steps=cfg.log_every_n_steps, num_sanity_val_steps=0, deterministic=False,
    )
    if trainer.world_size != world:
        raise ValueError(f"trainer kwargs {kwargs} run {trainer.world_size} processes, "
                         f"expected {world}")
    say(f"mlm: {len(train_blocks)} train blocks of {cfg.block_size} tokens, {total} steps "
        f"on {world} device(s)")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = MlmModule(model, cfg)
    module.model.train()  # HF loads in eval mode; Lightning keeps module modes as found
    t0 = time.time()
    trainer.fit(module, loader, ckpt_path=resume)  # DDP spawn sends the weights back
    seconds = time.time() - t0
    metrics = trainer.callback_metrics
    steps = int(metrics["global_step"]) if "global_step" in metrics else total
    final_loss = float(metrics["final_loss"]) if "final_loss" in metrics else None

    model = module.model.to(device)
    ppl_after = perplexity(model, eval_batches, device, amp_dtype)
    model.cpu().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    result = {
        "path": str(out_dir), "base_path": str(backbone_path),
        "perplexity_before": ppl_before, "perplexity_after": ppl_after,
        "train_texts": len(train), "holdout_texts": len(held), "train_blocks": len(train_blocks),
        "holdout_blocks": len(held_blocks), "steps": steps, "seconds": round(seconds, 2),
        "final_loss": final_loss, "mlm_trained": True, "resumed_from": resume, "notes": notes,
    }
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # optimizer state: several times the weights
    say(f"mlm: perplexity {ppl_before:.2f} -> {ppl_after:.2f} in {steps} steps")
    return result
