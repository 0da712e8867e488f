"""The fold-model collapse warning: constant predictions are named, varied ones are not."""

import numpy as np

from aes_core.training.stages import collapse_note


def test_constant_predictions_are_reported_with_their_figures():
    note = collapse_note(np.full(200, 3.37), 0.05, 0.0)
    assert note is not None
    assert "std 0.0000" in note and "mean 3.37" in note and "train.lr" in note


def test_varied_predictions_and_a_disabled_guard_say_nothing():
    rng = np.random.default_rng(0)
    varied = rng.normal(3.0, 0.8, 200)
    assert collapse_note(varied, 0.05, 0.7) is None
    assert collapse_note(np.full(200, 3.0), 0.0, 0.0) is None  # 0 turns the check off


def test_the_threshold_is_the_boundary():
    pred = np.array([3.0, 3.1] * 50)  # std 0.05
    assert collapse_note(pred, 0.04, 0.1) is None
    assert collapse_note(pred, 0.06, 0.1) is not None
