"""Which known prompt an essay answers, and whether it reads like a student essay at all.

Fitted on reference essays labelled with their prompt (PERSUADE): a TF-IDF vectorizer, a
multinomial logistic regression over prompts (probabilities), one L2-normalised TF-IDF
centroid per prompt (cosine similarity: "far from every known prompt") and the student-essay
vocabulary (words used by at least ``essay_vocab_min_df`` of the reference essays; fluent
English that is no student essay uses many words outside it).

Saved folder (``PromptModel.save``)::

    prompt_model.json       prompts, fit counts, the FlagsSection fields used to fit
    prompt_model.joblib     {"vectorizer", "classifier", "centroids", "essay_vocab"}
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from aes_core.config import FlagsSection
from aes_core.flags.checks import lower_words

META_FILE = "prompt_model.json"
MODEL_FILE = "prompt_model.joblib"
FIT_FIELDS = ("tfidf_max_features", "tfidf_min_df", "classifier_c", "essay_vocab_min_df")


@dataclass
class PromptScores:
    """Prompt model outputs for N texts over the K known prompts (``PromptModel.prompts``)."""

    probs: np.ndarray          # [N, K] classifier probabilities
    similarity: np.ndarray     # [N, K] cosine to each prompt's TF-IDF centroid
    essay_vocab_share: np.ndarray  # [N] share of words from the student-essay vocabulary


@dataclass
class PromptModel:
    """Fitted prompt classifier + centroids + student-essay vocabulary."""

    prompts: list[str]
    vectorizer: TfidfVectorizer
    classifier: LogisticRegression
    centroids: np.ndarray
    essay_vocab: frozenset[str]
    info: dict[str, Any] = field(default_factory=dict)

    def index(self, prompt: str) -> int | None:
        """Column of ``prompt`` in the outputs, None when the model does not know it."""
        try:
            return self.prompts.index(prompt)
        except ValueError:
            return None

    def vocab_share(self, text: str) -> float:
        tokens = lower_words(text)
        return sum(t in self.essay_vocab for t in tokens) / max(len(tokens), 1)

    def score(self, texts: list[str]) -> PromptScores:
        texts = list(texts)
        if not texts:
            k = len(self.prompts)
            return PromptScores(np.zeros((0, k)), np.zeros((0, k)), np.zeros(0))
        x = self.vectorizer.transform(texts)
        probs = self.classifier.predict_proba(x)
        order = [list(self.classifier.classes_).index(p) for p in self.prompts]
        sim = np.asarray(normalize(x) @ self.centroids.T)
        share = np.array([self.vocab_share(t) for t in texts])
        return PromptScores(probs[:, order], sim, share)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump({"vectorizer": self.vectorizer, "classifier": self.classifier,
                     "centroids": self.centroids, "essay_vocab": sorted(self.essay_vocab)},
                    folder / MODEL_FILE)
        meta = {"prompts": self.prompts, **self.info}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PromptModel:
        folder = Path(folder)
        for name in (META_FILE, MODEL_FILE):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name} not found: not a saved prompt model")
        meta = json.loads((folder / META_FILE).read_text())
        parts = joblib.load(folder / MODEL_FILE)
        prompts = meta.pop("prompts")
        return cls(prompts=prompts, vectorizer=parts["vectorizer"],
                   classifier=parts["classifier"], centroids=parts["centroids"],
                   essay_vocab=frozenset(parts["essay_vocab"]), info=meta)


def fit_prompt_model(texts: list[str], prompt_names: list[str], cfg: FlagsSection) -> PromptModel:
    """Fit on reference essays and their prompt names (at least two prompts)."""
    texts, names = list(texts), [str(p) for p in prompt_names]
    if len(texts) != len(names):
        raise ValueError(f"prompt model: {len(texts)} texts but {len(names)} prompt names")
    counts = Counter(names)
    if len(counts) < 2:
        raise ValueError(f"prompt model: need essays of at least 2 prompts, got {dict(counts)}")
    prompts = sorted(counts)
    vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english",
                                 max_features=cfg.tfidf_max_features, min_df=cfg.tfidf_min_df,
                                 dtype=np.float32)
    x = vectorizer.fit_transform(texts)
    y = np.array(names)
    classifier = LogisticRegression(C=cfg.classifier_c, max_iter=1000).fit(x, y)
    centroids = normalize(np.vstack([np.asarray(x[y == p].mean(axis=0)) for p in prompts]))
    doc_freq: Counter[str] = Counter()
    for t in texts:
        doc_freq.update(set(lower_words(t)))
    min_docs = cfg.essay_vocab_min_df * len(texts)
    vocab = frozenset(w for w, c in doc_freq.items() if c >= min_docs)
    info = {"n_texts": len(texts), "per_prompt": {p: counts[p] for p in prompts},
            "vocabulary": len(vectorizer.vocabulary_), "essay_vocab": len(vocab),
            "fit_config": {k: getattr(cfg, k) for k in FIT_FIELDS}}
    return PromptModel(prompts, vectorizer, classifier, centroids.astype(np.float32), vocab, info)
