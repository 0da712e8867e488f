"""Token ids of whitespace-separated words, learned from the tokenizer and kept in a dict.

A BERT-style tokenizer (BERT normalizer, BERT pre-tokenizer, WordPiece: MiniLM, MPNet) reads
a text one whitespace-separated word at a time: the normalizer maps characters (and deletes
control characters) without looking across whitespace, the pre-tokenizer splits at
whitespace and then at punctuation inside a word, and WordPiece reads each piece alone. So the
ids of a text are the ids of its words, one after another. :class:`WordIds` asks the
tokenizer itself for the ids of each word the first time it sees it and looks them up
afterwards; essays repeat their words, so most of an essay becomes dict lookups
(BENCHMARKS.md). ``str.split`` cuts at every Unicode space; a space character that the
tokenizer does not treat as a space (checked for each one when the dict is built: it deletes
some control characters that Python counts as spaces) sends the text back to the tokenizer,
as does an added token's text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain


@lru_cache(maxsize=1)
def python_spaces() -> str:
    """Every character ``str.split()`` cuts at."""
    return "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def unsafe_spaces(tokenizer) -> str:
    """The characters ``str.split()`` cuts at that ``tokenizer`` does not read as a space:
    "x<c>y" must encode as "x y" does."""
    ref = tokenizer.encode("x y", add_special_tokens=False).ids
    return "".join(c for c in python_spaces()
                   if tokenizer.encode(f"x{c}y", add_special_tokens=False).ids != ref)


class WordIds:
    """Ids of a text's words from a bounded dict, filled by the tokenizer on first sight.

    ``tokenizer`` is a ``tokenizers.Tokenizer``; a private copy without truncation or
    padding tokenizes each new word. At ``max_words`` entries the dict starts again empty
    (a bound on memory; ids never change)."""

    def __init__(self, tokenizer, added: Sequence[str], max_words: int):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()
        odd = unsafe_spaces(self._tok)
        self._odd = re.compile(f"[{re.escape(odd)}]") if odd else None
        self._added = [a.lower() for a in added if a]
        self._ids: dict[str, tuple[int, ...]] = {}
        self.max_words = max_words

    @staticmethod
    def applies_to(tokenizer) -> bool:
        """Whether ``tokenizer`` (a ``tokenizers.Tokenizer``) reads words independently:
        BERT normalizer (or none), BERT pre-tokenizer, WordPiece model."""
        from tokenizers.models import WordPiece
        from tokenizers.normalizers import BertNormalizer
        from tokenizers.pre_tokenizers import BertPreTokenizer

        return (isinstance(tokenizer.pre_tokenizer, BertPreTokenizer)
                and isinstance(tokenizer.model, WordPiece)
                and (tokenizer.normalizer is None
                     or isinstance(tokenizer.normalizer, BertNormalizer)))

    def __len__(self) -> int:
        return len(self._ids)

    def _learn(self, words: list[str]) -> dict[str, tuple[int, ...]]:
        """Ids of words not seen yet, from the tokenizer in one call; kept for next time."""
        learned = {w: tuple(e.ids) for w, e in zip(
            words, self._tok.encode_batch_fast(words, add_special_tokens=False), strict=True)}
        if len(self._ids) + len(learned) > self.max_words:
            self._ids = {}
        if len(learned) <= self.max_words:
            self._ids.update(learned)
        return learned

    def body(self, text: str) -> list[int] | None:
        """The text's ids without special tokens or truncation; None when it holds a space
        character the tokenizer does not split at, or an added token's text (tokenize it
        whole instead)."""
        if self._odd is not None and self._odd.search(text) is not None:
            return None
        if self._added:
            low = text.lower()
            if any(a in low for a in self._added):
                return None
        words = text.split()
        pieces = list(map(self._ids.get, words))
        if None in pieces:  # words not seen yet: ask the tokenizer
            learned = self._learn(list({w for w, p in zip(words, pieces, strict=True)
                                        if p is None}))
            pieces = [p if p is not None else learned[w]
                      for p, w in zip(pieces, words, strict=True)]
        return list(chain.from_iterable(pieces))
