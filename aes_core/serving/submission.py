"""Writing and evaluating a submission table (essay_id, score, then any further columns such
as the flags)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aes_core.metrics import SCORES, qwk, score_confusion


class SubmissionError(ValueError):
    """A submission is incomplete or malformed; the message names the ids."""


def validate_submission(df: pd.DataFrame, expected_ids: list[str]) -> None:
    """Every expected id exactly once, no others, integer scores within 1..6."""
    ids = df["essay_id"].astype(str)
    dupes = sorted(ids[ids.duplicated()].unique())
    missing = sorted(set(expected_ids) - set(ids))
    extra = sorted(set(ids) - set(expected_ids))
    bad = df.loc[~df["score"].isin(SCORES), "essay_id"].astype(str).tolist()
    problems = []
    if dupes:
        problems.append(f"duplicate essay_id {dupes[:5]}")
    if missing:
        problems.append(f"missing essay_id {missing[:5]} ({len(missing)} in all)")
    if extra:
        problems.append(f"unexpected essay_id {extra[:5]}")
    if bad:
        problems.append(f"scores outside 1..6 for essay_id {bad[:5]}")
    if problems:
        raise SubmissionError("invalid submission: " + "; ".join(problems))


def write_submission(df: pd.DataFrame, expected_ids: list[str], path: str | Path) -> Path:
    """Validate and write ``essay_id,score`` + ``df``'s other columns (input order) atomically."""
    out = pd.DataFrame({"essay_id": df["essay_id"].astype(str), "score": df["score"]})
    validate_submission(out, expected_ids)  # before the int cast, which would hide 2.5 -> 2
    out["score"] = out["score"].astype(int)
    for col in df.columns.drop(["essay_id", "score"]):
        out[col] = df[col].to_numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def evaluate_submission(sub: pd.DataFrame, essays: pd.DataFrame) -> dict | None:
    """QWK and confusion matrix on the labelled rows of ``essays`` (None when unlabelled)."""
    if "score" not in essays.columns:
        return None
    labels = essays[["essay_id", "score"]].dropna()
    if labels.empty:
        return None
    merged = labels.merge(sub[["essay_id", "score"]], on="essay_id", suffixes=("_true", ""))
    y, p = merged["score_true"].astype(int).to_numpy(), merged["score"].astype(int).to_numpy()
    cm = pd.DataFrame(score_confusion(y, p), index=[f"true {s}" for s in SCORES],
                      columns=[f"pred {s}" for s in SCORES])
    return {"qwk": qwk(y, p), "n": len(merged), "confusion": cm}
