"""Ensemble stage: features, thresholds, the Nelder-Mead blend, the GBDT member, the report,
and the Dagster assets (gbdt_member/gbdt_oof, ensemble_weights, scoring_report, checks)."""

import json
import re
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from aes_assets.definitions import build_definitions
from aes_core.config import SAMPLE_DIR, EnsembleSection, GbdtSection
from aes_core.contracts import GbdtMemberResult, ScoringReportResult
from aes_core.data import io
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.ensemble.blend import OofError, assemble_oof, fit_ensemble, optimize_weights
from aes_core.ensemble.features import FEATURE_NAMES, essay_features, feature_matrix
from aes_core.ensemble.gbdt import GbdtMember, fit_gbdt
from aes_core.ensemble.thresholds import (
    DEFAULT_THRESHOLDS,
    cut,
    fast_qwk,
    fit_thresholds,
    validate_thresholds,
)
from aes_core.members import GBDT_MEMBER, member_columns, member_name, split_member_name
from aes_core.metrics import qwk
from aes_core.report import PLOTS, build_report
from aes_core.training.oof import qwk_reports
from tests.conftest import folded_sample, write_profile

SCORE_P = [0.07, 0.27, 0.36, 0.22, 0.06, 0.02]


def synthetic_oof(n: int = 1200, seed: int = 0, n_folds: int = 3) -> pd.DataFrame:
    """One member close to the truth, two noisy ones; the best blend is mostly ``good``."""
    r = np.random.default_rng(seed)
    y = r.choice(np.arange(1, 7), n, p=SCORE_P)
    latent = y + r.normal(0, 0.3, n)
    return pd.DataFrame({
        "essay_id": [f"e{i:05d}" for i in range(n)], "fold": r.integers(0, n_folds, n),
        "score": y, "prompt_name": r.choice(["Car-free cities", "Venus", "Driverless"], n),
        "flag": r.integers(0, 2, n),
        "good": np.clip(latent + r.normal(0, 0.3, n), 1, 6),
        "noisy": np.clip(latent + r.normal(0, 1.2, n), 1, 6),
        "biased": np.clip(0.5 * latent + 1.7 + r.normal(0, 1.0, n), 1, 6),
    })


# ---------------------------------------------------------------- features

def test_features_on_hand_made_texts():
    text = ("I think cars are bad. They pollute the air!\n\nBecuase of this, we "
            "shoud walk; it is healthy. Do you agree?")
    f = essay_features(text)
    assert set(f) == set(FEATURE_NAMES)
    assert f["n_paragraphs"] == 2
    assert f["n_sentences"] == 4
    assert f["n_words"] == 21
    assert f["n_spelling_errors"] == 2  # "becuase", "shoud"
    assert f["spelling_error_rate"] == pytest.approx(2 / 21)
    assert f["punct_comma_per_word"] == pytest.approx(1 / 21)
    assert f["punct_question_per_word"] == pytest.approx(1 / 21)
    assert f["punct_semicolon_per_word"] == pytest.approx(1 / 21)
    assert f["upper_start_share"] == 1.0
    clean = essay_features("The cat sat on the mat. The dog sat too.")
    assert clean["n_spelling_errors"] == 0
    assert clean["n_unique_words"] == 7 and clean["type_token_ratio"] == pytest.approx(7 / 10)
    assert clean["n_paragraphs"] == 1 and clean["n_sentences"] == 2
    m = feature_matrix([text, "word"], spelling=False)
    assert m.shape == (2, len(FEATURE_NAMES)) and np.isfinite(m).all()
    assert m[0, FEATURE_NAMES.index("spelling_error_rate")] == 0.0


# ---------------------------------------------------------------- thresholds

def test_fast_qwk_matches_sklearn():
    r = np.random.default_rng(1)
    y, p = r.integers(1, 7, 500), r.integers(1, 7, 500)
    ref = cohen_kappa_score(y, p, weights="quadratic", labels=np.arange(1, 7))
    assert fast_qwk(y, p) == pytest.approx(ref)


