"""Tokenize batches in worker processes so tokenization overlaps with the model.

On the H100 host (16 cores) the Rust tokenizer turns 5.9-7.4k essays/s into ids, whether with
its own threads or with 15 processes, while the GPU scores 15-17k essays/s: a loop that
tokenizes and then runs the model leaves the GPU idle for most of the pass. Here tokenization
runs in other processes while the accelerator works: ``ParallelTokenizer.map`` yields padded
batches in order while the workers keep tokenizing the next ones, so a pass takes about as long
as tokenization alone (BENCHMARKS.md: 8.0k vs 3.8k essays/s end to end).

Each worker uses ``aes_core.models.tokens.TokenEncoder`` (identical ids to ``encode_batch``,
faster): the batches are identical to the in-process ones (same newline tokens, truncation or
windows, right padding to the batch's longest window, window weights for chunked models).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from aes_core.hardware import usable_cpus
from aes_core.models.regressor import RegressorSpec
from aes_core.models.tokens import WORD_CACHE, EssayBatch, TokenEncoder, concat_batches

_WORKER: dict = {}


def _init_worker(tokenizer_path: str, spec_json: str, chars_per_token: float = 0.0,
                 word_cache: int = WORD_CACHE) -> None:
    # one thread per worker: the parallelism comes from the processes
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    _WORKER["encoder"] = TokenEncoder(tok, RegressorSpec.model_validate_json(spec_json),
                                      chars_per_token, word_cache)


def _tokenize_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    enc = _WORKER["encoder"]
    b = enc.batch(texts)
    # int32 + lengths: a quarter of the bytes through the pipe of int64 ids + mask
    return (b.input_ids.astype(np.int32), b.attention_mask.sum(axis=1).astype(np.int32),
            b.window_weights, enc.pad_id)


def _unpack(ids32: np.ndarray, lengths: np.ndarray, weights: np.ndarray | None) -> EssayBatch:
    mask = (np.arange(ids32.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    return EssayBatch(ids32.astype(np.int64), mask, weights)


class ParallelTokenizer:
    """A pool of tokenizer processes; ``map`` turns batches of texts into ``EssayBatch``es."""

    def __init__(self, tokenizer_path: str | Path, spec: RegressorSpec, workers: int | None = None,
                 chunk_size: int = 32, chars_per_token: float = 0.0,
                 word_cache: int = WORD_CACHE):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.workers = workers or max(1, usable_cpus() - 1)
        self.chunk_size = chunk_size
        # spawn: the parent may hold CUDA or a tokenizer thread pool, neither survives a fork
        self._pool = ProcessPoolExecutor(
            self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
            initargs=(str(tokenizer_path), spec.model_dump_json(), chars_per_token,
                      word_cache))

    def warm_up(self) -> None:
        """Start every worker (and load its tokenizer) before anything is timed."""
        list(self._pool.map(_tokenize_batch, [["warm up"]] * self.workers))

    def map(self, batches: Iterable[list[str]]) -> Iterator[EssayBatch]:
        """One ``EssayBatch`` per batch of texts, in order.

        Every batch is cut into chunks of at most ``chunk_size`` essays and all chunks are
        queued at once: the workers run ahead of the consumer, and a large batch is tokenized
        by many workers instead of one. The chunks of a batch are re-padded to its longest
        window (window weights joined block-diagonally), so the result equals tokenizing the
        batch in one piece.
        """
        sizes, chunks = [], []
        for batch in batches:
            parts = [batch[i:i + self.chunk_size] for i in range(0, len(batch), self.chunk_size)]
            sizes.append(len(parts))
            chunks.extend(parts)
        done = self._pool.map(_tokenize_batch, chunks)
        for n in sizes:
            parts = [next(done) for _ in range(n)]
            yield concat_batches([_unpack(ids, lens, w) for ids, lens, w, _ in parts],
                                 parts[0][3])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ParallelTokenizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
