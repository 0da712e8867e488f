"""Text statistics behind the gaming flags: length, repetition, prompt copy, out-of-vocabulary.

Pure functions of one text (no fitting). Each returns the statistic the threshold applies to
and a short human-readable evidence string for the flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aes_core.ensemble.features import english_words, paragraphs, words


@dataclass(frozen=True)
class Stat:
    """A flag statistic: the value its threshold applies to, and evidence for a reader."""

    value: float
    evidence: str


def lower_words(text: str) -> list[str]:
    return [w.lower() for w in words(text)]


def clip(span: str, max_chars: int) -> str:
    """``span`` shortened to ``max_chars`` with an ellipsis, quoted."""
    span = " ".join(span.split())
    if len(span) > max_chars:
        span = span[: max_chars - 1].rstrip() + "…"
    return f"'{span}'"


def _runs(covered: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of each run of True in ``covered``, end exclusive."""
    out, start = [], None
    for i, c in enumerate([*covered, False]):
        if c and start is None:
            start = i
        elif not c and start is not None:
            out.append((start, i))
            start = None
    return out


def _longest_span(tokens: list[str], covered: list[bool]) -> str:
    runs = _runs(covered)
    if not runs:
        return ""
    s, e = max(runs, key=lambda r: r[1] - r[0])
    return " ".join(tokens[s:e])


def _covered_share(tokens: list[str], covered: list[bool], what: str, max_chars: int) -> Stat:
    """Share of covered tokens, with the longest covered span as evidence ("N% of words
    {what}, e.g. ...")."""
    share = sum(covered) / max(len(tokens), 1)
    span = _longest_span(tokens, covered)
    evidence = f"{share:.0%} of words {what}"
    if span:
        evidence += f", e.g. {clip(span, max_chars)}"
    return Stat(share, evidence)


def word_count(text: str) -> Stat:
    n = len(words(text))
    return Stat(float(n), f"{n} words")


def repeated_ngram_share(text: str, n: int, max_chars: int) -> Stat:
    """Share of words inside a word n-gram that already occurred earlier in the text."""
    tokens = lower_words(text)
    covered = [False] * len(tokens)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        if gram in seen:
            covered[i:i + n] = [True] * n
        else:
            seen.add(gram)
    return _covered_share(tokens, covered, f"repeat an earlier {n}-word span", max_chars)


def repeated_paragraph_share(text: str, min_words: int, max_chars: int) -> Stat:
    """Share of words in paragraphs (of at least ``min_words`` words) that repeat an earlier one.

    Paragraphs are compared by their lower-cased words, so spacing and punctuation changes do
    not hide a copy.
    """
    total = max(len(words(text)), 1)
    seen: set[tuple[str, ...]] = set()
    dup_words, first_dup, n_dup = 0, "", 0
    for para in paragraphs(text):
        key = tuple(lower_words(para))
        if len(key) < min_words:
            continue
        if key in seen:
            dup_words += len(key)
            n_dup += 1
            first_dup = first_dup or para
        else:
            seen.add(key)
    share = dup_words / total
    evidence = f"{n_dup} duplicated paragraph(s), {share:.0%} of words"
    if first_dup:
        evidence += f", e.g. {clip(first_dup, max_chars)}"
    return Stat(share, evidence)


def _name_runs(tokens: list[str], name: list[str], min_run: int) -> list[bool]:
    """Mark tokens inside ``min_run`` or more back-to-back copies of ``name``."""
    covered = [False] * len(tokens)
    k = len(name)
    if not k:
        return covered
    i = 0
    while i <= len(tokens) - k:
        j = i
        while tokens[j:j + k] == name:
            j += k
        if (j - i) // k >= min_run:
            covered[i:j] = [True] * (j - i)
        i = max(j, i + 1)
    return covered


def prompt_copy_share(text: str, prompt_name: str, prompt_text: str, n: int, min_span: int,
                      name_run: int, max_chars: int) -> Stat:
    """Share of words copied from the prompt (name + assignment text).

    A word counts as copied when it lies in a span of at least ``min_span`` words made of word
    n-grams of ``name. text`` (an essay may echo a phrase of its prompt; a paste is longer),
    or in ``name_run`` or more back-to-back repeats of the prompt name.
    """
    tokens = lower_words(text)
    source = lower_words(f"{prompt_name}. {prompt_text}")
    grams = {tuple(source[i:i + n]) for i in range(len(source) - n + 1)}
    matched = [False] * len(tokens)
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i:i + n]) in grams:
            matched[i:i + n] = [True] * n
    covered = _name_runs(tokens, lower_words(prompt_name), name_run)
    for s, e in _runs(matched):
        if e - s >= min_span:
            covered[s:e] = [True] * (e - s)
    return _covered_share(tokens, covered, f"copied from prompt {prompt_name!r}", max_chars)


def best_prompt_copy(text: str, prompts: Iterable[tuple[str, str]], n: int, min_span: int,
                     name_run: int, max_chars: int) -> Stat:
    """:func:`prompt_copy_share` against each (name, text) of ``prompts``; the largest."""
    best: Stat | None = None
    for name, ptext in prompts:
        stat = prompt_copy_share(text, name, ptext, n, min_span, name_run, max_chars)
        if best is None or stat.value > best.value:
            best = stat
    return best or Stat(0.0, "no prompt to compare with")


def oov_share(text: str, examples: int = 3) -> Stat:
    """Share of words (2+ letters, contractions split) missing from the English word list."""
    vocab = english_words()
    checked = [t for w in lower_words(text) for t in w.split("'") if len(t) > 1]
    oov = [t for t in checked if t not in vocab]
    share = len(oov) / max(len(checked), 1)
    evidence = f"{share:.0%} of {len(checked)} words are not English words"
    if oov:
        evidence += ", e.g. " + ", ".join(f"'{t}'" for t in list(dict.fromkeys(oov))[:examples])
    return Stat(share, evidence)