def test_thresholds_monotone_within_range_and_improve_on_rounding():
    r = np.random.default_rng(2)
    y = r.choice(np.arange(1, 7), 2000, p=SCORE_P)
    pred = np.clip(0.6 * (y + r.normal(0, 0.5, len(y))) + 1.2, 1, 6)  # compressed, biased
    cfg = EnsembleSection()
    t, q = fit_thresholds(pred, y, cfg)
    assert len(t) == 5
    assert all(b - a >= cfg.threshold_min_gap - 1e-9 for a, b in zip(t, t[1:], strict=False))
    assert 1.0 <= t[0] and t[-1] <= 6.0
    assert q == pytest.approx(fast_qwk(y, cut(pred, t)))
    assert q > fast_qwk(y, cut(pred, DEFAULT_THRESHOLDS)) + 0.02
    with pytest.raises(ValueError, match="increasing"):
        validate_thresholds([1.5, 3.5, 2.5, 4.5, 5.5])
    with pytest.raises(ValueError, match="within"):
        validate_thresholds([0.5, 2.5, 3.5, 4.5, 5.5])
    with pytest.raises(ValueError, match="NaN"):
        fit_thresholds(np.array([1.0, np.nan]), np.array([1, 2]))


# ---------------------------------------------------------------- blend

def test_optimizer_puts_weight_on_the_best_member():
    df = synthetic_oof()
    fit = fit_ensemble(assemble_oof(df), EnsembleSection(restarts=3))
    art = fit.artifact
    w = dict(zip(art.members, art.weights, strict=True))
    assert art.members == ["good", "noisy", "biased"]
    assert all(v >= 0 for v in art.weights) and sum(art.weights) == pytest.approx(1)
    assert w["good"] > 0.8
    assert art.oof_qwk["blend"] >= max(art.oof_qwk[m] for m in art.members)
    assert art.oof_qwk["blend"] > art.oof_qwk["equal_blend"] + 0.05
    assert art.thresholds == sorted(art.thresholds) and 1 <= art.thresholds[0] <= 6
    assert len(art.fold_qwk["blend"]) == art.n_folds == 3
    assert 0 < art.oof_qwk["blend_nested"] <= art.oof_qwk["blend"] + 0.02
    # the table's final scores are exactly what the artifact produces (the serving path)
    again = art.to_scores(art.blend(fit.table[art.members].to_numpy()))
    np.testing.assert_array_equal(again, fit.table["pred_score"].to_numpy())
    assert fast_qwk(fit.table["score"], again) == pytest.approx(art.oof_qwk["blend"])


def test_optimizer_splits_weight_between_equally_good_members():
    r = np.random.default_rng(3)
    y = r.choice(np.arange(1, 7), 3000, p=SCORE_P).astype(float)
    preds = np.stack([np.clip(y + r.normal(0, 0.7, len(y)), 1, 6) for _ in range(2)], axis=1)
    w = optimize_weights(preds, y, EnsembleSection(restarts=2))
    assert w.sum() == pytest.approx(1) and (w >= 0).all()
    assert 0.3 < w[0] < 0.7, w
    assert qwk(y, preds @ w) > max(qwk(y, preds[:, 0]), qwk(y, preds[:, 1]))


def test_oof_table_errors_name_members_and_essays():
    df = synthetic_oof(60)
    with pytest.raises(OofError, match=r"missing member\(s\) \['minilm__lstm', 'gbdt'\]"):
        assemble_oof(df, expected=["good", "noisy", "minilm__lstm", "gbdt"])
    holes = df.copy()
    holes.loc[[3, 7], "noisy"] = np.nan
    with pytest.raises(OofError, match=r"member 'noisy': 2 of 60 .*e00003"):
        assemble_oof(holes)
    gb = pd.DataFrame({"essay_id": df["essay_id"][:50], "gbdt": 3.0})
    with pytest.raises(OofError, match=r"member 'gbdt': 10 of 60.*e00050"):
        assemble_oof(df, gb)
    scale = df.assign(noisy=df["noisy"] / 6 - 1)
    with pytest.raises(OofError, match="member 'noisy'.*outside the 1..6 scale"):
        assemble_oof(scale)
    with pytest.raises(OofError, match=r"missing column\(s\) \['fold'\]"):
        assemble_oof(df.drop(columns="fold"))
    joined = assemble_oof(df, pd.DataFrame({"essay_id": df["essay_id"], "gbdt": 3.0}),
                          expected=["good", "gbdt"])
    assert "gbdt" in joined.columns and len(joined) == 60


