"""Read essay tables (CSV or gzip CSV) and validate them.

Every problem raises :class:`DataError` naming the file, the row (1-based data row, as a
spreadsheet shows it after the header) and the field. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

SCORE_MIN, SCORE_MAX = 1, 6

TRAIN_COLUMNS = ("essay_id", "full_text", "score")
TEST_COLUMNS = ("essay_id", "full_text")
LABEL_COLUMNS = ("essay_id", "score")
PERSUADE_COLUMNS = ("essay_id_comp", "full_text", "prompt_name")
UNLABELLED_COLUMNS = ("essay_id_comp", "full_text")


class DataError(ValueError):
    """Bad input: the message names the file, row and field."""

    def __init__(self, source: str, message: str, rows: Iterable[int] = (), field: str = ""):
        self.source = source
        self.rows = list(rows)
        self.field = field
        where = f"{source}"
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:10])
            more = f" (+{len(self.rows) - 10} more)" if len(self.rows) > 10 else ""
            where += f", row {shown}{more}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            source,
            f"not valid UTF-8 at byte {e.start} (file line {line}): {raw[e.start:e.start + 8]!r}",
        ) from e


def read_table(source: str | Path | bytes, name: str | None = None) -> pd.DataFrame:
    """Read a CSV (optionally gzip) as strings, keeping empty fields as ''."""
    if isinstance(source, bytes):
        label, raw = name or "<upload>", source
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise DataError(label, "file not found")
        raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        import gzip

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:  # EOFError: truncated
            raise DataError(label, f"corrupt gzip: {e}") from e
    text = _decode(raw, label)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(label, f"not a readable CSV: {e}") from e
    if not isinstance(df.index, pd.RangeIndex):  # pandas made the extra leading field(s) an index
        raise DataError(label, f"data rows have more fields than the header {list(df.columns)} "
                               "(trailing delimiter?): columns would shift")
    return df


def require_columns(df: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            source, f"missing column(s) {missing}; found {list(df.columns)}", field=missing[0]
        )


def _rows(mask: pd.Series) -> list[int]:
    """1-based data-row numbers of the True entries (header not counted)."""
    return [int(i) + 1 for i in mask.to_numpy().nonzero()[0]]


def check_ids(df: pd.DataFrame, source: str, column: str = "essay_id") -> None:
    ids = df[column].astype(str).str.strip()
    empty = ids == ""
    if empty.any():
        raise DataError(source, "empty id", rows=_rows(empty), field=column)
    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].iloc[0]
        raise DataError(source, f"duplicate id {first!r}", rows=_rows(ids == first), field=column)


def check_texts(df: pd.DataFrame, source: str, column: str = "full_text") -> None:
    texts = df[column]
    non_text = ~texts.map(lambda t: isinstance(t, str))
    if non_text.any():
        raise DataError(source, "not text", rows=_rows(non_text), field=column)
    empty = texts.str.strip() == ""
    if empty.any():
        raise DataError(source, "empty essay text", rows=_rows(empty), field=column)
    bad_chars = texts.str.contains("\ufffd", regex=False)
    if bad_chars.any():
        raise DataError(
            source, "text holds U+FFFD (undecodable bytes upstream)", rows=_rows(bad_chars),
            field=column,
        )


def parse_scores(df: pd.DataFrame, source: str, column: str = "score") -> pd.Series:
    raw = df[column].astype(str).str.strip()
    num = pd.to_numeric(raw, errors="coerce")
    not_num = num.isna()
    if not_num.any():
        raise DataError(source, f"score is not a number: {raw[not_num].iloc[0]!r}",
                        rows=_rows(not_num), field=column)
    not_int = num != num.round()
    if not_int.any():
        raise DataError(source, f"score is not a whole number: {raw[not_int].iloc[0]!r}",
                        rows=_rows(not_int), field=column)
    out_of_range = (num < SCORE_MIN) | (num > SCORE_MAX)
    if out_of_range.any():
        raise DataError(
            source, f"score {raw[out_of_range].iloc[0]} outside {SCORE_MIN}..{SCORE_MAX}",
            rows=_rows(out_of_range), field=column,
        )
    return num.astype(int)


def load_train(path: str | Path) -> pd.DataFrame:
    """Scored essays: essay_id, full_text, score (int 1..6)."""
    src = str(path)
    df = read_table(path)
    require_columns(df, TRAIN_COLUMNS, src)
    check_ids(df, src)
    check_texts(df, src)
    out = df[list(TRAIN_COLUMNS)].copy()
    out["score"] = parse_scores(df, src)
    return out.reset_index(drop=True)


def load_essays(source: str | Path | bytes, name: str | None = None) -> pd.DataFrame:
    """Unscored essays: essay_id, full_text."""
    df = read_table(source, name)
    src = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    require_columns(df, TEST_COLUMNS, src)
    check_ids(df, src)
    check_texts(df, src)
    return df[list(TEST_COLUMNS)].reset_index(drop=True)


def load_labels(path: str | Path) -> pd.DataFrame:
    src = str(path)
    df = read_table(path)
    require_columns(df, LABEL_COLUMNS, src)
    check_ids(df, src)
    out = df[list(LABEL_COLUMNS)].copy()
    out["score"] = parse_scores(df, src)
    return out


def load_persuade(path: str | Path) -> pd.DataFrame:
    """PERSUADE reference: essay_id_comp, full_text, prompt_name."""
    src = str(path)
    df = read_table(path)
    require_columns(df, PERSUADE_COLUMNS, src)
    check_ids(df, src, "essay_id_comp")
    check_texts(df, src)
    empty_prompt = df["prompt_name"].str.strip() == ""
    if empty_prompt.any():
        raise DataError(src, "empty prompt_name", rows=_rows(empty_prompt), field="prompt_name")
    return df[list(PERSUADE_COLUMNS)].reset_index(drop=True)


def load_unlabelled(path: str | Path) -> pd.DataFrame:
    src = str(path)
    df = read_table(path)
    require_columns(df, UNLABELLED_COLUMNS, src)
    check_ids(df, src, "essay_id_comp")
    check_texts(df, src)
    return df[list(UNLABELLED_COLUMNS)].reset_index(drop=True)


def fingerprint(df: pd.DataFrame) -> str:
    """Content hash of a table (order-sensitive), for lineage and MLflow."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
