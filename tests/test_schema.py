"""The essay-table schemas: one rule, three modes (strict error, bad-row reason, check report)."""

import gzip

import pandas as pd
import pytest

from aes_core.config import SAMPLE_DIR, FoldSection
from aes_core.data import contract, io, schema
from aes_core.data.folds import build_folded
from aes_core.data.schema import DataError, Essays, FoldedEssays, TrainEssays
from aes_core.serving.inbox import parse_essay_csv

GOOD = "essay_id,full_text,score\na1,First essay.,3\nb2,Second essay.,6\n"

# (bad data row, field, reason): row 2 of a file whose row 1 is good
BAD_ROWS = [
    (",some text,3", "essay_id", "empty essay_id"),
    ("b2,,3", "full_text", "empty essay text"),
    ('b2,"  \n ",3', "full_text", "empty essay text"),
    ("b2,caf\ufffd,3", "full_text", "text holds U+FFFD (undecodable bytes upstream)"),
    ("b2,text,three", "score", "score is not a number: 'three'"),
    ("b2,text,", "score", "score is not a number: ''"),
    ("b2,text,2.5", "score", "score is not a whole number: '2.5'"),
    ("b2,text,7", "score", "score 7 outside 1..6"),
    ("b2,text,0", "score", "score 0 outside 1..6"),
    ("a1,another text,4", "essay_id", "duplicate id 'a1'"),
]


def _frame(csv_text: str) -> pd.DataFrame:
    return io.read_table(csv_text.encode(), "t.csv")


@pytest.mark.parametrize("row, field, reason", BAD_ROWS)
def test_one_rule_gives_the_strict_error_and_the_bad_row_reason(row, field, reason):
    df = _frame(f"essay_id,full_text,score\na1,First essay.,3\n{row}\n")
    with pytest.raises(DataError) as e:
        TrainEssays.validate(df, "t.csv")
    assert e.value.reason == reason and e.value.field == field
    named = [1, 2] if reason.startswith("duplicate") else [2]
    assert e.value.rows == named
    assert str(e.value) == (f"t.csv, row {', '.join(map(str, named))}, field {field!r}: "
                            f"{reason}")
    good, bad = TrainEssays.split_rows(df)
    assert good["essay_id"].tolist() == ["a1"]
    assert [(r, why) for r, _, why in bad] == [(2, reason)]


def test_inbox_reports_the_reason_a_strict_load_raises(tmp_path):
    for i, (row, field, reason) in enumerate(BAD_ROWS):
        if field == "score":
            continue  # the inbox reads essay_id, full_text only
        text = f"essay_id,full_text\na1,First essay.\n{row.rsplit(',', 1)[0]}\n"
        path = tmp_path / f"f{i}.csv"
        path.write_text(text)
        with pytest.raises(DataError) as e:
            io.load_essays(path)
        parsed = parse_essay_csv(path)
        assert parsed.fatal is None and parsed.good["essay_id"].tolist() == ["a1"]
        assert e.value.reason == reason
        assert [(b.line, b.reason) for b in parsed.bad] == [(3, reason)]


def test_lenient_split_keeps_good_rows_typed_and_counts_ids_among_good_rows():
    df = _frame("essay_id,full_text,score\n a ,,3\n a ,text a,4\nb,text b,9\n a ,again,5\n"
                "c,text c,1\n")
    good, bad = TrainEssays.split_rows(df)
    assert good.to_dict("list") == {"essay_id": ["a", "c"], "full_text": ["text a", "text c"],
                                    "score": [4, 1]}
    assert good["score"].dtype.kind == "i"
    assert bad == [(1, "a", "empty essay text"), (3, "b", "score 9 outside 1..6"),
                   (4, "a", "duplicate id 'a'")]


def test_a_row_with_several_problems_gets_the_first_reason_once():
    good, bad = TrainEssays.split_rows(_frame("essay_id,full_text,score\n,,x\n"))
    assert good.empty and bad == [(1, "", "empty essay_id")]


