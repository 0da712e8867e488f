"""Backbone + head -> one logit per essay; a pure function of its spec and weights.

A saved regressor is a self-contained folder::

    aes_model.json       RegressorSpec (head, head config, loss, max_length, chunking, ...)
    backbone/            HF config + tokenizer files (no weights)
    model.safetensors    the full state dict (backbone + head)
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aes_core.logs import explain_loading, quiet_libraries
from aes_core.models.heads import build_head
from aes_core.models.spec import (  # noqa: F401  (re-exported)
    BACKBONE_DIR,
    SPEC_FILE,
    WEIGHTS_FILE,
    RegressorSpec,
    load_spec,
)


def encoder_overrides(num_layers: int | None) -> dict:
    """``from_pretrained`` keyword arguments that truncate an encoder to its first N layers."""
    return {} if num_layers is None else {"num_hidden_layers": num_layers}


ORDINAL = "ordinal"
SIGMOID_LOSSES = ("bce", ORDINAL)  # their output is a logit of (score - 1) / 5
N_THRESHOLDS = 5  # between the six scores
EPS = 1e-6


def logits_to_scores(logits: torch.Tensor | float, loss: str):
    """Map model output to the 1..6 score scale (targets are (score - 1) / 5); an unbounded
    regression output (mse, smooth_l1) is clipped to the scale."""
    if loss in SIGMOID_LOSSES:
        x = torch.sigmoid(logits)
    elif isinstance(logits, torch.Tensor):
        x = logits.clamp(0.0, 1.0)
    else:
        x = min(max(float(logits), 0.0), 1.0)
    return 1.0 + 5.0 * x


def scores_to_targets(scores: torch.Tensor) -> torch.Tensor:
    return (scores.float() - 1.0) / 5.0


def collapse_cumulative(cumulative: torch.Tensor) -> torch.Tensor:
    """[B, 5] logits of P(score > k + 1) -> [B] logit of the expected (score - 1) / 5, so an
    ordinal model's output reads like a BCE model's everywhere downstream (1 + 5 sigmoid(out)
    = 1 + sum_k P(score > k + 1))."""
    p = torch.sigmoid(cumulative.float()).mean(dim=-1).clamp(EPS, 1.0 - EPS)
    return torch.log(p) - torch.log(1.0 - p)  # (log1p has no ONNX operator)


def cumulative_targets(targets: torch.Tensor) -> torch.Tensor:
    """[B] targets (score - 1) / 5, possibly soft (stage 2) -> [B, 5] targets of P(score > k
    + 1): 1 below the score, 0 above, the fraction in between; they sum to 5 x target."""
    levels = 5.0 * targets.float().unsqueeze(-1)
    k = torch.arange(N_THRESHOLDS, device=targets.device, dtype=levels.dtype)
    return (levels - k).clamp(0.0, 1.0)


CAPTURE_FLAG = "_output_capturing_hooks_installed"  # transformers 5.x, set with the hooks


def _reregister_output_capturing(model: nn.Module) -> None:
    """Unpickled HF models (DDP spawn workers) miss transformers' per-class output-capturing
    registry, which ``PreTrainedModel.__init__`` fills: without it ``hidden_states`` is None.
    The registry is a plain dict keyed by the class name up to transformers 5.2x and a dict
    subclass keyed by the model (its class name inside) after; both are filled here."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # older transformers: nothing to do
        return
    from transformers import PreTrainedModel

    for m in model.modules():
        if isinstance(m, PreTrainedModel) and getattr(m, "_can_record_outputs", None):
            key = str(m.__class__) if type(_CAN_RECORD_REGISTRY) is dict else m
            _CAN_RECORD_REGISTRY[key] = m._can_record_outputs


def _drop_output_capturing(model: nn.Module) -> None:
    """Remove the hooks transformers installs on a model's first forward to collect
    ``hidden_states``: they are closures, which cannot be pickled (DDP spawn pickles the model,
    e.g. for stage 2 after stage 1's predictions). The next forward installs them again."""
    from transformers import PreTrainedModel

    for m in model.modules():
        for hid, fn in list(m._forward_hooks.items()):
            if "output_capturing_hook" in getattr(fn, "__qualname__", ""):
                del m._forward_hooks[hid]
                m._forward_hooks_with_kwargs.pop(hid, None)
                m._forward_hooks_always_called.pop(hid, None)
        if isinstance(m, PreTrainedModel) and getattr(m, CAPTURE_FLAG, False):
            setattr(m, CAPTURE_FLAG, False)


