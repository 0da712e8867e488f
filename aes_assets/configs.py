"""Run-config classes: each is a section of the typed tree, exposed as a ``dg.Config``.

Values set in a run's config override the active profile (see ``apply_run_overrides``).
"""

from __future__ import annotations

import dagster as dg

from aes_core import config as c


class DataConfig(dg.Config, c.DataSection):
    """Input paths (CSV or gzip CSV)."""


class FoldsConfig(dg.Config, c.FoldSection):
    """Fold count, seeds and the flag rule."""


class MlmConfig(dg.Config, c.MlmSection):
    """Masked-LM continued pretraining."""


class TrainConfig(dg.Config, c.TrainSection):
    """Two-stage fine-tuning."""


class GbdtConfig(dg.Config, c.GbdtSection):
    """TF-IDF + LightGBM member."""


class EnsembleConfig(dg.Config, c.EnsembleSection):
    """Nelder-Mead blend."""


class ExportConfig(dg.Config, c.ExportSection):
    """ONNX / TensorRT export."""


class ServingConfig(dg.Config, c.ServingSection):
    """Triton repository and scoring."""


def effective(profile_section: c.Section, run_config: dg.Config):
    """The profile's section with this run's overrides applied."""
    return c.apply_run_overrides(profile_section, run_config)
