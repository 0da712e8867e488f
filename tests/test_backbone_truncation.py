"""``backbones[].num_layers`` keeps only the first N encoder layers, end to end."""

import pytest
import torch

from aes_core.config import MlmSection
from aes_core.mlm import run_mlm
from aes_core.models.regressor import EssayRegressor, RegressorSpec


def _n_layers(model: EssayRegressor) -> int:
    return model.encoder.config.num_hidden_layers


def test_truncated_regressor_keeps_first_layers_and_round_trips(tiny_backbone, tmp_path):
    full = EssayRegressor.from_backbone(tiny_backbone, RegressorSpec(head="mean"))
    cut = EssayRegressor.from_backbone(tiny_backbone, RegressorSpec(head="mean"), num_layers=1)
    assert _n_layers(full) == 2 and _n_layers(cut) == 1
    assert len(cut.encoder.encoder.layer) == 1
    # the kept layer carries the pretrained weights of layer 0, not a fresh init
    a = full.encoder.encoder.layer[0].attention.self.query.weight
    b = cut.encoder.encoder.layer[0].attention.self.query.weight
    assert torch.equal(a, b)
    cut.save_pretrained(tmp_path / "m")
    again = EssayRegressor.from_pretrained(tmp_path / "m")
    assert _n_layers(again) == 1
    ids = torch.randint(1000, 2000, (2, 12))
    mask = torch.ones_like(ids)
    assert torch.allclose(cut.eval()(ids, mask), again(ids, mask))


@pytest.mark.slow
def test_mlm_saves_a_truncated_encoder(tiny_backbone, tmp_path, sample_dir):
    import pandas as pd

    texts = pd.read_csv(sample_dir / "unlabelled_essays.csv.gz")["full_text"].head(12).tolist()
    cfg = MlmSection(block_size=32, max_texts=12, batch_size=8, epochs=0.2)
    res = run_mlm(tiny_backbone, tmp_path / "mlm", texts, cfg, progress=False, num_layers=1)
    reg = EssayRegressor.from_backbone(res["path"], RegressorSpec(head="mean"))
    assert _n_layers(reg) == 1
