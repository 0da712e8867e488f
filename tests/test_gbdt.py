"""The GBDT member's fast path and rich features: n-grams counted once give the vectorizers
``TfidfVectorizer.fit`` would, the rich feature set, fold-parallel fitting, the member's shared
tokenization at predict time, saved importances and the report's importance plot."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aes_core.config import SAMPLE_DIR, EnsembleSection, GbdtSection
from aes_core.data import io
from aes_core.ensemble.blend import assemble_oof, fit_ensemble
from aes_core.ensemble.features import (
    FEATURE_NAMES,
    RICH_FEATURE_NAMES,
    essay_features,
    feature_matrix,
    feature_names,
)
from aes_core.ensemble.gbdt import (
    IMPORTANCE_FILE,
    GbdtMember,
    NgramCounts,
    _vectorizers,
    fit_gbdt,
    load_importance,
)
from aes_core.report import IMPORTANCE_PLOT, PLOTS, build_report
from tests.conftest import folded_sample


@pytest.fixture(scope="module")
def sample_texts() -> list[str]:
    return io.load_train(SAMPLE_DIR / "train.csv.gz")["full_text"].tolist()[:200]


def test_ngram_counts_give_the_vectorizer_a_fold_fit_would(sample_texts):
    cfg = GbdtSection(word_max_features=400, char_max_features=600, min_df=2)
    rows = np.flatnonzero(np.arange(len(sample_texts)) % 4 != 0)  # a fold's training part
    for kind, ref in zip(("word", "char"), _vectorizers(cfg), strict=True):
        counts = NgramCounts.build(sample_texts, kind, cfg)
        vec, all_x = counts.fold_tfidf(rows, cfg)
        ref.fit([sample_texts[i] for i in rows])
        assert vec.vocabulary_ == ref.vocabulary_  # same min_df / max_features cut, same ties
        np.testing.assert_array_equal(vec.idf_, ref.idf_)
        expected = sp.csr_matrix(ref.transform(sample_texts))
        assert abs(all_x - expected).max() == 0.0
        assert abs(sp.csr_matrix(vec.transform(sample_texts)) - expected).max() == 0.0
    with pytest.raises(ValueError, match="min_df"):
        NgramCounts.build(sample_texts[:3], "word", cfg).fold_tfidf(
            np.arange(3), cfg.model_copy(update={"min_df": 50}))


def test_rich_features_on_a_hand_made_essay():
    text = ("Cars are bad.They pollute the air , and they are loud!!\n\n"
            "Becuase of this we shoud walk. Walking is healthy and it is cheap.\n\n"
            "i agree")
    basic = essay_features(text)
    rich = essay_features(text, feature_set="rich")
    assert set(rich) == set(RICH_FEATURE_NAMES) and len(RICH_FEATURE_NAMES) > 100
    assert all(rich[k] == basic[k] for k in FEATURE_NAMES)  # rich extends basic
    assert rich["para_words_first"] == 11 and rich["para_words_last"] == 2
    assert rich["para_words_max"] == 13 and rich["para_words_min"] == 2
    assert rich["para_chars_ge_50"] == 2 and rich["para_chars_ge_100"] == 0
    assert rich["sent_words_max"] == 11  # "bad.They" does not end a sentence: no space
    assert rich["n_unique_spelling_errors"] == 2  # becuase, shoud
    assert rich["space_before_punct_count"] == 1  # "air ,"
    assert rich["no_space_after_punct_count"] == 1  # "bad.They"
    assert rich["repeated_punct_count"] == 1  # "!!"
    assert rich["lower_sentence_starts"] == 1  # "i agree"
    assert rich["word_len_ge_7"] == 4  # pollute, Becuase, Walking, healthy
    m = feature_matrix([text, "", "word"], feature_set="rich")
    assert m.shape == (3, len(RICH_FEATURE_NAMES)) and np.isfinite(m).all()
    np.testing.assert_array_equal(
        feature_matrix([text] * 20, feature_set="rich", n_jobs=2),
        np.repeat(m[:1], 20, axis=0))
    with pytest.raises(ValueError, match="feature_set"):
        feature_names("huge")


@pytest.fixture(scope="module")
def small_fit():
    folded = folded_sample(300)
    cfg = GbdtSection(n_estimators=80, word_max_features=1500, char_max_features=1500,
                      learning_rate=0.1, min_child_samples=10, num_threads=2, n_jobs=2,
                      feature_set="rich")
    return folded, fit_gbdt(folded, cfg, progress=False)


def test_rich_member_fits_in_parallel_and_predicts_like_its_folds(small_fit, tmp_path):
    folded, fit = small_fit
    assert fit.oof_qwk > 0.45, fit.oof_qwk
    assert {"handcrafted", "ngram_count_word", "ngram_count_char", "lightgbm_train",
            "total"} <= set(fit.timings)
    assert fit.timings["total"] > 0 and fit.cpu_seconds["total"] > 0
    texts = io.load_essays(SAMPLE_DIR / "test.csv.gz")["full_text"].tolist()[:20]
    hand = feature_matrix(texts, feature_set="rich")
    per_fold = np.clip(np.mean([f.predict(texts, hand) for f in fit.member.folds], axis=0),
                       1, 6)
    np.testing.assert_allclose(fit.member.predict(texts), per_fold, rtol=1e-9)
    folder = fit.member.save(tmp_path / "gbdt")
    imp = load_importance(folder)
    assert list(imp.columns) == ["feature", "gain", "share"]
    assert imp["gain"].is_monotonic_decreasing and imp["share"].sum() == pytest.approx(1)
    assert set(imp["feature"]) & set(RICH_FEATURE_NAMES)  # handcrafted features are used
    assert imp["feature"].str.startswith(("word:", "char:")).any()
    loaded = GbdtMember.load(folder)
    assert loaded.cfg.feature_set == "rich"
    np.testing.assert_allclose(loaded.predict(texts), fit.member.predict(texts), rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="without importances"):
        load_importance(tmp_path)


def test_shared_tfidf_is_each_folds_vectorizer_exactly(small_fit):
    """Counting once and gathering each fold's columns gives, bit for bit, what every fold's
    ``TfidfVectorizer.transform`` gives; one essay at a time (one LightGBM thread) predicts
    what the batch does; ``warm_up`` builds the shared counters before the first request."""
    _, fit = small_fit
    texts = io.load_essays(SAMPLE_DIR / "test.csv.gz")["full_text"].tolist()[:12]
    texts += ["", "x", "Ünïcödé words, repeated repeated repeated.", "12 34 56"]
    member = GbdtMember(fit.member.cfg, fit.member.folds)  # nothing cached yet
    assert "_union_word" not in member.__dict__
    assert member.warm_up() is member and "_union_char" in member.__dict__
    for kind in ("word", "char"):
        for fold, got in zip(member.folds, member._shared_tfidf(kind, texts), strict=True):
            ref = getattr(fold, kind).transform(texts)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert (got != ref).nnz == 0
    batch = member.predict(texts)
    np.testing.assert_array_equal(np.concatenate([member.predict([t]) for t in texts]), batch)


def test_member_saved_before_feature_sets_loads_as_basic(tmp_path):
    train = io.load_train(SAMPLE_DIR / "train.csv.gz").iloc[:90].copy()
    train["fold"] = np.arange(len(train)) % 2
    cfg = GbdtSection(n_estimators=20, word_max_features=300, char_max_features=300,
                      min_child_samples=5, num_threads=1, feature_set="basic")
    folder = fit_gbdt(train, cfg, progress=False).member.save(tmp_path / "old")
    meta = json.loads((folder / "gbdt_member.json").read_text())
    del meta["config"]["feature_set"]  # as written before the option existed
    (folder / "gbdt_member.json").write_text(json.dumps(meta))
    old = GbdtMember.load(folder)
    assert old.cfg.feature_set == "basic"
    assert old.predict(["A short essay about cars."]).shape == (1,)


def test_report_adds_the_importance_plot(small_fit, tmp_path):
    folded, fit = small_fit
    table = folded[["essay_id", "fold", "score", "prompt_name"]].assign(
        gbdt=fit.oof["gbdt"].to_numpy())
    ens = fit_ensemble(assemble_oof(table), EnsembleSection(restarts=1, max_iter=100,
                                                            threshold_passes=2))
    rep = build_report(ens.table, ens.artifact, tmp_path / "rep",
                       importance=fit.member.importance())
    assert set(rep.plots) == {*PLOTS, IMPORTANCE_PLOT}
    png = rep.plots[IMPORTANCE_PLOT]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert (tmp_path / "rep" / f"{IMPORTANCE_PLOT}.png").exists()
    assert "nested_qwk" in rep.member_table.columns
    with pytest.raises(ValueError, match="gain"):
        build_report(ens.table, ens.artifact, tmp_path / "r2",
                     importance=pd.DataFrame({"feature": ["x"]}))
    assert IMPORTANCE_FILE == "feature_importance.csv"
