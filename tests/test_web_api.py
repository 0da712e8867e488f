"""API tests of the teachers' page: every route and every error, against a real tiny ensemble.

The app loads its scorer the production way (``load_scorer`` on the serving bundle, a manifest
plus real ONNX exports of tiny regressors), so the numbers are checked against an independent
``score_frame`` call and, for one essay, against the torch models themselves.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from aes_core.essay_stats import essay_stats, typical_ranges
from aes_core.export.bundle import typical_stats
from aes_core.models.regressor import EssayRegressor, load_regressor_tokenizer, logits_to_scores
from aes_core.serving.base import score_frame
from aes_core.serving.loader import load_bundle, load_scorer
from aes_core.serving.manifest import write_manifest
from tests.serving_support import repeated_paragraph_essay
from tests.web_support import (
    HEADS,
    N_FOLDS,
    build_storage,
    commit,
    default_ensemble,
    sample_essays,
    train_stats,
    web_config,
)
from web.app import create_app
from web.essay_warnings import TOO_SHORT, essay_warnings


@pytest.fixture(scope="module")
def storage(tmp_path_factory, tiny_backbone) -> Path:
    return build_storage(tmp_path_factory.mktemp("web_storage"), tiny_backbone)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("web_api")


@pytest.fixture(scope="module")
def cfg(module_tmp, storage):
    return web_config(module_tmp, storage)


@pytest.fixture(scope="module")
def client(cfg) -> TestClient:
    with TestClient(create_app(cfg)) as c:
        yield c


@pytest.fixture(scope="module")
def reference(cfg):
    """An independent scorer on the same storage, for comparing numbers."""
    return load_scorer(cfg)


@pytest.fixture(scope="module")
def essays() -> pd.DataFrame:
    return sample_essays(10)


def _csv(df: pd.DataFrame) -> bytes:
    return df[["essay_id", "full_text"]].to_csv(index=False).encode()


def _stream(resp) -> list[dict]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


# ---- pages and info -----------------------------------------------------------------------

def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="essay-text"' in page.text and 'id="csv-file"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text
    assert client.get("/api/health").json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/static/app.py", "/static/..%2Fapp.py",
                                  "/static/%2e%2e%2f%2e%2e%2fpyproject.toml", "/static/"])
def test_static_never_maps_request_paths_to_files(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "import" not in r.text


def test_info_lists_model_limits_and_ranges(client, cfg, reference):
    info = client.get("/api/info").json()
    assert info["ready"] is True
    assert info["members"] == reference.ensemble.members
    assert info["weights"] == pytest.approx(reference.ensemble.weights)
    assert info["limits"] == {"max_essay_chars": cfg.web.max_essay_chars,
                              "max_upload_bytes": cfg.web.max_upload_bytes,
                              "max_rows": cfg.web.max_rows,
                              "min_words": cfg.web.min_words}
    stats = train_stats()  # what the bundle holds
    assert info["typical_ranges"] == {k: stats[k] for k in ("source_kind", "n_essays", "low_q",
                                                            "high_q")}
    assert info["typical_ranges"]["n_essays"] > 100


# ---- paste one essay ------------------------------------------------------------------------

def test_score_one_essay_matches_the_scorer(client, reference, essays):
    text = essays["full_text"].iloc[0]
    r = client.post("/api/score", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    ref = score_frame(reference, pd.DataFrame({"essay_id": ["x"], "full_text": [text]}))
    assert body["score"] == int(ref.score[0]) and 1 <= body["score"] <= 6
    assert body["blended"] == pytest.approx(float(ref.blended[0]), abs=1e-4)
    assert body["spread"] == pytest.approx(ref.spread[0].tolist(), abs=1e-4)
    assert sum(body["spread"]) == pytest.approx(1.0, abs=1e-3)
    assert body["warnings"] == []  # a real essay of normal length
    assert [m["name"] for m in body["members"]] == ref.members
    assert [m["prediction"] for m in body["members"]] == pytest.approx(
        ref.member_preds[0].tolist(), abs=1e-4)
    blended_from_members = sum(m["weight"] * m["prediction"] for m in body["members"])
    assert blended_from_members == pytest.approx(body["blended"], abs=1e-3)

    stats = {s["name"]: s for s in body["stats"]}
    own = essay_stats(text)
    assert stats["words"]["value"] == own.words
    assert stats["paragraphs"]["value"] == own.paragraphs
    assert stats["mean_sentence_words"]["value"] == pytest.approx(own.mean_sentence_words)
    for s in stats.values():
        t = s["typical"]
        assert t is not None and t["low"] <= t["median"] <= t["high"]
        expected = ("below" if s["value"] < t["low"] else
                    "above" if s["value"] > t["high"] else "within")
        assert s["status"] == expected


def test_onnx_members_agree_with_torch(client, storage, essays):
    """The page's member predictions equal the fold-averaged torch regressors."""
    text = essays["full_text"].iloc[1]
    body = client.post("/api/score", json={"text": text, "essay_id": "e1"}).json()
    assert body["essay_id"] == "e1"
    for m in body["members"]:
        head = m["name"].split("__", 1)[1]
        preds = []
        for fold in range(N_FOLDS):
            folder = storage / "regressors" / f"{fold}__{head}"
            model = EssayRegressor.from_pretrained(folder)
            enc = load_regressor_tokenizer(folder)([text], truncation=True, max_length=64,
                                                   return_tensors="pt")
            with torch.no_grad():
                logit = model(enc["input_ids"], enc["attention_mask"])
            preds.append(float(logits_to_scores(logit, "bce")[0]))
        assert m["prediction"] == pytest.approx(float(np.mean(preds)), abs=1e-3)
    assert {m["name"].split("__")[1] for m in body["members"]} == set(HEADS)


