"""Run the pipeline through Dagster on a GPU machine and write its figures (a thin driver).

The pipeline is the product's own: ``aes_assets.pipeline.run_pipeline`` materializes the
profile's graph in one Dagster run on the instance at $DAGSTER_HOME (one run per set of heads
when backbones train different heads); the figures are read back from the runs' events and
metadata by ``dagster_run_report``. When every selected
asset is already up to date (``run.skip_fresh``) nothing runs: the driver exits with 2 and
leaves ``--out`` alone rather than report an earlier run as this one.

    DAGSTER_HOME=/path/to/home python benchmarks/gpu_pipeline.py --profile gpu-full \
        --out benchmarks/results/gpu_dagster_run.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagster as dg  # noqa: E402
from dagster_run_report import merge_reports, run_report  # noqa: E402

from aes_assets.pipeline import CALL_TAG, run_pipeline  # noqa: E402
from aes_core.config import PROJECT_ROOT  # noqa: E402
from aes_core.gpu_sampler import GpuSampler  # noqa: E402
from aes_core.tracking import unmet_requirements  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="gpu-full")
    ap.add_argument("--select", default="*", help="Dagster asset selection")
    ap.add_argument("--partitions", help="fold x head partitions 'first...last' (default all)")
    ap.add_argument("--out", required=True, help="JSON file for the run's figures")
    ap.add_argument("--sample-s", type=float, default=2.0,
                    help="seconds between GPU utilisation samples (nvidia-smi)")
    a = ap.parse_args(argv)
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))
    instance = dg.DagsterInstance.get()
    t0 = time.time()
    with GpuSampler(interval_s=a.sample_s) as sampler:
        result = run_pipeline(a.profile, a.select, instance=instance,
                              partition_range=a.partitions)
    if result is None:  # every selected asset was fresh: there is no run to report
        print("gpu_pipeline: nothing ran, so nothing was timed and --out is left as it was "
              "(set run.skip_fresh: false, or change the config, to time the selection again)",
              file=sys.stderr)
        return 2
    call = result.dagster_run.tags[CALL_TAG]  # every run this call made carries it
    ours = instance.get_runs(filters=dg.RunsFilter(tags={CALL_TAG: call}))  # newest first
    report = merge_reports([run_report(instance, r.run_id) for r in reversed(ours)])
    windows = {"run": tuple(report["run_window"]), **{
        k: tuple(w) for k, w in report["step_windows"].items()
        if k.endswith("fold_head_checkpoints")}}
    report["gpu_util"] = sampler.summary(windows)  # the training step(s) and the whole run
    report["driver_wall_minutes"] = round((time.time() - t0) / 60, 2)
    report["unmet_requirements"] = unmet_requirements()  # packages outside pyproject's ranges
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("profile", "partitions", "wall_minutes",
                                             "test_qwk", "stage_minutes")}, indent=1,
                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
