"""The stacker beside Nelder-Mead: nested CV that never sees the scored fold, the method
choice by nested QWK, stacker ensembles saved/loaded/applied, and the nested blend check."""

import json

import numpy as np
import pandas as pd
import pytest

from aes_core.config import SAMPLE_DIR, EnsembleSection
from aes_core.data import io
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.ensemble.blend import assemble_oof, blend_beats_best_member, fit_ensemble
from aes_core.ensemble.stacker import (
    STAT_NAMES,
    Stacker,
    essay_statistics,
    fit_meta,
    fit_stacker,
)
from aes_core.ensemble.thresholds import cut, fast_qwk

SCORE_P = [0.07, 0.27, 0.36, 0.22, 0.06, 0.02]
# light search settings: these tests check behaviour, not the optimum's last digit
FAST = dict(restarts=1, max_iter=300, threshold_max_iter=200, threshold_passes=3,
            threshold_step=0.02, stacker_rounds=150)


@pytest.fixture(scope="module")
def essays() -> pd.DataFrame:
    """600 real essays (sample train) with their statistics and 3 random folds."""
    df = io.load_train(SAMPLE_DIR / "train.csv.gz").sample(600, random_state=1)
    df = df.reset_index(drop=True)
    df["fold"] = np.random.default_rng(0).integers(0, 3, len(df))
    return df


@pytest.fixture(scope="module")
def stats(essays) -> np.ndarray:
    return essay_statistics(essays["full_text"].tolist())


def length_dependent_oof(essays: pd.DataFrame, stats: np.ndarray) -> pd.DataFrame:
    """Member ``short`` is accurate on short essays only, ``long`` on long ones."""
    r = np.random.default_rng(5)
    y = essays["score"].to_numpy()
    words = stats[:, STAT_NAMES.index("n_words")]
    short = words < np.median(words)
    good, bad = r.normal(0, 0.3, len(y)), r.normal(0, 1.6, len(y))
    return pd.DataFrame({
        "essay_id": essays["essay_id"], "fold": essays["fold"], "score": y,
        "short": np.clip(y + np.where(short, good, bad), 1, 6),
        "long": np.clip(y + np.where(short, bad, good), 1, 6),
    })


def test_essay_statistics_are_the_feature_module_values():
    text = "One short line here.\n\nA second paragraph, with two sentences. Okay then."
    s = essay_statistics([text])[0]
    assert s[STAT_NAMES.index("n_words")] == pytest.approx(np.log1p(12))
    assert s[STAT_NAMES.index("n_paragraphs")] == pytest.approx(np.log1p(2))
    assert s[STAT_NAMES.index("n_sentences")] == pytest.approx(np.log1p(3))
    assert s[STAT_NAMES.index("type_token_ratio")] == pytest.approx(12 / 12)


def test_stacker_never_scores_a_fold_it_was_fitted_on(essays, stats):
    """Every model behind fold k's OOF value or its thresholds was fitted without fold k; and a
    planted feature that memorises the training rows buys no nested QWK."""
    r = np.random.default_rng(3)
    y = essays["score"].to_numpy()
    folds = essays["fold"].to_numpy()
    weak = np.clip(y + r.normal(0, 1.0, len(y)), 1, 6)[:, None]
    leak = r.permutation(len(y)).astype(float)[:, None]  # an id: memorisable, useless elsewhere
    cfg = EnsembleSection(**{**FAST, "stacker_min_child_samples": 1, "stacker_num_leaves": 64,
                             "stacker_max_depth": 12, "stacker_reg_lambda": 0.0,
                             "stacker_learning_rate": 0.3, "stacker_rounds": 300})
    x_leak = np.hstack([weak, leak])
    # the planted feature would give a near-perfect in-fold fit ...
    in_fold = fit_meta("lightgbm", np.hstack([x_leak, stats]), y, cfg)
    in_fold_pred = in_fold.predict(np.hstack([x_leak, stats]))
    assert fast_qwk(y, cut(in_fold_pred, [1.5, 2.5, 3.5, 4.5, 5.5])) > 0.95
    with_leak = fit_stacker(x_leak, stats, y, folds, ["weak", "leak"], "lightgbm", cfg)
    without = fit_stacker(weak, stats, y, folds, ["weak"], "lightgbm", cfg)
    # ... but nested CV never scores rows a model saw, so it adds nothing there
    assert with_leak.nested_qwk < without.nested_qwk + 0.03, (with_leak.nested_qwk,
                                                             without.nested_qwk)
    assert with_leak.nested_qwk < 0.8
    outer = [rec for rec in with_leak.records if rec.purpose == "outer"]
    inner = [rec for rec in with_leak.records if rec.purpose == "inner"]
    assert len(outer) == 3 and len(inner) == 3 * 2
    for rec in with_leak.records:
        k = rec.outer_fold
        assert not np.isin(folds[rec.train_rows], [k]).any()  # never fitted on fold k
        assert not np.intersect1d(rec.train_rows, rec.predict_rows).size
    for rec in outer:
        np.testing.assert_array_equal(rec.predict_rows, np.flatnonzero(folds == rec.outer_fold))


