"""Materialize the whole graph in ONE Dagster run on the persistent instance ($DAGSTER_HOME).

    python -m aes_assets.pipeline --profile cpu-small [--select 'raw_essays+'] [--verbose]

The run is the ``pipeline`` job with the profile's executor (``run.executor``): in-process on
a small machine, or multiprocess so that the GBDT member trains on the CPU beside the fold x
head step on the GPU. The fold x head assets are materialized as a single-run backfill of all
their partitions (range tags), which their step spreads over the GPU worker slots.

Assets whose code version (library code + the profile's config + input file stamps) and
inputs are unchanged since their last materialization are skipped (``run.skip_fresh``), and
the driver says which. It ends with a summary: QWKs, the best member, where the submission,
the report and its plots are, and how to open the UI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from pathlib import Path

import dagster as dg

from aes_assets.jobs import PIPELINE_JOB, group_job_name
from aes_core.config import PROFILE_ENV, PROJECT_ROOT, AesConfig, config_hash, load_config

RANGE_START, RANGE_END = ("dagster/asset_partition_range_start",
                          "dagster/asset_partition_range_end")
CALL_TAG = "aes/driver_call"  # the same on every run of one run_pipeline call


def _loading_context(instance: dg.DagsterInstance):
    from dagster._core.loader import LoadingContext

    class _Context(LoadingContext):
        def __init__(self, inst):
            self._instance, self._loaders = inst, {}

        @property
        def instance(self):
            return self._instance

        @property
        def loaders(self):
            return self._loaders

    return _Context(instance)


def stored_value_gone(instance: dg.DagsterInstance, key: dg.AssetKey,
                      partition: str | None) -> bool:
    """Whether the latest materialization stored a value (its metadata names the path) that
    is no longer there, e.g. after the storage folder was deleted but not the instance."""
    from aes_resources.storage import STORED_PATHS, stored_exists

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1).records
    if not records or records[0].asset_materialization is None:
        return False
    meta = records[0].asset_materialization.metadata
    path = getattr(meta.get("path"), "value", None)
    if path is None and partition is not None and STORED_PATHS in meta:
        path = (meta[STORED_PATHS].value or {}).get(partition)
    return path is not None and not stored_exists(path)


def plan(defs: dg.Definitions, instance: dg.DagsterInstance, select: str,
         skip_fresh: bool) -> tuple[list[dg.AssetKey], list[dg.AssetKey]]:
    """(assets to materialize, fresh assets skipped) for a selection.

    A partitioned asset runs when any of its partitions is missing or stale (its step reuses
    partitions that are complete for the identical spec); a fresh asset whose stored value is
    gone runs again too."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

    graph = defs.resolve_asset_graph()
    if select == "*":
        selected = set(graph.materializable_asset_keys)
    else:
        selected = set(dg.AssetSelection.from_string(select).resolve(graph))
    if not skip_fresh:
        return sorted(selected), []
    resolver = CachingStaleStatusResolver(instance, graph, _loading_context(instance))
    run, fresh = set(), set()
    for key in selected:
        node = graph.get(key)
        pks = node.partitions_def.get_partition_keys() if node.partitions_def else [None]
        statuses = {resolver.get_status(key, pk) for pk in pks}
        if statuses == {StaleStatus.FRESH} and any(
                stored_value_gone(instance, key, pk) for pk in pks):
            statuses = {StaleStatus.MISSING}
        (fresh if statuses == {StaleStatus.FRESH} else run).add(key)
    # anything downstream of an asset that runs runs too (its inputs change)
    todo = list(run)
    while todo:
        for child in graph.get(todo.pop()).child_keys:
            if child in selected and child not in run:
                run.add(child)
                todo.append(child)
    return sorted(run), sorted(selected - run)


def _range_tags(pdef: dg.PartitionsDefinition | None,
                partition_range: str | None = None) -> dict[str, str]:
    """Range tags covering every partition of ``pdef``, or ``first...last`` of a given range."""
    if pdef is None:
        return {}
    pks = pdef.get_partition_keys()
    if partition_range:
        first, _, last = partition_range.partition("...")
        last = last or first
        unknown = [k for k in (first, last) if k not in pks]
        if unknown:
            raise ValueError(f"unknown partition key(s) {unknown}; keys are {pks}")
        return {RANGE_START: first, RANGE_END: last}
    return {RANGE_START: pks[0], RANGE_END: pks[-1]}


