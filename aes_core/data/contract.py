"""The data contract of the essay tables, as pure checks returning (passed, description)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from aes_core.data.folds import fold_balance
from aes_core.data.io import SCORE_MAX, SCORE_MIN

FOLDED_COLUMNS = {"essay_id": "object", "full_text": "object", "score": "int",
                  "prompt_name": "object", "flag": "int", "fold": "int"}


@dataclass
class CheckResult:
    passed: bool
    description: str
    details: dict | None = None


def check_schema(df: pd.DataFrame, schema: dict[str, str]) -> CheckResult:
    problems = []
    for col, kind in schema.items():
        if col not in df.columns:
            problems.append(f"missing column {col!r}")
        elif kind == "int" and not pd.api.types.is_integer_dtype(df[col]):
            problems.append(f"{col!r} is {df[col].dtype}, expected integers")
        elif kind == "object" and not df[col].map(lambda v: isinstance(v, str)).all():
            problems.append(f"{col!r} holds non-text values")
    return CheckResult(not problems, "; ".join(problems) or "all columns present with types")


def check_unique_ids(df: pd.DataFrame) -> CheckResult:
    dup = df["essay_id"][df["essay_id"].duplicated()].unique().tolist()
    return CheckResult(not dup, f"duplicate ids: {dup[:10]}" if dup else "essay_id is unique")


def check_score_range(df: pd.DataFrame) -> CheckResult:
    bad = df.index[(df["score"] < SCORE_MIN) | (df["score"] > SCORE_MAX)].tolist()
    return CheckResult(not bad, f"rows out of 1..6: {bad[:10]}" if bad else "scores within 1..6")


def check_texts(df: pd.DataFrame) -> CheckResult:
    bad = df.index[~df["full_text"].map(lambda t: isinstance(t, str) and bool(t.strip()))]
    return CheckResult(len(bad) == 0, f"empty/non-text rows: {bad.tolist()[:10]}" if len(bad)
                       else "every essay has text")


def check_one_fold_each(df: pd.DataFrame, n_folds: int) -> CheckResult:
    bad = df.index[~df["fold"].between(0, n_folds - 1)].tolist()
    counts = df["fold"].value_counts().reindex(range(n_folds), fill_value=0)
    empty = counts.index[counts == 0].tolist()
    ok = not bad and not empty and df["essay_id"].is_unique
    desc = (f"every essay in exactly one of {n_folds} folds (sizes {counts.tolist()})" if ok else
            f"rows without a valid fold: {bad[:10]}; empty folds: {empty}")
    return CheckResult(ok, desc, {"fold_sizes": counts.tolist()})


def check_fold_balance(df: pd.DataFrame, tolerance: float) -> CheckResult:
    worst = {}
    for col in ("score", "prompt_name"):
        dev = fold_balance(df, col).abs()
        worst[col] = float(dev.to_numpy().max()) if dev.size else 0.0
    ok = all(v <= tolerance for v in worst.values())
    return CheckResult(ok, f"max per-fold share deviation: score {worst['score']:.3f}, prompt "
                       f"{worst['prompt_name']:.3f} (tolerance {tolerance})", worst)
