"""Blend table per backbone from a GPU run's saved predictions (runs on any CPU in seconds).

``gpu_pipeline.py`` writes ``oof.parquet`` (OOF prediction of every member, with folds and
scores) and ``test_members.parquet`` (each member's fold-averaged prediction on the labelled
test split). This script fits the same Nelder-Mead ensemble (``aes_core.ensemble``, on OOF
only) for every group of members a report wants side by side — each backbone's heads alone,
all transformer members, the GBDT baseline alone, everything — and prints each group's test
QWK: single members, equal blend, optimized blend.

    python benchmarks/blend_report.py --run-dir benchmarks/results/<run> \
        --test-labels ../shared/data/aes2/test_score.csv.gz --profile gpu-full --out blends.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from gpu_pipeline import ensemble_on_test  # noqa: E402

from aes_core.config import load_config  # noqa: E402
from aes_core.data import io  # noqa: E402
from aes_core.members import GBDT_MEMBER as GBDT  # noqa: E402
from aes_core.members import (  # noqa: E402
    OOF_META_COLUMNS,
    member_columns,
    split_member_name,
)


def member_groups(members: list[str]) -> dict[str, list[str]]:
    """{group name: members}: per backbone (``<backbone>__<head>``), transformers, GBDT, all."""
    groups: dict[str, list[str]] = {}
    transformers = [m for m in members if m != GBDT]
    backbones = sorted({split_member_name(m)[0] for m in transformers})
    for bb in backbones:
        groups[f"{bb} heads"] = [m for m in transformers if split_member_name(m)[0] == bb]
    if len(backbones) > 1:
        groups["all transformer members"] = transformers
    if GBDT in members:
        groups["GBDT baseline alone"] = [GBDT]
        if transformers:
            groups["everything (transformers + GBDT)"] = members
    return groups


def blend_report(oof: pd.DataFrame, test_members: pd.DataFrame, test_y: np.ndarray,
                 cfg) -> dict[str, dict]:
    members = member_columns(oof)
    if not members:
        raise ValueError("oof table has no member columns (expected <backbone>__<head> / gbdt)")
    missing = [m for m in members if m not in test_members.columns]
    if missing:
        raise ValueError(f"test predictions lack members {missing}")
    out = {}
    for name, group in member_groups(members).items():
        table = oof[[*OOF_META_COLUMNS, *group]].dropna(subset=group)
        out[name] = ensemble_on_test(table, test_members, test_y, cfg)
    return out


def print_table(report: dict[str, dict]) -> None:
    print(f"{'group':36s} {'member / blend':28s} {'OOF QWK':>8s} {'test QWK':>9s}")
    for group, r in report.items():
        rows = [(m, r["oof_qwk"].get(m), r["test_qwk"].get(m)) for m in r["members"]]
        if len(r["members"]) > 1:
            rows += [("equal blend", r["oof_qwk"].get("equal_blend"),
                      r["test_qwk"].get("equal_blend")),
                     ("Nelder-Mead blend", r["oof_qwk"].get("optimized"),
                      r["test_qwk"].get("optimized"))]
        for m, o, t in rows:
            print(f"{group:36s} {m:28s} {o if o is not None else float('nan'):8.4f} "
                  f"{t if t is not None else float('nan'):9.4f}")


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True,
                    help="folder with oof.parquet and test_members.parquet")
    ap.add_argument("--test-labels", required=True, help="essay_id,score CSV of the test split")
    ap.add_argument("--profile", default="gpu-full", help="ensemble settings (restarts, ...)")
    ap.add_argument("--out", help="write the report as JSON here")
    a = ap.parse_args(argv)
    run = Path(a.run_dir)
    oof = pd.read_parquet(run / "oof.parquet")
    test_members = pd.read_parquet(run / "test_members.parquet")
    labels = io.load_labels(a.test_labels).set_index("essay_id")["score"]
    unlabelled = sorted(set(test_members["essay_id"]) - set(labels.index))
    if unlabelled:
        raise SystemExit(f"{a.test_labels}: no score for {len(unlabelled)} test essays, "
                         f"e.g. {unlabelled[:3]}")
    test_y = test_members["essay_id"].map(labels).to_numpy(dtype=int)
    report = blend_report(oof, test_members, test_y, load_config(a.profile))
    print_table(report)
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
