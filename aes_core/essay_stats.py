"""Simple essay statistics (words, paragraphs, sentence length) and their typical range per score.

The teachers' page shows an essay's statistics next to the range that essays of the same
score usually have in the training data (per-score quantiles the export stage writes into
the serving bundle).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from aes_core.data.io import SCORE_MAX, SCORE_MIN

STAT_NAMES = ("words", "paragraphs", "mean_sentence_words")
STAT_LABELS = {
    "words": "Words",
    "paragraphs": "Paragraphs",
    "mean_sentence_words": "Words per sentence",
}
RANGES_VERSION = 1

_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_PARA = re.compile(r"\n\s*\n")
_SENT_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)]*\s+|\n+")


@dataclass
class EssayStats:
    words: int
    paragraphs: int
    sentences: int
    mean_sentence_words: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def essay_stats(text: str) -> EssayStats:
    """Count words, paragraphs (blocks separated by blank lines) and sentences of one essay."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    words = len(_WORD.findall(text))
    paragraphs = sum(1 for p in _PARA.split(text) if p.strip())
    sentences = [s for s in _SENT_END.split(text) if _WORD.search(s)]
    n_sent = max(len(sentences), 1) if words else 0
    mean_len = round(words / n_sent, 1) if n_sent else 0.0
    return EssayStats(words=words, paragraphs=paragraphs, sentences=len(sentences),
                      mean_sentence_words=mean_len)


def stats_frame(texts: list[str]) -> pd.DataFrame:
    """One row of :func:`essay_stats` per text."""
    return pd.DataFrame([essay_stats(t).as_dict() for t in texts])


def typical_ranges(texts: list[str], scores: list[int] | np.ndarray, low_q: float = 0.1,
                   high_q: float = 0.9) -> dict[str, dict[str, dict[str, float]]]:
    """``{score: {stat: {low, median, high, n}}}`` for scores 1..6 (absent scores omitted)."""
    if not 0 <= low_q < high_q <= 1:
        raise ValueError(f"need 0 <= low_q < high_q <= 1, got {low_q}, {high_q}")
    df = stats_frame(list(texts))
    df["score"] = np.asarray(scores, dtype=int)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for s in range(SCORE_MIN, SCORE_MAX + 1):
        part = df[df["score"] == s]
        if part.empty:
            continue
        out[str(s)] = {
            name: {
                "low": round(float(part[name].quantile(low_q)), 1),
                "median": round(float(part[name].median()), 1),
                "high": round(float(part[name].quantile(high_q)), 1),
                "n": int(len(part)),
            }
            for name in STAT_NAMES
        }
    return out


def compare_to_range(value: float, rng: dict[str, float] | None) -> str:
    """``below`` / ``within`` / ``above`` the typical range (``unknown`` without one)."""
    if not rng:
        return "unknown"
    if value < rng["low"]:
        return "below"
    if value > rng["high"]:
        return "above"
    return "within"