@pytest.mark.parametrize("text, n_words", [("Dogs", 1), ("I like dogs. They are kind.", 6)])
def test_short_essay_is_scored_with_a_warning(client, cfg, text, n_words):
    r = client.post("/api/score", json={"text": text})
    assert r.status_code == 200 and 1 <= r.json()["score"] <= 6
    (warning,) = r.json()["warnings"]
    assert set(warning) == {"code", "message", "evidence", "level"}
    assert warning["code"] == TOO_SHORT and "too short" in warning["message"]
    assert warning["level"] == "warning"
    assert warning["evidence"].startswith(f"{n_words} word")
    assert f"at least {cfg.web.min_words:,} words" in warning["evidence"]


def test_min_words_comes_from_the_config(tmp_path, storage, essays):
    text = essays["full_text"].iloc[0]
    words = essay_stats(text).words
    for min_words, expected in ((words, []), (words + 1, [TOO_SHORT])):
        cfg = web_config(tmp_path / str(min_words), storage, min_words=min_words)
        with TestClient(create_app(cfg)) as c:
            body = c.post("/api/score", json={"text": text}).json()
            assert [w["code"] for w in body["warnings"]] == expected
            assert c.get("/api/info").json()["limits"]["min_words"] == min_words


@pytest.mark.parametrize("text, status, words", [
    ("", 400, "empty"),
    ("   \n\n  \t ", 400, "empty"),
    ("a\x00b", 400, "NUL"),
])
def test_paste_rejects_empty_or_binary_text(client, text, status, words):
    r = client.post("/api/score", json={"text": text})
    assert r.status_code == status
    assert words in r.json()["error"]


