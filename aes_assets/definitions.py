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
    fold_head = dg.AssetSelection.assets(*[a for a in assets if isinstance(
        a, dg.AssetsDefinition) and a.partitions_def is not None])
    stage_jobs = [
        dg.define_asset_job(
            "prepare", selection=fold_head.upstream(include_self=False),
            description="Data, folds and MLM backbones: everything the fold x head runs read."),
        dg.define_asset_job(
            "train_fold_heads", selection=fold_head,
            description="Every fold x head partition (training + ONNX export): launch a "
                        "backfill over the partitions you want."),
        dg.define_asset_job(
            "ensemble_and_serve", selection=dg.AssetSelection.all() - fold_head
            - fold_head.upstream(include_self=False),
            description="OOF table, GBDT, ensemble, report, TensorRT, Triton repo, submission."),
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=[*DATA_CHECKS, *ensemble.ENSEMBLE_CHECKS],
        jobs=[*stage_jobs, score_inbox_file_job, rescore_inbox_history_job],
        sensors=[build_inbox_sensor(cfg), build_new_ensemble_sensor(cfg)],
        schedules=[build_rescore_schedule(cfg)],
        resources=build_resources(cfg, profile),
    )


defs = build_definitions()
