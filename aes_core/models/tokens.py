"""Essays -> model inputs, in one place for training, export, serving and benchmarks.

An essay is read either truncated to ``max_length`` tokens (one window) or, with chunking, as
overlapping windows of ``max_length`` tokens that cover the whole essay (at most
``max_chunks``). Every window is ``prefix + essay tokens + suffix`` with the tokenizer's own
special tokens (``[CLS] ... [SEP]`` for BERT), so window 0 is exactly the truncated essay.
With ``tail_tokens`` > 0 a truncated essay keeps its last ``tail_tokens`` tokens (its
conclusion) after as many of its first tokens as still fit (head + tail truncation).

A batch holds essays: ``input_ids`` / ``attention_mask`` [W, T] have one row per window
(right-padded to the batch's longest window) and, for chunked models, ``window_weights``
[B, W] averages each essay's windows (weighted by their token counts, rows sum to 1) into one
vector per essay before the output layer. Non-chunked batches have no weights (W = B).

Only numpy at import time: the Triton Python-backend models import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aes_core.config import ServingSection
from aes_core.models.backbone import encode_newlines
from aes_core.models.word_ids import WordIds

INPUT_IDS, ATTENTION_MASK, WINDOW_WEIGHTS = "input_ids", "attention_mask", "window_weights"
#: a word every tokenizer encodes to some ids; finds where the special tokens go
_PROBE = "essay"
#: words whose ids a TokenEncoder keeps (serving.tokenizer_word_cache)
WORD_CACHE: int = ServingSection.model_fields["tokenizer_word_cache"].default


class TokenSource(Protocol):
    """How a model reads essays: a BackboneSection, a RegressorSpec or a TokenPlan."""

    max_length: int
    add_newline_tokens: bool
    chunking: bool
    chunk_overlap: int
    max_chunks: int
    # tail_tokens (optional, 0 when absent): tokens kept from the end of a truncated essay


@dataclass(frozen=True)
class TokenPlan:
    """How a model reads an essay (the token fields of a BackboneSection or RegressorSpec)."""

    max_length: int
    add_newline_tokens: bool = False
    chunking: bool = False
    chunk_overlap: int = 0
    max_chunks: int = 1
    tail_tokens: int = 0

    @classmethod
    def of(cls, source: TokenSource) -> TokenPlan:
        """From a ``BackboneSection``, a ``RegressorSpec`` or a ``TokenPlan``."""
        if isinstance(source, TokenPlan):
            return source
        return cls(max_length=source.max_length, add_newline_tokens=source.add_newline_tokens,
                   chunking=source.chunking, chunk_overlap=source.chunk_overlap,
                   max_chunks=source.max_chunks,
                   tail_tokens=int(getattr(source, "tail_tokens", 0)))

    @property
    def head_tail(self) -> bool:
        """A truncated plan that keeps the essay's end (``tail_tokens`` > 0)."""
        return not self.chunking and self.tail_tokens > 0

    @property
    def whole_essays(self) -> bool:
        """Every token of the essay is needed (windows, or its end): no cut before tokenizing."""
        return self.chunking or self.head_tail


def pad_id_of(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    return 0 if pid is None else int(pid)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after an essay's tokens (BERT: [CLS], [SEP])."""
    body = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(_PROBE)["input_ids"])
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            return full[:i], full[i + len(body):]
    raise ValueError(f"{type(tokenizer).__name__}: cannot locate the essay tokens inside the "
                     f"encoded text {full} (probe {_PROBE!r} -> {body})")


def window_starts(n_tokens: int, body: int, overlap: int, max_chunks: int) -> list[int]:
    """Offsets of windows of ``body`` tokens that cover ``n_tokens``, consecutive windows sharing
    ``overlap`` tokens; the last window may be shorter. At most ``max_chunks`` windows."""
    if not 0 <= overlap < body:
        raise ValueError(f"chunk_overlap {overlap} must be in [0, {body}) for windows of {body} "
                         f"essay tokens")
    starts = [0]
    while starts[-1] + body < n_tokens and len(starts) < max_chunks:
        starts.append(starts[-1] + body - overlap)
    return starts


