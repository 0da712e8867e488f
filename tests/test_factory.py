"""The backbone-keyed asset factory, end to end on CPU through real Dagster materializations."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from aes_assets.assets.data import data_assets
from aes_assets.assets.training import training_assets
from aes_assets.definitions import build_definitions
from aes_assets.keys import FOLD_HEAD_ASSET, OOF, fold_head_key, mlm_key
from aes_assets.partitions import partition_key
from aes_assets.pipeline import RANGE_END, RANGE_START, run_pipeline, split_runs
from aes_assets.resources import build_resources
from aes_core.config import load_config
from aes_core.contracts import FoldHeadCheckpoint, StageInfo
from aes_core.models.regressor import EssayRegressor
from tests.conftest import build_tiny_bert, tiny_overrides, write_profile


@pytest.fixture(scope="module")
def second_backbone(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_b"), hidden=16, layers=1)


def test_adding_a_backbone_is_a_config_entry(tmp_path, tiny_backbone, second_backbone):
    over = tiny_overrides(tmp_path, tiny_backbone)
    over["backbones"] = [{"name": "alpha", "path": str(tiny_backbone)},
                         {"name": "beta", "path": str(second_backbone)}]
    defs = build_definitions(str(write_profile(tmp_path, over)))
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for b in ("alpha", "beta"):
        assert {f"{b}/mlm_backbone", f"{b}/{FOLD_HEAD_ASSET}"} <= keys
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(OOF.to_user_string())).parent_keys >= {fold_head_key("alpha"),
                                                              fold_head_key("beta")}
    parts = graph.get(fold_head_key("beta")).partitions_def
    assert set(parts.get_partition_keys()) == {partition_key(f, h) for f in (0, 1)
                                               for h in ("mean", "attention")}
    # the same heads everywhere: one pipeline job, one run over every partition
    assert {"pipeline", "train_fold_heads"} <= {j.name for j in defs.jobs}
    all_keys = sorted(graph.materializable_asset_keys)
    assert split_runs(defs, all_keys) == [(all_keys, {RANGE_START: "0|mean",
                                                      RANGE_END: "1|attention"}, "pipeline")]


def test_a_backbone_trains_its_own_heads_with_its_own_settings(tmp_path, tiny_backbone,
                                                                second_backbone, monkeypatch):
    """beta trains only the mean head at its own lr / batch size: its partitions, the OOF
    members and the ensemble's expected members follow, and its jobs (only its jobs) see
    its settings, also with a run's launchpad value on top."""
    from aes_core.ensemble.blend import expected_members
    from aes_core.training import stages

    over = tiny_overrides(tmp_path, tiny_backbone)
    over["backbones"] = [
        {"name": "alpha", "path": str(tiny_backbone)},
        {"name": "beta", "path": str(second_backbone), "use_mlm": False, "heads": ["mean"],
         "train": {"lr": 3.0e-5, "batch_size": 4}}]
    over["mlm"] = {**over["mlm"], "enabled": False}
    over["data"] = {"max_train_essays": 40}
    profile = str(write_profile(tmp_path, over))
    cfg = load_config(profile)
    seen = []

    def fake_train(job, folded, unlabelled=None):  # records what the partition's job reads
        seen.append((job.backbone.name, job.head, job.fold, job.train.lr,
                     job.train.batch_size))
        fold = folded[folded["fold"] == job.fold]
        out = job.out_dir / "oof.parquet"
        pd.DataFrame({"essay_id": fold["essay_id"].astype(str), "pred": 3.0}).to_parquet(out)
        return FoldHeadCheckpoint(
            backbone=job.backbone.name, head=job.head, fold=job.fold,
            member=f"{job.backbone.name}__{job.head}", model_dir=str(job.out_dir),
            oof_path=str(out), fold_qwk=0.0, fold_essays=len(fold), stage1=StageInfo())

    monkeypatch.setattr(stages, "train_fold_head", fake_train)
    defs = build_definitions(cfg)
    graph = defs.resolve_asset_graph()
    parts = {b: graph.get(fold_head_key(b)).partitions_def.get_partition_keys()
             for b in ("alpha", "beta")}
    assert parts["beta"] == [partition_key(f, "mean") for f in (0, 1)]
    assert len(parts["alpha"]) == 4
    assert expected_members(cfg) == ["alpha__mean", "alpha__attention", "beta__mean", "gbdt"]
    jobs = {j.name for j in defs.jobs}
    # an asset job covers one partitions definition: whole-graph and training jobs per set
    assert {"pipeline_alpha", "pipeline_beta", "train_fold_heads_alpha",
            "train_fold_heads_beta"} <= jobs and "pipeline" not in jobs
    alpha_job = defs.resolve_job_def("pipeline_alpha").asset_layer.executable_asset_keys
    assert fold_head_key("alpha") in alpha_job and fold_head_key("beta") not in alpha_job

    # the driver's runs: one per set of partitions, each with its own full range and job
    training = [fold_head_key("alpha"), fold_head_key("beta"), OOF]
    runs = split_runs(defs, training)
    assert [(ks, t[RANGE_END], job) for ks, t, job in runs] == [
        ([fold_head_key("alpha")], "1|attention", "pipeline_alpha"),
        ([fold_head_key("beta"), OOF], "1|mean", "pipeline_beta")]
    # the whole graph: no run reads what a later run materializes, also through an asset
    # check that takes a trained asset as an extra input (gaming_robustness reads the bundle)
    everything = sorted(graph.materializable_asset_keys)
    whole = split_runs(defs, everything)
    done: set = set()
    for ks, _, _ in whole:
        for k in ks:
            for ck in graph.get(k).check_keys:
                assert graph.get(ck).parent_entity_keys <= done | set(ks), ck
        done |= set(ks)
    assert sorted(done) == everything
    robustness = dg.AssetKey("robustness_set")
    assert graph.get(robustness).check_keys and robustness in whole[-1][0]

    # the driver materializes them (and what they read) in those runs
    instance = dg.DagsterInstance.ephemeral()
    needed = dg.AssetSelection.assets(*training).upstream().resolve(graph)
    monkeypatch.setenv("AES_PROFILE", profile)  # run_pipeline sets it; restored afterwards
    run_pipeline(profile, " or ".join(f'key:"{k.to_user_string()}"' for k in needed),
                 instance=instance, log=lambda *_: None)
    ranges = [(r.job_name, r.tags.get(RANGE_END)) for r in instance.get_runs()]
    assert sorted(ranges) == [("pipeline_alpha", "1|attention"), ("pipeline_beta", "1|mean")]
    global_ = (cfg.train.lr, cfg.train.batch_size)
    assert sorted(seen) == sorted(
        [("alpha", h, f, *global_) for h in ("mean", "attention") for f in (0, 1)]
        + [("beta", "mean", f, 3e-5, 4) for f in (0, 1)])
    oof = pd.read_parquet(tmp_path / "storage" / "tables" / "oof_predictions.parquet")
    assert [c for c in oof.columns if "__" in c] == ["alpha__attention", "alpha__mean",
                                                     "beta__mean"]

    # a launchpad value for beta's partition applies on top of beta's own settings
    seen.clear()
    res = dg.materialize(list(defs.assets), resources=defs.resources, instance=instance,
                         selection=[fold_head_key("beta")], partition_key=partition_key(1, "mean"),
                         run_config={"ops": {"beta__fold_head_checkpoints": {"config": {
                             "lr": 2e-5}}}})
    assert res.success and seen == [("beta", "mean", 1, 2e-5, 4)]


