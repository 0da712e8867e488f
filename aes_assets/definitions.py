"""The Dagster ``Definitions`` of the aes pipeline, shaped by the active profile ($AES_PROFILE)."""

from __future__ import annotations

import dagster as dg

from aes_assets.assets import data, ensemble, serving
from aes_assets.assets.export import export_assets, serving_assets
from aes_assets.assets.training import training_assets
from aes_assets.checks import DATA_CHECKS
from aes_assets.resources import build_resources
from aes_assets.schedules import (
    build_new_ensemble_sensor,
    build_rescore_schedule,
    rescore_inbox_history_job,
)
from aes_assets.sensors import build_inbox_sensor, score_inbox_file_job
from aes_core.config import load_config
from aes_resources.settings import active_profile


def build_definitions(profile: str | None = None) -> dg.Definitions:
    profile = profile or active_profile()
    cfg = load_config(profile)
    assets = dg.load_assets_from_modules([data, ensemble])
    assets = [*assets, *training_assets(cfg)]  # per-backbone factory + oof_predictions
    assets = [*assets, *ensemble.missing_upstream_specs(assets)]
    for bb in cfg.backbones:  # serving stage: per-backbone ONNX export, then repo + submission
        assets += export_assets(cfg, bb.name)
    assets += [*serving_assets(cfg), *dg.load_assets_from_modules([serving])]
    all_job = dg.define_asset_job("aes_pipeline", selection=dg.AssetSelection.all(),
                                  description="Every asset of the pipeline, data to submission.")
    return dg.Definitions(
        assets=assets,
        asset_checks=[*DATA_CHECKS, *ensemble.ENSEMBLE_CHECKS],
        jobs=[all_job, score_inbox_file_job, rescore_inbox_history_job],
        sensors=[build_inbox_sensor(cfg), build_new_ensemble_sensor(cfg)],
        schedules=[build_rescore_schedule(cfg)],
        resources=build_resources(cfg, profile),
    )


defs = build_definitions()