def head_and_tail(ids: list[int], body: int, tail: int) -> list[int]:
    """``ids`` cut to ``body`` tokens: its first ``body - tail`` and its last ``tail``."""
    if len(ids) <= body:
        return ids
    if not 0 <= tail < body:
        raise ValueError(f"tail_tokens {tail} must be below the {body} essay tokens of a window")
    return ids[:body - tail] + (ids[len(ids) - tail:] if tail else [])


def _essay_bodies(tokenizer, texts: Sequence[str], plan: TokenPlan
                  ) -> tuple[list[int], list[int], int, list[list[int]]]:
    """(prefix, suffix, essay tokens per window, every essay's ids without special tokens)."""
    prefix, suffix = special_tokens(tokenizer)
    enc = tokenizer([encode_newlines(str(t), plan.add_newline_tokens) for t in texts],
                    add_special_tokens=False, padding=False, verbose=False)
    body = plan.max_length - len(prefix) - len(suffix)
    return prefix, suffix, body, [list(ids) for ids in enc["input_ids"]]


def windows_of(prefix: list[int], suffix: list[int], body: int,
               essays: Sequence[list[int]], plan: TokenPlan) -> list[list[list[int]]]:
    """Each whole essay's windows (``prefix + up to body tokens + suffix``): one head + tail
    window, or overlapping windows over the essay (chunked)."""
    if plan.head_tail:
        return [[prefix + head_and_tail(ids, body, plan.tail_tokens) + suffix] for ids in essays]
    if not 0 <= plan.chunk_overlap < body:
        raise ValueError(f"chunk_overlap {plan.chunk_overlap} must be below the {body} essay "
                         f"tokens of a window (max_length {plan.max_length} minus "
                         f"{len(prefix) + len(suffix)} special tokens)")
    return [[prefix + ids[s:s + body] + suffix
             for s in window_starts(len(ids), body, plan.chunk_overlap, plan.max_chunks)]
            for ids in essays]


