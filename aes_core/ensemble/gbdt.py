"""The GBDT ensemble member: TF-IDF (word + char n-grams) + handcrafted features -> LightGBM.

Trained on the same folds as the transformer heads: for fold k the vectorizers and the booster
see only the other folds, and essays of fold k get their out-of-fold prediction from it. Early
stopping uses a seeded slice of the training part, never the validation fold, so the OOF
predictions stay honest for the ensemble optimizer.

Saved folder (``GbdtMember.save``)::

    gbdt_member.json          config, feature names, fold count, OOF QWK
    fold_<k>.vectorizers.joblib   {"word": TfidfVectorizer, "char": TfidfVectorizer, "svd": ...}
    fold_<k>.lgb.txt          the LightGBM booster (text format)

    feature_importance.csv    gain per feature (mean over folds), largest first

``GbdtMember.load(folder).predict(texts)`` averages the fold models, 1..6 scale. With
``objective: qwk`` the booster trains around ``qwk_a`` (see :mod:`aes_core.ensemble.qwk_objective`)
and that shift is baked into its first tree, so every saved booster predicts on the score scale
by itself: loading needs neither the custom objective nor an offset.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.preprocessing import normalize
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2
from tqdm.auto import tqdm

from aes_core.config import GbdtSection
from aes_core.ensemble.features import feature_matrix, feature_names
from aes_core.ensemble.qwk_objective import QwkSurrogate, bake_offset
from aes_core.hardware import usable_cpus
from aes_core.members import GBDT_MEMBER
from aes_core.metrics import qwk

META_FILE = "gbdt_member.json"
IMPORTANCE_FILE = "feature_importance.csv"
SCORE_MIN, SCORE_MAX = 1.0, 6.0


@dataclass
class FoldModel:
    """One fold's fitted vectorizers and booster."""

    word: TfidfVectorizer
    char: TfidfVectorizer
    svd: TruncatedSVD | None
    booster: lgb.Booster

    def design(self, texts: list[str], handcrafted: np.ndarray) -> sp.csr_matrix:
        return _design(self.word.transform(texts), self.char.transform(texts), handcrafted,
                       self.svd)

    def predict(self, texts: list[str], handcrafted: np.ndarray) -> np.ndarray:
        return self.predict_design(self.design(texts, handcrafted))

    def predict_design(self, x: sp.csr_matrix, **lgb_params: Any) -> np.ndarray:
        return self.booster.predict(x, num_iteration=self.booster.best_iteration or None,
                                    **lgb_params)

    def tfidf_names(self) -> list[str]:
        """Names of the TF-IDF columns: ``word:<n-gram>``, ``char:<n-gram>`` (or ``svd_<i>``)."""
        if self.svd is not None:
            return [f"svd_{i}" for i in range(self.svd.n_components)]
        return ([f"word:{t}" for t in self.word.get_feature_names_out()]
                + [f"char:{t}" for t in self.char.get_feature_names_out()])


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
        hand = feature_matrix(texts, spelling=self.cfg.spelling,
                              feature_set=self.cfg.feature_set)
        if any(f.svd is not None for f in self.folds):
            preds = np.mean([f.predict(texts, hand) for f in self.folds], axis=0)
        else:  # tokenize once for all folds: counts over the union of their vocabularies
            tfidf = {kind: self._shared_tfidf(kind, texts) for kind in ("word", "char")}
            threads = {"num_threads": 1} if len(texts) == 1 else {}  # one row: no OpenMP team
            preds = np.mean([f.predict_design(_design(w, c, hand, None), **threads)
                             for f, w, c in zip(self.folds, tfidf["word"], tfidf["char"],
                                                strict=True)], axis=0)
        return np.clip(preds, SCORE_MIN, SCORE_MAX)

    def warm_up(self) -> GbdtMember:
        """Load what the first prediction would (the spelling word list, the shared n-gram
        counters: ~300 ms), so that a server's first request does not wait for it."""
        self.predict(["A short essay to warm up the member."])
        return self

    def _shared_tfidf(self, kind: str, texts: list[str]) -> list[sp.csr_matrix]:
        """Each fold's ``<kind>.transform(texts)``, counting the n-grams once for all folds.

        Same float32 values as ``TfidfVectorizer.transform``: log(tf) + 1, * idf, then sklearn's
        own row-wise l2 loop — but by gathering each fold's columns from the union counts
        through an index array instead of sparse column slicing and a validated
        ``TfidfTransformer.transform`` per fold (most of the time of one essay).
        """
        vecs = [getattr(f, kind) for f in self.folds]
        key = f"_union_{kind}"
        if key not in self.__dict__:
            union = sorted(set().union(*(v.vocabulary_ for v in vecs)))
            index = {t: j for j, t in enumerate(union)}
            counter = CountVectorizer(**{p: getattr(vecs[0], p) for p in
                                         ("analyzer", "ngram_range", "lowercase")},
                                      vocabulary=index, dtype=np.float32)
            pos = np.full((len(vecs), len(union)), -1, dtype=np.int32)  # union col -> fold col
            for k, v in enumerate(vecs):
                terms = v.get_feature_names_out()
                cols = np.fromiter((index[t] for t in terms), dtype=np.int64, count=len(terms))
                if np.any(np.diff(cols) <= 0):  # l2 sums must run in the fold's column order
                    raise ValueError(f"gbdt fold {k} {kind} vocabulary is not in sorted order")
                pos[k, cols] = np.arange(len(terms), dtype=np.int32)
            self.__dict__[key] = (counter, pos)
        counter, pos = self.__dict__[key]
        counts = sp.csr_matrix(counter.transform(texts))
        counts.sort_indices()
        out = []
        for k, v in enumerate(vecs):
            col = pos[k, counts.indices]
            keep = col >= 0
            data, col = counts.data[keep], col[keep]
            if v.sublinear_tf:
                np.log(data, data)
                data += 1.0
            if v.use_idf:
                data *= v.idf_[col]
            indptr = np.concatenate(([0], np.cumsum(keep)))[counts.indptr].astype(np.int32)
            x = sp.csr_matrix((data, col, indptr), shape=(counts.shape[0], len(v.vocabulary_)))
            if v.norm == "l2":
                inplace_csr_row_normalize_l2(x)
            elif v.norm is not None:
                x = normalize(x, norm=v.norm, copy=False)
            out.append(x)
        return out

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(self.folds):
            joblib.dump({"word": f.word, "char": f.char, "svd": f.svd},
                        folder / f"fold_{k}.vectorizers.joblib")
            f.booster.save_model(str(folder / f"fold_{k}.lgb.txt"),
                                 num_iteration=f.booster.best_iteration or None)
        meta = {"member": GBDT_MEMBER, "n_folds": len(self.folds),
                "config": self.cfg.model_dump(),
                "handcrafted_features": list(feature_names(self.cfg.feature_set)),
                **self.info}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
        self.importance().to_csv(folder / IMPORTANCE_FILE, index=False)
        return folder

    def importance(self) -> pd.DataFrame:
        """``feature, gain, share``: LightGBM gain per feature, mean over folds, largest first.

        Features are ``word:<n-gram>``, ``char:<n-gram>`` (or ``svd_<i>``) and the handcrafted
        names; a fold that lacks an n-gram in its vocabulary counts it as 0.
        """
        hand = list(feature_names(self.cfg.feature_set))
        total: dict[str, float] = defaultdict(float)
        for f in self.folds:
            names = f.tfidf_names() + hand
            gain = f.booster.feature_importance(importance_type="gain")
            if len(gain) != len(names):
                raise ValueError(f"GBDT fold booster has {len(gain)} features, expected "
                                 f"{len(names)} (TF-IDF + {len(hand)} handcrafted)")
            for n, g in zip(names, gain, strict=True):
                if g > 0:
                    total[n] += float(g) / len(self.folds)
        df = pd.DataFrame({"feature": list(total), "gain": list(total.values())})
        df = df.sort_values("gain", ascending=False, kind="stable").reset_index(drop=True)
        df["share"] = df["gain"] / max(df["gain"].sum(), 1e-12)
        return df

    @classmethod
    def load(cls, folder: str | Path) -> GbdtMember:
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not a saved GBDT member folder")
        meta = json.loads(meta_path.read_text())
        saved = meta.pop("config")
        saved.setdefault("feature_set", "basic")  # members saved before feature sets existed
        cfg = GbdtSection.model_validate(saved)
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


