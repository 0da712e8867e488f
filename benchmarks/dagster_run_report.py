"""Figures of one pipeline run, read from the Dagster instance (run, step and asset events).

Nothing here times anything itself: wall time and stage minutes are the run's and steps'
recorded start/end times, quality and training figures the assets' materialization metadata.

    DAGSTER_HOME=... python benchmarks/dagster_run_report.py [--run-id ID] --out run.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from aes_assets.jobs import PIPELINE_JOB  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402

QWK_PREFIX = "test_qwk_rounded/"


def _value(v: Any) -> Any:
    return getattr(v, "value", v)


def run_materializations(instance: dg.DagsterInstance, run_id: str) -> list:
    from dagster._core.events import DagsterEventType

    events = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return [e.dagster_event.event_specific_data.materialization for e in events]


def latest_pipeline_run(instance: dg.DagsterInstance) -> str:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=PIPELINE_JOB), limit=1)
    if not runs:
        raise SystemExit(f"no {PIPELINE_JOB!r} run in the instance at {instance.root_directory}")
    return runs[0].run_id


def run_report(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    run = instance.get_run_by_id(run_id)
    stats = instance.get_run_stats(run_id)
    steps = {s.step_key: s for s in instance.get_run_step_stats(run_id)}
    stage_minutes = {k: round((s.end_time - s.start_time) / 60, 2)
                     for k, s in sorted(steps.items(), key=lambda kv: kv[1].start_time or 0)
                     if s.start_time and s.end_time}
    meta: dict[str, dict[str, Any]] = {}
    partitions: dict[str, list[dict[str, Any]]] = {}
    for m in run_materializations(instance, run_id):
        key = m.asset_key.to_user_string()
        values = {k: _value(v) for k, v in m.metadata.items()}
        if m.partition:
            partitions.setdefault(key, []).append({"partition": m.partition, **values})
        else:
            meta[key] = values
    sub, ens = meta.get("submission", {}), meta.get("ensemble_weights", {})
    test_qwk = {"ensemble": sub.get("test_qwk")}
    # each member rounded to the nearest score; the GBDT alone with thresholds fitted on its
    # OOF (the quality issue's "gbdt_alone") is quality_report.py's, not this run's
    test_qwk.update({k[len(QWK_PREFIX):]: v for k, v in sub.items() if k.startswith(QWK_PREFIX)})
    training = {}
    for key, parts in partitions.items():
        if key.endswith("fold_head_checkpoints"):
            step = steps.get(key.replace("/", "__"))
            tokens = sum(int(p.get("train_tokens") or 0) for p in parts if not p.get("reused"))
            wall = (step.end_time - step.start_time) if step else None
            training[key] = {"partitions": len(parts), "train_tokens": tokens,
                             "step_seconds": round(wall, 1) if wall else None,
                             "tokens_per_s": round(tokens / wall) if wall else None,
                             "fold_qwk": {p["partition"]: p.get("fold_qwk") for p in parts},
                             "steady_tokens_per_s": {p["partition"]: p.get("steady_tokens_per_s")
                                                     for p in parts},
                             "partition_seconds": {p["partition"]: p.get("seconds")
                                                   for p in parts},
                             **step_timeline(instance, run_id, key.replace("/", "__"), parts,
                                             step.start_time if step else None)}
    return {
        "via": "dagster", "run_id": run_id, "job": run.job_name,
        "profile": run.tags.get("aes/profile"), "status": run.status.value,
        "partitions": sum(len(p) for k, p in partitions.items()
                          if k.endswith("fold_head_checkpoints")),
        "wall_minutes": round((stats.end_time - stats.start_time) / 60, 2)
        if stats.end_time and stats.start_time else None,
        "gpu": hardware().get("gpu"), "hardware": hardware(),
        "test_qwk": test_qwk, "oof_qwk": ens.get("blend_oof_qwk"),
        "nested_cv_qwk": ens.get("blend_nested_qwk"), "best_member": ens.get("best_member"),
        "scored_via": sub.get("scored_via"), "stage_minutes": stage_minutes,
        "step_windows": {k: [s.start_time, s.end_time] for k, s in steps.items()
                         if s.start_time and s.end_time},
        "run_window": [stats.start_time, stats.end_time],
        "training": training,
        "gbdt": {k: meta.get("gbdt_member", {}).get(k) for k in ("oof_qwk", "seconds")},
        "mlm": {k: v for k, v in meta.items() if k.endswith("mlm_backbone")},
    }


def step_timeline(instance: dg.DagsterInstance, run_id: str, step_key: str,
                  parts: list[dict[str, Any]], step_start: float | None) -> dict[str, Any]:
    """The training step's timeline summary (its output metadata) and each partition's
    [start, end] seconds from the step's start, worker and phase seconds."""
    out: dict[str, Any] = {}
    for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT):
        if e.step_key == step_key:
            md = e.dagster_event.event_specific_data.metadata
            if "timeline" in md:
                out["timeline"] = _value(md["timeline"])
    if step_start:
        out["partition_windows"] = {
            p["partition"]: [round(p["started_at"] - step_start, 2),
                             round(p["finished_at"] - step_start, 2), p.get("worker")]
            for p in parts if p.get("started_at") and not p.get("reused")}
        out["phase_seconds"] = {p["partition"]: p.get("phase_seconds") for p in parts
                                if p.get("phase_seconds")}
    return out


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report of the driver's runs in order (one per set of heads when backbones train
    different heads): wall time from the first start to the last end, every run's stages and
    training; quality from the last run, which scores the ensemble."""
    if len(reports) == 1:
        return reports[0]
    last = reports[-1]
    start = min(r["run_window"][0] for r in reports)
    end = max(r["run_window"][1] for r in reports)
    return {**last, "run_id": [r["run_id"] for r in reports], "job": [r["job"] for r in reports],
            "status": "SUCCESS" if all(r["status"] == "SUCCESS" for r in reports)
            else "FAILURE",
            "partitions": sum(r["partitions"] for r in reports),
            "wall_minutes": round((end - start) / 60, 2),
            **{section: {k: v for r in reports for k, v in r[section].items()}
               for section in ("stage_minutes", "step_windows", "training", "mlm")},
            "run_window": [start, end],
            "gbdt": next((r["gbdt"] for r in reports if any(r["gbdt"].values())),
                         last["gbdt"]),
            "runs": [{k: r[k] for k in ("run_id", "job", "wall_minutes", "partitions")}
                     for r in reports]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-id", help="default: the latest run of the pipeline job")
    ap.add_argument("--out", required=True, help="JSON file to write")
    a = ap.parse_args(argv)
    instance = dg.DagsterInstance.get()
    report = run_report(instance, a.run_id or latest_pipeline_run(instance))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k not in ("hardware", "mlm")},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
