"""The GBDT member's prediction with each essay analyzed once for all fold models.

``GbdtMember.predict`` runs every fold's word and char TF-IDF vectorizer on every essay: the
n-gram analysis (most of the cost) is repeated once per fold although all folds analyze text
the same way and differ only in vocabulary and idf. ``SharedAnalysisGbdt`` counts the n-grams
of each essay once against the union of the folds' vocabularies, then gives each fold its
columns and lets that fold's own ``TfidfTransformer`` weight and normalize them: the same
counts, the same code, the same predictions (tests compare them). Where a fold model is not
of the expected shape it falls back to ``GbdtMember.predict``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from aes_core.ensemble.features import feature_matrix
from aes_core.ensemble.gbdt import SCORE_MAX, SCORE_MIN, GbdtMember

KINDS = ("word", "char")


class SharedAnalysisGbdt:
    """``predict(texts)`` equal to ``member.predict(texts)``, analyzing each essay once."""

    def __init__(self, member: GbdtMember):
        self.member = member
        self.reason = self._unsupported()
        self.vocab: dict[str, dict[str, int]] = {}
        self.columns: dict[str, list[np.ndarray]] = {}
        self.analyzers = {}
        if self.reason:
            return
        for kind in KINDS:
            union: dict[str, int] = {}
            cols = []
            for f in member.folds:
                vocab = getattr(f, kind).vocabulary_
                c = np.empty(len(vocab), dtype=np.int64)
                for term, j in vocab.items():
                    c[j] = union.setdefault(term, len(union))
                cols.append(c)
            self.vocab[kind], self.columns[kind] = union, cols
            self.analyzers[kind] = getattr(member.folds[0], kind).build_analyzer()

    def _unsupported(self) -> str:
        folds = self.member.folds
        for kind in KINDS:
            vecs = [getattr(f, kind) for f in folds]
            if any(not hasattr(v, "_tfidf") or not hasattr(v, "vocabulary_") or v.binary
                   for v in vecs):
                return f"{kind} vectorizers are not fitted TF-IDF count vectorizers"
            ref = {k: v for k, v in vecs[0].get_params().items() if k != "vocabulary"}
            for v in vecs[1:]:
                if {k: x for k, x in v.get_params().items() if k != "vocabulary"} != ref:
                    return f"the folds' {kind} vectorizers analyze text differently"
        return ""

    def _counts(self, kind: str, texts: list[str]) -> sp.csr_matrix:
        """Counts against the union vocabulary (``CountVectorizer._count_vocab``'s layout)."""
        vocab, analyze = self.vocab[kind], self.analyzers[kind]
        j_indices: list[int] = []
        values: list[int] = []
        indptr = [0]
        for doc in texts:
            counter: dict[int, int] = defaultdict(int)
            for feature in analyze(doc):
                idx = vocab.get(feature)
                if idx is not None:
                    counter[idx] += 1
            j_indices.extend(counter.keys())
            values.extend(counter.values())
            indptr.append(len(j_indices))
        x = sp.csr_matrix((np.asarray(values, dtype=np.intc),
                           np.asarray(j_indices, dtype=np.int64), np.asarray(indptr)),
                          shape=(len(texts), len(vocab)),
                          dtype=getattr(self.member.folds[0], kind).dtype)
        x.sort_indices()
        return x

    def _tfidf(self, fold: int, kind: str, counts: sp.csr_matrix):
        vec = getattr(self.member.folds[fold], kind)
        x = sp.csr_matrix(counts[:, self.columns[kind][fold]], dtype=vec.dtype)
        x.sort_indices()
        return vec._tfidf.transform(x, copy=False)

    def predict(self, texts: list[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if self.reason:
            return self.member.predict(texts)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        hand = feature_matrix(texts, spelling=self.member.cfg.spelling)
        counts = {kind: self._counts(kind, texts) for kind in KINDS}
        preds = []
        for k, f in enumerate(self.member.folds):
            tfidf = sp.hstack([self._tfidf(k, kind, counts[kind]) for kind in KINDS]).tocsr()
            if f.svd is not None:
                tfidf = sp.csr_matrix(f.svd.transform(tfidf))
            x = sp.hstack([tfidf, sp.csr_matrix(hand)]).tocsr().astype(np.float32)
            preds.append(f.booster.predict(x, num_iteration=f.booster.best_iteration or None))
        return np.clip(np.mean(preds, axis=0), SCORE_MIN, SCORE_MAX)


def load_gbdt(folder: str | Path) -> SharedAnalysisGbdt:
    """The GBDT member of a folder, predicting with each essay analyzed once."""
    return SharedAnalysisGbdt(GbdtMember.load(folder))