def load_importance(model_dir: str | Path) -> pd.DataFrame:
    """The ``feature, gain, share`` table a saved GBDT member wrote (see ``importance``)."""
    path = Path(model_dir) / IMPORTANCE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: GBDT member saved without importances")
    return pd.read_csv(path, keep_default_na=False)


@dataclass
class GbdtFit:
    """Result of :func:`fit_gbdt`: OOF table (essay_id, gbdt), the member, per-fold QWK."""

    oof: pd.DataFrame
    member: GbdtMember
    oof_qwk: float
    fold_qwk: list[float]
    best_iterations: list[int]
    timings: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # phase -> CPU s (all threads)


class Phases:
    """Wall and CPU seconds (this process, all threads) per named phase, plus ``total``."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._start = (time.perf_counter(), time.process_time())

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] += time.perf_counter() - w
            self.cpu[name] += time.process_time() - c

    def totals(self) -> dict[str, dict[str, float]]:
        wall = {**self.wall, "total": time.perf_counter() - self._start[0]}
        cpu = {**self.cpu, "total": time.process_time() - self._start[1]}
        return {"wall": wall, "cpu": cpu}


def _check_ranges(cfg: GbdtSection) -> None:
    if cfg.char_ngram_min > cfg.char_ngram_max:
        raise ValueError(f"gbdt.char_ngram_min ({cfg.char_ngram_min}) > gbdt.char_ngram_max "
                         f"({cfg.char_ngram_max})")
    if cfg.word_ngram_min > cfg.word_ngram_max:
        raise ValueError(f"gbdt.word_ngram_min ({cfg.word_ngram_min}) > gbdt.word_ngram_max "
                         f"({cfg.word_ngram_max})")


def _analyzer(kind: str, cfg: GbdtSection) -> dict[str, Any]:
    """CountVectorizer/TfidfVectorizer settings of the ``word`` or ``char`` n-grams."""
    if kind == "word":
        return {"analyzer": "word", "ngram_range": (cfg.word_ngram_min, cfg.word_ngram_max),
                "lowercase": True}
    return {"analyzer": "char_wb", "ngram_range": (cfg.char_ngram_min, cfg.char_ngram_max),
            "lowercase": True}


def _max_features(kind: str, cfg: GbdtSection) -> int:
    return cfg.word_max_features if kind == "word" else cfg.char_max_features


def _vectorizers(cfg: GbdtSection) -> tuple[TfidfVectorizer, TfidfVectorizer]:
    """Unfitted word and char TF-IDF vectorizers (the reference for :class:`NgramCounts`)."""
    _check_ranges(cfg)
    word, char = (TfidfVectorizer(**_analyzer(k, cfg), max_features=_max_features(k, cfg),
                                  min_df=cfg.min_df, sublinear_tf=True, dtype=np.float32)
                  for k in ("word", "char"))
    return word, char


@dataclass
class NgramCounts:
    """Counts of every ``word`` or ``char`` n-gram of all essays, counted once.

    Per fold, :meth:`fold_tfidf` picks the vocabulary (``min_df``, top ``max_features`` by
    count) and the idf from the fold's training rows only, exactly as ``TfidfVectorizer.fit``
    on those texts would, and returns that fitted vectorizer plus its transform of every essay
    — without re-tokenizing the texts once per fold.
    """

    kind: str
    counts: sp.csr_matrix   # [N, V] float32, columns in alphabetical term order
    terms: np.ndarray       # [V] the n-grams

    @classmethod
    def build(cls, texts: list[str], kind: str, cfg: GbdtSection) -> NgramCounts:
        _check_ranges(cfg)
        cv = CountVectorizer(**_analyzer(kind, cfg), dtype=np.float32)
        counts = sp.csr_matrix(cv.fit_transform(texts))  # fit_transform sorts the terms
        return cls(kind, counts, cv.get_feature_names_out())

    def fold_tfidf(self, rows: np.ndarray, cfg: GbdtSection
                   ) -> tuple[TfidfVectorizer, sp.csr_matrix]:
        """(vectorizer fitted on ``rows``, its [N, vocab] transform of all essays)."""
        sub = self.counts[rows]
        df = np.bincount(sub.indices, minlength=self.counts.shape[1])
        mask = df >= cfg.min_df
        limit = _max_features(self.kind, cfg)
        if mask.sum() > limit:  # CountVectorizer._limit_features: top counts, same tie order
            tfs = np.asarray(sub.sum(axis=0)).ravel()
            keep = np.zeros_like(mask)
            keep[np.flatnonzero(mask)[(-tfs[mask]).argsort()[:limit]]] = True
            mask = keep
        cols = np.flatnonzero(mask)
        if not len(cols):
            raise ValueError(f"gbdt {self.kind} n-grams: no term is in >= gbdt.min_df "
                             f"({cfg.min_df}) training essays")
        tfidf = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True)
        tfidf.fit(sub[:, cols])
        vec = TfidfVectorizer(**_analyzer(self.kind, cfg), max_features=limit,
                              min_df=cfg.min_df, sublinear_tf=True, dtype=np.float32,
                              vocabulary={t: j for j, t in enumerate(self.terms[cols])})
        vec.idf_ = tfidf.idf_
        return vec, sp.csr_matrix(tfidf.transform(self.counts[:, cols]))


def surrogate(cfg: GbdtSection) -> QwkSurrogate | None:
    """The QWK surrogate of ``objective: qwk`` (None for plain regression)."""
    return QwkSurrogate(cfg.qwk_a, cfg.qwk_b) if cfg.objective == "qwk" else None


def _lgb_params(cfg: GbdtSection, qwk_obj: QwkSurrogate | None,
                threads: int | None = None) -> dict[str, Any]:
    objective = {"objective": "regression", "metric": "rmse"} if qwk_obj is None else {
        "objective": qwk_obj.objective, "metric": "None"}  # early stopping: qwk_obj.metric
    return {
        **objective, "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves, "min_child_samples": cfg.min_child_samples,
        "feature_fraction": cfg.colsample_bytree, "bagging_fraction": cfg.subsample,
        "bagging_freq": 1 if cfg.subsample < 1 else 0, "lambda_l2": cfg.reg_lambda,
        "seed": cfg.seed, "num_threads": cfg.num_threads if threads is None else threads,
        "verbosity": -1, "deterministic": True, "force_row_wise": cfg.force_row_wise,
        "max_bin": cfg.max_bin,
    }


def train_booster(x: sp.csr_matrix, y: np.ndarray, cfg: GbdtSection, seed: int,
                  threads: int | None = None) -> lgb.Booster:
    """LightGBM on one fold's training rows; early stopping on a seeded slice of them (on
    RMSE, or on the surrogate's f/g with ``objective: qwk``). The booster predicts on the
    score scale (the qwk objective's offset is baked into its first tree)."""
    qwk_obj = surrogate(cfg)
    params = _lgb_params(cfg, qwk_obj, threads)
    n = len(y)
    n_hold = int(round(cfg.early_stopping_holdout * n))
    if n_hold >= 2 and n - n_hold >= 2:
        perm = np.random.default_rng(seed).permutation(n)
        hold, fit = perm[:n_hold], perm[n_hold:]
        dtrain = lgb.Dataset(x[fit], y[fit], free_raw_data=False)
        dvalid = lgb.Dataset(x[hold], y[hold], reference=dtrain)
        feval = None if qwk_obj is None else qwk_obj.metric
        booster = lgb.train(params, dtrain, num_boost_round=cfg.n_estimators,
                            valid_sets=[dvalid], feval=feval,
                            callbacks=[lgb.early_stopping(cfg.early_stopping_rounds,
                                                          verbose=False)])
    else:
        booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=cfg.n_estimators)
    return booster if qwk_obj is None else bake_offset(booster, qwk_obj.a)


