"""Materialize the whole graph on the persistent Dagster instance, stage by stage.

``dagster asset materialize --select '*'`` cannot mix partitioned and unpartitioned assets in
one run, so this driver runs: (1) unpartitioned assets upstream of partitioned ones, (2) one
run per fold x head partition key for every partitioned asset, (3) everything else. Every run
lands on the instance at ``$DAGSTER_HOME``, so the UI shows the same history and lineage as a
UI-launched materialization.

    python -m aes_assets.pipeline --profile cpu-small [--select raw_essays+ ...]
"""

import argparse
import os
import sys
import time

import dagster as dg

from aes_assets.definitions import build_definitions


def _plan(defs: dg.Definitions, selected: set[dg.AssetKey]):
    graph = defs.resolve_asset_graph()
    partitioned = {k for k in selected if graph.get(k).partitions_def is not None}
    upstream_of_partitioned: set[dg.AssetKey] = set()
    for key in partitioned:
        upstream_of_partitioned |= set(graph.get_ancestor_asset_keys(key))
    before = {k for k in selected - partitioned if k in upstream_of_partitioned}
    after = selected - partitioned - before
    keys_by_def: dict[object, set[dg.AssetKey]] = {}
    for k in partitioned:
        keys_by_def.setdefault(graph.get(k).partitions_def, set()).add(k)
    return before, keys_by_def, after


def run_pipeline(profile: str, select: str = "*", instance: dg.DagsterInstance | None = None,
                 log=print) -> list[dg.ExecuteInProcessResult]:
    """Materialize ``select`` (Dagster selection syntax) on ``profile``; raises on failure."""
    os.environ["AES_PROFILE"] = profile
    defs = build_definitions(profile)
    graph = defs.resolve_asset_graph()
    selected = set(dg.AssetSelection.from_string(select).resolve(graph)) if select != "*" else \
        set(graph.materializable_asset_keys)
    before, keys_by_def, after = _plan(defs, selected)
    instance = instance or dg.DagsterInstance.get()
    assets = list(defs.assets) + list(defs.asset_checks or [])
    results = []

    def run(keys: set[dg.AssetKey], partition_key: str | None = None) -> None:
        label = ", ".join(sorted(k.to_user_string() for k in keys))
        log(f"[aes] materializing {label}" + (f" [{partition_key}]" if partition_key else ""))
        t0 = time.time()
        res = dg.materialize(assets, selection=dg.AssetSelection.assets(*keys),
                             partition_key=partition_key, instance=instance,
                             resources=defs.resources, tags={"aes/profile": profile})
        log(f"[aes]   done in {time.time() - t0:.1f}s")
        results.append(res)

    if before:
        run(before)
    for pdef, keys in keys_by_def.items():
        for pk in pdef.get_partition_keys(dynamic_partitions_store=instance):
            run(keys, pk)
    if after:
        run(after)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.
                                 RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=os.environ.get("AES_PROFILE", "cpu-small"))
    ap.add_argument("--select", default="*", help="Dagster asset selection, e.g. 'raw_essays+'")
    args = ap.parse_args(argv)
    t0 = time.time()
    run_pipeline(args.profile, args.select)
    print(f"[aes] pipeline finished in {(time.time() - t0) / 60:.1f} min "
          f"(profile {args.profile}); open the UI with `make dev`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
