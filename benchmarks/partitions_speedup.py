"""Partitions per hour on one GPU against several, from two ``gpu_pipeline.py`` reports.

    python benchmarks/partitions_speedup.py --one parts_1gpu.json --two parts_2gpu.json \\
        --what "..." [--into benchmarks/results/multigpu.json --name partitions \\
        --previous-as ninth_stop_no_mps]

Prints the comparison: the training step's wall time, partitions per hour and their ratio,
training tokens/s, GPU utilisation and busy host CPUs during the step, partition times and the
step's timeline (before the first partition, after the last). With ``--into`` it writes the
entry under ``--name`` in that results file, keeping the entry it replaces under
``--previous-as``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STEP = "minilm/fold_head_checkpoints"


def side(report: dict, step: str) -> dict:
    """One run's figures for the training step ``step``."""
    t = report["training"][step]
    util = report.get("gpu_util", {}).get(step.replace("/", "__"), {})
    gpus = {g: v for g, v in util.items() if isinstance(v, dict)}
    seconds = list(t["partition_seconds"].values())
    return {
        "step_seconds": t["step_seconds"],
        "per_hour": round(3600 * t["partitions"] / t["step_seconds"], 1),
        "tokens_per_s": t["tokens_per_s"],
        "gpu_util_mean_pct": {g: v["util_mean_pct"] for g, v in gpus.items()},
        "gpu_util_busy_mean_pct": {g: v["util_busy_mean_pct"] for g, v in gpus.items()},
        "peak_memory_mib": {g: v["memory_peak_mib"] for g, v in gpus.items()},
        "host_cpus_busy": util.get("host_cpus_busy"),
        "partition_seconds_mean": round(sum(seconds) / len(seconds), 2),
        "partition_seconds_range": [min(seconds), max(seconds)],
        "timeline": t.get("timeline"),
        "run_id": report.get("run_id"),
        "partitions": t["partitions"],
    }


def compare(one: dict, two: dict, step: str = STEP) -> dict:
    """The entry: each side's figures with a ``_1gpu`` / ``_2gpu`` suffix, and the speedup."""
    a, b = side(one, step), side(two, step)
    if a["partitions"] != b["partitions"]:
        raise ValueError(f"the runs trained {a['partitions']} and {b['partitions']} "
                         f"partitions: compare runs of the same selection")
    out = {f"{k}_1gpu": v for k, v in a.items()} | {f"{k}_2gpu": v for k, v in b.items()}
    out["speedup"] = round(b["per_hour"] / a["per_hour"], 2)
    out["hardware"] = two.get("hardware")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", required=True, help="gpu_pipeline.py report, one GPU")
    ap.add_argument("--two", required=True, help="gpu_pipeline.py report, several GPUs")
    ap.add_argument("--step", default=STEP, help="the training step's asset key")
    ap.add_argument("--what", default="", help="what was measured, stored with the figures")
    ap.add_argument("--into", help="results JSON to write the entry into")
    ap.add_argument("--name", default="partitions", help="the entry's key there")
    ap.add_argument("--previous-as", help="key under which the replaced entry is kept")
    a = ap.parse_args(argv)
    entry = {"what": a.what, **compare(json.loads(Path(a.one).read_text()),
                                       json.loads(Path(a.two).read_text()), a.step)}
    print(json.dumps({k: entry[k] for k in ("step_seconds_1gpu", "step_seconds_2gpu",
                                            "per_hour_1gpu", "per_hour_2gpu", "speedup")}))
    if a.into:
        path = Path(a.into)
        results = json.loads(path.read_text()) if path.exists() else {}
        old = results.get(a.name)
        if isinstance(old, dict) and a.previous_as:
            # entries kept inside the replaced one stay at the same level of the new one
            nested = {k: v for k, v in old.items() if isinstance(v, dict) and "what" in v}
            entry.update(nested)
            entry[a.previous_as] = {k: v for k, v in old.items() if k not in nested}
        results[a.name] = entry
        path.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
