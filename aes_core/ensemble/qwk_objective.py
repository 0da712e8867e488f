"""A QWK-shaped LightGBM objective: the surrogate of the public AES2 "qwk_obj" notebooks.

QWK is ``1 - observed / expected`` disagreement. With predictions ``p`` (the booster's raw
score plus ``a``, clipped to the score scale) and labels ``y``::

    f = 1/2 * sum((p - y)^2)            observed squared disagreement
    g = 1/2 * sum((p - a)^2 + b)        expected disagreement against a label drawn from a
                                        distribution of mean a and variance b
    loss = N * f / g                    (N = rows: keeps gradients on the scale of squared error)

``grad = N * (df / g - f * dg / g^2)`` with ``df = p - y``, ``dg = p - a``, and a unit hessian,
as in the public version (which also passes the clip through as identity). The booster starts
at raw score 0, i.e. at ``a``; :func:`bake_offset` moves that shift into the first tree so a
saved booster predicts on the score scale by itself, with no objective needed at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

SCORE_MIN, SCORE_MAX = 1.0, 6.0
METRIC_NAME = "qwk_surrogate"  # f / g on an eval set: lower is better


@dataclass(frozen=True)
class QwkSurrogate:
    """The surrogate with centre ``a`` (the score the booster starts from, about the mean
    score) and spread ``b`` (about the score variance)."""

    a: float
    b: float

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Raw booster output -> predictions on the score scale."""
        return np.clip(np.asarray(raw, dtype=np.float64) + self.a, SCORE_MIN, SCORE_MAX)

    def _terms(self, raw: np.ndarray, labels: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, float, float]:
        p = self.scores(raw)
        y = np.asarray(labels, dtype=np.float64)
        df, dg = p - y, p - self.a
        return df, dg, 0.5 * float(df @ df), 0.5 * float(dg @ dg + self.b * len(p))

    def loss(self, raw: np.ndarray, labels: np.ndarray) -> float:
        """``N * f / g`` (what :meth:`grad_hess` differentiates)."""
        _, _, f, g = self._terms(raw, labels)
        return len(labels) * f / g

    def grad_hess(self, raw: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient of :meth:`loss` w.r.t. the raw scores, and the unit hessian."""
        df, dg, f, g = self._terms(raw, labels)
        grad = (df / g - f * dg / g**2) * len(df)
        return grad, np.ones_like(grad)

    def objective(self, preds: np.ndarray, data: lgb.Dataset) -> tuple[np.ndarray, np.ndarray]:
        """LightGBM 4 custom objective: ``params["objective"] = surrogate.objective``."""
        return self.grad_hess(preds, data.get_label())

    def metric(self, preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
        """LightGBM ``feval`` for early stopping on the objective's own criterion, ``f / g``."""
        _, _, f, g = self._terms(preds, data.get_label())
        return METRIC_NAME, f / g, False


def bake_offset(booster: lgb.Booster, offset: float) -> lgb.Booster:
    """Add ``offset`` to every leaf of the first tree, in place: the booster's own
    ``predict`` (and its saved model file) then includes the shift the objective trained
    around."""
    n_leaves = booster.dump_model(num_iteration=1)["tree_info"][0]["num_leaves"]
    for leaf in range(n_leaves):
        booster.set_leaf_output(0, leaf, booster.get_leaf_output(0, leaf) + offset)
    return booster
