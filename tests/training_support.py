"""Lightning callbacks the resume tests share."""

import lightning.pytorch as pl


class Interrupt(pl.Callback):
    """Raises once training reaches ``at_step`` (a real crash mid-run)."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.at_step:
            raise RuntimeError("simulated crash")
