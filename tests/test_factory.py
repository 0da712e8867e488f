"""The backbone-keyed asset factory, end to end on CPU through real Dagster materializations."""

from __future__ import annotations

import dagster as dg
import mlflow
import pandas as pd
import pytest

from aes_assets.assets import data
from aes_assets.assets.training import (
    FOLD_HEAD_ASSET,
    OOF_ASSET,
    fold_head_key,
    mlm_key,
    partition_key,
    training_assets,
)
from aes_assets.definitions import build_definitions
from aes_assets.resources import build_resources
from aes_core.config import load_config
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
    assert graph.get(dg.AssetKey(OOF_ASSET)).parent_keys >= {fold_head_key("alpha"),
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
    profile = str(write_profile(tmp_path, over))
    cfg = load_config(profile)
    assets = [*dg.load_assets_from_modules([data]), *training_assets(cfg)]
    resources = build_resources(cfg, profile)

    upstream = [dg.AssetKey(k) for k in ("raw_essays", "persuade_reference", "folded_essays",
                                         "unlabelled_essays")]
    res = dg.materialize(assets, resources=resources,
                         selection=[*upstream, mlm_key("alpha"), mlm_key("beta")])
    assert res.success
    mlm_a = res.output_for_node("alpha__mlm_backbone")
    mlm_b = res.output_for_node("beta__mlm_backbone")
    assert mlm_a["mlm_trained"] and mlm_a["perplexity_after"] is not None
    assert not mlm_b["mlm_trained"] and mlm_b["path"] == str(second_backbone)

    # the OOF table refuses to assemble while partitions are missing, and lists them
    dg.materialize(assets, resources=resources, selection=[fold_head_key("alpha")],
                   partition_key=partition_key(0, "mean"))
    bad = dg.materialize(assets, resources=resources, selection=[dg.AssetKey(OOF_ASSET)],
                         raise_on_error=False)
    assert not bad.success
    msg = str(bad.get_step_failure_events()[0].event_specific_data.error)
    assert "3 of 4" in msg
    assert "beta/fold_head_checkpoints fold=0 head=mean" in msg
    assert "alpha/fold_head_checkpoints fold=1 head=mean" in msg

    results = {}
    for fold in (0, 1):
        pk = partition_key(fold, "mean")
        r = dg.materialize(assets, resources=resources, partition_key=pk,
                           selection=[fold_head_key("alpha"), fold_head_key("beta")])
        assert r.success
        for b in ("alpha", "beta"):
            out = r.output_for_node(f"{b}__{FOLD_HEAD_ASSET}")
            assert out["backbone"] == b and out["head"] == "mean" and out["fold"] == fold
            assert {"model_dir", "stage1_val_qwk", "stage2_val_qwk", "fold_qwk", "notes"} <= set(
                out)
            results[(b, fold)] = out
    assert EssayRegressor.from_pretrained(results[("alpha", 1)]["model_dir"]).spec.head == "mean"

    r = dg.materialize(assets, resources=resources, selection=[dg.AssetKey(OOF_ASSET)])
    assert r.success
    oof = r.output_for_node(OOF_ASSET)
    folded = pd.read_parquet(tmp_path / "storage" / "tables" / "folded_essays.parquet")
    assert len(oof) == len(folded)
    assert list(oof.columns) == ["essay_id", "fold", "score", "prompt_name", "flag",
                                 "alpha__mean", "beta__mean"]
    assert oof[["alpha__mean", "beta__mean"]].apply(lambda c: c.between(1, 6)).all().all()
    # every essay's prediction comes from the model that did not train on its fold
    stored = pd.read_parquet(results[("beta", 1)]["oof_path"]).set_index("essay_id")["pred"]
    got = oof.set_index("essay_id").loc[stored.index, "beta__mean"]
    pd.testing.assert_series_equal(got, stored, check_names=False)
    md = r.asset_materializations_for_node(OOF_ASSET)[0].metadata
    assert {"qwk_per_head", "qwk_per_fold", "qwk_per_prompt"} <= set(md)

    # every partition is an MLflow run with params, git commit and the checkpoint path
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow_experiment],
                              filter_string="tags.asset = 'alpha/fold_head_checkpoints'")
    assert len(runs) == 3  # partition 0|mean twice (the early one and the backfill), 1|mean
    assert runs["tags.git_commit"].str.len().gt(6).all()
    assert runs["params.checkpoint_path"].str.endswith("model").all()
    assert "metrics.fold_qwk" in runs and "metrics.stage1-val_qwk" in runs
