"""The active pipeline profile as a resource."""

from __future__ import annotations

import os

import dagster as dg
import yaml

from aes_core.config import DEFAULT_PROFILE, PROFILE_ENV, AesConfig, load_config


def active_profile() -> str:
    return os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE


class PipelineSettings(dg.ConfigurableResource):
    """Which profile (name under profiles/ or a YAML path) and optional YAML overrides."""

    profile: str = DEFAULT_PROFILE
    overrides_yaml: str = ""

    def load(self) -> AesConfig:
        overrides = yaml.safe_load(self.overrides_yaml) if self.overrides_yaml else None
        return load_config(self.profile, overrides)
