"""The backbone-keyed asset factory, end to end on CPU through real Dagster materializations."""

from __future__ import annotations

import dagster as dg
import mlflow
import pandas as pd
import pytest

from aes_assets.assets.data import data_assets
from aes_assets.assets.training import training_assets
from aes_assets.definitions import build_definitions
from aes_assets.keys import FOLD_HEAD_ASSET, OOF, fold_head_key, mlm_key
from aes_assets.partitions import partition_key
from aes_assets.pipeline import RANGE_END, RANGE_START
from aes_assets.resources import build_resources
from aes_core.config import load_config
from aes_core.contracts import FoldHeadCheckpoint
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
    assert results[("alpha", 0)].model_dir == first.model_dir
    assert EssayRegressor.from_pretrained(results[("alpha", 1)].model_dir).spec.head == "mean"
    # every partition has its own materialization, with its own metadata
    mats = r.asset_materializations_for_node("beta__fold_head_checkpoints")
    assert sorted(m.partition for m in mats) == pks
    by_pk = {m.partition: m.metadata for m in mats}
    assert by_pk[pks[1]]["fold_qwk"].value == results[("beta", 1)].fold_qwk

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