def _design(word: sp.csr_matrix, char: sp.csr_matrix, hand: np.ndarray,
            svd: TruncatedSVD | None) -> sp.csr_matrix:
    """[word TF-IDF | char TF-IDF | handcrafted] as float32 CSR (TF-IDF through ``svd`` when
    given), stacked in one pass."""
    blocks = [word, char] if svd is None else [svd.transform(sp.hstack([word, char]).tocsr())]
    return sp.hstack([*map(sp.csr_matrix, blocks), sp.csr_matrix(hand)], format="csr",
                     dtype=np.float32)


def _fit_svd(tfidf: sp.csr_matrix, cfg: GbdtSection, seed: int) -> TruncatedSVD:
    n_comp = min(cfg.svd_components, tfidf.shape[1] - 1, tfidf.shape[0] - 1)
    return TruncatedSVD(n_components=max(n_comp, 1), random_state=seed).fit(tfidf)


def _workers(cfg: GbdtSection, n_folds: int) -> tuple[int, int | None]:
    """(folds trained at once, LightGBM threads each) from ``n_jobs`` and ``num_threads``."""
    cores = usable_cpus()
    jobs = min(cfg.n_jobs or cores, n_folds)
    if jobs <= 1:
        return 1, None
    total = cfg.num_threads or cores
    return jobs, max(1, total // jobs)


def fit_gbdt(folded: pd.DataFrame, cfg: GbdtSection, progress: bool = True) -> GbdtFit:
    """Train one fold model per fold of ``folded`` (essay_id, full_text, score, fold).

    Returns OOF predictions (1..6, clipped) for every essay from the model that did not see it.
    Handcrafted features and n-gram counts are computed once for all essays (both are pure
    functions of one text); each fold's vocabulary, idf and booster see its training rows only.
    ``fit.timings`` holds the seconds per phase.
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
    _check_ranges(cfg)
    phase = Phases()
    jobs, threads = _workers(cfg, len(fold_ids))
    with phase("handcrafted"):
        hand = feature_matrix(texts, spelling=cfg.spelling, progress=progress,
                              feature_set=cfg.feature_set,
                              n_jobs=cfg.n_jobs or usable_cpus())
    counts = {}
    for kind in ("word", "char"):
        with phase(f"ngram_count_{kind}"):
            counts[kind] = NgramCounts.build(texts, kind, cfg)

    def prepare(k: int) -> tuple[TfidfVectorizer, TfidfVectorizer, TruncatedSVD | None,
                                 sp.csr_matrix]:
        with phase("fold_tfidf_design"):
            tr = np.flatnonzero(fold != k)
            word, w_all = counts["word"].fold_tfidf(tr, cfg)
            char, c_all = counts["char"].fold_tfidf(tr, cfg)
            svd = _fit_svd(sp.hstack([w_all[tr], c_all[tr]]).tocsr(), cfg, cfg.seed + k) \
                if cfg.svd_components else None
            x = _design(w_all, c_all, hand, svd)
        return word, char, svd, x

    def train(k: int, x: sp.csr_matrix) -> lgb.Booster:
        tr = np.flatnonzero(fold != k)
        return train_booster(x[tr], y[tr], cfg, seed=cfg.seed + k, threads=threads)

    prepared = [prepare(k) for k in fold_ids]
    with phase("lightgbm_train"):
        if jobs > 1:
            with ThreadPoolExecutor(max_workers=jobs) as pool:  # LightGBM releases the GIL
                boosters = list(pool.map(train, fold_ids, [p[3] for p in prepared]))
        else:
            boosters = [train(k, p[3]) for k, p in tqdm(zip(fold_ids, prepared, strict=True),
                                                       total=len(fold_ids), desc="gbdt folds",
                                                       disable=not progress)]
    oof = np.full(len(texts), np.nan)
    models: list[FoldModel] = []
    fold_qwk: list[float] = []
    best_its: list[int] = []
    with phase("predict_valid"):
        for k, (word, char, svd, x), booster in zip(fold_ids, prepared, boosters, strict=True):
            va = np.flatnonzero(fold == k)
            pred = booster.predict(x[va], num_iteration=booster.best_iteration or None)
            oof[va] = np.clip(pred, SCORE_MIN, SCORE_MAX)
            models.append(FoldModel(word, char, svd, booster))
            fold_qwk.append(qwk(y[va], oof[va]))
            best_its.append(int(booster.best_iteration or booster.current_iteration()))
    total = qwk(y, oof)
    timings = phase.totals()
    info = {"oof_qwk": total, "fold_qwk": fold_qwk, "best_iterations": best_its,
            "n_essays": len(texts), "timings": timings["wall"], "cpu_seconds": timings["cpu"]}
    member = GbdtMember(cfg=cfg, folds=models, info=info)
    frame = pd.DataFrame({"essay_id": folded["essay_id"].astype(str).to_numpy(),
                          GBDT_MEMBER: oof})
    return GbdtFit(oof=frame, member=member, oof_qwk=total, fold_qwk=fold_qwk,
                   best_iterations=best_its, timings=timings["wall"],
                   cpu_seconds=timings["cpu"])