def _ancestors(graph, keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
    out, todo = set(), list(keys)
    while todo:
        for parent in graph.get(todo.pop()).parent_keys:
            if parent not in out:
                out.add(parent)
                todo.append(parent)
    return out


def _reads(graph, keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
    """Every asset that materializing ``keys`` reads: their ancestors, and what their asset
    checks read besides them (a check may take another asset as an extra input)."""
    extra = {p for k in keys for ck in graph.get(k).check_keys
             for p in graph.get(ck).parent_entity_keys if isinstance(p, dg.AssetKey)} - keys
    return _ancestors(graph, keys | extra) | extra


def split_runs(defs: dg.Definitions, keys: list[dg.AssetKey], partition_range: str | None = None
               ) -> list[tuple[list[dg.AssetKey], dict[str, str], str]]:
    """(asset keys, partition range tags, job) of each run that materializes ``keys``.

    One run of ``pipeline`` when the selected partitioned assets share their fold x head
    partitions (every backbone trains the same heads). Otherwise one run per set of heads (a
    run's range covers one partitions definition), each of its ``pipeline_<backbones>`` job:
    the first also materializes what they read, the last what reads them (an asset whose
    check reads a trained asset counts as reading it)."""
    graph = defs.resolve_asset_graph()
    groups: dict[dg.PartitionsDefinition, list[dg.AssetKey]] = {}
    for k in keys:
        pdef = graph.get(k).partitions_def
        if pdef is not None:
            groups.setdefault(pdef, []).append(k)
    partitioned_all = [k for k in graph.materializable_asset_keys if graph.get(k).partitions_def]
    if len({graph.get(k).partitions_def for k in partitioned_all}) <= 1:
        return [(keys, _range_tags(next(iter(groups), None), partition_range), PIPELINE_JOB)]

    def job(pdef: dg.PartitionsDefinition) -> str:
        return group_job_name(PIPELINE_JOB, [
            k.path[0] for k in partitioned_all if graph.get(k).partitions_def == pdef])

    if not groups:  # nothing partitioned selected: any of the whole-graph jobs runs it
        return [(keys, {}, job(graph.get(partitioned_all[0]).partitions_def))]
    partitioned = {k for ks in groups.values() for k in ks}
    after = sorted(k for k in keys if k not in partitioned
                   and _reads(graph, {k}) & partitioned)
    before = [k for k in keys if k not in partitioned and k not in after]
    runs = [(ks, _range_tags(pdef, partition_range), job(pdef)) for pdef, ks in groups.items()]
    runs[0] = (before + runs[0][0], *runs[0][1:])
    runs[-1] = (runs[-1][0] + after, *runs[-1][1:])
    for i, (ks, _, _) in enumerate(runs):  # nothing may read what a later run materializes
        later = {k for later_keys, _, _ in runs[i + 1:] for k in later_keys}
        clash = _reads(graph, set(ks)) & later
        if clash:
            raise ValueError(f"cannot order the runs: {sorted(k.to_user_string() for k in ks)} "
                             f"read {sorted(k.to_user_string() for k in clash)}")
    return runs


def run_pipeline(profile: str, select: str = "*", instance: dg.DagsterInstance | None = None,
                 verbose: bool = False, log=print,
                 partition_range: str | None = None) -> dg.ExecuteJobResult | None:
    """Materialize ``select`` (Dagster selection syntax) on ``profile`` in one run.

    Returns the run's result (None when everything selected is fresh); raises on failure.
    """
    from aes_assets.definitions import build_definitions
    from aes_assets.jobs import executor_config
    from aes_core.logs import quiet_libraries

    quiet_libraries(verbose)
    os.environ[PROFILE_ENV] = profile
    cfg = load_config(profile)
    defs = build_definitions(cfg)
    instance = instance or dg.DagsterInstance.get()
    keys, fresh = plan(defs, instance, select, cfg.run.skip_fresh)
    if fresh:
        log(f"[aes] up to date, skipped ({len(fresh)}): "
            + ", ".join(k.to_user_string() for k in fresh))
    if not keys:
        log("[aes] nothing to materialize: every selected asset is up to date "
            "(change the config, code or data, or set run.skip_fresh: false)")
        return None
    runs = split_runs(defs, keys, partition_range)
    log(f"[aes] materializing {len(keys)} asset(s) in "
        + ("one run" if len(runs) == 1 else f"{len(runs)} runs (backbones train different heads)")
        + f" ({cfg.run.executor} executor, profile {cfg.profile})")
    graph = defs.resolve_asset_graph()
    loggers: dict = {"progress": {}}
    if verbose:
        loggers["console"] = {"config": {"log_level": "DEBUG"}}
    run_config = {**executor_config(cfg), "loggers": loggers}
    from aes_assets.jobs import DEFINITIONS_MODULE
    from aes_assets.progress import StepProgress, last_step_durations

    result, call = None, uuid.uuid4().hex[:12]
    for run_keys, range_tags, job_name in runs:
        steps = len({graph.get(k).assets_def for k in run_keys}) + sum(
            len(list(graph.get(k).check_keys)) for k in run_keys)
        driver = ("aes/driver", uuid.uuid4().hex[:12])
        history = last_step_durations(instance, job_name, {"aes/profile": cfg.profile})
        progress = StepProgress(instance, driver, steps, history=history)
        progress.start()
        try:
            result = dg.execute_job(
                dg.build_reconstructable_job(DEFINITIONS_MODULE, "pipeline_job",
                                             reconstructable_args=(_portable(profile),
                                                                   job_name)),
                instance, run_config=run_config,
                asset_selection=run_keys,
                tags={**range_tags, "aes/profile": cfg.profile,
                      "aes/config_hash": config_hash(cfg), driver[0]: driver[1],
                      CALL_TAG: call})
        finally:
            progress.stop()
        if not result.success:
            failed = [e.step_key for e in result.all_events if e.is_step_failure]
            raise RuntimeError(f"pipeline run {result.run_id} failed in step(s) {failed}; see "
                               f"the run in the UI (make dev) or above")
    return result


def _portable(profile: str) -> str:
    """A profile file as an absolute path (step processes may start elsewhere); names stay."""
    path = Path(profile)
    return str(path.resolve()) if path.is_file() else profile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get(PROFILE_ENV, "cpu-small"))
    ap.add_argument("--select", default="*", help="Dagster asset selection, e.g. 'raw_essays+'")
    ap.add_argument("--partitions", help="fold x head partitions, 'first...last' (default: all)")
    ap.add_argument("--verbose", action="store_true", help="Dagster DEBUG logs, library noise")
    args = ap.parse_args(argv)
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))
    logging.basicConfig(level=logging.WARNING)
    t0 = time.time()
    result = run_pipeline(args.profile, args.select, verbose=args.verbose,
                          partition_range=args.partitions)
    from aes_assets.summary import print_summary

    cfg: AesConfig = load_config(args.profile)
    print_summary(cfg, dg.DagsterInstance.get(), result.run_id if result else None,
                  minutes=(time.time() - t0) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

