"""The GBDT ensemble member: TF-IDF (word + char n-grams) + handcrafted features -> LightGBM.

Trained on the same folds as the transformer heads: for fold k the vectorizers and the booster
see only the other folds, and essays of fold k get their out-of-fold prediction from it. Early
stopping uses a seeded slice of the training part, never the validation fold, so the OOF
predictions stay honest for the ensemble optimizer.

Saved folder (``GbdtMember.save``)::

    gbdt_member.json          config, feature names, fold count, OOF QWK
    fold_<k>.vectorizers.joblib   {"word": TfidfVectorizer, "char": TfidfVectorizer, "svd": ...}
    fold_<k>.lgb.txt          the LightGBM booster (text format)

``GbdtMember.load(folder).predict(texts)`` averages the fold models, 1..6 scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from tqdm.auto import tqdm

from aes_core.config import GbdtSection
from aes_core.ensemble.features import FEATURE_NAMES, feature_matrix
from aes_core.members import GBDT_MEMBER
from aes_core.metrics import qwk

META_FILE = "gbdt_member.json"
SCORE_MIN, SCORE_MAX = 1.0, 6.0


@dataclass
class FoldModel:
    """One fold's fitted vectorizers and booster."""

    word: TfidfVectorizer
    char: TfidfVectorizer
    svd: TruncatedSVD | None
    booster: lgb.Booster

    def design(self, texts: list[str], handcrafted: np.ndarray) -> sp.csr_matrix:
        tfidf = sp.hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()
        if self.svd is not None:
            tfidf = sp.csr_matrix(self.svd.transform(tfidf))
        return sp.hstack([tfidf, sp.csr_matrix(handcrafted)]).tocsr().astype(np.float32)

    def predict(self, texts: list[str], handcrafted: np.ndarray) -> np.ndarray:
        x = self.design(texts, handcrafted)
        return self.booster.predict(x, num_iteration=self.booster.best_iteration or None)


@dataclass
class GbdtMember:
    """Fold models of the GBDT member; ``predict`` averages them on the 1..6 scale."""

    cfg: GbdtSection
    folds: list[FoldModel]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return GBDT_MEMBER

    def predict(self, texts: list[str]) -> np.ndarray:
        """[N] texts -> [N] float predictions in 1..6, the mean over fold models."""
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        hand = feature_matrix(texts, spelling=self.cfg.spelling)
        preds = np.mean([f.predict(texts, hand) for f in self.folds], axis=0)
        return np.clip(preds, SCORE_MIN, SCORE_MAX)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(self.folds):
            joblib.dump({"word": f.word, "char": f.char, "svd": f.svd},
                        folder / f"fold_{k}.vectorizers.joblib")
            f.booster.save_model(str(folder / f"fold_{k}.lgb.txt"),
                                 num_iteration=f.booster.best_iteration or None)
        meta = {"member": GBDT_MEMBER, "n_folds": len(self.folds),
                "config": self.cfg.model_dump(), "handcrafted_features": list(FEATURE_NAMES),
                **self.info}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> GbdtMember:
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not a saved GBDT member folder")
        meta = json.loads(meta_path.read_text())
        cfg = GbdtSection.model_validate(meta.pop("config"))
        folds = []
        for k in range(int(meta["n_folds"])):
            vec_path = folder / f"fold_{k}.vectorizers.joblib"
            lgb_path = folder / f"fold_{k}.lgb.txt"
            for p in (vec_path, lgb_path):
                if not p.exists():
                    raise FileNotFoundError(f"{p} missing from GBDT member folder {folder}")
            v = joblib.load(vec_path)
            folds.append(FoldModel(v["word"], v["char"], v["svd"],
                                   lgb.Booster(model_file=str(lgb_path))))
        return cls(cfg=cfg, folds=folds, info=meta)


@dataclass
class GbdtFit:
    """Result of :func:`fit_gbdt`: OOF table (essay_id, gbdt), the member, per-fold QWK."""

    oof: pd.DataFrame
    member: GbdtMember
    oof_qwk: float
    fold_qwk: list[float]
    best_iterations: list[int]


def _vectorizers(cfg: GbdtSection) -> tuple[TfidfVectorizer, TfidfVectorizer]:
    if cfg.char_ngram_min > cfg.char_ngram_max:
        raise ValueError(f"gbdt.char_ngram_min ({cfg.char_ngram_min}) > gbdt.char_ngram_max "
                         f"({cfg.char_ngram_max})")
    if cfg.word_ngram_min > cfg.word_ngram_max:
        raise ValueError(f"gbdt.word_ngram_min ({cfg.word_ngram_min}) > gbdt.word_ngram_max "
                         f"({cfg.word_ngram_max})")
    word = TfidfVectorizer(analyzer="word", ngram_range=(cfg.word_ngram_min, cfg.word_ngram_max),
                           max_features=cfg.word_max_features, min_df=cfg.min_df,
                           sublinear_tf=True, lowercase=True, dtype=np.float32)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(cfg.char_ngram_min, cfg.char_ngram_max),
                           max_features=cfg.char_max_features, min_df=cfg.min_df,
                           sublinear_tf=True, lowercase=True, dtype=np.float32)
    return word, char


