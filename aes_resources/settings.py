"""The resolved configuration as a resource: one frozen ``AesConfig`` per code location.

The definitions load the profile once; this resource carries that exact configuration (as
JSON) into every run and step process, so a run never re-reads a YAML that may have changed
since its partitions were defined. Launchpad values of an asset's own section are merged in
by :meth:`PipelineSettings.resolve` (a set value always wins, ``None`` = the profile's).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import dagster as dg
from pydantic import BaseModel

from aes_core.config import (
    DEFAULT_PROFILE,
    PROFILE_ENV,
    AesConfig,
    config_hash,
    load_config,
    resolve_section,
)


def active_profile() -> str:
    return os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE


@functools.lru_cache(maxsize=8)
def _parse(config_json: str) -> AesConfig:
    return AesConfig.model_validate_json(config_json)


class PipelineSettings(dg.ConfigurableResource):
    """The profile's resolved configuration (``config_json``; empty = load ``profile``)."""

    profile: str = DEFAULT_PROFILE
    config_json: str = ""

    @classmethod
    def from_config(cls, cfg: AesConfig) -> PipelineSettings:
        return cls(profile=cfg.profile, config_json=cfg.model_dump_json())

    @property
    def config(self) -> AesConfig:
        return _parse(self.config_json) if self.config_json else load_config(self.profile)

    def resolve(self, **sections: BaseModel | dict[str, Any] | None) -> AesConfig:
        """The configuration with this run's launchpad values for the named sections."""
        cfg = self.config
        if not sections:
            return cfg
        update = {name: resolve_section(getattr(cfg, name), values, f"run config ({name})")
                  for name, values in sections.items()}
        return cfg.model_copy(update=update)

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)
