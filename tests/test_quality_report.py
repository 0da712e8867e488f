"""benchmarks/quality_report.py: members of several runs on the same folds, named configurations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aes_core.config import SAMPLE_DIR, load_config
from tests.bench_support import benchmark_module

N_OOF, N_TEST = 150, 60


def _qr():
    return benchmark_module("quality_report")


def _cfg():
    cfg = load_config("cpu-small")
    return cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"restarts": 1})})


def _write_run(root: Path, member: str, folds: np.ndarray, noise: float, seed: int) -> Path:
    """A storage root as a pipeline run leaves it: OOF tables, folded and test essays, and
    the submission's per-member test predictions."""
    essays = pd.read_csv(SAMPLE_DIR / "train.csv.gz", keep_default_na=False)
    train, test = essays.head(N_OOF), essays.iloc[N_OOF:N_OOF + N_TEST]
    r = np.random.default_rng(seed)
    y = train["score"].to_numpy()
    ids = train["essay_id"].astype(str)
    (root / "tables").mkdir(parents=True)
    pd.DataFrame({"essay_id": ids, "fold": folds, "score": y, "prompt_name": "Venus",
                  "flag": 0, member: np.clip(y + r.normal(0, noise, N_OOF), 1, 6)}
                 ).to_parquet(root / "tables" / "oof_predictions.parquet")
    gbdt = np.clip(y + np.random.default_rng(99).normal(0, 0.6, N_OOF), 1, 6)
    pd.DataFrame({"essay_id": ids, "gbdt": gbdt}).to_parquet(root / "tables" / "gbdt_oof.parquet")
    train.assign(fold=folds).to_parquet(root / "tables" / "folded_essays.parquet")
    test.to_parquet(root / "tables" / "test_essays.parquet")
    yt = test["score"].to_numpy()
    pd.DataFrame({"essay_id": test["essay_id"].astype(str)[::-1],  # any order: aligned by id
                  member: np.clip(yt + r.normal(0, noise, N_TEST), 1, 6)[::-1],
                  "gbdt": np.clip(yt + r.normal(0, 0.6, N_TEST), 1, 6)[::-1]}
                 ).to_parquet(root / "test_member_predictions.parquet")
    return root


@pytest.fixture()
def runs(tmp_path) -> tuple[Path, Path]:
    folds = np.arange(N_OOF) % 3
    return (_write_run(tmp_path / "a", "tiny__mean", folds, 0.7, 0),
            _write_run(tmp_path / "b", "tiny_s2__mean", folds, 0.7, 1))


def test_groups_blend_members_of_both_runs_and_score_only_named_ones(runs):
    groups = {"first run": {"tiny__mean": ["tiny__mean"], "gbdt": ["gbdt"]},
              "seeds averaged": {"tiny__mean": ["tiny__mean", "tiny_s2__mean"],
                                 "gbdt": ["gbdt"]}}
    out = _qr().report_groups(list(runs), _cfg(), groups, test_groups={"seeds averaged"})
    assert out["members"] == ["tiny__mean", "gbdt", "tiny_s2__mean"]
    first, averaged = out["configurations"]
    assert first["configuration"] == "first run" and first["test_qwk"] is None
    assert averaged["members"] == ["tiny__mean", "gbdt"] and 0 < averaged["test_qwk"] <= 1
    for c in (first, averaged):
        assert 0 < c["nested_cv_qwk"] <= c["oof_qwk"] + 0.05


def test_members_of_another_run_align_by_essay_id(runs):
    qr = _qr()
    table, preds = qr.run_tables(qr.load_run(runs[0]))
    table, preds = qr.merge_members(table, preds, *qr.run_tables(qr.load_run(runs[1])), "b")
    b = pd.read_parquet(runs[1] / "test_member_predictions.parquet").set_index("essay_id")
    assert np.allclose(preds["tiny_s2__mean"], b.loc[preds["essay_id"], "tiny_s2__mean"])
    assert "gbdt" in table.columns and list(table.columns).count("gbdt") == 1


