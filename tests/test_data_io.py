"""Reading essay tables: every kind of bad input names the file, row and field."""

import gzip

import pandas as pd
import pytest

from aes_core.data import io


def _write(tmp_path, name, text: str | bytes, gz: bool = False):
    p = tmp_path / name
    data = text.encode() if isinstance(text, str) else text
    p.write_bytes(gzip.compress(data) if gz else data)
    return p


GOOD = "essay_id,full_text,score\na1,First essay text.,3\nb2,\"Second, with comma\",6\n"


@pytest.mark.parametrize("gz", [False, True])
def test_reads_csv_and_gzip(tmp_path, gz):
    df = io.load_train(_write(tmp_path, "t.csv" + (".gz" if gz else ""), GOOD, gz))
    assert list(df.columns) == ["essay_id", "full_text", "score"]
    assert df["score"].tolist() == [3, 6] and df["score"].dtype.kind == "i"
    assert df.loc[1, "full_text"] == "Second, with comma"


def test_missing_column(tmp_path):
    p = _write(tmp_path, "t.csv", "essay_id,full_text\na,b\n")
    with pytest.raises(io.DataError) as e:
        io.load_train(p)
    assert str(p) in str(e.value) and "'score'" in str(e.value)


def test_duplicate_id_names_both_rows(tmp_path):
    p = _write(tmp_path, "t.csv", "essay_id,full_text,score\na,x,1\nb,y,2\na,z,3\n")
    with pytest.raises(io.DataError) as e:
        io.load_train(p)
    msg = str(e.value)
    assert "row 1, 3" in msg and "'essay_id'" in msg and "duplicate id 'a'" in msg


def test_score_out_of_range(tmp_path):
    p = _write(tmp_path, "t.csv", "essay_id,full_text,score\na,x,1\nb,y,7\n")
    with pytest.raises(io.DataError) as e:
        io.load_train(p)
    assert "row 2" in str(e.value) and "'score'" in str(e.value) and "7" in str(e.value)


@pytest.mark.parametrize("bad", ["three", "2.5", ""])
def test_score_not_integer(tmp_path, bad):
    p = _write(tmp_path, "t.csv", f"essay_id,full_text,score\na,x,1\nb,y,{bad}\n")
    with pytest.raises(io.DataError, match=r"row 2.*'score'"):
        io.load_train(p)


def test_empty_text(tmp_path):
    p = _write(tmp_path, "t.csv", "essay_id,full_text,score\na,x,1\nb,   ,2\n")
    with pytest.raises(io.DataError, match=r"row 2.*'full_text'.*empty"):
        io.load_train(p)


def test_undecodable_bytes(tmp_path):
    raw = b"essay_id,full_text,score\na,ok,1\nb,caf\xe9 au lait,2\n"
    p = _write(tmp_path, "t.csv", raw)
    with pytest.raises(io.DataError) as e:
        io.load_train(p)
    assert "UTF-8" in str(e.value) and "line 3" in str(e.value) and str(p) in str(e.value)


def test_replacement_char_rejected(tmp_path):
    p = _write(tmp_path, "t.csv", "essay_id,full_text,score\na,bad \ufffd text,1\n")
    with pytest.raises(io.DataError, match=r"row 1.*U\+FFFD"):
        io.load_train(p)


def test_truncated_gzip_names_the_file(tmp_path):
    raw = gzip.compress(GOOD.encode() * 20)
    p = _write(tmp_path, "t.csv.gz", raw[: len(raw) // 2])
    with pytest.raises(io.DataError, match="corrupt gzip") as e:
        io.load_train(p)
    assert str(p) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(io.DataError, match="file not found"):
        io.load_train(tmp_path / "nope.csv")


def test_upload_bytes_named(tmp_path):
    df = io.load_essays(b"essay_id,full_text\nx,hello\n", name="upload.csv")
    assert df.to_dict("records") == [{"essay_id": "x", "full_text": "hello"}]
    with pytest.raises(io.DataError, match="upload.csv"):
        io.load_essays(b"id,text\nx,hello\n", name="upload.csv")


def test_extra_field_on_every_row_is_an_error_not_an_id_shift():
    # pandas would silently turn the first column into the index: ids become the texts
    with pytest.raises(io.DataError, match="more fields than the header"):
        io.load_essays(b"essay_id,full_text\n001,First text,x\n002,Second,y\n", name="u.csv")


def test_no_rows_lost_on_real_sample(sample_dir):
    raw = pd.read_csv(sample_dir / "train.csv.gz", keep_default_na=False)
    df = io.load_train(sample_dir / "train.csv.gz")
    assert len(df) == len(raw)
    assert df["essay_id"].tolist() == raw["essay_id"].tolist()


def test_fingerprint_changes_with_content():
    a = pd.DataFrame({"x": [1, 2]})
    assert io.fingerprint(a) == io.fingerprint(a.copy())
    assert io.fingerprint(a) != io.fingerprint(pd.DataFrame({"x": [1, 3]}))