def test_paste_rejects_too_long_essay(client, cfg):
    text = "word " * (cfg.web.max_essay_chars // 5 + 10)
    r = client.post("/api/score", json={"text": text})
    assert r.status_code == 413
    assert f"{cfg.web.max_essay_chars:,}" in r.json()["error"]
    assert f"{len(text):,} characters" in r.json()["error"]


@pytest.mark.parametrize("payload, needle", [
    ({"essay": "x"}, "text: Field required"),
    ({"text": 5}, "text:"),
])
def test_paste_rejects_bad_json(client, payload, needle):
    r = client.post("/api/score", json=payload)
    assert r.status_code == 422
    assert needle in r.json()["error"]


def test_paste_rejects_non_json_body(client):
    r = client.post("/api/score", content=b"not json", headers={"content-type": "text/plain"})
    assert r.status_code == 422
    assert "Invalid request" in r.json()["error"]


# ---- request size limits --------------------------------------------------------------------

def test_oversize_body_rejected_by_content_length(client, cfg):
    big = b"x" * (cfg.web.max_upload_bytes + 70_000)
    for path in ("/api/score", "/api/score-csv"):
        r = client.post(path, content=big, headers={"content-type": "text/csv"})
        assert r.status_code == 413
        assert "too large" in r.json()["error"]


def test_oversize_chunked_body_rejected_while_streaming(client, cfg):
    def chunks():
        for _ in range(40):
            yield b"y" * 5_000

    r = client.post("/api/score-csv", content=chunks(), headers={"content-type": "text/csv"})
    assert r.status_code == 413
    assert f"{cfg.web.max_upload_bytes + 64 * 1024:,}" in r.json()["error"]


def test_upload_over_file_limit_named(client, cfg, essays):
    # under the body limit (which allows multipart overhead) but over the file limit
    raw = b"essay_id,full_text\n" + b"a,b\n" * ((cfg.web.max_upload_bytes // 4) + 100)
    r = client.post("/api/score-csv", content=raw, headers={"content-type": "text/csv"})
    assert r.status_code == 413
    assert f"{cfg.web.max_upload_bytes:,} bytes" in r.json()["error"]


# ---- CSV uploads ----------------------------------------------------------------------------

def test_csv_stream_reports_progress_and_matches_scorer(client, reference, essays, cfg):
    r = client.post("/api/score-csv?name=class_7b.csv", content=_csv(essays),
                    headers={"content-type": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    msgs = _stream(r)
    assert msgs[0] == {"type": "start", "name": "class_7b.csv", "total": len(essays)}
    progress = [m for m in msgs if m["type"] == "rows"]
    step = cfg.web.batch_rows
    assert len(progress) == -(-len(essays) // step)  # one message per batch
    assert [m["done"] for m in progress] == sorted(m["done"] for m in progress)
    assert progress[-1]["done"] == len(essays)
    assert msgs[-1] == {"type": "done", "total": len(essays), "kept_as": None}
    rows = pd.DataFrame([row for m in progress for row in m["rows"]])
    ref = score_frame(reference, essays)
    assert rows["essay_id"].tolist() == essays["essay_id"].tolist()
    assert rows["score"].tolist() == ref.score.tolist()
    assert rows["blended"].to_numpy() == pytest.approx(ref.blended, abs=1e-3)
    spread = rows[[f"p_score_{k}" for k in range(1, 7)]].to_numpy()
    assert spread == pytest.approx(ref.spread, abs=1e-3)
    assert rows["words"].tolist() == [essay_stats(t).words for t in essays["full_text"]]
    assert rows["warnings"].tolist() == [[]] * len(essays)


def test_csv_flags_short_essays_in_rows_and_download(client, cfg, essays):
    mixed = pd.concat([essays.head(2), pd.DataFrame({
        "essay_id": ["one-word", "two-lines"],
        "full_text": ["Hello", "I like dogs.\n\nThey are kind."],
    }), essays.iloc[2:3]], ignore_index=True)
    expected = [[TOO_SHORT] if essay_stats(t).words < cfg.web.min_words else []
                for t in mixed["full_text"]]
    assert expected == [[], [], [TOO_SHORT], [TOO_SHORT], []]
    rows = client.post("/api/score-csv?format=json", content=_csv(mixed)).json()["rows"]
    assert [[w["code"] for w in r["warnings"]] for r in rows] == expected
    assert rows[2]["warnings"][0]["evidence"].startswith("1 word;")

    r = client.post("/api/score-csv?format=csv&name=mixed.csv", content=_csv(mixed))
    table = pd.read_csv(io.StringIO(r.text), dtype={"essay_id": str}, keep_default_na=False)
    cols = table.columns.tolist()
    assert cols[cols.index("score") + 1:cols.index("score") + 3] == ["warnings",
                                                                     "warning_details"]
    assert table["warnings"].tolist() == [";".join(e) for e in expected]
    detail = table["warning_details"].tolist()
    assert detail[0] == "" and "too short" in detail[2] and "(1 word;" in detail[2]
    assert "(6 words;" in detail[3]


def test_csv_download_as_file_multipart(client, reference, essays, cfg):
    files = {"file": ("../../etc/My Class?.csv", _csv(essays), "text/csv")}
    r = client.post("/api/score-csv?format=csv", files=files)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    disp = r.headers["content-disposition"]
    assert disp == 'attachment; filename="scored_My Class_.csv"'
    table = pd.read_csv(io.StringIO(r.text), dtype={"essay_id": str})
    ref = score_frame(reference, essays)
    assert table["essay_id"].tolist() == essays["essay_id"].tolist()
    assert table["score"].tolist() == ref.score.tolist()
    assert {"blended", *ref.members, "words", "paragraphs", "mean_sentence_words",
            "p_score_1", "p_score_6"} <= set(table.columns)
    assert not Path(cfg.web.keep_dir).exists() or not any(Path(cfg.web.keep_dir).iterdir())


def test_csv_json_gzip_and_bom(client, essays):
    raw = _csv(essays.head(3))
    plain = client.post("/api/score-csv?format=json", content=raw).json()
    gz = client.post("/api/score-csv?format=json&name=x.csv.gz",
                     content=gzip.compress(raw)).json()
    bom = client.post("/api/score-csv?format=json", content=b"\xef\xbb\xbf" + raw).json()
    assert plain["total"] == 3 and plain["kept_as"] is None
    assert [r["score"] for r in gz["rows"]] == [r["score"] for r in plain["rows"]]
    assert [r["score"] for r in bom["rows"]] == [r["score"] for r in plain["rows"]]


def test_keep_a_copy_uses_generated_names_only(module_tmp, storage, essays):
    cfg = web_config(module_tmp / "keep", storage)
    keep_dir = Path(cfg.web.keep_dir)
    raw = _csv(essays.head(3))
    with TestClient(create_app(cfg)) as c:
        r = c.post("/api/score-csv?name=class.csv", content=raw)  # not asked: nothing kept
        assert r.status_code == 200 and not keep_dir.exists()
        msgs = _stream(c.post("/api/score-csv?keep=true&name=../../evil.csv", content=raw))
    kept = msgs[-1]["kept_as"]
    assert msgs[-1]["type"] == "done" and kept.startswith("upload-")
    names = sorted(p.name for p in keep_dir.iterdir())
    assert names == [f"{kept}-scored.csv", f"{kept}.csv"]
    assert (keep_dir / f"{kept}.csv").read_bytes() == raw
    scored = pd.read_csv(keep_dir / f"{kept}-scored.csv", dtype={"essay_id": str},
                         keep_default_na=False)
    assert scored["essay_id"].tolist() == essays["essay_id"].head(3).tolist()
    assert scored["warnings"].tolist() == [""] * 3  # text, not a Python list repr
    assert not (module_tmp / "evil.csv").exists() and not (keep_dir.parent / "evil.csv").exists()


def _upload_error(client, raw: bytes, name: str = "class.csv") -> tuple[int, dict]:
    r = client.post(f"/api/score-csv?name={name}", content=raw,
                    headers={"content-type": "text/csv"})
    return r.status_code, r.json()


def test_csv_missing_column(client):
    status, body = _upload_error(client, b"essay_id,text\na,some essay\n")
    assert status == 400 and body["field"] == "full_text"
    assert "class.csv" in body["error"] and "missing column(s) ['full_text']" in body["error"]


def test_csv_bad_encoding_names_the_row(client):
    raw = (b"essay_id,full_text\n"
           b'a,"first essay\n\nwith two paragraphs"\n'
           b"b,second essay\n") + b"c,caf\xe9 au lait\n"
    status, body = _upload_error(client, raw)
    assert status == 400 and body["rows"] == [3]
    assert "row 3" in body["error"] and "UTF-8" in body["error"]


def test_csv_duplicate_ids_named(client):
    status, body = _upload_error(client, b"essay_id,full_text\na,one\nb,two\na,three\n")
    assert status == 400 and body["rows"] == [1, 3]
    assert "duplicate id 'a'" in body["error"]


def test_csv_empty_essay_named(client):
    status, body = _upload_error(client, b'essay_id,full_text\na,one\nb,"  "\n')
    assert status == 400 and body["rows"] == [2] and "empty essay text" in body["error"]


def test_csv_too_long_essay_named(client, cfg):
    long = "w " * cfg.web.max_essay_chars
    raw = f"essay_id,full_text\na,short\nb,{long}\n".encode()
    status, body = _upload_error(client, raw)
    assert status == 400 and body["rows"] == [2]
    assert f"longer than {cfg.web.max_essay_chars:,}" in body["error"]


def test_csv_too_many_rows(client, cfg):
    n = cfg.web.max_rows + 1
    raw = ("essay_id,full_text\n" + "".join(f"e{i},text {i}\n" for i in range(n))).encode()
    status, body = _upload_error(client, raw)
    assert status == 400 and f"{n:,} essays" in body["error"]


@pytest.mark.parametrize("raw, needle", [
    (b"", "the file is empty"),
    (b"  \n \n", "the file is empty"),
    (b"essay_id,full_text\n", "no essays"),
    (b"\x1f\x8bnot really gzip", "corrupt gzip"),
])
def test_csv_empty_or_broken_files(client, raw, needle):
    status, body = _upload_error(client, raw)
    assert status == 400 and needle in body["error"]


def test_multipart_without_file_field(client):
    r = client.post("/api/score-csv", data={"note": "hello"}, files={"other": ("a.csv", b"x")})
    assert r.status_code == 400 and "field 'file'" in r.json()["error"]


def test_bad_format_parameter(client, essays):
    r = client.post("/api/score-csv?format=xlsx", content=_csv(essays.head(1)))
    assert r.status_code == 422 and "format" in r.json()["error"]


# ---- no model yet -----------------------------------------------------------------------------

def test_no_model_gives_clear_503(tmp_path):
    cfg = web_config(tmp_path, tmp_path / "empty_storage")
    with TestClient(create_app(cfg)) as c:
        assert c.get("/").status_code == 200
        info = c.get("/api/info").json()
        assert info["ready"] is False and "serving_bundle" in info["error"]
        r = c.post("/api/score", json={"text": "An essay."})
        assert r.status_code == 503
        assert "not available" in r.json()["error"] and "pipeline" in r.json()["error"]
        r = c.post("/api/score-csv", content=b"essay_id,full_text\na,b\n")
        assert r.status_code == 503


# ---- essay statistics and typical ranges --------------------------------------------------------

def test_essay_stats_counts():
    text = "I like dogs. They are kind!\n\nDo cats purr? Yes, they do.\n\n\n  \nThe end"
    s = essay_stats(text)
    assert (s.words, s.paragraphs, s.sentences) == (14, 3, 5)
    assert s.mean_sentence_words == pytest.approx(14 / 5, abs=0.05)
    assert essay_stats("   ").words == 0


def test_typical_stats_of_the_bundle(essays):
    folded = essays.assign(score=[1, 1, 2, 2, 3, 3, 4, 4, 5, 6][:len(essays)])
    got = typical_stats(folded, 0.2, 0.8)
    assert got == {"source_kind": "folded_essays", "n_essays": len(folded), "low_q": 0.2,
                   "high_q": 0.8,
                   "ranges": typical_ranges(folded["full_text"].tolist(),
                                            folded["score"].to_numpy(), 0.2, 0.8)}


def test_page_ranges_come_from_the_bundle(client, cfg, essays):
    text = essays["full_text"].iloc[0]
    body = client.post("/api/score", json={"text": text}).json()
    ranges = load_bundle(cfg).essay_stats()["ranges"][str(body["score"])]
    assert {s["name"]: s["typical"] for s in body["stats"]} == {
        n: ranges[n] for n in ("words", "paragraphs", "mean_sentence_words")}


def test_bundle_without_statistics_still_scores(tmp_path, storage, essays):
    import shutil

    copy = tmp_path / "storage"
    shutil.copytree(storage, copy)
    bundle = load_bundle(copy / "serving")
    write_manifest(bundle.root, bundle.manifest.model_copy(update={"essay_stats": None}))
    cfg = web_config(tmp_path, copy)
    with TestClient(create_app(cfg)) as c:
        info = c.get("/api/info").json()
        assert info["ready"] is True
        assert info["typical_ranges"] == {"error": "the serving bundle holds no essay statistics"}
        body = c.post("/api/score", json={"text": essays["full_text"].iloc[0]}).json()
    assert 1 <= body["score"] <= 6
    assert all(s["typical"] is None and s["status"] == "unknown" for s in body["stats"])


# ---- model reloads ------------------------------------------------------------------------------

def test_new_ensemble_is_picked_up_without_restart(tmp_path, tiny_backbone, essays):
    """A newly committed serving bundle changes the page's scores on the next request."""
    storage = build_storage(tmp_path / "storage", tiny_backbone)
    cfg = web_config(tmp_path, storage)
    text = essays["full_text"].iloc[0]
    with TestClient(create_app(cfg)) as c:
        before = c.post("/api/score", json={"text": text}).json()
        new = default_ensemble().model_copy(update={"weights": [0.0, 1.0]})
        path = commit(storage, new)  # what the serving_bundle asset does
        st = path.stat()  # coarse file system clocks: make the change visible
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        assert c.get("/api/info").json()["weights"] == [0.0, 1.0]
        after = c.post("/api/score", json={"text": text}).json()
    second = after["members"][1]["prediction"]
    assert after["blended"] == pytest.approx(second, abs=1e-3)
    assert after["score"] == int(new.to_scores(np.array([second]))[0])
    assert [m["prediction"] for m in after["members"]] == pytest.approx(
        [m["prediction"] for m in before["members"]], abs=1e-4)


def test_custom_scorer_factory_is_used_once(tmp_path, storage, essays):
    cfg = web_config(tmp_path, storage)
    calls = []

    def factory():
        calls.append(1)
        return load_scorer(cfg)

    with TestClient(create_app(cfg, scorer_factory=factory)) as c:
        for text in essays["full_text"].head(2):
            assert c.post("/api/score", json={"text": text}).status_code == 200
        assert c.get("/api/info").json()["ready"] is True
    assert len(calls) == 1


def test_cli_rejects_unknown_profile_with_a_clear_message():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "web", "--profile", "no-such-profile"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "profile 'no-such-profile' not found" in out.stderr
    helped = subprocess.run([sys.executable, "-m", "web", "--help"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--port" in helped.stdout and "--host" in helped.stdout


def test_flags_become_warnings_and_columns(tmp_path, tiny_backbone):
    """A bundle with a flagger: a repeated-paragraph essay gets the repetition warning, a
    one-word essay one too_short warning (the flag's, not a second one from the page's own
    word count), both capped scores; the scored CSV carries flags, evidence and model score."""
    storage = build_storage(tmp_path / "storage", tiny_backbone, flags=True)
    cfg = web_config(tmp_path, storage)
    original, gamed = repeated_paragraph_essay()
    essays = pd.DataFrame({"essay_id": ["gamed", "original", "dogs"],
                           "full_text": [gamed, original, "Dogs"]})
    with TestClient(create_app(cfg)) as c:
        r = c.post("/api/score-csv?format=csv", content=_csv(essays))
        assert r.status_code == 200, r.text
        one = c.post("/api/score", json={"text": "Dogs"}).json()
    table = pd.read_csv(io.StringIO(r.text), dtype={"essay_id": str}, keep_default_na=False)
    cols = list(table.columns)
    assert cols[:7] == ["essay_id", "score", "warnings", "warning_details", "flags",
                        "flag_evidence", "model_score"]
    rows = table.set_index("essay_id")
    cap = cfg.flags.cap_score_when_flagged
    assert rows.at["gamed", "warnings"] == "repetition"
    assert "duplicated paragraph(s)" in rows.at["gamed", "warning_details"]
    dogs = rows.at["dogs", "warnings"].split(";")  # (also off_topic: no essay vocabulary)
    assert dogs.count(TOO_SHORT) == 1 and dogs == rows.at["dogs", "flags"].split(";")
    assert "1 words (fewer than" in rows.at["dogs", "warning_details"]
    assert rows.at["original", "warnings"] == "" and rows.at["original", "flags"] == ""
    for essay_id in ("gamed", "dogs"):
        assert rows.at[essay_id, "score"] == min(rows.at[essay_id, "model_score"], cap)
    assert rows.at["original", "score"] == rows.at["original", "model_score"]
    assert [w["code"] for w in one["warnings"]] == one["flags"] == dogs
    assert one["score"] == min(one["model_score"], cap)


def test_unknown_prompt_is_a_notice_after_the_warnings(cfg):
    from aes_core.flags import EssayFlags, Flag

    flags = EssayFlags((Flag("unknown_prompt", "far from every known prompt"),
                        Flag("repetition", "2 duplicated paragraph(s)")), None, 0.1)
    out = essay_warnings(essay_stats("Dogs"), cfg.web, flags, score=2, model_score=5)
    assert [(w.code, w.level) for w in out] == [
        ("repetition", "warning"), (TOO_SHORT, "warning"), ("unknown_prompt", "notice")]
    assert "capped at 2" in out[0].message and "would be 5" in out[0].message
    assert out[2].evidence == "far from every known prompt"
    plain = essay_warnings(essay_stats("Dogs"), cfg.web, flags, score=2, model_score=2)
    assert not any("capped" in w.message for w in plain)
