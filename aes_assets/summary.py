"""The closing summary of a pipeline run, read from the instance's latest materializations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from aes_assets import keys
from aes_core.config import AesConfig


def folder_size(path: str | Path) -> int:
    """Bytes under ``path`` (0 when it does not exist); hard links counted once."""
    total, seen = 0, set()
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    """The metadata values of an asset's latest materialization ({} when never)."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def collect_summary(cfg: AesConfig, instance: dg.DagsterInstance) -> dict[str, Any]:
    ens = latest_metadata(instance, keys.ENSEMBLE)
    sub = latest_metadata(instance, keys.SUBMISSION)
    rep = latest_metadata(instance, keys.REPORT)
    gbdt = latest_metadata(instance, keys.GBDT)
    storage = Path(cfg.storage_root)
    return {
        "oof_qwk": ens.get("blend_oof_qwk"), "nested_cv_qwk": ens.get("blend_nested_qwk"),
        "best_member": ens.get("best_member"),
        "best_member_oof_qwk": ens.get("best_member_oof_qwk"),
        "gbdt_oof_qwk": gbdt.get("oof_qwk"), "method": ens.get("method"),
        "test_qwk": sub.get("test_qwk"), "scored_via": sub.get("scored_via"),
        "submission": sub.get("submission_csv"), "report_dir": rep.get("report_dir"),
        "bundle_dir": str(cfg.bundle_dir),
        "storage_gib": folder_size(storage) / 2**30,
        "triton_repo_gib": folder_size(cfg.serving.triton_repo) / 2**30,
    }


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x if x is not None else "n/a")


def print_summary(cfg: AesConfig, instance: dg.DagsterInstance, run_id: str | None,
                  minutes: float, out=print) -> dict[str, Any]:
    s = collect_summary(cfg, instance)
    report = Path(s["report_dir"]) if s["report_dir"] else None
    lines = [
        "",
        f"aes pipeline finished in {minutes:.1f} min (profile {cfg.profile}"
        + (f", run {run_id}" if run_id else ", nothing to run") + ")",
        f"  ensemble QWK      OOF {_fmt(s['oof_qwk'])} | nested CV {_fmt(s['nested_cv_qwk'])}"
        f" | test {_fmt(s['test_qwk'])}",
        f"  best member       {_fmt(s['best_member'])} (OOF {_fmt(s['best_member_oof_qwk'])});"
        f" GBDT alone OOF {_fmt(s['gbdt_oof_qwk'])} (rounded); blend: {_fmt(s['method'])}",
        f"  submission        {_fmt(s['submission'])} (scored via {_fmt(s['scored_via'])})",
    ]
    if report:
        lines += [f"  report            {report / 'summary.md'}",
                  f"  plots             {report}/*.png"]
    lines += [
        f"  serving bundle    {s['bundle_dir']}",
        f"  disk              {s['storage_gib']:.2f} GiB in {cfg.storage_root}, "
        f"{s['triton_repo_gib']:.2f} GiB in {cfg.serving.triton_repo}",
        "  Dagster UI        make dev  -> http://127.0.0.1:3000",
        "  teachers' page    make web  -> http://127.0.0.1:8080",
    ]
    out("\n".join(lines))
    return s
