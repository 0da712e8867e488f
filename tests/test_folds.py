"""PERSUADE join, flag rules and MultilabelStratifiedKFold folds."""

import pandas as pd
import pytest

from aes_core.config import FoldSection
from aes_core.data import io
from aes_core.data.folds import UNKNOWN_PROMPT, build_folded, join_persuade
from aes_core.data.normalize import normalize_text


def test_normalize_folds_whitespace_and_quotes():
    assert normalize_text("  It\u2019s   a\r\n\ntest\u00a0 ") == "It's a test"


def test_join_tolerates_whitespace_and_encoding_quirks():
    ref = pd.DataFrame({"essay_id_comp": ["r1", "r2"], "full_text": ["Cars are good.\n\nYes.",
                        "Venus is \u201chot\u201d."], "prompt_name": ["Car-free", "Venus"]})
    essays = pd.DataFrame({"essay_id": ["a", "b", "c"], "score": [3, 4, 2],
                           "full_text": ["Cars are good.\r\n\r\n Yes. ", 'Venus is "hot".',
                                         "Not in the reference."]})
    out, ambiguous = join_persuade(essays, ref)
    assert out["essay_id"].tolist() == ["a", "b", "c"]
    assert out["prompt_name"].tolist() == ["Car-free", "Venus", UNKNOWN_PROMPT]
    assert out["in_persuade"].tolist() == [True, True, False]
    assert ambiguous == 0


@pytest.fixture(scope="module")
def sample(sample_dir_module):
    return (io.load_train(sample_dir_module / "train.csv.gz"),
            io.load_persuade(sample_dir_module / "persuade_reference.csv.gz"))


@pytest.fixture(scope="module")
def sample_dir_module():
    from aes_core.config import SAMPLE_DIR
    return SAMPLE_DIR


def test_sample_joins_fully(sample):
    essays, ref = sample
    out, _ = join_persuade(essays, ref)
    assert out["in_persuade"].all()
    assert out["prompt_name"].nunique() == 7


@pytest.mark.parametrize("rule,extra", [("join", {}), ("fraction", {"flag_fraction": 0.3}),
                                        ("prompts", {"flag_prompts": ["Exploring Venus"]})])
def test_flag_rules(sample, rule, extra):
    essays, ref = sample
    df, report = build_folded(essays, ref, FoldSection(flag_rule=rule, **extra))
    assert rule in report.flag_rule
    if rule == "join":
        assert df["flag"].sum() == 0 and report.notes  # no essay outside PERSUADE here
    elif rule == "fraction":
        assert 0.2 < df["flag"].mean() < 0.4
    else:
        assert set(df.loc[df.flag == 1, "prompt_name"]) == {"Exploring Venus"}


def test_unknown_flag_prompt_is_an_error(sample):
    essays, ref = sample
    with pytest.raises(ValueError, match="flag_prompts"):
        build_folded(essays, ref, FoldSection(flag_rule="prompts", flag_prompts=["Nope"]))


def test_folds_are_seeded_complete_and_balanced(sample):
    essays, ref = sample
    cfg = FoldSection(n_folds=5, seed=3)
    a, _ = build_folded(essays, ref, cfg)
    b, _ = build_folded(essays, ref, cfg)
    assert a["fold"].tolist() == b["fold"].tolist()
    assert sorted(a["fold"].unique()) == [0, 1, 2, 3, 4]
    assert len(a) == len(essays) and a["essay_id"].is_unique
    share = pd.crosstab(a["fold"], a["score"], normalize="index")
    overall = a["score"].value_counts(normalize=True)
    assert (share - overall).abs().to_numpy().max() < 0.05
    c, _ = build_folded(essays, ref, FoldSection(n_folds=5, seed=4))
    assert c["fold"].tolist() != a["fold"].tolist()
