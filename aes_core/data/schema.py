"""The essay tables' schemas: every column rule is declared once here and applied three ways.

- ``validate(df, source)`` (strict): the typed table, or :class:`DataError` naming the file,
  row and field of the first problem. Used by the loaders in :mod:`aes_core.data.io` and the
  teachers' page upload.
- ``split_rows(df)`` (lenient): ``(good rows, [(row, id, reason)])``; the reason is the same
  message the strict mode raises. Used by the inbox parser. Problems of the table as a whole
  (a missing column, no rows, too many rows) still raise :class:`DataError`.
- ``check(df)`` (report): a :class:`CheckResult` listing every problem, for asset checks on
  stored tables; it also checks the stored dtypes.

Rows are numbered from 1 as a spreadsheet shows them below the header. Rules that depend on
the configuration take it as keyword expectations (never derived from the data):
``n_folds`` (folds config: fold values 0..n_folds-1, each present), ``max_text_chars`` and
``max_rows`` (upload limits). Every declared column is required; extra columns are ignored
and dropped from the result. Every table needs at least one row: "no rows" in a file is a
mistake (an optional input, e.g. unlabelled essays, is switched off in the config instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

SCORE_MIN, SCORE_MAX = 1, 6   # the holistic score scale of the task, not a tunable setting
ROWS_SHOWN = 10               # rows named in a message before "(+N more)"


class DataError(ValueError):
    """Bad input: the message names the file, row and field; ``reason`` is the rule's message."""

    def __init__(self, source: str, message: str, rows: Iterable[int] = (), field: str = ""):
        self.source = source
        self.reason = message
        self.rows = list(rows)
        self.field = field
        super().__init__(f"{source}{_where(self.rows, field)}: {message}")


def _where(rows: list[int], field: str = "") -> str:
    out = f", row {_row_list(rows)}" if rows else ""
    return out + (f", field {field!r}" if field else "")


def _row_list(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:ROWS_SHOWN])
    return shown + (f" (+{len(rows) - ROWS_SHOWN} more)" if len(rows) > ROWS_SHOWN else "")


@dataclass(frozen=True)
class Expect:
    """What the configuration expects of a table (None: rule not applied)."""

    n_folds: int | None = None
    max_text_chars: int | None = None
    max_rows: int | None = None


Bound = int | Callable[[Expect], int | None]


@dataclass(frozen=True)
class Column:
    """One column and its rules, in the order they are applied.

    ``kind`` is the type (str, int or bool); ``strip`` keeps stripped values (ids, names);
    ``non_empty``; ``essay_text``: no U+FFFD and at most ``max_text_chars``; ``lo``/``hi``:
    inclusive integer range (``hi`` may come from the expectations); ``cover``: every value
    of the range occurs; ``unique``: no value twice (an id).
    """

    name: str
    kind: Literal["str", "int", "bool"] = "str"
    noun: str = ""          # how messages name an empty value; default: the column name
    strip: bool = False
    non_empty: bool = False
    essay_text: bool = False
    lo: int | None = None
    hi: Bound | None = None
    cover: bool = False
    unique: bool = False

    def bounds(self, ex: Expect) -> tuple[int | None, int | None]:
        hi = self.hi(ex) if callable(self.hi) else self.hi
        if callable(self.hi) and hi is None:
            raise ValueError(f"column {self.name!r}: its range comes from the configuration; "
                             "pass the expectation (e.g. n_folds=cfg.folds.n_folds)")
        return self.lo, hi


@dataclass(frozen=True)
class Finding:
    """Rows (0-based positions) that break one rule of one column."""

    field: str
    bad: np.ndarray
    message: Callable[[int], str]                       # message for the row at a position
    group: Callable[[int], np.ndarray] | None = None    # rows to name with it (default: all)
    table: bool = False                                 # a rule of the whole column, no rows

    def rows_for(self, pos: int) -> list[int]:
        idx = self.group(pos) if self.group else np.flatnonzero(self.bad)
        return [int(i) + 1 for i in idx]


@dataclass
class CheckResult:
    passed: bool
    description: str
    details: dict | None = None


@dataclass
class _Evaluation:
    values: pd.DataFrame            # parsed values (meaningful where the row is good)
    findings: list[Finding] = field(default_factory=list)


def id_column(name: str) -> Column:
    """An essay id: stripped, non-empty, unique."""
    return Column(name, strip=True, non_empty=True, unique=True)


