"""Token ids of essays scored before, kept by content hash (the rescoring schedule scores the
same essays again and again).

A key is ``sha256(text)`` + the encoder's fingerprint (tokenizer + token plan), so a new
tokenizer or plan never reads old ids. ``TokenCache`` keeps the most recently used essays in
memory (LRU, ``max_entries``) and, with a folder, also in a SQLite file there that several
scorers (processes) share and that outlives them; the file holds at most ``max_entries``
essays too (the oldest written are dropped first). ``CachedEncoder.windows`` equals
``TokenEncoder.windows``: only the misses are tokenized.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aes_core.models.tokens import EssayBatch, TokenEncoder, collate

DB_FILE = "token_cache.sqlite"
Windows = list[list[int]]


def pack(windows: Windows) -> bytes:
    """Windows -> bytes: window count, window lengths, then the ids (int32)."""
    lengths = [len(w) for w in windows]
    flat = [i for w in windows for i in w]
    return (np.asarray([len(windows), *lengths], dtype=np.int32).tobytes()
            + np.asarray(flat, dtype=np.int32).tobytes())


def unpack(raw: bytes) -> Windows:
    arr = np.frombuffer(raw, dtype=np.int32)
    n = int(arr[0])
    lengths, ids = arr[1:1 + n], arr[1 + n:]
    out, pos = [], 0
    for ln in lengths.tolist():
        out.append(ids[pos:pos + ln].tolist())
        pos += ln
    return out


class TokenCache:
    """An LRU of packed windows in memory, optionally backed by a shared SQLite file."""

    def __init__(self, max_entries: int, folder: str | Path | None = None):
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self.hits = self.misses = 0
        self._db: sqlite3.Connection | None = None
        self.path = None
        if folder and max_entries:
            self.path = Path(folder) / DB_FILE
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS tokens (key TEXT PRIMARY KEY, "
                             "value BLOB NOT NULL, written REAL NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS tokens_written ON tokens (written)")
            self._db.commit()

    def __len__(self) -> int:
        return len(self._mem)

    def get_many(self, keys: Sequence[str]) -> list[Windows | None]:
        out: list[Windows | None] = [None] * len(keys)
        missing = []
        for i, k in enumerate(keys):
            raw = self._mem.get(k)
            if raw is None:
                missing.append(i)
            else:
                self._mem.move_to_end(k)
                out[i] = unpack(raw)
        if missing and self._db is not None:
            found = {}
            wanted = list({keys[i] for i in missing})
            for s in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
                part = wanted[s:s + 500]
                rows = self._db.execute(
                    f"SELECT key, value FROM tokens WHERE key IN ({','.join('?' * len(part))})",
                    part).fetchall()
                found.update(rows)
            for i in missing:
                raw = found.get(keys[i])
                if raw is not None:
                    self._remember(keys[i], raw)
                    out[i] = unpack(raw)
        n_hit = sum(o is not None for o in out)
        self.hits += n_hit
        self.misses += len(keys) - n_hit
        return out

    def _remember(self, key: str, raw: bytes) -> None:
        self._mem[key] = raw
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_entries:
            self._mem.popitem(last=False)

    def put_many(self, items: Sequence[tuple[str, Windows]]) -> None:
        if not self.max_entries or not items:
            return
        packed = [(k, pack(w)) for k, w in items]
        for k, raw in packed:
            self._remember(k, raw)
        if self._db is not None:
            now = time.time()
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO tokens VALUES (?, ?, ?)",
                                     [(k, raw, now) for k, raw in packed])
                n = self._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]
                if n > self.max_entries:
                    self._db.execute(
                        "DELETE FROM tokens WHERE key IN (SELECT key FROM tokens "
                        "ORDER BY written LIMIT ?)", (n - self.max_entries,))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def text_key(text: str, fingerprint: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() + fingerprint


class CachedEncoder:
    """A ``TokenEncoder`` that looks essays up in a ``TokenCache`` first."""

    def __init__(self, encoder: TokenEncoder, cache: TokenCache | None):
        self.encoder = encoder
        self.cache = cache if cache is not None and cache.max_entries else None
        self.plan = encoder.plan
        self.pad_id = encoder.pad_id

    def windows(self, texts: Sequence[str]) -> list[Windows]:
        if self.cache is None:
            return self.encoder.windows(texts)
        texts = [str(t) for t in texts]
        keys = [text_key(t, self.encoder.fingerprint) for t in texts]
        out = self.cache.get_many(keys)
        todo = [i for i, w in enumerate(out) if w is None]
        if todo:
            fresh = self.encoder.windows([texts[i] for i in todo])
            for i, w in zip(todo, fresh, strict=True):
                out[i] = w
            self.cache.put_many(list(dict(zip([keys[i] for i in todo], fresh,
                                              strict=True)).items()))
        return out  # type: ignore[return-value]

    def batch(self, texts: Sequence[str]) -> EssayBatch:
        return collate(self.windows(texts), self.pad_id, self.plan.chunking)
