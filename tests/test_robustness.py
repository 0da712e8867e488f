"""The seeded perturbation set built from real sample essays, and the robustness report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aes_core.config import SAMPLE_DIR, FlagsSection
from aes_core.data import io
from aes_core.data.folds import join_persuade
from aes_core.ensemble.features import paragraphs, words
from aes_core.flags import fit_flagger
from aes_core.flags.resources import non_essay_passages, prompt_texts
from aes_core.robustness import (
    ATTACKS,
    build_perturbations,
    evaluate_robustness,
    robustness_check,
)

COLUMNS = ["essay_id", "source_id", "attack", "full_text", "prompt_name", "expected_flag",
           "detail", "source_score"]


@pytest.fixture(scope="module")
def essays() -> pd.DataFrame:
    persuade = io.load_persuade(SAMPLE_DIR / "persuade_reference.csv.gz")
    test = io.load_essays(SAMPLE_DIR / "test.csv.gz").merge(
        io.load_labels(SAMPLE_DIR / "test_score.csv.gz"), on="essay_id")
    return join_persuade(test, persuade)[0].head(30)


@pytest.fixture(scope="module")
def perturbed(essays) -> pd.DataFrame:
    return build_perturbations(essays, FlagsSection())


def _by(perturbed: pd.DataFrame, attack: str) -> pd.DataFrame:
    return perturbed[perturbed["attack"] == attack].set_index("source_id")


def test_rows_and_columns(essays, perturbed):
    assert list(perturbed.columns) == COLUMNS
    assert len(perturbed) == len(essays) * len(ATTACKS)
    assert perturbed["essay_id"].is_unique
    row = perturbed.iloc[0]
    assert row["essay_id"] == f"{row['source_id']}::{row['attack']}"
    src = essays.set_index("essay_id")
    assert (perturbed["prompt_name"].to_numpy()
            == src.loc[perturbed["source_id"], "prompt_name"].to_numpy()).all()
    assert (perturbed["source_score"].to_numpy()
            == src.loc[perturbed["source_id"], "score"].to_numpy()).all()


def test_seeded_and_reproducible(essays, perturbed):
    again = build_perturbations(essays, FlagsSection())
    pd.testing.assert_frame_equal(perturbed, again)
    # a row depends on its source and attack only, not on the other essays
    half = build_perturbations(essays.iloc[::2], FlagsSection(),
                               attacks=["gibberish", "shuffled_sentences", "non_essay"])
    full = perturbed.set_index("essay_id").loc[half["essay_id"], "full_text"]
    assert full.tolist() == half["full_text"].tolist()
    other_seed = build_perturbations(essays, FlagsSection(perturb_seed=1))
    changed = perturbed["full_text"] != other_seed["full_text"]
    assert changed[perturbed["attack"] == "gibberish"].all()
    assert not changed[perturbed["attack"] == "repeated_paragraphs"].any()


def test_off_topic_rows_are_essays_of_another_prompt(essays, perturbed):
    rows = _by(perturbed, "off_topic")
    by_text = essays.set_index("full_text")["prompt_name"]
    for source_id, row in rows.iterrows():
        donor_prompt = by_text[row["full_text"]]
        assert donor_prompt != row["prompt_name"], source_id
        assert donor_prompt in row["detail"]
    passages = {t for _, t in non_essay_passages()}
    assert set(_by(perturbed, "non_essay")["full_text"]) <= passages


def test_text_transformations(essays, perturbed):
    src = essays.set_index("essay_id")
    for attack in ("repeated_paragraphs", "truncated", "gibberish", "shuffled_sentences",
                   "prompt_copy"):
        for source_id, row in _by(perturbed, attack).iterrows():
            original, text = src.at[source_id, "full_text"], row["full_text"]
            n, m = len(words(original)), len(words(text))
            if attack == "repeated_paragraphs":
                assert m == 2 * n
                paras = paragraphs(text)
                assert paras[0] == paras[1]
            elif attack == "truncated":
                assert abs(m - 0.2 * n) <= 1 and original.startswith(text)
            elif attack == "gibberish":
                vocab = set(words(original))
                assert m == n and np.mean([w in vocab for w in words(text)]) < 0.1
            elif attack == "shuffled_sentences":
                assert sorted(words(text)) == sorted(words(original))
                assert len(paragraphs(text)) == len(paragraphs(original))
            else:
                pasted = prompt_texts()[row["prompt_name"]]
                assert text.count(pasted) == 4
                kept = [p.strip() for p in paragraphs(text) if pasted not in p]
                assert kept == [p.strip() for p in paragraphs(original)]
    shuffled = _by(perturbed, "shuffled_sentences")
    assert (shuffled["full_text"] != src.loc[shuffled.index, "full_text"]).mean() > 0.9


def test_sources_without_prompt_get_no_off_topic_row(essays):
    no_prompt = essays.drop(columns="prompt_name").head(5)
    out = build_perturbations(no_prompt, FlagsSection())
    assert "off_topic" not in set(out["attack"])
    assert (out["prompt_name"] == "").all()
    copies = out[out["attack"] == "prompt_copy"]
    assert all(any(t in text for t in prompt_texts().values()) for text in copies["full_text"])


def test_bad_input_gives_clear_errors(essays):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['full_text'\]"):
        build_perturbations(essays.drop(columns="full_text"), FlagsSection())
    broken = essays.copy()
    broken.loc[broken.index[2], "full_text"] = " "
    with pytest.raises(ValueError, match=r"empty essay text in row\(s\) \[3\]"):
        build_perturbations(broken, FlagsSection())
    dup = pd.concat([essays.head(2), essays.head(1)])
    with pytest.raises(ValueError, match="duplicate essay_id"):
        build_perturbations(dup, FlagsSection())
    with pytest.raises(ValueError, match="unknown attack"):
        build_perturbations(essays, FlagsSection(), attacks=["typos"])


class LengthScorer:
    """A stand-in scorer that, like the issue's ensemble, rewards length: 1 + words / 100."""

    def predict_scores(self, texts: list[str]) -> np.ndarray:
        return np.clip(np.round(1 + np.array([len(words(t)) for t in texts]) / 100), 1, 6)