TEXT = Column("full_text", noun="essay text", non_empty=True, essay_text=True)
SCORE = Column("score", "int", lo=SCORE_MIN, hi=SCORE_MAX)
PROMPT = Column("prompt_name", strip=True, non_empty=True)


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    noun: str = "essays"    # what a row is, in messages about the row count

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def key(self) -> str:
        """The id column (the first unique one)."""
        return next(c.name for c in self.columns if c.unique)

    # -- table rules ------------------------------------------------------------------------
    def require_columns(self, found: Sequence[str], source: str) -> None:
        missing = [c for c in self.names if c not in found]
        if missing:
            raise DataError(source, f"missing column(s) {missing}; found {list(found)}",
                            field=missing[0])

    def _table_problems(self, df: pd.DataFrame, ex: Expect) -> list[str]:
        if len(df) == 0:
            return [f"the file has a header but no {self.noun}"]
        if ex.max_rows is not None and len(df) > ex.max_rows:
            return [f"the file has {len(df):,} {self.noun}; the limit is {ex.max_rows:,} per "
                    "file (split the file)"]
        return []

    # -- the three modes --------------------------------------------------------------------
    def validate(self, df: pd.DataFrame, source: str, **expect: int) -> pd.DataFrame:
        """The typed table (declared columns only), or DataError for the first problem."""
        ev = self._evaluate_input(df, source, Expect(**expect))
        for f in ev.findings:
            if f.bad.any():
                pos = int(np.flatnonzero(f.bad)[0])
                raise DataError(source, f.message(pos),
                                rows=[] if f.table else f.rows_for(pos), field=f.field)
        return ev.values

    def split_rows(self, df: pd.DataFrame, source: str = "<table>",
                   **expect: int) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
        """Good rows (typed) and ``(row, id, reason)`` of each bad row, in row order.

        A row breaking several rules is reported once, with the reason the strict mode would
        give first. A repeated id is bad from its second otherwise-good occurrence on.
        Problems of the table as a whole raise DataError as in the strict mode.
        """
        ev = self._evaluate_input(df, source, Expect(**expect))
        reason: dict[int, str] = {}
        for f in ev.findings:
            if f.table and f.bad.any():
                raise DataError(source, f.message(0), field=f.field)
            for pos in np.flatnonzero(f.bad):
                reason.setdefault(int(pos), f.message(int(pos)))
        ids = ev.values[self.key]
        bad = [(pos + 1, ids.iloc[pos], reason[pos]) for pos in sorted(reason)]
        keep = np.ones(len(df), dtype=bool)
        keep[list(reason)] = False
        return ev.values[keep].reset_index(drop=True), bad

    def check(self, df: pd.DataFrame, columns: Sequence[str] | None = None,
              **expect: int) -> CheckResult:
        """Every problem of a stored table (values and dtypes), as a check result.

        ``columns``: check only these declared columns (default: all).
        """
        ex = Expect(**expect)
        sub = TableSchema(self.name, tuple(c for c in self.columns
                                           if columns is None or c.name in columns), self.noun)
        missing = [c for c in sub.names if c not in df.columns]
        problems = [f"missing column(s) {missing}"] if missing else sub._table_problems(df, ex)
        details: dict = {"rows": len(df)}
        if not problems:
            for f in sub._evaluate(df, ex, stored=True).findings:
                if f.bad.any():
                    pos = int(np.flatnonzero(f.bad)[0])
                    rows = "" if f.table else f" (row {_row_list(f.rows_for(pos))})"
                    problems.append(f"{f.field}: {f.message(pos)}{rows}")
            for c in sub.columns:
                if c.cover:
                    lo, hi = c.bounds(ex)
                    counts = df[c.name].value_counts().reindex(range(lo, hi + 1), fill_value=0)
                    details[f"{c.name}_sizes"] = [int(v) for v in counts]
        desc = "; ".join(problems) or f"{len(df)} rows match {self.name} ({', '.join(sub.names)})"
        return CheckResult(not problems, desc, {**details, "problems": len(problems)})

    def _evaluate_input(self, df: pd.DataFrame, source: str, ex: Expect) -> _Evaluation:
        self.require_columns(list(df.columns), source)
        for problem in self._table_problems(df, ex):
            raise DataError(source, problem)
        return self._evaluate(df, ex)

    # -- the rules --------------------------------------------------------------------------
    def _evaluate(self, df: pd.DataFrame, ex: Expect, stored: bool = False) -> _Evaluation:
        """Apply every column rule; ``stored`` also checks the dtypes of a stored table."""
        n = len(df)
        good = np.ones(n, dtype=bool)
        values: dict[str, pd.Series] = {}
        findings: list[Finding] = []
        for col in self.columns:
            vals, found = _column_rules(col, df[col.name].reset_index(drop=True), ex, stored)
            values[col.name] = vals
            findings += found
            for f in found:
                if not f.table:
                    good &= ~f.bad
        for col in self.columns:  # last: an id repeats only among otherwise good rows
            if col.unique:
                findings.append(_unique(col, values[col.name], good))
            if col.cover:
                findings.append(_cover(col, values[col.name][good], ex))
        return _Evaluation(pd.DataFrame(values), findings)


