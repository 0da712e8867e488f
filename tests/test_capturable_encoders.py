"""The fold models of every supported encoder family must be capturable as CUDA graphs. A
capture fails when a forward copies a CPU tensor to the device: MPNet did in transformers 5.17
(its relative-position buckets were built on the CPU), and the ensemble then scored its fold
models eagerly, about 4x slower per essay on an H200. CI has no GPU, so this runs each forward
on the ``meta`` device as a capture would see it (transformers told a capture is under way)
and records every operation that moves a CPU tensor to that device."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from aes_core.models.regressor import EssayRegressor
from aes_core.models.spec import RegressorSpec
from aes_core.models.tiny import ENCODER_FAMILIES, random_encoder
from aes_core.serving.cuda_graphs import capture_hint

HEADS = ["mean", "attention", "lstm", "weighted_layers"]


class CpuCopies(TorchDispatchMode):
    """Records the operations that take a CPU tensor and produce a ``meta`` one."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)]
        outs = out if isinstance(out, (tuple, list)) else [out]
        if any(a.device.type == "cpu" and a.dim() > 0 for a in ins) and any(
                isinstance(o, torch.Tensor) and o.device.type == "meta" for o in outs):
            self.copies.append(str(func))
        return out


def cpu_copies(model: torch.nn.Module, monkeypatch) -> list[str]:
    import transformers.utils.import_utils as iu

    monkeypatch.setattr(iu, "is_cuda_stream_capturing", lambda: True)  # as under a capture
    model = model.eval().to("meta")
    ids = torch.ones((2, 16), dtype=torch.long, device="meta")
    spy = CpuCopies()
    with torch.inference_mode(), spy:
        model(ids, torch.ones_like(ids))
    return spy.copies


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", sorted(ENCODER_FAMILIES))
def test_fold_models_copy_no_cpu_tensor_in_their_forward(family, head, monkeypatch):
    model = EssayRegressor(random_encoder(family), RegressorSpec(head=head, backbone_name=family))
    assert cpu_copies(model, monkeypatch) == []


def test_a_forward_that_copies_a_cpu_tensor_is_caught(monkeypatch):
    """The check fails on the pattern that broke MPNet's captures."""

    class Buckets(torch.nn.Module):
        def forward(self, ids, mask):
            return ids + torch.arange(ids.shape[1]).to(ids.device)

    assert cpu_copies(Buckets(), monkeypatch) != []


def test_a_known_capture_failure_gets_a_hint():
    error = ("RuntimeError: Cannot copy between CPU and CUDA tensors during CUDA graph capture "
             "unless the CPU tensor is pinned.")
    assert "transformers" in capture_hint(error)
    assert capture_hint("RuntimeError: capturing stream has unjoined work") == ""


def test_the_scorer_logs_the_hint(tmp_path, tiny_backbone, caplog, monkeypatch):
    import aes_core.serving.torch_scorer as ts
    from tests.gpu_serving_support import build_tiny_bundle

    def broken(*a, **k):
        raise RuntimeError("Cannot copy between CPU and CUDA tensors during CUDA graph capture "
                           "unless the CPU tensor is pinned.")

    b = build_tiny_bundle(tmp_path, tiny_backbone, ["mean"], gbdt=False)
    monkeypatch.setattr(ts, "GroupGraphs", broken)
    scorer = ts.TorchScorer(b.ensemble, b.member_dirs(), device="cpu", dtype="fp32")
    with caplog.at_level(logging.WARNING, logger=ts.__name__):
        scorer.capture_graphs(max_batch=2, bucket=32)
    assert not scorer.graphed
    assert "pip show transformers" in caplog.text