def test_member_names_round_trip_and_one_rule_for_member_columns():
    name = member_name("minilm", "attention")
    assert name == "minilm__attention" and split_member_name(name) == ("minilm", "attention")
    for bad in (GBDT_MEMBER, "minilm", "__mean", "minilm__"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            split_member_name(bad)
    df = synthetic_oof(60).rename(columns={"good": name})
    joined = assemble_oof(df, pd.DataFrame({"essay_id": df["essay_id"], GBDT_MEMBER: 3.0}))
    assert member_columns(joined) == [name, "noisy", "biased", GBDT_MEMBER]
    # the training side's QWK report reads the members by the same rule, GBDT included
    assert list(qwk_reports(joined)["overall"].index) == member_columns(joined)


# ---------------------------------------------------------------- GBDT member

@pytest.fixture(scope="module")
def sample_folded() -> pd.DataFrame:
    return folded_sample(360)


def test_gbdt_member_beats_chance_and_round_trips(sample_folded, tmp_path):
    cfg = GbdtSection(n_estimators=120, word_max_features=2000, char_max_features=2000,
                      learning_rate=0.08, min_child_samples=10, num_threads=1)
    fit = fit_gbdt(sample_folded, cfg, progress=False)
    assert list(fit.oof.columns) == ["essay_id", "gbdt"]
    assert fit.oof["essay_id"].tolist() == sample_folded["essay_id"].astype(str).tolist()
    assert fit.oof["gbdt"].between(1, 6).all()
    assert fit.oof_qwk > 0.45, fit.oof_qwk
    assert len(fit.fold_qwk) == 3 and len(fit.member.folds) == 3
    folder = fit.member.save(tmp_path / "gbdt")
    loaded = GbdtMember.load(folder)
    texts = io.load_essays(SAMPLE_DIR / "test.csv.gz")["full_text"].tolist()[:25]
    p = loaded.predict(texts)
    assert p.shape == (25,) and ((p >= 1) & (p <= 6)).all()
    np.testing.assert_allclose(p, fit.member.predict(texts), rtol=1e-6)
    assert loaded.predict([]).shape == (0,)
    meta = json.loads((folder / "gbdt_member.json").read_text())
    assert meta["oof_qwk"] == pytest.approx(fit.oof_qwk) and meta["n_folds"] == 3
    with pytest.raises(FileNotFoundError, match="not a saved GBDT member"):
        GbdtMember.load(tmp_path)


# ---------------------------------------------------------------- report

def test_report_writes_plots_and_summary(tmp_path):
    fit = fit_ensemble(assemble_oof(synthetic_oof(600)), EnsembleSection(restarts=1))
    rep = build_report(fit.table, fit.artifact, tmp_path / "rep")
    assert set(rep.plots) == set(PLOTS)
    for p in rep.plots.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    assert (tmp_path / "rep" / "summary.md").read_text() == rep.markdown
    assert set(rep.per_prompt["prompt_name"]) == {"Car-free cities", "Venus", "Driverless", "ALL"}
    assert rep.confusion.to_numpy().sum() == 600
    assert "Per prompt" in rep.markdown and f"{rep.overall_qwk:.4f}" in rep.markdown


# ---------------------------------------------------------------- Dagster assets

@dg.asset(name="oof_predictions", group_name="training")
def fake_oof_predictions(folded_essays: pd.DataFrame) -> pd.DataFrame:
    """Stands in for the training stage: two transformer members with independent errors, so
    blending them beats either one also when judged by nested CV."""
    r = np.random.default_rng(0)
    y = folded_essays["score"].to_numpy(dtype=float)
    out = folded_essays[["essay_id", "fold", "score", "prompt_name", "flag"]].copy()
    out["tiny__mean"] = np.clip(y + r.normal(0, 0.6, len(y)), 1, 6)
    out["tiny__attention"] = np.clip(y + r.normal(0, 0.6, len(y)), 1, 6)
    return out


@pytest.mark.slow
def test_ensemble_assets_materialize_with_report_and_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) goes to tmp
    profile = write_profile(tmp_path, {
        "storage_root": str(tmp_path / "s"),
        "mlflow_tracking_uri": f"sqlite:///{tmp_path}/m.db",
        "data": {"max_train_essays": 240},
        "folds": {"n_folds": 2},
        "backbones": [{"name": "tiny"}],
        "heads": {"heads": ["mean", "attention"]},
        "gbdt": {"n_estimators": 60, "word_max_features": 1000, "char_max_features": 1000,
                 "min_child_samples": 10, "num_threads": 1},
        "ensemble": {"restarts": 2, "max_iter": 300},
    })
    defs = build_definitions(str(profile))
    oof_key = dg.AssetKey("oof_predictions")  # replaced by the fake upstream above
    assets = [a for a in defs.assets
              if oof_key not in (a.keys if isinstance(a, dg.AssetsDefinition) else {a.key})]
    assets += [fake_oof_predictions, *defs.asset_checks]
    selection = ["raw_essays", "persuade_reference", "folded_essays", "oof_predictions",
                 "gbdt_member", "gbdt_oof", "ensemble_weights", "essay_flagger",
                 "scoring_report"]
    with dg.instance_for_test() as instance:
        res = dg.materialize(assets, selection=selection, instance=instance,
                             resources=defs.resources)
        assert res.success
        member = res.output_for_node("gbdt_member_and_oof", "gbdt_member")
        gbdt_oof = res.output_for_node("gbdt_member_and_oof", "gbdt_oof")
        assert len(gbdt_oof) == 240 and gbdt_oof["gbdt"].between(1, 6).all()
        assert isinstance(member, GbdtMemberResult) and member.enabled
        assert member.n_essays == 240 and len(member.fold_qwk) == 2
        assert GbdtMember.load(member.model_dir).predict(["A short essay."]).shape == (1,)

        art = res.output_for_node("ensemble_weights")
        assert isinstance(art, EnsembleArtifact)
        assert art.members == ["tiny__mean", "tiny__attention", "gbdt"]
        ens_json = tmp_path / "s" / "artifacts" / "ensemble_weights" / "ensemble.json"
        assert EnsembleArtifact.load(ens_json) == art
        checks = {e.event_specific_data.check_name: e.event_specific_data.passed
                  for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
        assert checks["ensemble_beats_best_member"] is True
        assert "ensemble_overfit_gap" in checks

        report = res.output_for_node("scoring_report")
        assert isinstance(report, ScoringReportResult)
        assert report.oof_qwk == pytest.approx(art.oof_qwk["blend"])
        mat = instance.get_latest_materialization_event(dg.AssetKey("scoring_report"))
        meta = mat.asset_materialization.metadata
        assert "# Scoring report" in meta["summary"].value
        assert meta["plot_confusion_matrix"].value.startswith("![confusion_matrix](data:image/png")
        assert "Per prompt" in meta["summary"].value
        # essays per flag on the OOF essays, in the summary and the metadata
        assert "## Flags (gaming / off-topic)" in meta["summary"].value
        assert set(report.flag_counts) == {"too_short", "repetition", "prompt_copy",
                                           "gibberish", "off_topic", "unknown_prompt",
                                           "any gaming flag"}
        assert 0 <= report.flag_counts["any gaming flag"] <= 240 * 0.05
        assert meta["flagged_essays"].value == report.flag_counts["any gaming flag"]
        assert "| repetition " in meta["flag_counts"].value
        assert meta["oof_qwk_after_flags"].value == pytest.approx(report.qwk_after_flags)
        summary = Path(report.summary_path).read_text()
        assert f"OOF QWK **{report.qwk_after_flags:.4f}**" in summary

        # a run-config member list naming an untrained head fails, naming the member
        bad = dg.materialize(
            assets, selection=["ensemble_weights"], instance=instance, resources=defs.resources,
            run_config={"ops": {"ensemble_weights": {"config": {
                "members": ["tiny__mean", "tiny__lstm"]}}}},
            raise_on_error=False)
        assert not bad.success
        failure = next(e for e in bad.all_events if e.event_type_value == "STEP_FAILURE")
        assert "tiny__lstm" in str(failure.event_specific_data.error)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["aes"],
                                                           output_format="list")}
    assert runs["ensemble_weights"].data.metrics["oof_qwk.blend"] == pytest.approx(
        art.oof_qwk["blend"])
    assert "oof_qwk" in runs["gbdt_member"].data.metrics
    client = mlflow.MlflowClient()
    files = {f.path for f in client.list_artifacts(runs["scoring_report"].info.run_id,
                                                   "scoring_report")}
    assert {f"scoring_report/{p}.png" for p in PLOTS} <= files


def test_blend_check_judges_nested_figures_and_can_fail():
    from aes_assets.assets.ensemble import _blend_vs_best_member
    from aes_core.ensemble.artifact import EnsembleArtifact

    def art(blend_nested: float) -> EnsembleArtifact:
        # in-sample the blend wins; the check must judge the nested-CV figures
        return EnsembleArtifact(members=["a", "b"], weights=[0.9, 0.1], selected="optimized",
                                oof_qwk={"a": 0.70, "b": 0.60, "optimized": 0.72,
                                         "blend": 0.72},
                                nested_qwk={"a": 0.69, "b": 0.58,
                                            "nelder_mead": blend_nested})

    assert _blend_vs_best_member(art(0.70), 0.0).passed
    failed = _blend_vs_best_member(art(0.66), 0.0)
    assert not failed.passed
    assert failed.metadata["best_member"].value == "a"
    assert failed.metadata["basis"].value == "nested_cv"
    assert failed.metadata["gain"].value == pytest.approx(-0.03)
