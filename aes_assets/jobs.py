"""Jobs: the whole graph in one run, and the three stages as separate jobs for the UI."""

from __future__ import annotations

from collections.abc import Iterable

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
        return {"forkserver": {"preload_modules": [DEFINITIONS_MODULE,
                                                   *cfg.run.preload_modules]}}
    return {"spawn": {}}


def partition_groups(assets: list) -> list[list[dg.AssetsDefinition]]:
    """The partitioned assets, grouped by partitions definition: one group when every backbone
    trains the same heads, else one per set of heads (a Dagster asset job, and a run's
    partition range, covers one partitions definition)."""
    groups: dict[dg.PartitionsDefinition, list[dg.AssetsDefinition]] = {}
    for a in assets:
        if isinstance(a, dg.AssetsDefinition) and a.partitions_def is not None:
            groups.setdefault(a.partitions_def, []).append(a)
    return list(groups.values())


def group_job_name(job: str, backbones: Iterable[str]) -> str:
    """``pipeline_alpha_beta``: a job of the backbones that train one set of heads (``job``
    itself when every backbone trains the same heads: no backbones given)."""
    return "_".join([job, *sorted(set(backbones))])


def build_jobs(cfg: AesConfig, assets: list) -> list:
    """The UI's (and the driver's) jobs. When backbones train different heads, ``pipeline``
    and ``train_fold_heads`` are one job per set of heads (``pipeline_<backbones>``: the whole
    graph but the other backbones' fold x head assets)."""
    fold_head = dg.AssetSelection.assets(*[
        a for a in assets if isinstance(a, dg.AssetsDefinition) and a.partitions_def is not None
        and any(k.path[-1] == "fold_head_checkpoints" for k in a.keys)])
    groups = partition_groups(assets)
    partitioned = dg.AssetSelection.assets(*[a for g in groups for a in g])
    before = fold_head.upstream(include_self=False)
    pipeline, train = [], []
    for g in groups or [[]]:
        backbones = [k.path[0] for a in g for k in a.keys] if len(groups) > 1 else []
        others = dg.AssetSelection.assets(*[a for o in groups if o is not g for a in o])
        pipeline.append(dg.define_asset_job(
            group_job_name(PIPELINE_JOB, backbones), selection=dg.AssetSelection.all() - others,
            executor_def=dg.multi_or_in_process_executor,
            config=executor_config(cfg),
            description="The whole graph in one run: fold x head partitions train in one step "
                        "over the GPU worker slots (a single-run backfill of every partition); "
                        "with the multiprocess executor the GBDT member trains beside them."))
        train.append(dg.define_asset_job(
            group_job_name("train_fold_heads", backbones), selection=dg.AssetSelection.assets(*g),
            description="Fold x head training and export: launch a backfill over the "
                        "partitions you want (one run, spread over the GPU worker slots)."))
    return [
        *pipeline,
        dg.define_asset_job(
            "prepare", selection=before,
            description="Data, folds and MLM backbones: everything the fold x head runs read."),
        *train,
        dg.define_asset_job(
            "ensemble_and_serve", selection=dg.AssetSelection.all() - partitioned - before,
            description="OOF table, GBDT, ensemble, report, bundle, Triton repo, submission."),
    ]
