"""A stacker beside Nelder-Mead: a meta-model over member OOF predictions + essay statistics.

Inputs per essay: every member's OOF prediction (1..6) and a few statistics of its text
(:data:`STAT_NAMES`, from :mod:`aes_core.ensemble.features`; counts log-scaled), so the
meta-model can learn, e.g., that one member is better on short essays. Two kinds:
``ridge`` (standardized inputs, L2) and ``lightgbm`` (shallow, strongly regularised trees).

Everything is cross-validated on the OOF table's folds (:func:`fit_stacker`):

* the stacker's own OOF prediction for fold k comes from a model fitted on the other folds;
* its nested QWK for fold k uses that prediction cut at thresholds fitted on an inner CV over
  the other folds only (models that saw neither fold k nor the inner fold), so no number that
  scores fold k was fitted on fold k;
* the served stacker is the mean of the K fold models, cut at thresholds fitted on the OOF.

Saved folder (:meth:`Stacker.save`)::

    stacker.json          kind, members, statistics, thresholds, fold count, CV figures
    fold_<k>.ridge.json   ridge: scaler mean/scale, coefficients, intercept
    fold_<k>.lgb.txt      lightgbm: the booster (text format)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from aes_core.config import EnsembleSection
from aes_core.ensemble.features import FEATURE_NAMES, feature_matrix
from aes_core.ensemble.thresholds import cut, fast_qwk, fit_thresholds

STACKER_FILE = "stacker.json"
STAT_NAMES = ("n_words", "n_paragraphs", "n_sentences", "type_token_ratio",
              "spelling_error_rate")
LOG_STATS = ("n_words", "n_paragraphs", "n_sentences")  # counts: log1p before fitting
KINDS = ("ridge", "lightgbm")
SCORE_MIN, SCORE_MAX = 1.0, 6.0


def essay_statistics(texts: Sequence[str], n_jobs: int = 1) -> np.ndarray:
    """[N, len(STAT_NAMES)] statistics of each text (basic handcrafted features; counts log1p)."""
    texts = [str(t) for t in texts]
    full = feature_matrix(texts, spelling=True, feature_set="basic", n_jobs=n_jobs)
    out = full[:, [FEATURE_NAMES.index(n) for n in STAT_NAMES]].astype(np.float64)
    for j, n in enumerate(STAT_NAMES):
        if n in LOG_STATS:
            out[:, j] = np.log1p(out[:, j])
    return out


@dataclass
class MetaModel:
    """One fitted meta-model: ridge (scaler + coefficients) or a LightGBM booster."""

    kind: str
    ridge: dict[str, list[float]] | None = None
    booster: lgb.Booster | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "ridge":
            r = self.ridge
            z = (x - np.asarray(r["mean"])) / np.asarray(r["scale"])
            return z @ np.asarray(r["coef"]) + r["intercept"][0]
        return self.booster.predict(x)


def fit_meta(kind: str, x: np.ndarray, y: np.ndarray, cfg: EnsembleSection) -> MetaModel:
    """Fit one meta-model of ``kind`` on rows ``x`` -> ``y`` (1..6)."""
    if kind == "ridge":
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0
        z = (x - mean) / scale
        y_mean = y.mean()
        a = z.T @ z + cfg.stacker_ridge_alpha * np.eye(z.shape[1])
        coef = np.linalg.solve(a, z.T @ (y - y_mean))
        return MetaModel("ridge", ridge={"mean": mean.tolist(), "scale": scale.tolist(),
                                         "coef": coef.tolist(), "intercept": [float(y_mean)]})
    if kind == "lightgbm":
        params = {"objective": "regression", "learning_rate": cfg.stacker_learning_rate,
                  "num_leaves": cfg.stacker_num_leaves, "max_depth": cfg.stacker_max_depth,
                  "min_child_samples": cfg.stacker_min_child_samples,
                  "lambda_l2": cfg.stacker_reg_lambda, "feature_fraction": 1.0,
                  "bagging_fraction": 0.8, "bagging_freq": 1, "seed": cfg.seed,
                  "num_threads": cfg.stacker_threads, "verbosity": -1, "deterministic": True,
                  "force_row_wise": True}
        booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=cfg.stacker_rounds)
        return MetaModel("lightgbm", booster=booster)
    raise ValueError(f"unknown stacker kind {kind!r}; expected one of {KINDS}")


@dataclass
class Stacker:
    """K fold meta-models over [member predictions, essay statistics]; mean, clipped 1..6."""

    kind: str
    members: list[str]
    models: list[MetaModel]
    thresholds: list[float]
    info: dict[str, Any] = field(default_factory=dict)

    def design(self, member_preds: np.ndarray, texts: Sequence[str] | None = None,
               stats: np.ndarray | None = None) -> np.ndarray:
        """[N, M] predictions + texts (or precomputed ``stats``) -> the meta-model's inputs."""
        p = np.asarray(member_preds, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.members):
            raise ValueError(f"stacker: expected [N, {len(self.members)}] member predictions "
                             f"({self.members}), got {p.shape}")
        if stats is None:
            if texts is None:
                raise ValueError("the stacker needs the essay texts (for essay statistics)")
            texts = list(texts)
            if len(texts) != len(p):
                raise ValueError(f"stacker: {len(texts)} texts for {len(p)} prediction rows")
            stats = essay_statistics(texts)
        return np.hstack([p, np.asarray(stats, dtype=np.float64).reshape(len(p), -1)])

    def predict(self, member_preds: np.ndarray, texts: Sequence[str] | None = None,
                stats: np.ndarray | None = None) -> np.ndarray:
        """Continuous 1..6 prediction: the mean of the fold meta-models."""
        x = self.design(member_preds, texts, stats)
        if not len(x):
            return np.zeros(0)
        return np.clip(np.mean([m.predict(x) for m in self.models], axis=0),
                       SCORE_MIN, SCORE_MAX)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for k, m in enumerate(self.models):
            if m.kind == "ridge":
                (folder / f"fold_{k}.ridge.json").write_text(json.dumps(m.ridge))
            else:
                m.booster.save_model(str(folder / f"fold_{k}.lgb.txt"))
        meta = {"kind": self.kind, "members": self.members, "stats": list(STAT_NAMES),
                "log_stats": list(LOG_STATS), "thresholds": self.thresholds,
                "n_folds": len(self.models), **self.info}
        (folder / STACKER_FILE).write_text(json.dumps(meta, indent=2, default=float))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Stacker:
        folder = Path(folder)
        path = folder / STACKER_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: not a saved stacker folder")
        meta = json.loads(path.read_text())
        if meta.get("stats") != list(STAT_NAMES) or meta.get("log_stats") != list(LOG_STATS):
            raise ValueError(f"{path}: stacker was fitted on statistics {meta.get('stats')} "
                             f"(log {meta.get('log_stats')}); this code computes "
                             f"{list(STAT_NAMES)} (log {list(LOG_STATS)})")
        models = []
        for k in range(int(meta["n_folds"])):
            if meta["kind"] == "ridge":
                p = folder / f"fold_{k}.ridge.json"
                models.append(MetaModel("ridge", ridge=json.loads(p.read_text())))
            else:
                p = folder / f"fold_{k}.lgb.txt"
                models.append(MetaModel("lightgbm", booster=lgb.Booster(model_file=str(p))))
        info = {k: v for k, v in meta.items()
                if k not in ("kind", "members", "stats", "log_stats", "thresholds", "n_folds")}
        return cls(kind=meta["kind"], members=list(meta["members"]), models=models,
                   thresholds=list(meta["thresholds"]), info=info)


