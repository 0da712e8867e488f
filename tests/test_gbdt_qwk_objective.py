"""The GBDT member's ``objective: qwk``: the surrogate's gradient, its config, training with and
without early stopping, predictions on the 1..6 scale, and a saved member that predicts the
same after load (the custom objective is not needed there)."""

import lightgbm as lgb
import numpy as np
import pytest
from pydantic import ValidationError

from aes_core.config import SAMPLE_DIR, GbdtSection
from aes_core.data import io
from aes_core.ensemble.gbdt import (
    GbdtMember,
    _lgb_params,
    fit_gbdt,
    surrogate,
    train_booster,
)
from aes_core.ensemble.qwk_objective import METRIC_NAME, QwkSurrogate, bake_offset
from tests.conftest import folded_sample

SMALL = {"n_estimators": 40, "word_max_features": 800, "char_max_features": 800,
         "learning_rate": 0.1, "min_child_samples": 10, "num_threads": 1, "n_jobs": 1,
         "feature_set": "basic", "spelling": False, "objective": "qwk"}


def test_gradient_matches_finite_differences_of_the_surrogate():
    rng = np.random.default_rng(0)
    s = QwkSurrogate(a=2.998, b=1.092)
    raw = rng.uniform(-1.5, 2.5, 40)  # inside the 1..6 scale once shifted: no clipping
    labels = rng.integers(1, 7, 40).astype(float)
    grad, hess = s.grad_hess(raw, labels)
    eps = 1e-6
    step = np.eye(len(raw)) * eps
    fd = np.array([(s.loss(raw + step[i], labels) - s.loss(raw - step[i], labels)) / (2 * eps)
                   for i in range(len(raw))])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(hess, np.ones_like(raw))
    # f / g: 0 for perfect predictions, 1 for predicting the centre a for every essay when the
    # labels have mean a and variance b
    assert s.loss(labels - s.a, labels) == 0
    y = np.array([1.0, 5.0])
    assert QwkSurrogate(a=3.0, b=4.0).loss(np.zeros(2), y) == pytest.approx(len(y))


def test_config_objective_and_constants_validate():
    cfg = GbdtSection()
    assert cfg.objective == "regression" and (cfg.qwk_a, cfg.qwk_b) == (2.998, 1.092)
    assert _lgb_params(cfg, surrogate(cfg))["objective"] == "regression"
    qwk_cfg = cfg.model_copy(update={"objective": "qwk"})
    params = _lgb_params(qwk_cfg, surrogate(qwk_cfg))
    assert callable(params["objective"]) and params["metric"] == "None"
    assert GbdtSection(objective="qwk", qwk_a=3.1, qwk_b=0.9).qwk_a == 3.1
    for bad in ({"objective": "huber"}, {"qwk_a": 0.5}, {"qwk_a": 6.5}, {"qwk_b": 0.0}):
        with pytest.raises(ValidationError):
            GbdtSection(**bad)


def test_baked_offset_shifts_the_saved_booster_exactly(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    y = np.clip(np.round(3 + x[:, 0] + 0.5 * rng.normal(size=300)), 1, 6)
    s = QwkSurrogate(a=2.998, b=1.092)
    booster = lgb.train({"objective": s.objective, "metric": "None", "verbosity": -1,
                         "num_threads": 1}, lgb.Dataset(x, y), num_boost_round=15)
    raw = booster.predict(x)
    bake_offset(booster, s.a)
    np.testing.assert_allclose(booster.predict(x), raw + s.a, rtol=0, atol=1e-12)
    booster.save_model(str(tmp_path / "b.txt"))
    loaded = lgb.Booster(model_file=str(tmp_path / "b.txt"))
    np.testing.assert_array_equal(loaded.predict(x), booster.predict(x))


def test_early_stopping_uses_the_surrogate_metric():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 4))
    y = np.clip(np.round(3 + x[:, 0] + 0.5 * rng.normal(size=400)), 1, 6)
    cfg = GbdtSection(**{**SMALL, "n_estimators": 200, "early_stopping_rounds": 5})
    booster = train_booster(x, y, cfg, seed=0, threads=1)
    assert set(booster.best_score["valid_0"]) == {METRIC_NAME}
    assert 1 <= booster.best_iteration < 200
    assert 2.0 < booster.predict(x).mean() < 4.5  # on the score scale: the offset is baked in


@pytest.fixture(scope="module")
def folded():
    return folded_sample(240)


@pytest.mark.parametrize("holdout", [0.1, 0.0])  # with and without early stopping
def test_qwk_member_trains_predicts_on_the_scale_and_round_trips(folded, holdout, tmp_path):
    cfg = GbdtSection(**SMALL, early_stopping_holdout=holdout)
    fit = fit_gbdt(folded, cfg, progress=False)
    oof = fit.oof["gbdt"].to_numpy()
    assert np.isfinite(oof).all() and oof.min() >= 1 and oof.max() <= 6
    assert abs(oof.mean() - folded["score"].mean()) < 0.5  # not left around 0 (unshifted)
    assert fit.oof_qwk > 0.3, fit.oof_qwk
    if holdout == 0:
        assert fit.best_iterations == [cfg.n_estimators] * 3
    texts = io.load_essays(SAMPLE_DIR / "test.csv.gz")["full_text"].tolist()[:12]
    pred = fit.member.predict(texts)
    assert pred.min() >= 1 and pred.max() <= 6 and 2 < pred.mean() < 5
    loaded = GbdtMember.load(fit.member.save(tmp_path / "gbdt"))
    assert loaded.cfg.objective == "qwk"
    np.testing.assert_array_equal(loaded.predict(texts), pred)
    np.testing.assert_array_equal(loaded.predict(texts[:1]), pred[:1])  # one-essay fast path
