"""The ordinal loss (train.loss: ordinal): one score per essay against five learned
thresholds, trained on P(score > k), served as the expected score through every path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aes_core.config import TrainSection
from aes_core.models.backbone import load_tokenizer
from aes_core.models.regressor import (
    EssayRegressor,
    RegressorSpec,
    collapse_cumulative,
    cumulative_targets,
    logits_to_scores,
)
from aes_core.models.tokens import encode_batch
from aes_core.serving.onnx_scorer import logits_to_scores_np
from aes_core.training.module import compute_loss, param_groups

TEXTS = ["A short essay about cars.", "Venus is hot.\n\nIt is far away and hard to study.",
         "Students should " + "think about driverless cars " * 6]


def test_cumulative_targets_encode_soft_scores():
    t = torch.tensor([0.0, 1.0, 0.5, 0.3])  # scores 1, 6, 3.5 (stage-2 soft), 2.5
    y = cumulative_targets(t)
    want = [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0.5, 0, 0], [1, 0.5, 0, 0, 0]]
    assert torch.allclose(y, torch.tensor(want, dtype=torch.float32), atol=1e-6)
    assert torch.allclose(y.sum(-1), 5 * t)


def test_collapsed_logit_reads_as_the_expected_score_everywhere():
    cum = torch.tensor([[3.0, 1.0, 0.0, -1.0, -3.0], [-9.0] * 5, [9.0] * 5])
    expected = 1 + torch.sigmoid(cum).sum(-1)
    out = collapse_cumulative(cum)
    assert torch.allclose(logits_to_scores(out, "ordinal"), expected, atol=1e-4)
    assert np.allclose(logits_to_scores_np(out.numpy(), "ordinal"), expected.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="cumulative logits"):
        compute_loss(torch.zeros(3), torch.zeros(3), "ordinal")
    # perfect cumulative logits give a small loss, inverted ones a large one
    t = torch.tensor([0.4])  # score 3: P(>1) = P(>2) = 1, the rest 0
    good = torch.tensor([[9.0, 9.0, -9.0, -9.0, -9.0]])
    assert compute_loss(good, t, "ordinal") < 1e-3 < compute_loss(-good, t, "ordinal")


@pytest.fixture(scope="module")
def ordinal_model(tiny_backbone):
    spec = RegressorSpec(head="mean", loss="ordinal", max_length=32, backbone_name="tiny")
    torch.manual_seed(0)
    return EssayRegressor.from_backbone(tiny_backbone, spec).eval()


def test_ordinal_model_outputs_saves_and_exports(ordinal_model, tiny_backbone, tmp_path):
    import onnxruntime as ort

    from aes_core.export.onnx import ONNX_FILE, export_onnx

    tok = load_tokenizer(tiny_backbone)
    batch = encode_batch(tok, TEXTS, ordinal_model.spec)
    ids, mask = (torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask))
    with torch.no_grad():
        out = ordinal_model(ids, mask)
        cum = ordinal_model.cumulative_logits(ids, mask)
    assert cum.shape == (3, 5) and out.shape == (3,)
    assert torch.allclose(out, collapse_cumulative(cum), atol=1e-6)
    # the thresholds are head parameters: trained at the head's learning rate, no decay
    groups = param_groups(ordinal_model, TrainSection(lr=1e-4, head_lr=1e-2))
    by_id = {id(p): g for g in groups for p in g["params"]}
    bias = ordinal_model.head.ordinal_bias
    assert by_id[id(bias)]["lr"] == 1e-2 and by_id[id(bias)]["weight_decay"] == 0.0
    # saved and loaded with the thresholds; exported to ONNX with the same output
    folder = ordinal_model.save_pretrained(tmp_path / "m", tok)
    again = EssayRegressor.from_pretrained(folder)
    assert torch.equal(again.head.ordinal_bias, bias.detach())
    with torch.no_grad():
        assert torch.allclose(again(ids, mask), out, atol=1e-6)
    export_onnx(folder, folder)
    sess = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    assert np.allclose(got[0].reshape(-1), out.numpy(), atol=1e-4)


def test_only_an_ordinal_model_has_cumulative_logits(tiny_backbone, ordinal_model):
    bce = EssayRegressor.from_backbone(tiny_backbone,
                                       ordinal_model.spec.model_copy(update={"loss": "bce"}))
    assert not hasattr(bce.head, "ordinal_bias")
    ids = torch.ones((1, 4), dtype=torch.long)
    with pytest.raises(ValueError, match="needs loss 'ordinal'"):
        bce.cumulative_logits(ids, torch.ones_like(ids))
