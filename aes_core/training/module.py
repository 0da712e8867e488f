"""The Lightning module around an EssayRegressor: loss, optimizer groups, schedule, val QWK."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aes_core.config import TrainSection
from aes_core.metrics import qwk
from aes_core.models.backbone import use_cudnn_attention
from aes_core.models.regressor import (
    ORDINAL,
    EssayRegressor,
    collapse_cumulative,
    cumulative_targets,
    logits_to_scores,
)
from aes_core.models.tokens import WINDOW_WEIGHTS

NO_DECAY = re.compile(r"(bias|norm|LayerNorm|layernorm|layer_norm)", re.IGNORECASE)
LAYER_INDEX = re.compile(r"\.(?:layer|layers)\.(\d+)\.")


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """BCE-with-logits, MSE or SmoothL1 on targets in [0, 1] ((score - 1) / 5); ``ordinal``:
    BCE-with-logits of [B, 5] cumulative logits on ``cumulative_targets``."""
    logits, targets = logits.float(), targets.float()
    if loss == ORDINAL:
        if logits.dim() != 2:
            raise ValueError("loss 'ordinal' takes the [B, 5] cumulative logits "
                             "(EssayRegressor.cumulative_logits)")
        return F.binary_cross_entropy_with_logits(logits, cumulative_targets(targets))
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if loss == "mse":
        return F.mse_loss(logits, targets)
    if loss == "smooth_l1":
        return F.smooth_l1_loss(logits, targets, beta=0.1)
    raise ValueError(f"train.loss: unknown loss {loss!r}; use bce, mse, smooth_l1 or ordinal")


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a HF encoder (BERT, DeBERTa, MPNet, RoBERTa...)."""
    best: nn.ModuleList | None = None
    for name, mod in encoder.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in ("layer", "layers"):
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise ValueError(f"{type(encoder).__name__}: no transformer layer list found")
    return best


def prepare_encoder(model: EssayRegressor, cfg: TrainSection) -> dict[str, int]:
    """Freeze embeddings / first N layers / pooler, re-init top layers, gradient checkpointing.

    Returns counts (trainable and frozen parameters) for logging.
    """
    enc = model.encoder
    layers = encoder_layers(enc)
    if cfg.freeze_layers > len(layers):
        raise ValueError(f"train.freeze_layers={cfg.freeze_layers} but the backbone has "
                         f"{len(layers)} layers")
    if cfg.reinit_top_layers > len(layers):
        raise ValueError(f"train.reinit_top_layers={cfg.reinit_top_layers} but the backbone has "
                         f"{len(layers)} layers")
    if cfg.freeze_embeddings:
        for p in enc.get_input_embeddings().parameters():
            p.requires_grad_(False)
        for name, mod in enc.named_children():
            if "embed" in name:
                for p in mod.parameters():
                    p.requires_grad_(False)
    for layer in list(layers)[:cfg.freeze_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)
    for name, p in enc.named_parameters():  # BERT's pooler never reaches our heads
        if name.startswith("pooler."):
            p.requires_grad_(False)
    if cfg.reinit_top_layers:
        std = getattr(enc.config, "initializer_range", 0.02)
        for layer in list(layers)[-cfg.reinit_top_layers:]:
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
    if cfg.gradient_checkpointing:
        enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable_params": trainable, "frozen_params": frozen, "encoder_layers": len(layers)}


def param_groups(model: EssayRegressor, cfg: TrainSection) -> list[dict]:
    """AdamW groups: no decay on biases/norms; head at head_lr; optional layer-wise LR decay."""
    n_layers = len(encoder_layers(model.encoder))
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if (NO_DECAY.search(name) or p.ndim < 2) else cfg.weight_decay
        if name.startswith("head."):
            lr = cfg.head_lr
        else:
            m = LAYER_INDEX.search(name)
            # depth 0 = top layer; embeddings are one below the bottom layer
            depth = (n_layers - 1 - int(m.group(1))) if m else (n_layers if "embed" in name else 0)
            lr = cfg.lr * (cfg.layerwise_lr_decay ** depth)
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def optimizer_impl(model: nn.Module, cfg: TrainSection) -> dict[str, bool]:
    """AdamW's implementation: fused where every trainable parameter is on CUDA,
    ``train.fused_optimizer`` is on and gradients are not clipped (Lightning refuses to clip
    for an optimizer that unscales gradients itself); PyTorch's default (foreach) otherwise."""
    params = [p for p in model.parameters() if p.requires_grad]
    if (cfg.fused_optimizer and not cfg.gradient_clip_val and params
            and all(p.is_cuda for p in params)):
        return {"fused": True}
    return {}


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Linear or cosine decay after a linear warmup, as a per-step multiplier."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


class RegressorModule(pl.LightningModule):
    """Trains one EssayRegressor; logs ``train_loss``, ``val_loss`` and ``val_qwk`` per epoch."""

    def __init__(self, model: EssayRegressor, cfg: TrainSection):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.loss_name = model.spec.loss
        self._val_logits: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    def setup(self, stage: str) -> None:
        """In every process that trains (each DDP rank too): the SDPA kernels it may use."""
        use_cudnn_attention(self.cfg.cudnn_attention)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                window_weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, attention_mask, window_weights)

    def _loss_and_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and one logit per essay (chunked batches pool their windows with
        ``window_weights``); an ordinal model's loss reads its cumulative logits."""
        args = (batch["input_ids"], batch["attention_mask"], batch.get(WINDOW_WEIGHTS))
        if self.loss_name == ORDINAL:
            cumulative = self.model.cumulative_logits(*args)
            return (compute_loss(cumulative, batch["target"], ORDINAL),
                    collapse_cumulative(cumulative))
        logits = self(*args)
        return compute_loss(logits, batch["target"], self.loss_name), logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_logits(batch)
        bs = batch["target"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True,
                 on_epoch=False, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, logits = self._loss_and_logits(batch)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True,
                 batch_size=batch["target"].shape[0])
        self._val_logits.append(logits.detach().float())
        self._val_targets.append(batch["target"].detach().float())

    def on_validation_epoch_end(self) -> None:
        if not self._val_logits:
            return
        logits = torch.cat(self._val_logits)
        targets = torch.cat(self._val_targets)
        self._val_logits.clear()
        self._val_targets.clear()
        if self.trainer.world_size > 1:
            # EvalShardSampler: essay i on rank i % world, equal shards padded with repeats;
            # the gathered [world, shard] read column by column is the dataset order
            n = len(self.trainer.val_dataloaders.dataset)
            logits = self.all_gather(logits).T.reshape(-1)[:n]
            targets = self.all_gather(targets).T.reshape(-1)[:n]
        scores = logits_to_scores(logits, self.loss_name).cpu().numpy()
        true = np.rint(targets.cpu().numpy() * 5.0 + 1.0).astype(int)
        self.log("val_qwk", qwk(true, scores), prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(param_groups(self.model, self.cfg), lr=self.cfg.lr,
                                **optimizer_impl(self.model, self.cfg))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.cfg.warmup_ratio * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg.scheduler, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
