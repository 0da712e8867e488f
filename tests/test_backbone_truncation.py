"""``backbones[].num_layers`` keeps only the first N encoder layers, end to end."""

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from aes_core.config import MlmSection
from aes_core.mlm import run_mlm
from aes_core.models.regressor import EssayRegressor, RegressorSpec
from tests.conftest import records_of


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
def test_mlm_saves_a_truncated_encoder(tiny_backbone, tmp_path, sample_dir, caplog):
    import pandas as pd

    texts = pd.read_csv(sample_dir / "unlabelled_essays.csv.gz")["full_text"].head(12).tolist()
    cfg = MlmSection(block_size=32, max_texts=12, batch_size=8, epochs=0.2)
    src = shutil.copytree(tiny_backbone, tmp_path / "bb")  # a new source: explained afresh
    with caplog.at_level(logging.INFO, logger="aes_core.logs"):
        res = run_mlm(src, tmp_path / "mlm", texts, cfg, progress=False, num_layers=1)
    # the sentence-embedding checkpoint has no MLM head: one INFO line, no warning
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "aes_core.logs"]
    assert [lvl for lvl, _ in said] == [logging.INFO, logging.INFO]
    assert "using the first 1 encoder layers" in said[0][1]
    assert said[1][1].startswith(f"{src}: no BertForMaskedLM head in the checkpoint (6 weights "
                                 f"under cls)")
    reg = EssayRegressor.from_backbone(res["path"], RegressorSpec(head="mean"))
    assert _n_layers(reg) == 1


def test_truncation_is_explained_once_instead_of_the_load_report(tiny_backbone, tmp_path, caplog):
    src = shutil.copytree(tiny_backbone, tmp_path / "bb")  # a new source: explained afresh
    with records_of("transformers.modeling_utils") as hf, caplog.at_level(logging.INFO):
        EssayRegressor.from_backbone(src, RegressorSpec(head="mean"), num_layers=1)
        EssayRegressor.from_backbone(src, RegressorSpec(head="mean"), num_layers=1)
    ours = [r for r in caplog.records if r.name == "aes_core.logs"]
    assert [(r.levelno, r.getMessage()) for r in ours] == [
        (logging.INFO, f"{src}: using the first 1 encoder layers (backbones[].num_layers); "
                       f"the checkpoint's layers 1..1 are not loaded")]
    assert [r.getMessage() for r in hf] == []  # no LOAD REPORT table


def test_a_weight_missing_from_the_checkpoint_is_still_a_warning(tiny_backbone, tmp_path,
                                                                   caplog):
    src = shutil.copytree(tiny_backbone, tmp_path / "bb")
    weights = load_file(str(src / "model.safetensors"))
    key = "encoder.layer.0.output.dense.weight"
    del weights[key]
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.INFO, logger="aes_core.logs"):
        EssayRegressor.from_backbone(src, RegressorSpec(head="mean"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"{src}: 1 weight(s) missing from the checkpoint, newly initialised: {key}"]
