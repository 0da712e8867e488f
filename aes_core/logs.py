"""Library log noise, filtered once (placeholder until the shared version lands)."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries(verbose: bool = False) -> None:
    if verbose:
        return
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