def test_table_problems_raise_in_every_input_mode():
    for mode in (lambda df: TrainEssays.validate(df, "t.csv"),
                 lambda df: TrainEssays.split_rows(df, "t.csv")):
        with pytest.raises(DataError, match=r"^t.csv, field 'score': missing column\(s\)"):
            mode(_frame("essay_id,full_text\na,b\n"))
        with pytest.raises(DataError, match=r"^t.csv: the file has a header but no essays$"):
            mode(_frame("essay_id,full_text,score\n"))


@pytest.mark.parametrize("loader, header, noun", [
    (io.load_train, "essay_id,full_text,score", "essays"),
    (io.load_essays, "essay_id,full_text", "essays"),
    (io.load_labels, "essay_id,score", "labels"),
    (io.load_persuade, "essay_id_comp,full_text,prompt_name", "reference essays"),
    (io.load_unlabelled, "essay_id_comp,full_text", "essays"),
])
def test_header_only_file_is_rejected_naming_it(tmp_path, loader, header, noun):
    path = tmp_path / "only_header.csv.gz"
    path.write_bytes(gzip.compress(f"{header}\n".encode()))
    with pytest.raises(DataError) as e:
        loader(path)
    assert str(e.value) == f"{path}: the file has a header but no {noun}"


def test_persuade_prompt_rule_and_id_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("essay_id_comp,full_text,prompt_name\nr1,text,Venus\nr2,text two, \n")
    with pytest.raises(DataError, match=r"row 2, field 'prompt_name': empty prompt_name$"):
        io.load_persuade(path)


def test_ids_and_prompt_names_are_kept_stripped():
    df = _frame("essay_id_comp,full_text,prompt_name\n r1 , keep my spaces ,  Venus \n")
    out = schema.PersuadeReference.validate(df, "p.csv")
    assert out.to_dict("records") == [{"essay_id_comp": "r1", "full_text": " keep my spaces ",
                                       "prompt_name": "Venus"}]


def test_upload_limits_come_from_expectations():
    raw = b"essay_id,full_text\na,short\nb," + b"w" * 120 + b"\nc,also short\n"
    with pytest.raises(DataError) as e:
        io.load_essays(raw, "class.csv", max_text_chars=100)
    assert e.value.rows == [2] and e.value.field == "full_text"
    assert e.value.reason == "essay longer than 100 characters (120)"
    assert len(io.load_essays(raw, "class.csv", max_text_chars=120)) == 3
    with pytest.raises(DataError, match="the file has 3 essays; the limit is 2 per file"):
        io.load_essays(raw, "class.csv", max_rows=2)
    with pytest.raises(TypeError):
        io.load_essays(raw, "class.csv", max_chars=10)  # unknown expectations are errors