class EssayRegressor(nn.Module):
    def __init__(self, encoder: nn.Module, spec: RegressorSpec):
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.head = build_head(spec.head, encoder.config.hidden_size, spec.heads_cfg)
        if spec.loss == ORDINAL:  # thresholds between the scores, trained at the head's rate
            self.head.ordinal_bias = nn.Parameter(torch.linspace(-2.0, 2.0, N_THRESHOLDS))

    @classmethod
    def from_backbone(cls, backbone_path: str | Path, spec: RegressorSpec,
                      vocab_size: int | None = None,
                      num_layers: int | None = None) -> EssayRegressor:
        """Start from pretrained encoder weights in a local HF folder.

        ``num_layers`` keeps only the first N encoder layers (the saved config records it).
        """
        from transformers import AutoModel

        quiet_libraries()
        enc, info = AutoModel.from_pretrained(str(backbone_path), local_files_only=True,
                                              output_loading_info=True,
                                              **encoder_overrides(num_layers))
        explain_loading(enc, info, str(backbone_path))
        if vocab_size and vocab_size != enc.get_input_embeddings().num_embeddings:
            enc.resize_token_embeddings(vocab_size)
        return cls(enc, spec)

    def __getstate__(self) -> dict:
        _drop_output_capturing(self)
        return super().__getstate__()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        _reregister_output_capturing(self)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                window_weights: torch.Tensor | None = None) -> torch.Tensor:
        """[W, T] windows -> [B] logits; ``window_weights`` [B, W] pools windows per essay
        (chunked models, see ``aes_core.models.tokens``); without it one window = one essay.
        An ordinal model returns its cumulative logits collapsed (``collapse_cumulative``)."""
        if self.spec.loss == ORDINAL:
            return collapse_cumulative(self.cumulative_logits(input_ids, attention_mask,
                                                              window_weights))
        return self._head_logits(input_ids, attention_mask, window_weights)

    def cumulative_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          window_weights: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 5] logits of P(score > k + 1) of an ordinal model (``loss: ordinal``): one score
        per essay against five learned thresholds (cumulative link, as in CORAL)."""
        if self.spec.loss != ORDINAL:
            raise ValueError(f"cumulative_logits needs loss 'ordinal', not {self.spec.loss!r}")
        f = self._head_logits(input_ids, attention_mask, window_weights)
        return f.float().unsqueeze(-1) - self.head.ordinal_bias.float()

    def _head_logits(self, input_ids, attention_mask, window_weights):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=True, return_dict=True)
        return self.head(out.hidden_states, attention_mask, window_weights)

    def save_pretrained(self, folder: str | Path, tokenizer=None) -> Path:
        folder = Path(folder)
        (folder / BACKBONE_DIR).mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(folder / BACKBONE_DIR)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder / BACKBONE_DIR)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        (folder / SPEC_FILE).write_text(self.spec.model_dump_json(indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str = "cpu") -> EssayRegressor:
        from transformers import AutoConfig, AutoModel

        folder = Path(folder)
        spec = load_spec(folder)  # FileNotFoundError when the folder holds no spec
        enc_cfg = AutoConfig.from_pretrained(str(folder / BACKBONE_DIR), local_files_only=True)
        model = cls(AutoModel.from_config(enc_cfg), spec)
        state = load_file(str(folder / WEIGHTS_FILE), device=map_location)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # tied/buffer keys (e.g. position_ids) may legitimately be absent
        real_missing = [k for k in missing if not k.endswith("position_ids")]
        if real_missing or unexpected:
            raise RuntimeError(f"{folder}: weights do not match the spec: missing={real_missing} "
                               f"unexpected={unexpected}")
        return model.eval()


def load_regressor_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(folder) / BACKBONE_DIR), local_files_only=True)