def tokenize(tokenizer, texts: Sequence[str], spec: TokenSource) -> list[list[int]]:
    """Token ids per essay truncated to ``max_length`` (newline tokens as in training)."""
    plan = TokenPlan.of(spec)
    if plan.head_tail:
        return [w[0] for w in windows_of(*_essay_bodies(tokenizer, texts, plan), plan)]
    enc = tokenizer([encode_newlines(str(t), plan.add_newline_tokens) for t in texts],
                    truncation=True, max_length=plan.max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def tokenize_windows(tokenizer, texts: Sequence[str],
                     spec: TokenSource) -> list[list[list[int]]]:
    """The windows of every essay: ``[tokenize(...)]`` per essay unless ``spec.chunking``."""
    plan = TokenPlan.of(spec)
    if not plan.chunking:
        return [[ids] for ids in tokenize(tokenizer, texts, plan)]
    return windows_of(*_essay_bodies(tokenizer, texts, plan), plan)


def round_up(n: int, multiple: int = 1, cap: int | None = None) -> int:
    """``n`` rounded up to a multiple of ``multiple``, at most ``cap`` (never below ``n``)."""
    if multiple <= 1:
        return n
    up = -(-n // multiple) * multiple
    return max(n, min(up, cap)) if cap else up


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int = 1,
              cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence (rounded up to ``multiple``, at most ``cap``):
    (input_ids, attention_mask) int64 [N, T]."""
    width = round_up(max((len(s) for s in seqs), default=1) or 1, multiple, cap)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def pooling_matrix(windows_per_essay: Sequence[int], window_lengths: Sequence[int]) -> np.ndarray:
    """[B, W] float32: row b averages the windows of essay b (consecutive rows of the batch),
    weighted by their token counts; every row sums to 1."""
    counts = np.asarray(windows_per_essay, dtype=np.int64)
    lengths = np.asarray(window_lengths, dtype=np.float64)
    if (counts < 1).any():
        raise ValueError(f"every essay needs at least one window, got counts {counts.tolist()}")
    if int(counts.sum()) != len(lengths):
        raise ValueError(f"{int(counts.sum())} windows counted but {len(lengths)} lengths given")
    if (lengths <= 0).any():
        raise ValueError("every window needs at least one token")
    m = np.zeros((len(counts), len(lengths)), dtype=np.float64)
    m[np.repeat(np.arange(len(counts)), counts), np.arange(len(lengths))] = lengths
    return (m / m.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class EssayBatch:
    """Model inputs for a batch of essays (see the module docstring)."""

    input_ids: np.ndarray                 # [W, T] int64
    attention_mask: np.ndarray            # [W, T] int64
    window_weights: np.ndarray | None     # [B, W] float32, None = one window per essay

    @property
    def n_essays(self) -> int:
        w = self.window_weights
        return self.input_ids.shape[0] if w is None else w.shape[0]

    def feeds(self) -> dict[str, np.ndarray]:
        """Inputs by name (ONNX Runtime, Triton), in ``EssayRegressor.forward``'s order."""
        out = {INPUT_IDS: self.input_ids, ATTENTION_MASK: self.attention_mask}
        if self.window_weights is not None:
            out[WINDOW_WEIGHTS] = self.window_weights
        return out

    def tensors(self) -> dict:
        """``feeds`` as torch tensors (sharing memory), in ``EssayRegressor.forward``'s order."""
        import torch

        return {k: torch.from_numpy(v) for k, v in self.feeds().items()}


def collate(essays: Sequence[Sequence[Sequence[int]]], pad_id: int, chunked: bool,
            multiple: int = 1, cap: int | None = None) -> EssayBatch:
    """One batch from the windows of each essay (``tokenize_windows`` output)."""
    windows = [w for e in essays for w in e]
    ids, mask = pad_batch(windows, pad_id, multiple, cap)
    if not chunked:
        if len(windows) != len(essays):
            raise ValueError(f"{len(essays)} essays have {len(windows)} windows: a model "
                             f"without chunking reads one window per essay")
        return EssayBatch(ids, mask, None)
    return EssayBatch(ids, mask, pooling_matrix([len(e) for e in essays], mask.sum(axis=1)))


def encode_batch(tokenizer, texts: Sequence[str], spec: TokenSource) -> EssayBatch:
    """Texts -> one padded batch, exactly as the model was trained to read them."""
    plan = TokenPlan.of(spec)
    return collate(tokenize_windows(tokenizer, texts, plan), pad_id_of(tokenizer), plan.chunking)


def concat_batches(batches: Sequence[EssayBatch], pad_id: int) -> EssayBatch:
    """Batches as one: windows re-padded to the widest, weights combined block-diagonally."""
    width = max(b.input_ids.shape[1] for b in batches)

    def widen(a: np.ndarray, fill: int) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)

    ids = np.concatenate([widen(b.input_ids, pad_id) for b in batches])
    mask = np.concatenate([widen(b.attention_mask, 0) for b in batches])
    if all(b.window_weights is None for b in batches):
        return EssayBatch(ids, mask, None)
    if any(b.window_weights is None for b in batches):
        raise ValueError("cannot concatenate chunked and non-chunked batches")
    weights = np.zeros((sum(b.n_essays for b in batches), ids.shape[0]), dtype=np.float32)
    r = c = 0
    for b in batches:
        e, w = b.window_weights.shape
        weights[r:r + e, c:c + w] = b.window_weights
        r, c = r + e, c + w
    return EssayBatch(ids, mask, weights)


def length_sorted_batches(lengths: Sequence[int] | np.ndarray,
                          batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first, stable order)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def text_batches(texts: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """``length_sorted_batches`` by characters: serving batches essays before tokenizing."""
    return length_sorted_batches([len(t) for t in texts], batch_size)


def _whitespace_cut(text: str, limit: int) -> int:
    """The index of the last space, tab or newline at or before ``limit`` (0: do not cut)."""
    return max(0, *(text.rfind(c, 0, limit + 1) for c in " \n\t"))


class CharNormalizer:
    """A BERT normalizer (clean text, CJK spacing, accents, lowercase) applied as a table of
    characters with ``str.translate``: it maps every character on its own, so a tokenizer
    without its normalizer reads the translated text to the same ids, about 1.3x faster on
    one thread (AES2 essays; BENCHMARKS.md).

    Each character's image comes from the normalizer itself. ``apply`` returns None (use the
    full tokenizer) for a text holding an added token's content, or a character whose image
    keeps a combining mark (the one place where the normalizer looks past one character)."""

    def __init__(self, normalizer, added: Sequence[str]):
        import unicodedata

        self._normalize = normalizer.normalize_str
        self._combining = unicodedata.combining
        self._added = [a for a in added if a]
        self._table: dict[int, str] = {}
        self._unsafe: set[str] = set()
        self._seen: set[str] = set()
        self._learn({chr(i) for i in range(128)})

    @staticmethod
    def applies_to(tokenizer) -> bool:
        """Whether ``tokenizer`` (a ``tokenizers.Tokenizer``) normalizes like BERT."""
        from tokenizers.normalizers import BertNormalizer

        return isinstance(tokenizer.normalizer, BertNormalizer)

    def _learn(self, chars: set[str]) -> None:
        """Add the images of unseen characters. New tables replace the old ones whole, so a
        thread reading them meanwhile never sees one change under it."""
        new = chars - self._seen
        if not new:
            return
        table, unsafe = dict(self._table), set(self._unsafe)
        for c in new:
            image = self._normalize(c)
            if any(self._combining(x) for x in image):
                unsafe.add(c)
            elif image != c:
                table[ord(c)] = image
        self._table, self._unsafe, self._seen = table, unsafe, self._seen | new

    def apply(self, text: str) -> str | None:
        if not text.isascii():
            chars = set(text)
            self._learn(chars)
            if not self._unsafe.isdisjoint(chars):
                return None
        out = text.translate(self._table)
        if any(a in text or a in out for a in self._added):
            return None
        return out


class TokenEncoder:
    """``tokenize_windows`` for one tokenizer and token plan, faster, with identical ids.

    With a fast (Rust) tokenizer it calls the backend's ``encode_batch_fast`` (no offsets)
    on a private copy configured like ``tokenizer(..., truncation=True)``; a BERT normalizer
    runs as a character table (``CharNormalizer``) before it, and a BERT-style tokenizer reads
    essays one word at a time from a dict of word ids (``WordIds``, up to ``word_cache``
    words; 0 = off). Truncated plans cut
    an essay longer than ``max_length * chars_per_token`` characters at a space before
    tokenizing: the words before the cut tokenize exactly as in the whole essay, so when the
    cut essay still fills ``max_length`` tokens the result is the same; otherwise the whole
    essay is tokenized again. Chunked and head + tail plans always read whole essays. Other
    tokenizers fall back to ``tokenize_windows``. ``fingerprint`` names the tokenizer + plan
    (cache keys).
    """

    def __init__(self, tokenizer, spec: TokenSource, chars_per_token: float = 0.0,
                 word_cache: int = WORD_CACHE):
        import hashlib

        self.tokenizer = tokenizer
        self.plan = TokenPlan.of(spec)
        self.pad_id = pad_id_of(tokenizer)
        self.chars_per_token = float(chars_per_token)
        self.word_cache = int(word_cache)
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(
            tokenizer, "is_fast", False) else None
        self._fast = None
        self._words: WordIds | None = None
        state = repr(sorted(tokenizer.get_vocab().items())) if backend is None else backend.to_str()
        if backend is not None:
            from tokenizers import Tokenizer

            fast = Tokenizer.from_str(backend.to_str())
            fast.no_padding()
            fast.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
            if self.plan.whole_essays:
                fast.no_truncation()
            else:
                fast.enable_truncation(max_length=self.plan.max_length, stride=0,
                                       strategy="longest_first",
                                       direction=getattr(tokenizer, "truncation_side", "right"))
            self._fast = fast
            self._plain, self._chars = fast, None
            if CharNormalizer.applies_to(fast) and not self.plan.add_newline_tokens:
                self._plain = Tokenizer.from_str(fast.to_str())
                self._plain.encode_special_tokens = fast.encode_special_tokens
                added = list(tokenizer.get_added_vocab())
                self._chars = CharNormalizer(fast.normalizer, added)
                fast.normalizer = None
                if word_cache and WordIds.applies_to(self._plain):
                    self._words = WordIds(self._plain, added, word_cache)
        if self.plan.whole_essays or self._words is not None:
            self._prefix, self._suffix = special_tokens(tokenizer)
            self._body = self.plan.max_length - len(self._prefix) - len(self._suffix)
        self._keep_tail = getattr(tokenizer, "truncation_side", "right") == "left"
        digest = hashlib.sha256(state.encode())
        digest.update(repr(self.plan).encode())
        self.fingerprint = digest.hexdigest()[:16]

    @property
    def fast(self) -> bool:
        return self._fast is not None

    def _texts(self, texts: Sequence[str]) -> list[str]:
        return [encode_newlines(str(t), self.plan.add_newline_tokens) for t in texts]

    def _truncated(self, texts: list[str]) -> list[list[int]]:
        budget = int(self.plan.max_length * self.chars_per_token)
        cuts = [(_whitespace_cut(t, budget) if budget and len(t) > budget else 0) for t in texts]
        out = self._encode([t[:c] if c else t for t, c in zip(texts, cuts, strict=True)])
        short = [i for i, c in enumerate(cuts) if c and len(out[i]) < self.plan.max_length]
        if short:  # the cut essay did not fill max_length: tokenize it whole
            for i, ids in zip(short, self._encode([texts[i] for i in short]), strict=True):
                out[i] = ids
        return out

    def _encode(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Ids of each text: from the word dict where it applies, else through the character
        table and the normalizer-free tokenizer, else through the tokenizer with its
        normalizer. With special tokens, truncated to ``max_length`` as the tokenizer would."""
        if self._words is None:
            return self._tokenize(texts, add_special_tokens)
        bodies = [self._words.body(t) for t in texts]
        rest = [i for i, b in enumerate(bodies) if b is None]
        out = [[] if b is None else self._framed(b) if add_special_tokens else b
               for b in bodies]
        if rest:
            for i, ids in zip(rest, self._tokenize([texts[i] for i in rest],
                                                   add_special_tokens), strict=True):
                out[i] = ids
        return out

    def _framed(self, body: list[int]) -> list[int]:
        """Special tokens around a body cut to fit ``max_length`` (the tokenizer's side)."""
        if len(body) > self._body:
            body = body[len(body) - self._body:] if self._keep_tail else body[:self._body]
        return [*self._prefix, *body, *self._suffix]

    def _tokenize(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        """Ids through the Rust tokenizer (with the character table where it applies)."""
        if self._chars is None:
            return [e.ids for e in self._fast.encode_batch_fast(
                texts, add_special_tokens=add_special_tokens)]
        mapped = [self._chars.apply(t) for t in texts]
        table = [i for i, m in enumerate(mapped) if m is not None]
        whole = [i for i, m in enumerate(mapped) if m is None]
        out: list[list[int]] = [[] for _ in texts]
        for tok, idx, batch in ((self._fast, table, [mapped[i] for i in table]),
                                (self._plain, whole, [texts[i] for i in whole])):
            if idx:
                enc = tok.encode_batch_fast(batch, add_special_tokens=add_special_tokens)
                for i, e in zip(idx, enc, strict=True):
                    out[i] = e.ids
        return out

    def windows(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """The windows of every essay, exactly as ``tokenize_windows``."""
        if self._fast is None:
            return tokenize_windows(self.tokenizer, texts, self.plan)
        texts = self._texts(texts)
        if not self.plan.whole_essays:
            return [[ids] for ids in self._truncated(texts)]
        return windows_of(self._prefix, self._suffix, self._body,
                          self._encode(texts, add_special_tokens=False), self.plan)

    def batch(self, texts: Sequence[str]) -> EssayBatch:
        """``encode_batch``: texts -> one padded batch."""
        return collate(self.windows(texts), self.pad_id, self.plan.chunking)