def test_report_and_check(essays, perturbed):
    persuade = io.load_persuade(SAMPLE_DIR / "persuade_reference.csv.gz")
    cfg = FlagsSection()
    flagger = fit_flagger(persuade[~persuade["full_text"].isin(essays["full_text"])], cfg)
    report, table = evaluate_robustness(essays, perturbed, flagger, LengthScorer(), cfg)
    data = report.to_dict()
    assert set(data["attacks"]) == set(ATTACKS)
    assert data["n_clean"] == len(essays) and len(table) == len(essays) + len(perturbed)
    rep = data["attacks"]["repeated_paragraphs"]
    assert rep["flag_rate"] == 1.0 and rep["expected_flag_rate"] == 1.0
    assert rep["mean_score_shift"] > 1.5            # doubling the words pays with this scorer
    assert rep["mean_score_shift_after_flags"] < 0  # the cap takes it back
    assert data["attacks"]["shuffled_sentences"]["mean_score_shift"] == 0
    assert data["attacks"]["shuffled_sentences"]["expected_flag_rate"] is None
    assert robustness_check(report, cfg).passed
    uncapped = cfg.model_copy(update={"cap_score_when_flagged": None})
    report2, _ = evaluate_robustness(essays, perturbed, flagger, LengthScorer(), uncapped)
    check = robustness_check(report2, uncapped)
    assert not check.passed and "repeated_paragraphs raises the mean score" in check.description
    with pytest.raises(ValueError, match="not among the clean essays"):
        evaluate_robustness(essays.head(3), perturbed, flagger, LengthScorer(), cfg)
