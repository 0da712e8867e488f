"""Quadratic weighted kappa and friends on the 1..6 score scale."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

SCORES = np.arange(1, 7)


def clip_round(pred: np.ndarray) -> np.ndarray:
    """Continuous predictions -> integer scores 1..6 by rounding."""
    return np.clip(np.rint(np.asarray(pred, dtype=float)), 1, 6).astype(int)


def qwk(y_true, y_pred) -> float:
    """QWK between integer scores; continuous predictions are rounded and clipped first."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred)
    if y_pred.dtype.kind == "f":
        y_pred = clip_round(y_pred)
    if len(y_true) == 0:
        return float("nan")
    if len(np.unique(np.concatenate([y_true, y_pred]))) < 2:
        return 0.0
    return float(cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=SCORES))


def score_confusion(y_true, y_pred) -> np.ndarray:
    return confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), labels=SCORES)
