"""Tokenize a training step's essays once, for all of its partitions.

Every fold x head partition reads the same essays with the same tokenizer: without sharing,
each worker process tokenizes about twice its fold table on one thread (stage 1, stage 2, the
stage-1 predictions stage 2 smooths with, the out-of-fold predictions), while the GPU waits
for it at the start of each stage. :func:`share_tokens` tokenizes the distinct texts once in
the step process with all its cores into a ``TokenCache`` folder (SQLite, keyed by text hash
and tokenizer + token plan); :func:`shared_encoder` opens it in a worker. The ids are those of
``tokenize_windows``; an essay missing from the cache is tokenized where it is needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aes_core.config import BackboneSection
from aes_core.hardware import scoped_environ
from aes_core.models.tokens import TokenEncoder, TokenPlan
from aes_core.serving.token_cache import CachedEncoder, TokenCache

RAYON_THREADS = "RAYON_NUM_THREADS"  # the Rust tokenizer's thread pool (read when it starts)
PARALLELISM = "TOKENIZERS_PARALLELISM"


@dataclass(frozen=True)
class SharedTokens:
    """What :func:`share_tokens` wrote."""

    folder: str
    essays: int
    seconds: float


def share_tokens(backbone_path: str | Path, backbone: BackboneSection, texts: Iterable[str],
                 folder: str | Path, threads: int | None = None,
                 batch_size: int = 2048) -> SharedTokens:
    """Tokenize the distinct ``texts`` once into a token cache in ``folder``.

    ``threads``: the tokenizer's threads (default: every core this process may use); set only
    when this process has not tokenized yet (the Rust thread pool starts once)."""
    from aes_core.models.backbone import load_tokenizer

    t0 = time.time()
    unique = list(dict.fromkeys(str(t) for t in texts))
    tokenizer = load_tokenizer(Path(backbone_path), backbone.add_newline_tokens)
    shared = shared_encoder(tokenizer, backbone, folder, len(unique))
    # all cores only while the step tokenizes: workers started later keep one thread each
    parallel = {PARALLELISM: "true", **({RAYON_THREADS: str(threads)}
                                        if threads and RAYON_THREADS not in os.environ else {})}
    try:
        with scoped_environ(parallel):
            for s in range(0, len(unique), batch_size):
                shared.windows(unique[s:s + batch_size])  # tokenized and stored
    finally:
        shared.cache.close()
    return SharedTokens(str(folder), len(unique), round(time.time() - t0, 2))


def shared_encoder(tokenizer, backbone: BackboneSection, folder: str | Path,
                   max_entries: int) -> CachedEncoder:
    """A worker's view of the step's token cache: cached essays are read, others tokenized
    (and added, so a second stage reads them too)."""
    return CachedEncoder(TokenEncoder(tokenizer, TokenPlan.of(backbone)),
                         TokenCache(max_entries=max(1, max_entries), folder=folder))
