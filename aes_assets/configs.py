"""Launchpad (run config) classes: one per configuration section, shaped by the profile.

Each class has the section's fields, typed ``T | None`` and defaulting to the active
profile's value, so the launchpad shows the values a run will use. A value set in a run
always wins (also one equal to a built-in default); ``None`` means "the profile's value".
``PipelineSettings.resolve`` merges them into the one frozen configuration of the run.
"""

from __future__ import annotations

import functools

import dagster as dg
import pydantic

from aes_core import config as c

SECTIONS: dict[str, type[c.Section]] = {
    "data": c.DataSection, "folds": c.FoldSection, "mlm": c.MlmSection,
    "train": c.TrainSection, "gbdt": c.GbdtSection, "ensemble": c.EnsembleSection,
    "export": c.ExportSection, "serving": c.ServingSection, "flags": c.FlagsSection,
}


@functools.cache
def _run_config_class(section: str, profile_json: str) -> type[dg.Config]:
    cls = SECTIONS[section]
    values = getattr(c.AesConfig.model_validate_json(profile_json), section)
    fields = {
        name: (c.run_field_type(info.annotation) | None,
               pydantic.Field(default=getattr(values, name), description=info.description))
        for name, info in cls.model_fields.items()
    }
    name = f"{section.title()}RunConfig"
    return pydantic.create_model(name, __base__=dg.Config, __doc__=cls.__doc__, **fields)


def run_config(cfg: c.AesConfig, section: str) -> type[dg.Config]:
    """The launchpad class of ``section`` with ``cfg``'s values as defaults."""
    return _run_config_class(section, cfg.model_dump_json())