@pytest.mark.slow
def test_factory_two_backbones_end_to_end(tmp_path, tiny_backbone, second_backbone):
    over = tiny_overrides(tmp_path, tiny_backbone)
    over["backbones"] = [
        {"name": "alpha", "path": str(tiny_backbone), "max_length": 48},
        {"name": "beta", "path": str(second_backbone), "max_length": 48, "use_mlm": False},
    ]
    over["heads"] = {**over["heads"], "heads": ["mean"]}
    over["mlm"] = {**over["mlm"], "max_texts": 8, "epochs": 0.5}
    over["train"] = {**over["train"], "max_train_essays": 24, "stage1_epochs": 1,
                     "stage2_epochs": 1}
    over["data"] = {"max_train_essays": 60}
    # a backfill's partitions train in 2 worker processes, forked from a preloaded server
    over["gpu"] = {"cpu_workers": 2, "worker_start": "forkserver"}
    profile = str(write_profile(tmp_path, over))
    cfg = load_config(profile)
    assets = [*data_assets(cfg), *training_assets(cfg)]
    resources = build_resources(cfg)
    instance = dg.DagsterInstance.ephemeral()

    upstream = [dg.AssetKey(k) for k in ("raw_essays", "persuade_reference", "folded_essays",
                                         "unlabelled_essays")]
    res = dg.materialize(assets, resources=resources, instance=instance,
                         selection=[*upstream, mlm_key("alpha"), mlm_key("beta")])
    assert res.success
    mlm_a = res.output_for_node("alpha__mlm_backbone")
    mlm_b = res.output_for_node("beta__mlm_backbone")
    assert mlm_a.mlm_trained and mlm_a.perplexity_after is not None
    assert not mlm_b.mlm_trained and mlm_b.path == str(second_backbone)

    # one partition alone (as a re-run of a failed partition would be)
    one = dg.materialize(assets, resources=resources, instance=instance,
                         selection=[fold_head_key("alpha")], partition_key=partition_key(0, "mean"))
    first = one.output_for_node("alpha__fold_head_checkpoints")
    assert isinstance(first, FoldHeadCheckpoint) and (first.fold, first.head) == (0, "mean")
    # the OOF table refuses to assemble while partitions are missing, and lists them
    bad = dg.materialize(assets, resources=resources, instance=instance, selection=[OOF],
                         raise_on_error=False)
    assert not bad.success
    msg = str(bad.get_step_failure_events()[0].event_specific_data.error)
    assert "3 of 4" in msg
    assert "beta/fold_head_checkpoints fold=0 head=mean" in msg
    assert "alpha/fold_head_checkpoints fold=1 head=mean" in msg

    # a single-run backfill of every partition of both backbones: one step per backbone,
    # partitions over 2 CPU worker processes, the finished alpha partition reused
    pks = [partition_key(f, "mean") for f in (0, 1)]
    r = dg.materialize(assets, resources=resources, instance=instance,
                       selection=[fold_head_key("alpha"), fold_head_key("beta")],
                       tags={RANGE_START: pks[0], RANGE_END: pks[-1]})
    assert r.success
    results = {}
    for b in ("alpha", "beta"):
        out = r.output_for_node(f"{b}__{FOLD_HEAD_ASSET}")
        assert set(out) == set(pks)
        for pk, ck in out.items():
            assert ck.backbone == b and ck.head == "mean" and str(ck.fold) == pk[0]
            results[(b, ck.fold)] = ck
    assert results[("alpha", 0)].reused and not results[("beta", 0)].reused
    # the step tokenized its essays once: each partition read all of them from that cache
    for ck in (results[("beta", 0)], results[("beta", 1)], results[("alpha", 1)]):
        assert ck.essays_from_token_cache > 0 and ck.essays_tokenized == 0
        assert set(ck.phase_seconds) == {"setup", "stage1", "stage2", "predict_save"}
        assert ck.started_at < ck.finished_at
    # the step's timeline: both partitions on their own worker, and a plot of it
    [step_md] = [e.event_specific_data.metadata for e in r.all_events
                 if e.event_type_value == "STEP_OUTPUT" and "beta" in e.step_key]
    timeline = step_md["timeline"].value
    assert timeline["workers"] == 2 and 0 < timeline["worker_busy_share"] <= 1
    plot = Path(step_md["timeline_plot"].value)
    assert plot.stat().st_size > 0
    assert not list(plot.parent.glob("tokens.*"))  # the step's token cache is gone with it
    assert results[("alpha", 0)].model_dir == first.model_dir
    assert EssayRegressor.from_pretrained(results[("alpha", 1)].model_dir).spec.head == "mean"
    # every partition has its own materialization, with its own metadata
    mats = r.asset_materializations_for_node("beta__fold_head_checkpoints")
    assert sorted(m.partition for m in mats) == pks
    by_pk = {m.partition: m.metadata for m in mats}
    assert by_pk[pks[1]]["fold_qwk"].value == results[("beta", 1)].fold_qwk
    assert by_pk[pks[1]]["essays_tokenized"].value == 0

    r = dg.materialize(assets, resources=resources, instance=instance, selection=[OOF])
    assert r.success
    oof = r.output_for_node(OOF.to_user_string())
    folded = pd.read_parquet(tmp_path / "storage" / "tables" / "folded_essays.parquet")
    assert len(oof) == len(folded)
    assert list(oof.columns) == ["essay_id", "fold", "score", "prompt_name", "flag",
                                 "alpha__mean", "beta__mean"]
    assert oof[["alpha__mean", "beta__mean"]].apply(lambda c: c.between(1, 6)).all().all()
    # every essay's prediction comes from the model that did not train on its fold
    stored = pd.read_parquet(results[("beta", 1)].oof_path).set_index("essay_id")["pred"]
    got = oof.set_index("essay_id").loc[stored.index, "beta__mean"]
    pd.testing.assert_series_equal(got, stored, check_names=False)
    md = r.asset_materializations_for_node(OOF.to_user_string())[0].metadata
    assert {"qwk_per_head", "qwk_per_fold", "qwk_per_prompt"} <= set(md)

    # every trained partition is an MLflow run with params, git commit, checkpoint path and
    # the stage metrics history (the reused one is not trained again)
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow_experiment],
                              filter_string="tags.asset = 'alpha/fold_head_checkpoints'")
    assert len(runs) == 2  # 0|mean once (reused later), 1|mean
    assert runs["tags.git_commit"].str.len().gt(6).all()
    assert runs["params.checkpoint_path"].str.endswith("model").all()
    assert "metrics.fold_qwk" in runs and "metrics.stage1-val_qwk" in runs