def test_test_predictions_of_another_run_align_to_the_first_runs_test_order(runs):
    qr = _qr()
    other = qr.load_run(runs[1])
    other["test"] = other["test"].iloc[::-1]  # another run may list its test essays otherwise
    table, preds = qr.run_tables(qr.load_run(runs[0]))
    _, merged = qr.merge_members(table, preds, *qr.run_tables(other), "b")
    b = pd.read_parquet(runs[1] / "test_member_predictions.parquet").set_index("essay_id")
    assert np.allclose(merged["tiny_s2__mean"], b.loc[merged["essay_id"], "tiny_s2__mean"])
    other["test"] = other["test"].iloc[1:]  # a run without one of the first run's test essays
    with pytest.raises(ValueError, match="no test prediction for 1 test essays"):
        qr.merge_members(table, preds, *qr.run_tables(other), "b")


def test_runs_on_other_folds_are_refused(tmp_path):
    a = _write_run(tmp_path / "a", "tiny__mean", np.arange(N_OOF) % 3, 0.7, 0)
    b = _write_run(tmp_path / "b", "tiny_s2__mean", (np.arange(N_OOF) + 1) % 3, 0.7, 1)
    with pytest.raises(ValueError, match=f"{N_OOF} essays sit in another fold"):
        _qr().report_groups([a, b], _cfg(), {"x": {"gbdt": ["gbdt"]}})


def test_repeated_member_and_unknown_column_are_named(runs, tmp_path):
    a = runs[0]
    clash = _write_run(tmp_path / "c", "tiny__mean", np.arange(N_OOF) % 3, 0.7, 2)
    with pytest.raises(ValueError, match=r"member\(s\) \['tiny__mean'\] are already"):
        _qr().report_groups([a, clash], _cfg(), {"x": {"gbdt": ["gbdt"]}})
    with pytest.raises(ValueError, match=r"'typo': unknown member column\(s\) \['tiny__maen'\]"):
        _qr().report_groups(list(runs), _cfg(), {"typo": {"m": ["tiny__maen"]}})


def test_cli_writes_the_configurations(runs, tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"both": {"tiny__mean": ["tiny__mean"],
                                           "tiny_s2__mean": ["tiny_s2__mean"]}}))
    out = tmp_path / "q.json"
    assert _qr().main(["--storage", str(runs[0]), "--with-run", str(runs[1]), "--profile",
                       "cpu-small", "--groups", str(groups), "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())["configurations"]
    assert row["configuration"] == "both" and row["test_qwk"] is not None
    with pytest.raises(SystemExit):
        _qr().main(["--storage", str(runs[0]), "--with-run", str(runs[1]), "--out", str(out)])


def test_configurations_plot_uses_labelled_scored_rows(tmp_path):
    plot = benchmark_module("quality_configs_plot")
    quality = {"test_qwk": {"gbdt_alone": 0.81}, "ablation": [
        {"lever": "a", "short": "A", "test_qwk": 0.82, "nested_cv_qwk": 0.83},
        {"lever": "b", "short": "B", "test_qwk": None, "nested_cv_qwk": 0.84},  # not scored
        {"lever": "c", "test_qwk": 0.80, "nested_cv_qwk": 0.81}]}  # no label
    assert [r["short"] for r in plot.labelled_rows(quality)] == ["A"]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(quality))
    out = tmp_path / "p.png"
    assert plot.main(["--quality", str(path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no ablation row"):
        plot.labelled_rows({"ablation": quality["ablation"][1:]})


def test_standard_ablation_of_one_run(runs, tmp_path):
    out = _qr().report(runs[0], _cfg(), methods=("auto",))
    assert [a["lever"] for a in out["ablation"]] == [
        "GBDT alone / nelder_mead", "transformers only / nelder_mead", "everything / auto"]
    assert out["test_essays"] == N_TEST and out["oof_essays"] == N_OOF
    assert 0 < out["test_qwk"]["ensemble"] <= 1 and set(out["test_qwk"]) >= {"tiny__mean", "gbdt"}
    assert out["truncated_subset"]["essays"] == round(out["truncated_subset"]["share"] * N_OOF)
