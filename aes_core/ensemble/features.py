"""Handcrafted essay features for the GBDT member: lengths, structure, vocabulary, spelling.

Every feature is a pure function of one text (no fitting), so training and serving compute
identical values. The spelling-error rate uses pyspellchecker's offline English word list.

Two sets (``gbdt.feature_set``): ``basic`` (:data:`FEATURE_NAMES`, 31 features) and ``rich``
(:data:`RICH_FEATURE_NAMES`): basic plus the length distributions of paragraphs, sentences and
words (counts, mean/max/min/std/quantiles in chars and words, counts above length
thresholds), spelling-error counts, vocabulary and punctuation-habit counts.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Literal

import numpy as np

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


FeatureSet = Literal["basic", "rich"]

# thresholds of the "count above length" features of the rich set
PARA_CHAR_CUTS = (50, 100, 200, 300, 400, 500, 600, 800)
PARA_WORD_CUTS = (20, 50, 80, 100, 150, 200)
SENT_CHAR_CUTS = (15, 50, 100, 150, 200, 250, 300)
SENT_WORD_CUTS = (5, 10, 15, 20, 30, 40, 50)
WORD_LEN_CUTS = tuple(range(5, 16))
STATS = ("mean", "max", "min", "std", "q25", "q50", "q75", "first", "last")
HABITS = {
    "space_before_punct": re.compile(r"\s[,.;:!?]"),
    "no_space_after_punct": re.compile(r"[,;:!?][A-Za-z]|[a-z]\.[A-Z][a-z]"),
    "double_space": re.compile(r"[^\S\n]{2,}"),
    "ellipsis": re.compile(r"\.{3,}"),
    "repeated_punct": re.compile(r"([!?,])\1+"),
}
PUNCT_COUNTS = {**PUNCTUATION, "slash": "/", "ampersand": "&"}

RICH_EXTRA_NAMES: tuple[str, ...] = (
    *(f"para_chars_{s}" for s in STATS), *(f"para_words_{s}" for s in STATS),
    "para_sentences_mean", "para_sentences_max",
    *(f"para_chars_ge_{c}" for c in PARA_CHAR_CUTS),
    *(f"para_words_ge_{c}" for c in PARA_WORD_CUTS),
    *(f"sent_chars_{s}" for s in STATS), *(f"sent_words_{s}" for s in STATS),
    *(f"sent_chars_ge_{c}" for c in SENT_CHAR_CUTS),
    *(f"sent_words_ge_{c}" for c in SENT_WORD_CUTS),
    "word_len_max", "word_len_q25", "word_len_q50", "word_len_q75",
    *(f"word_len_ge_{c}" for c in WORD_LEN_CUTS),
    "n_long_unique_words", "herdan_c", "mattr_50", "n_stopword_share",
    "n_unique_spelling_errors", "spelling_errors_per_sentence", "n_all_caps_words",
    "n_capitalised_words", "lower_sentence_starts",
    *(f"{k}_count" for k in HABITS), *(f"punct_{k}_count" for k in PUNCT_COUNTS),
)
RICH_FEATURE_NAMES: tuple[str, ...] = (*FEATURE_NAMES, *RICH_EXTRA_NAMES)
STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being "
    "it its this that these those i you he she we they me him her us them my your his our "
    "their not no so do does did have has had will would can could should".split())


def feature_names(feature_set: FeatureSet = "basic") -> tuple[str, ...]:
    """Column names of :func:`feature_matrix` for ``feature_set``."""
    if feature_set == "basic":
        return FEATURE_NAMES
    if feature_set == "rich":
        return RICH_FEATURE_NAMES
    raise ValueError(f"unknown feature_set {feature_set!r}; expected 'basic' or 'rich'")


def _spelling_errors(lower: list[str]) -> tuple[int, float, int]:
    """(errors, error rate, distinct misspelled tokens) over the essay's word tokens."""
    vocab = english_words()
    # Only plain lower-case-able alphabetic tokens are checked; contractions split on "'".
    checked = [t for w in lower for t in w.split("'") if t]
    bad = [t for t in checked if len(t) > 1 and t not in vocab]
    return len(bad), len(bad) / max(len(checked), 1), len(set(bad))


def essay_features(text: str, spelling: bool = True,
                   feature_set: FeatureSet = "basic") -> dict[str, float]:
    """All handcrafted features of one essay, keyed by :func:`feature_names` of the set."""
    if feature_set not in ("basic", "rich"):
        raise ValueError(f"unknown feature_set {feature_set!r}; expected 'basic' or 'rich'")
    ws = words(text)
    lower = [w.lower() for w in ws]
    n_words = len(ws)
    nw = max(n_words, 1)
    paras = paragraphs(text)
    sents = sentences(text)
    n_par, n_sent = max(len(paras), 1), max(len(sents), 1)
    lengths = np.array([len(w) for w in ws], dtype=float) if ws else np.zeros(1)
    counts = Counter(lower)
    n_unique = len(counts)
    if spelling and ws:
        errors, err_rate, unique_errors = _spelling_errors(lower)
    else:
        errors, err_rate, unique_errors = 0, 0.0, 0
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
        "hapax_share": sum(1 for c in counts.values() if c == 1) / nw if ws else 0.0,
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
    if feature_set == "rich":
        feats.update(_rich_features(text, ws, lower, lengths, counts, paras, sents, starts,
                                    unique_errors, errors))
    return feats