def _column_rules(col: Column, s: pd.Series, ex: Expect,
                  stored: bool) -> tuple[pd.Series, list[Finding]]:
    """Parsed values of one column and its findings; each rule sees the rows still good."""
    name = col.name
    shown = s.map(lambda v: v.strip() if isinstance(v, str) else str(v))
    rules: list[tuple[np.ndarray, Callable[[int], str]]] = []
    table: list[Finding] = []
    if col.kind == "str":
        is_str = s.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        text = s.where(is_str, "").astype(object)
        rules.append((~is_str, lambda i: "not text"))
        if col.non_empty:
            rules.append(((text.map(str.strip) == "").to_numpy(dtype=bool),
                          lambda i: f"empty {col.noun or name}"))
        if col.essay_text:
            rules.append((text.str.contains("\ufffd", regex=False).to_numpy(dtype=bool),
                          lambda i: "text holds U+FFFD (undecodable bytes upstream)"))
            if ex.max_text_chars is not None:
                lengths = text.str.len()
                rules.append(((lengths > ex.max_text_chars).to_numpy(dtype=bool),
                              lambda i: f"essay longer than {ex.max_text_chars:,} characters "
                                        f"({int(lengths.iloc[i]):,})"))
        vals = text.map(str.strip) if col.strip else text
    elif col.kind == "int":
        if stored and not pd.api.types.is_integer_dtype(s):
            table.append(_table_finding(name, f"stored as {s.dtype}, expected integers"))
        num = pd.to_numeric(shown if s.dtype == object else s, errors="coerce").astype(float)
        finite = np.isfinite(num.to_numpy())
        whole = num.where(finite, 0.0)
        rules.append((~finite, lambda i: f"{name} is not a number: {shown.iloc[i]!r}"))
        rules.append(((whole != whole.round()).to_numpy(dtype=bool),
                      lambda i: f"{name} is not a whole number: {shown.iloc[i]!r}"))
        lo, hi = col.bounds(ex)
        if lo is not None and hi is not None:
            rules.append((((whole < lo) | (whole > hi)).to_numpy(dtype=bool),
                          lambda i: f"{name} {shown.iloc[i]} outside {lo}..{hi}"))
        vals = whole
    else:
        if stored and not pd.api.types.is_bool_dtype(s):
            table.append(_table_finding(name, f"stored as {s.dtype}, expected true/false"))
        parsed = s.map(_parse_bool)
        rules.append((parsed.isna().to_numpy(dtype=bool),
                      lambda i: f"{name} is not true/false: {shown.iloc[i]!r}"))
        vals = parsed
    found, ok = [], np.ones(len(s), dtype=bool)
    for bad, message in rules:
        bad = bad & ok
        ok &= ~bad
        found.append(Finding(name, bad, message))
    if col.kind == "int":  # bad rows hold a placeholder; only good rows are ever returned
        vals = vals.where(ok, 0.0).round().astype("int64")
    elif col.kind == "bool":
        vals = vals.where(ok, False).astype(bool)
    return vals, table + found


def _parse_bool(v: object) -> bool | None:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    return None


def _table_finding(name: str, message: str) -> Finding:
    return Finding(name, np.ones(1, dtype=bool), lambda i: message, table=True)


def _unique(col: Column, vals: pd.Series, good: np.ndarray) -> Finding:
    later = np.zeros(len(vals), dtype=bool)
    later[good] = vals[good].duplicated(keep="first").to_numpy()

    def group(i: int) -> np.ndarray:
        return np.flatnonzero(good & (vals == vals.iloc[i]).to_numpy())

    return Finding(col.name, later, lambda i: f"duplicate id {vals.iloc[i]!r}", group)


def _cover(col: Column, vals: pd.Series, ex: Expect) -> Finding:
    lo, hi = col.bounds(ex)
    absent = sorted(set(range(lo, hi + 1)) - set(vals.tolist()))
    return Finding(col.name, np.array([bool(absent)]),
                   lambda i: f"no row has {col.name} {', '.join(map(str, absent))} "
                             f"(expected every value {lo}..{hi})", table=True)


TrainEssays = TableSchema("TrainEssays", (id_column("essay_id"), TEXT, SCORE))
Essays = TableSchema("Essays", (id_column("essay_id"), TEXT))
Labels = TableSchema("Labels", (id_column("essay_id"), SCORE), noun="labels")
PersuadeReference = TableSchema("PersuadeReference", (id_column("essay_id_comp"), TEXT, PROMPT),
                                noun="reference essays")
Unlabelled = TableSchema("Unlabelled", (id_column("essay_id_comp"), TEXT))
FoldedEssays = TableSchema("FoldedEssays", (
    id_column("essay_id"), TEXT, SCORE, PROMPT, Column("in_persuade", "bool"),
    Column("flag", "int", lo=0, hi=1),
    Column("fold", "int", lo=0, hi=lambda ex: None if ex.n_folds is None else ex.n_folds - 1,
           cover=True),
))

SCHEMAS = {s.name: s for s in (TrainEssays, Essays, Labels, PersuadeReference, Unlabelled,
                               FoldedEssays)}
