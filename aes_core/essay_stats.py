"""Simple essay statistics (words, paragraphs, sentence length) and their typical range per score.

The teachers' page shows an essay's statistics next to the range that essays of the same
score usually have in the training data (per-score quantiles, cached as JSON).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aes_core.data.io import SCORE_MAX, SCORE_MIN, load_train

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


def _training_source(storage_root: str | Path, train_path: str | Path) -> tuple[Path, str]:
    """The folded training table when the pipeline has run, else the raw train CSV."""
    folded = Path(storage_root) / "tables" / "folded_essays.parquet"
    if folded.exists():
        return folded, "folded_essays"
    return Path(train_path), "train_csv"


def load_typical_ranges(storage_root: str | Path, train_path: str | Path, low_q: float = 0.1,
                        high_q: float = 0.9, cache_dir: str | Path | None = None) -> dict:
    """Per-score typical ranges from the training essays, cached by source content and quantiles.

    Returns ``{"source": ..., "low_q", "high_q", "ranges": {score: {stat: {...}}}}``.
    The cache lives in ``cache_dir`` (default ``<storage_root>/web``) and is rebuilt whenever
    the source file changes.
    """
    src, kind = _training_source(storage_root, train_path)
    if not src.exists():
        raise FileNotFoundError(f"no training essays for typical ranges: {src} does not exist")
    stat = src.stat()
    key = hashlib.sha256(
        f"{RANGES_VERSION}|{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{low_q}|{high_q}"
        .encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir else Path(storage_root) / "web"
    cache_file = cache / f"typical_ranges_{key}.json"
    if cache_file.exists():
        try:
            return json.loads(cache_file.read_text())
        except json.JSONDecodeError:
            pass  # a torn cache file: rebuild it below
    if kind == "folded_essays":
        df = pd.read_parquet(src, columns=["full_text", "score"])
    else:
        df = load_train(src)
    result = {
        "source": str(src),
        "source_kind": kind,
        "n_essays": int(len(df)),
        "low_q": low_q,
        "high_q": high_q,
        "ranges": typical_ranges(df["full_text"].tolist(), df["score"].astype(int).to_numpy(),
                                 low_q, high_q),
    }
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(cache_file)
    return result


def compare_to_range(value: float, rng: dict[str, float] | None) -> str:
    """``below`` / ``within`` / ``above`` the typical range (``unknown`` without one)."""
    if not rng:
        return "unknown"
    if value < rng["low"]:
        return "below"
    if value > rng["high"]:
        return "above"
    return "within"