def _distribution(prefix: str, values: list[float]) -> dict[str, float]:
    """mean/max/min/std/quartiles/first/last of ``values`` (all 0 when empty)."""
    if not values:
        return {f"{prefix}_{s}": 0.0 for s in STATS}
    a = np.asarray(values, dtype=float)
    q25, q50, q75 = np.percentile(a, (25, 50, 75))
    return {f"{prefix}_mean": float(a.mean()), f"{prefix}_max": float(a.max()),
            f"{prefix}_min": float(a.min()), f"{prefix}_std": float(a.std()),
            f"{prefix}_q25": float(q25), f"{prefix}_q50": float(q50), f"{prefix}_q75": float(q75),
            f"{prefix}_first": float(a[0]), f"{prefix}_last": float(a[-1])}


def _at_least(prefix: str, values: list[float], cuts: tuple[int, ...]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {f"{prefix}_ge_{c}": float((a >= c).sum()) for c in cuts}


def _mattr(lower: list[str], window: int = 50) -> float:
    """Moving-average type/token ratio over windows of ``window`` words (TTR if shorter)."""
    if len(lower) <= window:
        return len(set(lower)) / max(len(lower), 1)
    counts = Counter(lower[:window])
    total = len(counts)
    for i in range(window, len(lower)):
        out, inc = lower[i - window], lower[i]
        counts[out] -= 1
        if counts[out] == 0:
            del counts[out]
        counts[inc] += 1
        total += len(counts)
    return total / (len(lower) - window + 1) / window


def _rich_features(text: str, ws: list[str], lower: list[str], lengths: np.ndarray,
                   counts: Counter, paras: list[str], sents: list[str], starts: list[str],
                   unique_errors: int, errors: int) -> dict[str, float]:
    """The rich set's additions (see :data:`RICH_EXTRA_NAMES`)."""
    para_chars = [float(len(p.strip())) for p in paras]
    para_words = [float(len(words(p))) for p in paras]
    para_sents = [float(len(sentences(p))) for p in paras]
    sent_chars = [float(len(s.strip())) for s in sents]
    sent_words = [float(len(words(s))) for s in sents]
    n_words = len(ws)
    f: dict[str, float] = {}
    f.update(_distribution("para_chars", para_chars))
    f.update(_distribution("para_words", para_words))
    f["para_sentences_mean"] = float(np.mean(para_sents)) if para_sents else 0.0
    f["para_sentences_max"] = float(np.max(para_sents)) if para_sents else 0.0
    f.update(_at_least("para_chars", para_chars, PARA_CHAR_CUTS))
    f.update(_at_least("para_words", para_words, PARA_WORD_CUTS))
    f.update(_distribution("sent_chars", sent_chars))
    f.update(_distribution("sent_words", sent_words))
    f.update(_at_least("sent_chars", sent_chars, SENT_CHAR_CUTS))
    f.update(_at_least("sent_words", sent_words, SENT_WORD_CUTS))
    if ws:
        q25, q50, q75 = np.percentile(lengths, (25, 50, 75))
        f.update({"word_len_max": float(lengths.max()), "word_len_q25": float(q25),
                  "word_len_q50": float(q50), "word_len_q75": float(q75)})
    else:
        f.update({"word_len_max": 0.0, "word_len_q25": 0.0, "word_len_q50": 0.0,
                  "word_len_q75": 0.0})
    f.update(_at_least("word_len", list(lengths) if ws else [], WORD_LEN_CUTS))
    f["n_long_unique_words"] = float(sum(1 for w in counts if len(w) >= 7))
    f["herdan_c"] = (float(np.log(len(counts)) / np.log(n_words)) if n_words > 1 else 0.0)
    f["mattr_50"] = float(_mattr(lower))
    f["n_stopword_share"] = sum(c for w, c in counts.items() if w in STOPWORDS) / max(n_words, 1)
    f["n_unique_spelling_errors"] = float(unique_errors)
    f["spelling_errors_per_sentence"] = errors / max(len(sents), 1)
    f["n_all_caps_words"] = float(sum(1 for w in ws if len(w) > 1 and w.isupper()))
    f["n_capitalised_words"] = float(sum(1 for w in ws if w[0].isupper()))
    f["lower_sentence_starts"] = float(sum(1 for c in starts if c.islower()))
    for name, rx in HABITS.items():
        f[f"{name}_count"] = float(len(rx.findall(text)))
    for name, ch in PUNCT_COUNTS.items():
        f[f"punct_{name}_count"] = float(text.count(ch))
    return f


def _rows(texts: list[str], spelling: bool, feature_set: FeatureSet) -> np.ndarray:
    names = feature_names(feature_set)
    rows = [essay_features(t, spelling, feature_set) for t in texts]
    return np.array([[r[k] for k in names] for r in rows], dtype=np.float32).reshape(
        len(rows), len(names))


def _rows_job(job: tuple[list[str], bool, FeatureSet]) -> np.ndarray:
    return _rows(*job)


def feature_matrix(texts: list[str], spelling: bool = True, progress: bool = False,
                   feature_set: FeatureSet = "basic", n_jobs: int = 1) -> np.ndarray:
    """[N, len(feature_names(feature_set))] float32 matrix of :func:`essay_features`.

    ``n_jobs`` > 1 splits the texts over that many processes (same values, row order kept).
    """
    names = feature_names(feature_set)
    texts = list(texts)
    if not texts:
        return np.zeros((0, len(names)), dtype=np.float32)
    if n_jobs > 1 and len(texts) >= 8 * n_jobs:
        from aes_core.training.parallel import process_map

        chunks = np.array_split(np.arange(len(texts)), n_jobs)
        with process_map(n_jobs) as mapper:
            parts = mapper(_rows_job, [([texts[i] for i in c], spelling, feature_set)
                                       for c in chunks])
        return np.concatenate(parts, axis=0)
    if progress:
        from tqdm.auto import tqdm

        texts = list(tqdm(texts, desc="handcrafted features", leave=False))
    return _rows(texts, spelling, feature_set)
