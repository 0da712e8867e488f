"""Jobs: the whole graph in one run, and the three stages as separate jobs for the UI."""

from __future__ import annotations

import dagster as dg

from aes_core.config import AesConfig

PIPELINE_JOB = "pipeline"
DEFINITIONS_MODULE = "aes_assets.definitions"  # imported once by a forkserver, not per step


def executor_config(cfg: AesConfig) -> dict:
    """Run config selecting the profile's executor (``run.executor``)."""
    if cfg.run.executor == "multiprocess":
        return {"execution": {"config": {"multiprocess": {
            "max_concurrent": cfg.run.max_concurrent,
            "start_method": _start_method(cfg)}}}}
    return {"execution": {"config": {"in_process": {}}}}


def _start_method(cfg: AesConfig) -> dict:
    if cfg.run.start_method == "forkserver":
        return {"forkserver": {"preload_modules": [DEFINITIONS_MODULE]}}
    return {"spawn": {}}


def build_jobs(cfg: AesConfig, assets: list) -> list:
    fold_head = dg.AssetSelection.assets(*[
        a for a in assets if isinstance(a, dg.AssetsDefinition) and a.partitions_def is not None
        and any(k.path[-1] == "fold_head_checkpoints" for k in a.keys)])
    partitioned = dg.AssetSelection.assets(*[
        a for a in assets if isinstance(a, dg.AssetsDefinition) and a.partitions_def is not None])
    before = fold_head.upstream(include_self=False)
    return [
        dg.define_asset_job(
            PIPELINE_JOB, selection=dg.AssetSelection.all(),
            executor_def=dg.multi_or_in_process_executor,
            config=executor_config(cfg),
            description="The whole graph in one run: fold x head partitions train in one step "
                        "over the GPU worker slots (a single-run backfill of every partition); "
                        "with the multiprocess executor the GBDT member trains beside them."),
        dg.define_asset_job(
            "prepare", selection=before,
            description="Data, folds and MLM backbones: everything the fold x head runs read."),
        dg.define_asset_job(
            "train_fold_heads", selection=partitioned,
            description="Fold x head training and export: launch a backfill over the "
                        "partitions you want (one run, spread over the GPU worker slots)."),
        dg.define_asset_job(
            "ensemble_and_serve", selection=dg.AssetSelection.all() - partitioned - before,
            description="OOF table, GBDT, ensemble, report, bundle, Triton repo, submission."),
    ]
