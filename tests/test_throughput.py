"""The training-throughput callback counts training batches only: no warm-up batches, no
validation, no checkpointing (a real Lightning fit on the CPU)."""

from __future__ import annotations

import json
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from aes_core.training.stages import Throughput

VAL_SLEEP_S = 0.4


class Batches(torch.utils.data.Dataset):
    """Batch i has i + 1 real tokens per row, so skipped batches are visible in the count."""

    def __init__(self, n: int, width: int = 8):
        self.n, self.width = n, width

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        mask = torch.zeros(2, self.width, dtype=torch.long)
        mask[:, : i + 1] = 1
        return {"x": torch.randn(2, self.width), "attention_mask": mask}


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch["x"]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        time.sleep(VAL_SLEEP_S)  # a slow validation must not lower the training rate

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, epochs: int, skip: int) -> dict:
    path = tmp_path / "throughput.json"
    loader = DataLoader(Batches(5), batch_size=None)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[Throughput(path, skip_batches=skip)])
    trainer.fit(Tiny(), loader, DataLoader(Batches(1), batch_size=None))
    return json.loads(path.read_text())


def test_throughput_leaves_out_warm_up_and_validation(tmp_path):
    got = _fit(tmp_path, epochs=2, skip=2)
    # epoch 1 counts batches 2..4 (3+4+5 tokens x 2 rows), epoch 2 all five (1..5 x 2)
    assert got["tokens"] == 2 * (3 + 4 + 5) + 2 * (1 + 2 + 3 + 4 + 5)
    assert got["skipped_batches"] == 2 and got["world_size"] == 1
    assert got["seconds"] < VAL_SLEEP_S  # two validations (0.8 s) are not in the clock
    assert got["tokens_per_s"] == got["tokens"] / got["seconds"]


def test_short_fit_still_measures_its_last_batch(tmp_path):
    got = _fit(tmp_path, epochs=1, skip=50)
    assert got["skipped_batches"] == 4 and got["tokens"] == 2 * 5