def test_decoding_bom_gzip_and_utf8_in_one_place(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert io.load_train(bom)["essay_id"].tolist() == ["a1", "b2"]
    packed = gzip.compress(GOOD.encode() * 50)
    with pytest.raises(DataError, match="larger than 100 bytes"):
        io.load_essays(packed, "u.csv.gz", max_unpacked_bytes=100)
    with pytest.raises(DataError, match="corrupt gzip"):
        io.load_essays(packed[:-20], "u.csv.gz")
    two_members = gzip.compress(GOOD.encode()) + gzip.compress(b"c3,Third essay.,2\n")
    assert io.load_table(TrainEssays, two_members, "t.csv.gz")["score"].tolist() == [3, 6, 2]
    raw = b'essay_id,full_text,score\na,"two\nlines",3\nb,caf\xe9,4\n'
    with pytest.raises(DataError) as e:
        io.load_table(TrainEssays, raw, "t.csv")
    assert e.value.rows == [2] and "file line 4" in str(e.value) and "UTF-8" in str(e.value)


# ---- report mode: the asset checks can fail, with expectations from the config ----------

@pytest.fixture(scope="module")
def folded():
    essays = io.load_train(SAMPLE_DIR / "train.csv.gz").head(300)
    ref = io.load_persuade(SAMPLE_DIR / "persuade_reference.csv.gz")
    df, _ = build_folded(essays, ref, FoldSection(n_folds=3))
    return df


def test_stored_folded_table_passes_with_the_configured_folds(folded):
    r = FoldedEssays.check(folded, n_folds=3)
    assert r.passed, r.description
    assert r.details["fold_sizes"] == folded["fold"].value_counts().sort_index().tolist()
    assert contract.check_one_fold_each(folded, 3).passed


def test_fold_count_comes_from_the_config_not_the_data(folded):
    r = contract.check_one_fold_each(folded, n_folds=4)
    assert not r.passed and "no row has fold 3 (expected every value 0..3)" in r.description
    assert r.details["fold_sizes"][3] == 0
    r = contract.check_one_fold_each(folded, n_folds=2)
    assert not r.passed and "fold 2 outside 0..1" in r.description
    with pytest.raises(ValueError, match="n_folds"):
        FoldedEssays.check(folded)


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.assign(score=d["score"].astype(float)), "score: stored as float64"),
    (lambda d: d.assign(score=d["score"].where(d.index != 4, 7)), "score: score 7 outside 1..6"),
    (lambda d: d.assign(flag=d["flag"].where(d.index != 0, 2)), "flag: flag 2 outside 0..1"),
    (lambda d: d.assign(in_persuade=d["in_persuade"].astype(int)), "in_persuade: stored as int"),
    (lambda d: d.assign(full_text=d["full_text"].where(d.index != 2, " ")),
     "full_text: empty essay text (row 3)"),
    (lambda d: d.assign(prompt_name=d["prompt_name"].where(d.index != 1, None)),
     "prompt_name: not text (row 2)"),
    (lambda d: d.assign(essay_id=d["essay_id"].where(d.index != 5, d["essay_id"][0])),
     "essay_id: duplicate id"),
    (lambda d: d.drop(columns="flag"), "missing column(s) ['flag']"),
    (lambda d: d.head(0), "no essays"),
])
def test_every_folded_rule_can_fail(folded, change, needle):
    r = FoldedEssays.check(change(folded.copy()), n_folds=3)
    assert not r.passed and needle in r.description, r.description
    assert r.details["problems"] >= 1


def test_one_fold_each_fails_on_a_repeated_essay(folded):
    twice = pd.concat([folded, folded.head(1)], ignore_index=True)
    r = contract.check_one_fold_each(twice, 3)
    assert not r.passed and f"duplicate id {folded['essay_id'][0]!r}" in r.description


def test_train_and_test_table_checks_can_fail(folded):
    raw = folded[TrainEssays.names].reset_index(drop=True)
    assert TrainEssays.check(raw).passed
    r = TrainEssays.check(raw.assign(score=raw["score"] + 1))
    assert not r.passed and "score 7 outside 1..6" in r.description
    test = raw[Essays.names].assign(score=pd.array([pd.NA] * len(raw), dtype="Int64"))
    assert Essays.check(test).passed  # the optional score column is not Essays' business
    r = Essays.check(test.assign(essay_id="same"))
    assert not r.passed and "duplicate id 'same' (row 1, 2, 3" in r.description


def test_fold_balance_fails_beyond_the_configured_tolerance(folded):
    assert contract.check_fold_balance(folded, 1.0).passed
    assert not contract.check_fold_balance(folded, 1e-6).passed


def test_inbox_header_only_is_fatal_but_malformed_only_is_reported(tmp_path):
    only_header = tmp_path / "h.csv"
    only_header.write_text("essay_id,full_text\n")
    assert parse_essay_csv(only_header).fatal == "h.csv: the file has a header but no essays"
    broken = tmp_path / "q.csv"
    broken.write_text('essay_id,full_text\na,"never closed\n')
    parsed = parse_essay_csv(broken)
    assert parsed.fatal is None and parsed.good.empty
    assert [(b.line, b.reason.split(" ")[0]) for b in parsed.bad] == [(2, "malformed")]
