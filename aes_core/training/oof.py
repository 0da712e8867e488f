"""The out-of-fold table: one 1..6 column per ``{backbone}__{head}`` member, plus QWK reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aes_core.members import OOF_META_COLUMNS, member_columns, member_name
from aes_core.metrics import qwk
from aes_core.training.stages import OOF_FILE, load_partition_result


class MissingPartitionsError(RuntimeError):
    """Some fold x head partitions have not been trained (the message lists them)."""


def build_oof_table(folded: pd.DataFrame,
                    partition_dirs: dict[tuple[str, str, int], Path]) -> pd.DataFrame:
    """Assemble OOF predictions from completed partition folders.

    ``partition_dirs`` maps (backbone, head, fold) to the partition's artifact folder.
    Raises ``MissingPartitionsError`` listing every partition without a completed result.
    """
    missing = [k for k, d in partition_dirs.items() if load_partition_result(d) is None]
    if missing:
        listed = ", ".join(f"{b}/fold_head_checkpoints fold={f} head={h}"
                           for b, h, f in sorted(missing))
        raise MissingPartitionsError(
            f"{len(missing)} of {len(partition_dirs)} fold x head partition(s) are not "
            f"materialized: {listed}. Backfill them first.")
    table = folded[list(OOF_META_COLUMNS)].copy()
    table["essay_id"] = table["essay_id"].astype(str)
    members = sorted({(b, h) for b, h, _ in partition_dirs})
    for b, h in members:
        col = member_name(b, h)
        parts = []
        for (bb, hh, f), d in partition_dirs.items():
            if (bb, hh) != (b, h):
                continue
            oof = pd.read_parquet(Path(d) / OOF_FILE)
            expected = set(table.loc[table["fold"] == f, "essay_id"])
            got = set(oof["essay_id"].astype(str))
            if got != expected:
                raise ValueError(
                    f"{col} fold {f}: OOF predictions cover {len(got)} essays but fold {f} "
                    f"has {len(expected)} ({len(expected - got)} missing, {len(got - expected)} "
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
