"""Pooling heads over encoder hidden states. A new head is one registered class.

Every head maps (hidden_states: tuple of [W, T, H], attention_mask [W, T]) -> [B] logits in
three steps: ``pool`` each window to a vector [W, D], ``combine`` the windows of each essay
with ``window_weights`` [B, W] (chunked models; None: one window per essay, W = B), then the
output layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from aes_core.config import HeadSection

HEADS: dict[str, type[Head]] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    def deco(cls: type[Head]) -> type[Head]:
        if name in HEADS:
            raise ValueError(f"head {name!r} registered twice")
        cls.name = name
        HEADS[name] = cls
        return cls

    return deco


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1e-6)


class Head(nn.Module):
    """Base class: subclasses implement ``pool`` -> [W, D]; a linear layer gives the logit."""

    name: str = ""
    #: how many of the last hidden layers the head needs (1 = last only)
    needs_layers: int = 1

    def __init__(self, hidden: int, cfg: HeadSection):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(self.pooled_dim(hidden, cfg), 1)

    def pooled_dim(self, hidden: int, cfg: HeadSection) -> int:
        return hidden

    def pool(self, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def combine(pooled: torch.Tensor, window_weights: torch.Tensor | None) -> torch.Tensor:
        """[W, D] window vectors -> [B, D] essay vectors (weighted mean, in float32)."""
        if window_weights is None:
            return pooled
        mixed = (window_weights.float().unsqueeze(-1) * pooled.float().unsqueeze(0)).sum(1)
        return mixed.to(pooled.dtype)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor,
                window_weights: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.combine(self.pool(hidden_states, mask), window_weights)
        return self.out(self.dropout(pooled)).squeeze(-1)


@register_head("mean")
class MeanPoolingHead(Head):
    def pool(self, hidden_states, mask):
        return masked_mean(hidden_states[-1], mask)


@register_head("attention")
class AttentionPoolingHead(Head):
    def __init__(self, hidden: int, cfg: HeadSection):
        super().__init__(hidden, cfg)
        self.score = nn.Sequential(
            nn.Linear(hidden, cfg.attention_hidden), nn.Tanh(), nn.Linear(cfg.attention_hidden, 1)
        )

    def pool(self, hidden_states, mask):
        x = hidden_states[-1]
        w = self.score(x).squeeze(-1).float()
        w = w.masked_fill(mask == 0, torch.finfo(w.dtype).min)
        w = torch.softmax(w, dim=1).to(x.dtype)
        return (x * w.unsqueeze(-1)).sum(1)


@register_head("lstm")
class BiLstmHead(Head):
    def __init__(self, hidden: int, cfg: HeadSection):
        super().__init__(hidden, cfg)
        self.lstm = nn.LSTM(hidden, cfg.lstm_hidden, num_layers=cfg.lstm_layers,
                            batch_first=True, bidirectional=True)

    def pooled_dim(self, hidden, cfg):
        return 2 * cfg.lstm_hidden

    def pool(self, hidden_states, mask):
        x = hidden_states[-1]
        out, _ = self.lstm(x.float() * mask.unsqueeze(-1).float())
        return masked_mean(out, mask)


@register_head("weighted_layers")
class WeightedLayerPoolingHead(Head):
    def __init__(self, hidden: int, cfg: HeadSection):
        super().__init__(hidden, cfg)
        self.k = cfg.weighted_last_k
        self.needs_layers = self.k
        self.layer_weights = nn.Parameter(torch.zeros(self.k))

    def pool(self, hidden_states, mask):
        layers = torch.stack(hidden_states[-self.k:], dim=0)  # [k, B, T, H]
        w = torch.softmax(self.layer_weights, dim=0).to(layers.dtype)
        mixed = (w.view(-1, 1, 1, 1) * layers).sum(0)
        return masked_mean(mixed, mask)


def build_head(name: str, hidden: int, cfg: HeadSection) -> Head:
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; registered heads: {sorted(HEADS)}")
    return HEADS[name](hidden, cfg)
