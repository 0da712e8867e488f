"""Asset checks on the folds that go beyond one schema (``Table.check`` covers the rest).

The expectations come from the configuration, never from the data checked: ``n_folds`` from
the folds config, the balance tolerance from ``folds.balance_tolerance``.
"""

from __future__ import annotations

import pandas as pd

from aes_core.data import schema
from aes_core.data.folds import fold_balance
from aes_core.data.schema import CheckResult as CheckResult  # re-exported for the checks


def check_one_fold_each(df: pd.DataFrame, n_folds: int) -> CheckResult:
    """Every essay (unique id) in exactly one of the configured ``n_folds`` folds, none empty."""
    return schema.FoldedEssays.check(df, columns=("essay_id", "fold"), n_folds=n_folds)


def check_fold_balance(df: pd.DataFrame, tolerance: float) -> CheckResult:
    worst = {}
    for col in ("score", "prompt_name"):
        dev = fold_balance(df, col).abs()
        worst[col] = float(dev.to_numpy().max()) if dev.size else 0.0
    ok = all(v <= tolerance for v in worst.values())
    return CheckResult(ok, f"max per-fold share deviation: score {worst['score']:.3f}, prompt "
                       f"{worst['prompt_name']:.3f} (tolerance {tolerance})", worst)
