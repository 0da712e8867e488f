"""Read essay tables (CSV or gzip CSV) and validate them against their schema.

Every problem raises :class:`DataError` naming the file, the row (1-based data row, as a
spreadsheet shows it after the header) and the field. Nothing is dropped silently. Decoding
(gzip, UTF-8, CSV structure) lives here; the column rules live in :mod:`aes_core.data.schema`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zlib
from pathlib import Path

import pandas as pd

from aes_core.data import schema
from aes_core.data.schema import SCORE_MAX as SCORE_MAX  # re-exported
from aes_core.data.schema import SCORE_MIN as SCORE_MIN  # re-exported
from aes_core.data.schema import DataError as DataError  # re-exported
from aes_core.data.schema import TableSchema

BOM = b"\xef\xbb\xbf"


def _gunzip(raw: bytes, label: str, max_bytes: int | None) -> bytes:
    """Every gzip member of ``raw``; more than ``max_bytes`` unpacked is an error."""
    out, rest = bytearray(), raw
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        room = 0 if max_bytes is None else max_bytes + 1 - len(out)  # 0: unbounded
        try:
            out += d.decompress(rest, room)
        except zlib.error as e:
            raise DataError(label, f"corrupt gzip: {e}") from e
        if max_bytes is not None and len(out) > max_bytes:
            raise DataError(label, f"the unpacked file is larger than {max_bytes:,} bytes")
        if not d.eof:
            raise DataError(label, "corrupt gzip: the file ends mid-stream (truncated)")
        rest = d.unused_data
    return bytes(out)


def _data_row(raw: bytes, pos: int) -> int:
    """1-based data row (header not counted) holding byte ``pos`` of a CSV."""
    prefix = raw[:pos].decode("utf-8", errors="replace")
    records = list(csv.reader(io.StringIO(prefix)))
    if prefix.endswith("\n") or not records:
        return max(len(records), 1)
    return max(len(records) - 1, 1)


def decode_bytes(raw: bytes, label: str, max_bytes: int | None = None) -> str:
    """Gunzip (bounded by ``max_bytes``), drop a UTF-8 byte-order mark, decode UTF-8."""
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw, label, max_bytes)
    raw = raw.removeprefix(BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            label, f"the file is not UTF-8 text (bad byte {raw[e.start:e.start + 1]!r} at byte "
                   f"{e.start}, file line {line}); save it as 'CSV UTF-8'",
            rows=[_data_row(raw, e.start)],
        ) from e


def read_table(source: str | Path | bytes, name: str | None = None,
               max_bytes: int | None = None) -> pd.DataFrame:
    """Read a CSV (optionally gzip) as strings, keeping empty fields as ''."""
    if isinstance(source, bytes):
        label, raw = name or "<upload>", source
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise DataError(label, "file not found")
        raw = path.read_bytes()
    text = decode_bytes(raw, label, max_bytes)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(label, f"not a readable CSV: {e}") from e
    if not isinstance(df.index, pd.RangeIndex):  # pandas made the extra leading field(s) an index
        raise DataError(label, f"data rows have more fields than the header {list(df.columns)} "
                               "(trailing delimiter?): columns would shift")
    return df


def load_table(table: TableSchema, source: str | Path | bytes, name: str | None = None, *,
               max_unpacked_bytes: int | None = None, **expect: int) -> pd.DataFrame:
    """Read ``source`` and validate it strictly against ``table`` (see ``schema.validate``)."""
    label = name or ("<upload>" if isinstance(source, bytes) else str(source))
    return table.validate(read_table(source, label, max_unpacked_bytes), label, **expect)


def load_train(path: str | Path) -> pd.DataFrame:
    """Scored essays: essay_id, full_text, score (int 1..6)."""
    return load_table(schema.TrainEssays, path)


def load_essays(source: str | Path | bytes, name: str | None = None, *,
                max_unpacked_bytes: int | None = None, **expect: int) -> pd.DataFrame:
    """Unscored essays: essay_id, full_text."""
    return load_table(schema.Essays, source, name, max_unpacked_bytes=max_unpacked_bytes,
                      **expect)


def load_labels(path: str | Path) -> pd.DataFrame:
    """Test labels: essay_id, score (int 1..6)."""
    return load_table(schema.Labels, path)


def load_persuade(path: str | Path) -> pd.DataFrame:
    """PERSUADE reference: essay_id_comp, full_text, prompt_name."""
    return load_table(schema.PersuadeReference, path)


def load_unlabelled(path: str | Path) -> pd.DataFrame:
    """Texts for masked-LM pretraining: essay_id_comp, full_text (at least one row)."""
    return load_table(schema.Unlabelled, path)


def fingerprint(df: pd.DataFrame) -> str:
    """Content hash of a table (order-sensitive), for lineage and MLflow."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
