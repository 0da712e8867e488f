"""PERSUADE join (prompt_name, flag) and MultilabelStratifiedKFold folds on prompt x score."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aes_core.config import FoldSection
from aes_core.data.normalize import normalize_text

UNKNOWN_PROMPT = "Unknown"


@dataclass
class JoinReport:
    matched: int
    unmatched: int
    ambiguous_texts: int
    flag_rule: str
    flag_1: int
    notes: list[str] = field(default_factory=list)


def join_persuade(essays: pd.DataFrame, persuade: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Attach ``prompt_name`` (``Unknown`` when unmatched) and ``in_persuade`` by normalized text.

    Returns the joined table (same rows, same order) and the number of reference texts that
    carry more than one prompt (the first is used).
    """
    ref = persuade.assign(_key=persuade["full_text"].map(normalize_text))
    ambiguous = int(ref.groupby("_key")["prompt_name"].nunique().gt(1).sum())
    ref = ref.drop_duplicates("_key")[["_key", "prompt_name"]]
    keyed = essays.assign(_key=essays["full_text"].map(normalize_text))
    out = keyed.merge(ref, on="_key", how="left", validate="many_to_one")
    assert len(out) == len(essays), "join must not add or drop rows"
    out["in_persuade"] = out["prompt_name"].notna()
    out["prompt_name"] = out["prompt_name"].fillna(UNKNOWN_PROMPT)
    return out.drop(columns="_key"), ambiguous


def assign_flags(df: pd.DataFrame, cfg: FoldSection) -> tuple[pd.Series, str]:
    """flag = 0: in PERSUADE (stage-1-only data); flag = 1: plays the Kaggle-only essays.

    ``join`` uses the real join; ``prompts`` and ``fraction`` let data with no essays outside
    the reference still exercise stage 2. Returns the flags and a description of the rule.
    """
    if cfg.flag_rule == "join":
        return (~df["in_persuade"]).astype(int), "join: flag=1 iff the text is not in PERSUADE"
    if cfg.flag_rule == "prompts":
        unknown = sorted(set(cfg.flag_prompts) - set(df["prompt_name"]))
        if unknown:
            raise ValueError(f"folds.flag_prompts: prompt(s) {unknown} not in the data; "
                             f"known: {sorted(df['prompt_name'].unique())}")
        flags = (df["prompt_name"].isin(cfg.flag_prompts) | ~df["in_persuade"]).astype(int)
        return flags, f"prompts: flag=1 for prompts {cfg.flag_prompts} and unmatched essays"
    rng = np.random.default_rng(cfg.flag_seed)
    chosen = rng.random(len(df)) < cfg.flag_fraction
    flags = pd.Series(chosen | ~df["in_persuade"].to_numpy(), index=df.index).astype(int)
    return flags, (f"fraction: seeded {cfg.flag_fraction:.0%} of essays (seed {cfg.flag_seed}) "
                   "plus unmatched essays play flag=1")


def make_folds(df: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """MultilabelStratifiedKFold on one-hot(prompt) x one-hot(score); returns fold per row."""
    if len(df) < n_folds:
        raise ValueError(f"{len(df)} essays cannot fill {n_folds} folds")
    labels = pd.concat(
        [pd.get_dummies(df["prompt_name"], prefix="p"), pd.get_dummies(df["score"], prefix="s")],
        axis=1,
    ).to_numpy(dtype=int)
    folds = np.full(len(df), -1, dtype=int)
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # sklearn: lazily

    mskf = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for i, (_, val_idx) in enumerate(mskf.split(np.zeros(len(df)), labels)):
        folds[val_idx] = i
    assert (folds >= 0).all()
    return folds


def build_folded(essays: pd.DataFrame, persuade: pd.DataFrame,
                 cfg: FoldSection) -> tuple[pd.DataFrame, JoinReport]:
    """essays (essay_id, full_text, score) -> + prompt_name, in_persuade, flag, fold."""
    joined, ambiguous = join_persuade(essays, persuade)
    flags, rule = assign_flags(joined, cfg)
    joined["flag"] = flags.to_numpy()
    joined["fold"] = make_folds(joined, cfg.n_folds, cfg.seed)
    report = JoinReport(
        matched=int(joined["in_persuade"].sum()),
        unmatched=int((~joined["in_persuade"]).sum()),
        ambiguous_texts=ambiguous,
        flag_rule=rule,
        flag_1=int(joined["flag"].sum()),
    )
    if report.unmatched == 0 and cfg.flag_rule == "join":
        report.notes.append("every essay is in PERSUADE: flag=1 is empty, stage 2 will be skipped")
    return joined, report


def fold_balance(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Share of each value of ``column`` per fold minus its share overall."""
    overall = df[column].value_counts(normalize=True)
    per_fold = df.groupby("fold")[column].value_counts(normalize=True).unstack(fill_value=0.0)
    return per_fold.sub(overall, axis=1)