@dataclass
class FitRecord:
    """Which rows one meta-model was fitted on and which it predicted (and why)."""

    purpose: str            # "outer" (fold k's OOF) or "inner" (thresholds for fold k)
    outer_fold: int
    train_rows: np.ndarray
    predict_rows: np.ndarray


@dataclass
class StackerFit:
    """:func:`fit_stacker`'s result: the served stacker and its cross-validated figures."""

    stacker: Stacker
    oof: np.ndarray                 # [N] continuous OOF prediction (fold k from a model w/o k)
    nested_scores: np.ndarray       # [N] integer scores, fold k fitted without fold k at all
    nested_qwk: float
    oof_qwk: float                  # OOF prediction cut at thresholds fitted on the OOF
    nested_fold_qwk: list[float]
    records: list[FitRecord] = field(default_factory=list)


def fit_stacker(member_preds: np.ndarray, stats: np.ndarray, y: np.ndarray, folds: np.ndarray,
                members: Sequence[str], kind: str, cfg: EnsembleSection) -> StackerFit:
    """Nested cross-validation of a ``kind`` stacker on the OOF table's folds (see module doc)."""
    if kind not in KINDS:
        raise ValueError(f"unknown stacker kind {kind!r}; expected one of {KINDS}")
    p = np.asarray(member_preds, dtype=np.float64)
    x = np.hstack([p, np.asarray(stats, dtype=np.float64).reshape(len(p), -1)])
    y = np.asarray(y, dtype=np.int64)
    folds = np.asarray(folds, dtype=int)
    fold_ids = sorted(np.unique(folds).tolist())
    if len(fold_ids) < 3:
        raise ValueError(f"the stacker's nested CV needs at least 3 folds, found {fold_ids}")
    oof = np.full(len(y), np.nan)
    nested = np.zeros(len(y), dtype=np.int64)
    models: list[MetaModel] = []
    records: list[FitRecord] = []
    fold_q: list[float] = []
    for k in fold_ids:
        tr, va = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        model = fit_meta(kind, x[tr], y[tr], cfg)
        records.append(FitRecord("outer", k, tr, va))
        models.append(model)
        oof[va] = np.clip(model.predict(x[va]), SCORE_MIN, SCORE_MAX)
        inner = np.full(len(y), np.nan)
        for j in fold_ids:
            if j == k:
                continue
            itr = np.flatnonzero((folds != k) & (folds != j))
            iva = np.flatnonzero(folds == j)
            records.append(FitRecord("inner", k, itr, iva))
            inner[iva] = np.clip(fit_meta(kind, x[itr], y[itr], cfg).predict(x[iva]),
                                 SCORE_MIN, SCORE_MAX)
        t_k, _ = fit_thresholds(inner[tr], y[tr], cfg)
        nested[va] = cut(oof[va], t_k)
        fold_q.append(round(fast_qwk(y[va], nested[va]), 6))
    thresholds, oof_qwk = fit_thresholds(oof, y, cfg)
    nested_qwk = fast_qwk(y, nested)
    info = {"nested_qwk": round(nested_qwk, 6), "oof_qwk": round(oof_qwk, 6),
            "nested_fold_qwk": fold_q, "n_essays": int(len(y))}
    stacker = Stacker(kind=kind, members=list(members), models=models,
                      thresholds=thresholds, info=info)
    return StackerFit(stacker=stacker, oof=oof, nested_scores=nested, nested_qwk=nested_qwk,
                      oof_qwk=oof_qwk, nested_fold_qwk=fold_q, records=records)
