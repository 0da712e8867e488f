"""Flags wired into the pipeline, on a real Dagster instance: ``essay_flagger`` is fitted and
copied into the serving bundle, the submission, the inbox outbox and the re-scored history
carry ``flags``/``flag_evidence``/``model_score`` (a planted repeated-paragraph essay is
flagged and capped), and the ``gaming_robustness`` check on ``robustness_set`` passes on the
pipeline's bundle and fails when a scorer that rewards repetition is served without a cap on
repetition.

Upstream data, GBDT and flagger assets are the real ones; the fold x head checkpoints (tiny
real regressors) and the ensemble weights are stand-ins under the real keys (as in
``test_serving_assets``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from aes_assets import keys
from aes_assets.assets.flags import ROBUSTNESS_CHECK
from aes_assets.definitions import build_definitions
from aes_assets.partitions import fold_head_partitions
from aes_assets.pipeline import RANGE_END, RANGE_START
from aes_assets.schedules import RESCORE_JOB, RESCORED, ensemble_tag
from aes_assets.sensors import INBOX_JOB, INBOX_SENSOR
from aes_core.config import SAMPLE_DIR, load_config
from aes_core.contracts import EssayFlaggerResult
from aes_core.data import io
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.ensemble.gbdt import GbdtMember
from aes_core.robustness import ATTACKS
from aes_core.serving.base import score_frame
from aes_core.serving.manifest import Bundle
from aes_core.serving.onnx_scorer import OnnxScorer
from aes_resources.storage import decode
from tests.conftest import tiny_overrides, write_profile
from tests.serving_support import (
    BACKBONE,
    make_checkpoints,
    member_dirs,
    repeated_paragraph_essay,
    spread_ensemble,
)
from tests.test_serving_assets import _check_evals, _graph, _materialize, _meta, stand_ins

pytestmark = pytest.mark.slow
PLANTED = "planted-repeat"
FLAG_COLUMNS = ["flags", "flag_evidence", "model_score"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_backbone):
    tmp = tmp_path_factory.mktemp("flag_assets")
    _, gamed = repeated_paragraph_essay()
    test = io.load_essays(SAMPLE_DIR / "test.csv.gz")
    test_csv = tmp / "test.csv"  # the sample's test essays + one planted gaming attempt
    pd.concat([test, pd.DataFrame({"essay_id": [PLANTED], "full_text": [gamed]})]).to_csv(
        test_csv, index=False)
    ov = tiny_overrides(tmp, tiny_backbone)
    ov["data"]["test_path"] = str(test_csv)
    ov["heads"]["heads"] = ["mean"]
    ov["serving"].update({"history_dir": str(tmp / "history"), "inbox_settle_s": 0.0})
    ov["flags"] = {"perturb_max_essays": 16}
    profile = write_profile(tmp, ov)
    cfg = load_config(str(profile))
    defs = build_definitions(str(profile))
    ckpts = make_checkpoints(tmp / "checkpoints", tiny_backbone, ["mean"], cfg.folds.n_folds)
    members, weights = [f"{BACKBONE}__mean", "gbdt"], [0.5, 0.5]
    probe = EnsembleArtifact(members=members, weights=weights, n_folds=cfg.folds.n_folds)
    graph = _graph(defs, stand_ins(cfg, ckpts, probe))
    rs, instance = defs.resources, dg.DagsterInstance.ephemeral()
    first = _materialize(graph, rs, ["raw_essays", "persuade_reference", "folded_essays",
                                     "test_essays", "gbdt_member", "gbdt_oof",
                                     "essay_flagger"], instance=instance)
    pks = fold_head_partitions(cfg, BACKBONE).get_partition_keys()
    backfill = {RANGE_START: pks[0], RANGE_END: pks[-1]}
    _materialize(graph, rs, [keys.fold_head_key(BACKBONE)], instance=instance, tags=backfill)
    onnx = _materialize(graph, rs, [keys.onnx_key(BACKBONE)], instance=instance, tags=backfill)
    # thresholds at quantiles of the blend on the test essays: every score 1..6 is used
    exports = list(onnx.output_for_node(f"{BACKBONE}__onnx_models").values())
    gbdt = first.output_for_node("gbdt_member_and_oof", "gbdt_member")
    blend = score_frame(OnnxScorer(probe, member_dirs(exports), gbdt.model_dir), test).blended
    ens = spread_ensemble(members, blend, cfg.folds.n_folds, weights)
    assets = _graph(defs, stand_ins(cfg, ckpts, ens))
    res = _materialize(assets, rs, ["ensemble_weights", "serving_bundle", "tensorrt_engines",
                                    "triton_repo", "submission", "robustness_set"],
                       instance=instance)
    return {"cfg": cfg, "defs": defs, "assets": assets, "instance": instance, "res": res,
            "first": first, "tmp": tmp, "ckpts": ckpts, "gamed": gamed}


def _robustness_eval(res):
    (ev,) = [e for e in _check_evals(res) if e.check_name == ROBUSTNESS_CHECK]
    return ev, {k: v.value for k, v in ev.metadata.items()}


def test_flagger_is_fitted_and_served_from_the_bundle(pipeline):
    cfg = pipeline["cfg"]
    result = pipeline["first"].output_for_node("essay_flagger")
    assert isinstance(result, EssayFlaggerResult) and result.enabled
    persuade = io.load_persuade(cfg.data.persuade_path)
    assert result.reference_essays == len(persuade)
    assert sorted(result.prompts) == sorted(persuade["prompt_name"].unique())
    stored = decode(".json", (Path(cfg.storage_root) / "tables" / "essay_flagger.json")
                    .read_bytes())
    assert stored == result  # the stage result loads back typed
    bundle = Bundle.load(cfg.bundle_dir)
    assert bundle.manifest.extras == {"flagger": "flagger"}
    assert bundle.flagger_dir.is_relative_to(cfg.bundle_dir)  # a copy, not pipeline storage
    served = bundle.flagger()
    assert served.cfg == cfg.flags and list(served.prompt_model.prompts) == result.prompts
    assert _meta(pipeline["res"], "serving_bundle")["flagger"].value is True


def test_submission_carries_flags_and_caps_the_planted_essay(pipeline):
    cfg, res = pipeline["cfg"], pipeline["res"]
    sub = pd.read_csv(Path(cfg.storage_root) / "submission.csv", dtype={"essay_id": str},
                      keep_default_na=False)
    assert list(sub.columns) == ["essay_id", "score", *FLAG_COLUMNS]
    assert len(sub) == 201 and sub["essay_id"].is_unique
    planted = sub.set_index("essay_id").loc[PLANTED]
    assert "repetition" in planted["flags"].split(";")
    assert "duplicated paragraph" in planted["flag_evidence"]
    cap = cfg.flags.cap_score_when_flagged
    assert planted["score"] == min(planted["model_score"], cap)
    clean = sub[sub["essay_id"] != PLANTED]
    assert (clean["flags"] != "").mean() <= cfg.flags.max_clean_flag_rate
    unflagged = sub[sub["flags"] == ""]
    assert (unflagged["score"] == unflagged["model_score"]).all()
    meta = _meta(res, "submission")
    assert meta["flag_counts"].value["repetition"] >= 1
    assert meta["flagged_essays"].value == int((sub["flags"] != "").sum())
    assert meta["capped_scores"].value == int((sub["score"] != sub["model_score"]).sum())
    assert "test_qwk_model_score" in meta and "test_qwk" in meta
    table = res.output_for_node("submission")  # the stored asset value holds them too
    assert list(table.columns)[:5] == ["essay_id", "score", *FLAG_COLUMNS]


def test_inbox_outbox_and_rescored_history_carry_flags(pipeline):
    cfg, defs, tmp = pipeline["cfg"], pipeline["defs"], pipeline["tmp"]
    original, gamed = repeated_paragraph_essay()
    inbox = Path(cfg.serving.inbox_dir)
    inbox.mkdir(parents=True, exist_ok=True)
    with open(inbox / "class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["essay_id", "full_text"])
        w.writerows([["gamed", gamed], ["original", original]])
    with dg.DagsterInstance.ephemeral() as inst:
        sensor = defs.get_sensor_def(INBOX_SENSOR)
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=inst))
        (rr,) = data.run_requests
        assert defs.get_job_def(INBOX_JOB).execute_in_process(
            run_config=rr.run_config, instance=inst, tags=rr.tags).success
        assert defs.get_job_def(RESCORE_JOB).execute_in_process(instance=inst).success
    (out,) = Path(cfg.serving.outbox_dir).glob("class.*.scored.csv")
    (again,) = (Path(cfg.serving.outbox_dir) / RESCORED / ensemble_tag(cfg)).glob("*.csv")
    for path in (out, again):
        df = pd.read_csv(path, dtype={"essay_id": str}, keep_default_na=False)
        assert list(df.columns)[:5] == ["essay_id", "score", *FLAG_COLUMNS]
        rows = df.set_index("essay_id")
        assert "repetition" in rows.at["gamed", "flags"].split(";")
        assert "duplicated paragraph" in rows.at["gamed", "flag_evidence"]
        assert rows.at["gamed", "score"] <= cfg.flags.cap_score_when_flagged
        assert rows.at["original", "flags"] == ""
        assert rows.at["original", "score"] == rows.at["original", "model_score"]
    assert (tmp / "history").is_dir()


def test_robustness_set_and_its_check_pass_on_the_pipeline_bundle(pipeline):
    cfg, res = pipeline["cfg"], pipeline["res"]
    table = res.output_for_node("robustness_set")
    clean = table[table["set"] == "clean"]
    assert len(clean) == cfg.flags.perturb_max_essays
    assert PLANTED not in set(clean["essay_id"])  # sources are the labelled test essays
    assert set(table.loc[table["set"] == "perturbed", "attack"]) == set(ATTACKS)
    ev, meta = _robustness_eval(res)
    assert ev.passed, meta["result"]
    assert meta["clean_essays"] == cfg.flags.perturb_max_essays
    assert meta["clean_false_flag_rate"] <= cfg.flags.max_clean_flag_rate
    assert meta["scored_via"].startswith("onnxruntime")
    head = meta["attacks"].splitlines()[0]
    for col in ("attack", "flagged", "mean_shift", "mean_shift_after_flags"):
        assert col in head
    assert all(f"| {a} " in meta["attacks"] for a in ATTACKS)


def test_check_fails_when_a_scorer_that_rewards_repetition_is_served_uncapped(pipeline):
    """The GBDT member alone (text statistics, length among them: doubling every paragraph
    raises its score) with thresholds spread over its predictions. With the default policy the
    repetition flag caps what it rewards and the check passes; with a policy that caps only
    too_short essays (a launchpad value of essay_flagger) the check fails on
    repeated_paragraphs. (Replaces the module's bundle: keep this test last.)"""
    cfg, defs, inst = pipeline["cfg"], pipeline["defs"], pipeline["instance"]
    gbdt = decode(".json", (Path(cfg.storage_root) / "tables" / "gbdt_member.json")
                  .read_bytes())
    clean = io.load_essays(SAMPLE_DIR / "test.csv.gz")["full_text"].tolist()
    preds = GbdtMember.load(gbdt.model_dir).predict(clean)
    by_length = spread_ensemble(["gbdt"], preds, cfg.folds.n_folds)
    assets = _graph(defs, stand_ins(cfg, pipeline["ckpts"], by_length))
    _materialize(assets, defs.resources, ["ensemble_weights"], instance=inst)

    capped = _materialize(assets, defs.resources, ["serving_bundle", "robustness_set"],
                          instance=inst)
    ev, meta = _robustness_eval(capped)
    repeated = meta["report"]["attacks"]["repeated_paragraphs"]
    assert ev.passed, meta["result"]
    assert Bundle.load(cfg.bundle_dir).manifest.member_names() == ["gbdt"]

    uncapped = _materialize(
        assets, defs.resources, ["essay_flagger", "serving_bundle", "robustness_set"],
        instance=inst,
        run_config={"ops": {"essay_flagger": {"config": {"cap_flags": ["too_short"]}}}})
    ev, meta = _robustness_eval(uncapped)
    assert not ev.passed
    assert "repeated_paragraphs raises the mean score" in meta["result"]
    assert meta["policy"] == {"cap_score_when_flagged": 2, "cap_flags": ["too_short"]}
    assert Bundle.load(cfg.bundle_dir).flagger().cfg.cap_flags == ["too_short"]
    # the scorer rewards repetition in both runs; the cap took it back in the first only
    assert repeated["mean_score_shift"] > cfg.flags.max_attack_score_gain
    assert repeated["mean_score_shift_after_flags"] <= 0
    again = meta["report"]["attacks"]["repeated_paragraphs"]
    assert again["mean_score_shift"] == repeated["mean_score_shift"]
    assert again["mean_score_shift_after_flags"] == again["mean_score_shift"]


def test_robustness_check_before_any_serving_bundle(tmp_path, tiny_backbone):
    """robustness_set alone on a fresh instance: the run succeeds and the check says it was
    not evaluated (a warning), instead of failing the step on the missing bundle."""
    ov = tiny_overrides(tmp_path, tiny_backbone)
    profile = write_profile(tmp_path, ov)
    defs = build_definitions(str(profile))
    assert not Bundle.exists(load_config(str(profile)).bundle_dir)
    res = _materialize(list(defs.assets) + list(defs.asset_checks or []), defs.resources,
                       [keys.ROBUSTNESS, dg.AssetKey("persuade_reference"),
                        dg.AssetKey("test_essays")], instance=dg.DagsterInstance.ephemeral())
    ev, meta = _robustness_eval(res)
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
    assert meta["result"].startswith("not evaluated: no serving bundle")
    assert len(res.output_for_node("robustness_set")) > 0
