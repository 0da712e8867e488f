"""Inbox rescoring: validate a dropped essay CSV, score its good rows, report the bad ones.

Each file is identified by the SHA-256 of its content. Processing is idempotent and
crash-safe: outputs are written atomically first (``<outbox>/<stem>.<hash12>.scored.csv``),
then the file's good rows are archived in the history folder and the original leaves the
inbox. A file whose scored output already exists is never scored again. With the serving
bundle's flagger, scored files carry ``flags``, ``flag_evidence`` and ``model_score`` after
``score`` (see :func:`aes_core.serving.base.score_frame`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from aes_core.data.io import decode_bytes
from aes_core.data.schema import DataError, Essays
from aes_core.serving.base import Scorer, score_frame

if TYPE_CHECKING:
    from aes_core.flags import EssayFlagger

HASH_LEN = 12


def content_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_inbox(inbox_dir: str | Path, settle_s: float = 0.0) -> list[tuple[Path, str]]:
    """(path, content hash) of the CSV files directly in the inbox, oldest first.

    Files modified within the last ``settle_s`` seconds are left for a later pass.
    """
    inbox = Path(inbox_dir)
    if not inbox.is_dir():
        return []
    now = time.time()
    files = [p for p in inbox.iterdir()
             if p.is_file() and p.suffix.lower() == ".csv" and not p.name.startswith(".")
             and now - p.stat().st_mtime >= settle_s]
    files.sort(key=lambda p: (p.stat().st_mtime, p.name))
    return [(p, content_hash(p)) for p in files]


@dataclass
class BadRow:
    line: int            # 1-based line in the file (header is line 1)
    essay_id: str
    reason: str


@dataclass
class ParsedFile:
    good: pd.DataFrame   # essay_id, full_text
    bad: list[BadRow] = field(default_factory=list)
    fatal: str | None = None   # the whole file is unusable (e.g. a missing column)


def parse_essay_csv(path: str | Path) -> ParsedFile:
    """Read ``essay_id, full_text`` rows; every bad row is reported with its line and reason.

    The file's structure is read here: a row with the wrong number of fields is bad, an
    unclosed quote stops the reading (reported at its line), blank lines are skipped. The
    rows are then split by the ``Essays`` schema (:mod:`aes_core.data.schema`): the same
    rules and reasons as a strict load (empty id or text, a repeated id, ...). Problems of the
    whole file (not UTF-8, missing column, no rows) are fatal. Extra columns are ignored.
    """
    path = Path(path)
    empty = pd.DataFrame({c: pd.Series(dtype=str) for c in Essays.names})
    try:
        text = decode_bytes(path.read_bytes(), path.name)
    except DataError as e:
        return ParsedFile(empty, fatal=str(e))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # unclosed quote: error
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return ParsedFile(empty, fatal=f"{path.name}: empty file (no header)")
    except csv.Error as e:
        return ParsedFile(empty, fatal=f"{path.name}: unreadable CSV header ({e})")
    try:
        Essays.require_columns(header, path.name)
    except DataError as e:
        return ParsedFile(empty, fatal=str(e))
    index = [header.index(c) for c in Essays.names]
    records, lines, bad = [], [], []
    while True:
        line = reader.line_num + 1  # where this record starts (quoted texts span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad.append(BadRow(line, "", f"malformed CSV, rest of file unread: {e}"))
            break
        if not any(c.strip() for c in row):
            continue  # blank line
        if len(row) != len(header):
            essay_id = row[index[0]].strip() if len(row) > index[0] else ""
            bad.append(BadRow(line, essay_id, f"{len(row)} fields, expected {len(header)}"))
            continue
        records.append([row[i] for i in index])
        lines.append(line)
    if not records and bad:
        return ParsedFile(empty, bad)
    try:
        good, bad_rows = Essays.split_rows(pd.DataFrame(records, columns=Essays.names),
                                           path.name)
    except DataError as e:
        return ParsedFile(empty, bad, fatal=str(e))
    bad += [BadRow(lines[row - 1], essay_id, reason) for row, essay_id, reason in bad_rows]
    return ParsedFile(good, sorted(bad, key=lambda b: b.line))


@dataclass
class InboxResult:
    file: str
    content_hash: str
    scored: int
    bad_rows: int
    skipped: bool
    outputs: list[str]
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def output_name(stem: str, digest: str, kind: str) -> str:
    return f"{stem}.{digest[:HASH_LEN]}.{kind}.csv"


def scored_output(outbox: Path, digest: str) -> Path | None:
    """The existing scored output of this content (whatever the file was called), if any."""
    found = sorted(Path(outbox).glob(f"*.{digest[:HASH_LEN]}.scored.csv"))
    return found[0] if found else None


def process_inbox_file(path: str | Path, digest: str, scorer: Scorer, outbox: str | Path,
                       rejected: str | Path, history: str | Path,
                       flagger: EssayFlagger | None = None) -> InboxResult:
    """Score one inbox file into the outbox (flagged with ``flagger``); bad rows go to a
    report in ``rejected``."""
    path, outbox, rejected, history = Path(path), Path(outbox), Path(rejected), Path(history)
    stem = path.stem
    scored_path = outbox / output_name(stem, digest, "scored")
    archived = history / output_name(stem, digest, "essays")
    earlier = scored_output(outbox, digest)
    if earlier is not None:  # this content was scored before (any name): never twice
        _archive_original(path, digest)
        return InboxResult(path.name, digest, 0, 0, True, [str(earlier)],
                           f"content already scored into {earlier.name}")
    if not path.exists():
        raise FileNotFoundError(f"inbox file {path} is gone and no output {scored_path} exists")
    if content_hash(path) != digest:
        raise ValueError(f"inbox file {path} changed since it was seen (hash {digest[:12]}): "
                         "the sensor will pick up the new content as a new file")
    parsed = parse_essay_csv(path)
    outputs = []
    if parsed.fatal or parsed.bad:
        rejected.mkdir(parents=True, exist_ok=True)
        report = rejected / f"{stem}.{digest[:HASH_LEN]}.report.txt"
        lines = [f"file: {path.name}", f"sha256: {digest}"]
        if parsed.fatal:
            lines.append(f"rejected: {parsed.fatal}")
        else:
            lines.append(f"{len(parsed.bad)} bad row(s); {len(parsed.good)} good row(s) scored "
                         f"into {scored_path.name}")
            lines += [f"line {b.line}: essay_id={b.essay_id!r}: {b.reason}" for b in parsed.bad]
        report.write_text("\n".join(lines) + "\n")
        shutil.copy2(path, rejected / f"{stem}.{digest[:HASH_LEN]}.csv")
        outputs.append(str(report))
    scored = score_frame(scorer, parsed.good, flagger).to_frame(with_members=True)
    _atomic_csv(archive_frame(parsed.good), archived)
    _atomic_csv(scored, scored_path)
    outputs.append(str(scored_path))
    _archive_original(path, digest)
    return InboxResult(path.name, digest, len(scored), len(parsed.bad), False, outputs,
                       parsed.fatal or "")


def archive_frame(good: pd.DataFrame) -> pd.DataFrame:
    return good[["essay_id", "full_text"]].reset_index(drop=True)


def _archive_original(path: Path, digest: str) -> None:
    """Remove the original from the inbox once its outputs and history copy exist."""
    if path.exists() and content_hash(path) == digest:
        path.unlink()


def rescore_history(history: str | Path, scorer: Scorer, out_dir: str | Path,
                    flagger: EssayFlagger | None = None) -> list[dict]:
    """Score (and flag) every archived inbox file into ``out_dir`` (skips files already
    there)."""
    history, out_dir = Path(history), Path(out_dir)
    done = []
    for f in sorted(history.glob("*.essays.csv")):
        target = out_dir / f.name.replace(".essays.csv", ".scored.csv")
        if target.exists():
            done.append({"file": f.name, "skipped": True, "rows": 0})
            continue
        df = pd.read_csv(f, dtype={"essay_id": str, "full_text": str}, keep_default_na=False)
        _atomic_csv(score_frame(scorer, df, flagger).to_frame(with_members=True), target)
        done.append({"file": f.name, "skipped": False, "rows": len(df)})
    return done