def test_auto_applies_the_stacker_that_wins_nested_cv_and_serves_it(essays, stats, tmp_path):
    table = assemble_oof(length_dependent_oof(essays, stats))
    texts = essays["full_text"].tolist()
    fit = fit_ensemble(table, EnsembleSection(**FAST), texts=texts)
    art = fit.artifact
    nq = art.nested_qwk
    assert art.method == "stacker"
    assert {"short", "long", "nelder_mead", "stacker", "stacker_ridge",
            "stacker_lightgbm"} <= set(nq)
    assert nq["stacker"] == max(nq["stacker_ridge"], nq["stacker_lightgbm"])
    assert nq["stacker"] > nq["nelder_mead"] + 0.02  # length tells which member to trust
    assert art.oof_qwk["blend_nested"] == nq["stacker"]
    assert art.thresholds == fit.stacker.stacker.thresholds
    # the report table holds the stacker's honest OOF, cut at the artifact's thresholds
    np.testing.assert_allclose(fit.table["blended"], fit.stacker.oof)
    np.testing.assert_array_equal(fit.table["pred_score"],
                                  art.to_scores(fit.table["blended"].to_numpy()))
    assert blend_beats_best_member(art).passed

    preds = table[art.members].to_numpy()[:40]
    few = texts[:40]
    in_memory = art.blend(preds, few)
    with pytest.raises(ValueError, match="needs the essay texts"):
        art.blend(preds)
    with pytest.raises(ValueError, match="40 texts for 39"):
        art.blend(preds[:39], few)
    path = art.save(tmp_path / "ens" / "ensemble.json")
    on_disk = json.loads(path.read_text())
    assert on_disk["method"] == "stacker" and on_disk["stacker_dir"] == "stacker"
    assert (tmp_path / "ens" / "stacker" / "stacker.json").exists()
    loaded = EnsembleArtifact.load(path)
    np.testing.assert_allclose(loaded.blend(preds, few), in_memory)
    # the asset's dict (absolute stacker_dir after save) is what serving validates
    from_dict = EnsembleArtifact.model_validate(json.loads(art.model_dump_json()))
    np.testing.assert_allclose(from_dict.blend(preds, few), in_memory)
    assert from_dict == loaded
    # saving elsewhere (e.g. into a Triton repository) takes the stacker along
    copy = loaded.save(tmp_path / "repo" / "ensemble.json")
    (tmp_path / "ens" / "stacker" / "stacker.json").unlink()
    np.testing.assert_allclose(EnsembleArtifact.load(copy).blend(preds, few), in_memory)
    assert Stacker.load(tmp_path / "repo" / "stacker").kind == fit.stacker.stacker.kind


def test_nelder_mead_method_and_stacker_without_texts(essays, stats):
    table = assemble_oof(length_dependent_oof(essays, stats))
    nm = fit_ensemble(table, EnsembleSection(**FAST, method="nelder_mead"),
                      texts=essays["full_text"].tolist()).artifact
    assert nm.method == "nelder_mead" and "stacker" not in nm.nested_qwk
    assert {"short", "long", "nelder_mead"} <= set(nm.nested_qwk)
    preds = table[nm.members].to_numpy()[:5]
    np.testing.assert_allclose(nm.blend(preds), preds @ np.asarray(nm.weights))
    with pytest.raises(ValueError, match="no essay texts"):
        fit_ensemble(table, EnsembleSection(**FAST, method="stacker"))
    auto = fit_ensemble(table, EnsembleSection(**FAST)).artifact  # no texts: Nelder-Mead
    assert auto.method == "nelder_mead" and "stacker not fitted" in auto.notes


# ---------------------------------------------------------------- the nested blend check

def check_oof(n: int, seed: int, noise_members: int, complementary: bool) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    y = r.choice(np.arange(1, 7), n, p=SCORE_P)
    d = {"essay_id": [f"e{i}" for i in range(n)], "fold": np.arange(n) % 5, "score": y}
    if complementary:  # two equally good members with independent errors
        d["a"] = np.clip(y + r.normal(0, 0.8, n), 1, 6)
        d["b"] = np.clip(y + r.normal(0, 0.8, n), 1, 6)
    else:  # one strong member and members that are pure noise
        d["strong"] = np.clip(y + r.normal(0, 0.5, n), 1, 6)
        for j in range(noise_members):
            d[f"noise{j}"] = r.uniform(1, 6, n)
    return pd.DataFrame(d)


def test_blend_check_fails_when_nested_blending_loses_to_the_best_member():
    art = fit_ensemble(assemble_oof(check_oof(250, 1, 4, False)),
                       EnsembleSection(**FAST)).artifact
    res = blend_beats_best_member(art)
    assert res.metadata["basis"] == "nested_cv"
    assert res.metadata["best_member"] == "strong"
    assert not res.passed, res.metadata
    assert res.metadata["gain"] < 0
    # in-sample the blend can never lose: the old comparison would have passed
    assert art.oof_qwk["blend"] >= art.oof_qwk["strong"]


def test_blend_check_passes_for_complementary_members():
    art = fit_ensemble(assemble_oof(check_oof(400, 0, 0, True)),
                       EnsembleSection(**FAST)).artifact
    res = blend_beats_best_member(art)
    assert res.passed and res.metadata["basis"] == "nested_cv", res.metadata
    assert res.metadata["gain"] > 0.01
    assert not blend_beats_best_member(art, margin=0.5).passed


def test_blend_check_falls_back_to_in_sample_without_nested_figures():
    old = EnsembleArtifact(members=["a", "b"], weights=[1.0, 0.0], selected="a",
                           oof_qwk={"a": 0.70, "b": 0.60, "optimized": 0.65, "blend": 0.70})
    res = blend_beats_best_member(old)
    assert res.metadata["basis"] == "in_sample" and not res.passed
    assert res.metadata["gain"] == pytest.approx(-0.05)
