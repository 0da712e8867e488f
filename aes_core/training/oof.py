"""The out-of-fold table: one 1..6 column per ``{backbone}__{head}`` member, plus QWK reports."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from aes_core.contracts import FoldHeadCheckpoint
from aes_core.members import OOF_META_COLUMNS, member_columns, member_name
from aes_core.metrics import qwk


class MissingPartitionsError(RuntimeError):
    """Some fold x head partitions have not been trained (the message lists them)."""


def build_oof_table(folded: pd.DataFrame, checkpoints: Iterable[FoldHeadCheckpoint],
                    expected: Iterable[tuple[str, str, int]]) -> pd.DataFrame:
    """Assemble OOF predictions from completed partitions.

    ``expected`` lists every (backbone, head, fold) the configuration trains; raises
    ``MissingPartitionsError`` naming each one without a checkpoint.
    """
    by_key = {(c.backbone, c.head, c.fold): c for c in checkpoints}
    expected = sorted(set(expected))
    missing = [k for k in expected if k not in by_key]
    if missing:
        listed = ", ".join(f"{b}/fold_head_checkpoints fold={f} head={h}"
                           for b, h, f in missing)
        raise MissingPartitionsError(
            f"{len(missing)} of {len(expected)} fold x head partition(s) are not "
            f"materialized: {listed}. Backfill them first.")
    table = folded[list(OOF_META_COLUMNS)].copy()
    table["essay_id"] = table["essay_id"].astype(str)
    for b, h in sorted({(b, h) for b, h, _ in expected}):
        col = member_name(b, h)
        parts = []
        for f in sorted(f for bb, hh, f in expected if (bb, hh) == (b, h)):
            oof = pd.read_parquet(Path(by_key[(b, h, f)].oof_path))
            want = set(table.loc[table["fold"] == f, "essay_id"])
            got = set(oof["essay_id"].astype(str))
            if got != want:
                raise ValueError(
                    f"{col} fold {f}: OOF predictions cover {len(got)} essays but fold {f} "
                    f"has {len(want)} ({len(want - got)} missing, {len(got - want)} "
                    f"unknown); the partition was trained on other folds: re-materialize it")
            parts.append(oof.assign(essay_id=oof["essay_id"].astype(str)))
        preds = pd.concat(parts).set_index("essay_id")["pred"]
        table[col] = table["essay_id"].map(preds).astype(float)
        if table[col].isna().any():
            folds_missing = sorted(table.loc[table[col].isna(), "fold"].unique().tolist())
            raise MissingPartitionsError(f"{col}: no predictions for folds {folds_missing}")
    return table.reset_index(drop=True)


def qwk_reports(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """QWK per member overall, per fold and per prompt."""
    members = member_columns(table)
    overall = pd.DataFrame({"qwk": {m: qwk(table["score"], table[m]) for m in members}})
    per_fold = pd.DataFrame({m: {int(f): qwk(g["score"], g[m]) for f, g in
                                 table.groupby("fold")} for m in members})
    per_fold.index.name = "fold"
    per_prompt = pd.DataFrame({m: {p: qwk(g["score"], g[m]) for p, g in
                                   table.groupby("prompt_name")} for m in members})
    per_prompt.index.name = "prompt_name"
    return {"overall": overall, "per_fold": per_fold, "per_prompt": per_prompt}
