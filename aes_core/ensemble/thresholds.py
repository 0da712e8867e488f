"""QWK-optimal score thresholds: 5 increasing cut points within 1..6, starting at 1.5..5.5.

Coordinate search on a grid (each cut in turn, between its neighbours), then an optional
Nelder-Mead polish that is kept only if it improves QWK and stays monotone. Only
improvements are accepted, so the result is never worse than plain rounding.
"""

from __future__ import annotations

import numpy as np

from aes_core.config import EnsembleSection

DEFAULT_THRESHOLDS = (1.5, 2.5, 3.5, 4.5, 5.5)
N_CLASSES = 6
LOW, HIGH = 1.0, 6.0


def fast_qwk(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """QWK of integer scores 1..6 (numpy bincount, ~100x faster than sklearn in loops)."""
    y_true = np.asarray(y_true, dtype=np.int64) - 1
    y_pred = np.asarray(y_pred, dtype=np.int64) - 1
    n = len(y_true)
    if n == 0:
        return float("nan")
    conf = np.bincount(y_true * N_CLASSES + y_pred, minlength=N_CLASSES * N_CLASSES)
    conf = conf.reshape(N_CLASSES, N_CLASSES).astype(np.float64)
    idx = np.arange(N_CLASSES)
    w = (idx[:, None] - idx[None, :]) ** 2 / (N_CLASSES - 1) ** 2
    expected = np.outer(conf.sum(1), conf.sum(0)) / n
    denom = (w * expected).sum()
    if denom == 0:
        return 0.0
    return float(1.0 - (w * conf).sum() / denom)


def cut(pred: np.ndarray, thresholds) -> np.ndarray:
    """Continuous predictions -> integer scores 1..6 (score = 1 + number of cuts <= pred)."""
    return 1 + np.searchsorted(np.asarray(thresholds, dtype=np.float64),
                               np.asarray(pred, dtype=np.float64), side="right")


def thresholded_qwk(pred: np.ndarray, y: np.ndarray, thresholds) -> float:
    return fast_qwk(y, cut(pred, thresholds))


def validate_thresholds(thresholds) -> list[float]:
    t = [float(x) for x in thresholds]
    if len(t) != N_CLASSES - 1:
        raise ValueError(f"expected {N_CLASSES - 1} thresholds, got {len(t)}: {t}")
    if any(b < a for a, b in zip(t, t[1:], strict=False)):
        raise ValueError(f"thresholds must be increasing, got {t}")
    if t[0] < LOW or t[-1] > HIGH:
        raise ValueError(f"thresholds must lie within {LOW}..{HIGH}, got {t}")
    return t


class CutGrid:
    """Essay counts per (grid cell, true score): the QWK of cut points on the grid without
    touching the essays again, and of every position of one cut at once (vectorised).

    Cut points are grid edges ``LOW + k * step``; an essay goes above a cut when its
    prediction is >= the cut (the rule of :func:`cut`).
    """

    def __init__(self, pred: np.ndarray, y: np.ndarray, step: float):
        self.step = step
        self.edges = LOW + step * np.arange(int(round((HIGH - LOW) / step)) + 1)
        cells = np.searchsorted(self.edges, pred, side="right")  # edges <= pred
        n_cells = len(self.edges) + 1
        counts = np.bincount(cells * N_CLASSES + (y - 1), minlength=n_cells * N_CLASSES)
        counts = counts.reshape(n_cells, N_CLASSES).astype(np.float64)
        self.cum = np.vstack([np.zeros(N_CLASSES), np.cumsum(counts, axis=0)])
        self.n = float(len(y))
        self.true = counts.sum(axis=0)
        idx = np.arange(N_CLASSES)
        self.w = (idx[:, None] - idx[None, :]) ** 2 / (N_CLASSES - 1) ** 2

    def index(self, t: float) -> int:
        return int(round((t - LOW) / self.step))

    def _bounds(self, cuts: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.asarray(cuts, dtype=np.int64) + 1,
                               [len(self.cum) - 1]])

    def confusion(self, cuts: np.ndarray) -> np.ndarray:
        b = self._bounds(cuts)
        return self.cum[b[1:]] - self.cum[b[:-1]]  # [predicted, true]

    def qwk(self, conf: np.ndarray) -> np.ndarray:
        """QWK of confusion matrices [..., predicted, true]."""
        expected = conf.sum(-1)[..., :, None] * self.true[None, :] / self.n
        denom = (self.w * expected).sum((-1, -2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 1.0 - (self.w * conf).sum((-1, -2)) / denom, 0.0)

    def best_position(self, cuts: np.ndarray, i: int, lo: int, hi: int) -> tuple[int, float]:
        """The grid position in [lo, hi] of cut ``i`` (others fixed) with the highest QWK."""
        cand = np.arange(lo, hi + 1)
        b = self._bounds(cuts)
        conf = np.broadcast_to(self.confusion(cuts), (len(cand), N_CLASSES, N_CLASSES)).copy()
        conf[:, i] = self.cum[cand + 1] - self.cum[b[i]]
        conf[:, i + 1] = self.cum[b[i + 2]] - self.cum[cand + 1]
        q = self.qwk(conf)
        k = int(np.argmax(q))
        return int(cand[k]), float(q[k])


def fit_thresholds(pred: np.ndarray, y: np.ndarray,
                   cfg: EnsembleSection | None = None) -> tuple[list[float], float]:
    """QWK-optimal increasing cut points for ``pred`` (1..6 scale) against ``y``.

    Returns (thresholds, QWK). Thresholds lie within 1..6, at least ``threshold_min_gap`` apart.
    """
    cfg = cfg or EnsembleSection()
    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if pred.shape != y.shape:
        raise ValueError(f"pred {pred.shape} and y {y.shape} differ in shape")
    if not np.isfinite(pred).all():
        raise ValueError("predictions contain NaN or inf; cannot fit thresholds")
    gap, step = cfg.threshold_min_gap, cfg.threshold_step
    grid = CutGrid(pred, y, step)
    gap_cells = int(np.ceil(gap / step - 1e-9))
    cuts = np.array([grid.index(t) for t in DEFAULT_THRESHOLDS])
    best = float(grid.qwk(grid.confusion(cuts)))
    for _ in range(cfg.threshold_passes):
        improved = False
        for i in range(len(cuts)):
            lo = cuts[i - 1] + gap_cells if i > 0 else 0
            hi = cuts[i + 1] - gap_cells if i < len(cuts) - 1 else len(grid.edges) - 1
            if hi < lo:
                continue
            pos, q = grid.best_position(cuts, i, lo, hi)
            if q > best + 1e-12:
                best, cuts[i], improved = q, pos, True
        if not improved:
            break
    t = grid.edges[cuts]
    best = thresholded_qwk(pred, y, t)  # the exact rule on the essays themselves

    def objective(x: np.ndarray) -> float:
        if x[0] < LOW or x[-1] > HIGH or np.any(np.diff(x) < gap):
            return 1.0  # infeasible: worse than any QWK
        return -thresholded_qwk(pred, y, x)

    from scipy.optimize import minimize  # fitting only: scoring never needs scipy

    res = minimize(objective, t, method="Nelder-Mead",
                   options={"maxiter": cfg.threshold_max_iter, "xatol": 1e-4, "fatol": 1e-7,
                            "initial_simplex": t + np.vstack([np.zeros(5), 0.05 * np.eye(5)])})
    if -res.fun > best + 1e-12:
        best, t = float(-res.fun), np.asarray(res.x)
    return validate_thresholds(np.round(t, 6).tolist()), float(best)