def _lgb_params(cfg: GbdtSection) -> dict[str, Any]:
    return {
        "objective": "regression", "metric": "rmse", "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves, "min_child_samples": cfg.min_child_samples,
        "feature_fraction": cfg.colsample_bytree, "bagging_fraction": cfg.subsample,
        "bagging_freq": 1 if cfg.subsample < 1 else 0, "lambda_l2": cfg.reg_lambda,
        "seed": cfg.seed, "num_threads": cfg.num_threads, "verbosity": -1,
        "deterministic": True, "force_row_wise": True,
    }


def fit_fold(texts: list[str], y: np.ndarray, hand: np.ndarray, cfg: GbdtSection,
             seed: int) -> FoldModel:
    """Fit vectorizers (+ SVD) and a LightGBM booster on one fold's training part."""
    word, char = _vectorizers(cfg)
    tfidf = sp.hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr()
    svd = None
    if cfg.svd_components:
        n_comp = min(cfg.svd_components, tfidf.shape[1] - 1, tfidf.shape[0] - 1)
        svd = TruncatedSVD(n_components=max(n_comp, 1), random_state=seed)
        tfidf = sp.csr_matrix(svd.fit_transform(tfidf))
    x = sp.hstack([tfidf, sp.csr_matrix(hand)]).tocsr().astype(np.float32)
    params = _lgb_params(cfg)
    n = len(y)
    n_hold = int(round(cfg.early_stopping_holdout * n))
    if n_hold >= 2 and n - n_hold >= 2:
        perm = np.random.default_rng(seed).permutation(n)
        hold, fit = perm[:n_hold], perm[n_hold:]
        dtrain = lgb.Dataset(x[fit], y[fit], free_raw_data=False)
        dvalid = lgb.Dataset(x[hold], y[hold], reference=dtrain)
        booster = lgb.train(params, dtrain, num_boost_round=cfg.n_estimators,
                            valid_sets=[dvalid],
                            callbacks=[lgb.early_stopping(cfg.early_stopping_rounds,
                                                          verbose=False)])
    else:
        booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=cfg.n_estimators)
    return FoldModel(word, char, svd, booster)


def fit_gbdt(folded: pd.DataFrame, cfg: GbdtSection, progress: bool = True) -> GbdtFit:
    """Train one fold model per fold of ``folded`` (essay_id, full_text, score, fold).

    Returns OOF predictions (1..6, clipped) for every essay from the model that did not see it.
    """
    missing = [c for c in ("essay_id", "full_text", "score", "fold") if c not in folded.columns]
    if missing:
        raise ValueError(f"folded essays: missing column(s) {missing}; "
                         f"found {list(folded.columns)}")
    if folded["score"].isna().any():
        bad = folded.loc[folded["score"].isna(), "essay_id"].head(5).tolist()
        raise ValueError(f"folded essays: missing score for essay_id {bad}")
    texts = folded["full_text"].astype(str).tolist()
    y = folded["score"].to_numpy(dtype=np.float64)
    fold = folded["fold"].to_numpy(dtype=int)
    fold_ids = sorted(np.unique(fold).tolist())
    if len(fold_ids) < 2:
        raise ValueError(f"folded essays: need at least 2 folds, found {fold_ids}")
    if fold_ids != list(range(len(fold_ids))):
        raise ValueError(f"folded essays: folds must be 0..K-1, found {fold_ids}")
    hand = feature_matrix(texts, spelling=cfg.spelling, progress=progress)
    oof = np.full(len(texts), np.nan)
    models: list[FoldModel] = []
    fold_qwk: list[float] = []
    best_its: list[int] = []
    for k in tqdm(fold_ids, desc="gbdt folds", disable=not progress):
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        model = fit_fold([texts[i] for i in tr], y[tr], hand[tr], cfg, seed=cfg.seed + k)
        oof[va] = np.clip(model.predict([texts[i] for i in va], hand[va]), SCORE_MIN, SCORE_MAX)
        models.append(model)
        fold_qwk.append(qwk(y[va], oof[va]))
        best_its.append(int(model.booster.best_iteration or model.booster.current_iteration()))
    total = qwk(y, oof)
    info = {"oof_qwk": total, "fold_qwk": fold_qwk, "best_iterations": best_its,
            "n_essays": len(texts)}
    member = GbdtMember(cfg=cfg, folds=models, info=info)
    frame = pd.DataFrame({"essay_id": folded["essay_id"].astype(str).to_numpy(),
                          GBDT_MEMBER: oof})
    return GbdtFit(oof=frame, member=member, oof_qwk=total, fold_qwk=fold_qwk,
                   best_iterations=best_its)
