"""Handcrafted essay features for the GBDT member: lengths, structure, vocabulary, spelling.

Every feature is a pure function of one text (no fitting), so training and serving compute
identical values. The spelling-error rate uses pyspellchecker's offline English word list.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pandas as pd

WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)")
PARAGRAPH_SPLIT_RE = re.compile(r"\n\s*\n|\n")
PUNCTUATION = {
    "comma": ",", "period": ".", "question": "?", "exclamation": "!", "semicolon": ";",
    "colon": ":", "quote": '"', "apostrophe": "'", "dash": "-", "paren": "(",
}

FEATURE_NAMES: tuple[str, ...] = (
    "n_chars", "n_words", "log_words", "n_unique_words", "n_paragraphs", "n_sentences",
    "words_per_sentence", "words_per_paragraph", "sentences_per_paragraph",
    "mean_word_length", "std_word_length", "long_word_share", "type_token_ratio",
    "root_ttr", "hapax_share", "spelling_error_rate", "n_spelling_errors",
    "upper_start_share", "lowercase_i_count", "digit_share",
    *(f"punct_{k}_per_word" for k in PUNCTUATION),
    "punct_total_per_word",
)


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """pyspellchecker's bundled English frequency list (offline), lower-cased."""
    from spellchecker import SpellChecker

    return frozenset(SpellChecker(language="en").word_frequency.dictionary.keys())


def paragraphs(text: str) -> list[str]:
    """Non-empty paragraphs: blocks separated by one or more line breaks."""
    return [p for p in PARAGRAPH_SPLIT_RE.split(text) if p.strip()]


def sentences(text: str) -> list[str]:
    """Sentences split at . ! ? followed by whitespace or the end (and at paragraph breaks)."""
    out: list[str] = []
    for para in paragraphs(text):
        out.extend(s for s in SENTENCE_END_RE.split(para) if WORD_RE.search(s))
    return out


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def essay_features(text: str, spelling: bool = True) -> dict[str, float]:
    """All handcrafted features of one essay, keyed by :data:`FEATURE_NAMES`."""
    ws = words(text)
    lower = [w.lower() for w in ws]
    n_words = len(ws)
    nw = max(n_words, 1)
    paras = paragraphs(text)
    sents = sentences(text)
    n_par, n_sent = max(len(paras), 1), max(len(sents), 1)
    lengths = np.array([len(w) for w in ws], dtype=float) if ws else np.zeros(1)
    counts = pd.Series(lower, dtype=object).value_counts() if ws else pd.Series(dtype=int)
    n_unique = int(len(counts))
    if spelling and ws:
        vocab = english_words()
        # Only plain lower-case-able alphabetic tokens are checked; contractions split on "'".
        checked = [t for w in lower for t in w.split("'") if t]
        errors = sum(1 for t in checked if len(t) > 1 and t not in vocab)
        err_rate = errors / max(len(checked), 1)
    else:
        errors, err_rate = 0, 0.0
    starts = [s.strip()[0] for s in sents if s.strip()]
    feats: dict[str, float] = {
        "n_chars": float(len(text)),
        "n_words": float(n_words),
        "log_words": float(np.log1p(n_words)),
        "n_unique_words": float(n_unique),
        "n_paragraphs": float(len(paras)),
        "n_sentences": float(len(sents)),
        "words_per_sentence": n_words / n_sent,
        "words_per_paragraph": n_words / n_par,
        "sentences_per_paragraph": len(sents) / n_par,
        "mean_word_length": float(lengths.mean()) if ws else 0.0,
        "std_word_length": float(lengths.std()) if ws else 0.0,
        "long_word_share": float((lengths >= 7).sum() / nw) if ws else 0.0,
        "type_token_ratio": n_unique / nw,
        "root_ttr": n_unique / np.sqrt(nw),
        "hapax_share": float((counts == 1).sum() / nw) if ws else 0.0,
        "spelling_error_rate": float(err_rate),
        "n_spelling_errors": float(errors),
        "upper_start_share": (sum(c.isupper() for c in starts) / len(starts)) if starts else 0.0,
        "lowercase_i_count": float(sum(1 for w in ws if w == "i")),
        "digit_share": sum(c.isdigit() for c in text) / max(len(text), 1),
    }
    total = 0
    for name, ch in PUNCTUATION.items():
        c = text.count(ch)
        total += c
        feats[f"punct_{name}_per_word"] = c / nw
    feats["punct_total_per_word"] = total / nw
    return feats


def feature_matrix(texts: list[str], spelling: bool = True, progress: bool = False) -> np.ndarray:
    """[N, len(FEATURE_NAMES)] float32 matrix of :func:`essay_features`."""
    it = texts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(texts, desc="handcrafted features", leave=False)
    rows = [essay_features(t, spelling) for t in it]
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.array([[r[k] for k in FEATURE_NAMES] for r in rows], dtype=np.float32)
