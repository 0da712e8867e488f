"""The page on real pipeline output: materialize a tiny graph with Dagster, then score it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from aes_assets.definitions import build_definitions
from aes_assets.pipeline import run_pipeline
from aes_core.config import config_hash, deep_merge, load_config
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.serving.base import score_frame
from aes_core.serving.loader import load_bundle, load_scorer
from tests.conftest import tiny_overrides, write_profile
from tests.web_support import sample_essays, web_overrides
from web.app import create_app


@pytest.mark.slow
def test_page_scores_with_a_materialized_tiny_pipeline(tmp_path, tiny_backbone, monkeypatch):
    overrides = deep_merge(tiny_overrides(tmp_path, tiny_backbone),
                           web_overrides(tmp_path, tmp_path / "storage"))
    overrides["mlm"]["enabled"] = False  # not needed for serving; keeps the test short
    overrides["train"]["method"] = "finetune"  # the profile's ridge fits the mean head only
    profile = str(write_profile(tmp_path, overrides))
    monkeypatch.setenv("AES_PROFILE", profile)  # run_pipeline sets it; restored afterwards
    graph = build_definitions(profile).resolve_asset_graph()
    needed = dg.AssetSelection.assets("serving_bundle").upstream()
    selection = " or ".join(f'key:"{k.to_user_string()}"' for k in needed.resolve(graph))
    run_pipeline(profile, selection, instance=dg.DagsterInstance.ephemeral(), log=lambda *_: None)

    cfg = load_config(profile)
    storage = Path(cfg.storage_root)
    bundle = load_bundle(cfg)  # what the page reads: the bundle the pipeline committed
    ensemble = bundle.ensemble
    assert ensemble == EnsembleArtifact.load(storage / "artifacts" / "ensemble_weights" /
                                             "ensemble.json")
    assert (bundle.manifest.profile, bundle.manifest.config_hash) == (cfg.profile,
                                                                      config_hash(cfg))
    essays = sample_essays(6)
    with TestClient(create_app(cfg)) as c:
        info = c.get("/api/info").json()
        assert info["ready"] and info["members"] == ensemble.members
        assert info["typical_ranges"]["source_kind"] == "folded_essays"
        assert info["typical_ranges"]["n_essays"] == len(pd.read_parquet(
            storage / "tables" / "folded_essays.parquet"))
        one = c.post("/api/score", json={"text": essays["full_text"].iloc[0]}).json()
        table = c.post("/api/score-csv?format=json",
                       content=essays[["essay_id", "full_text"]].to_csv(index=False).encode())
    ref = score_frame(load_scorer(cfg), essays, bundle.flagger())  # the pipeline's flagger
    rows = pd.DataFrame(table.json()["rows"])
    assert rows["flags"].tolist() == [r.flags_text for r in ref.flag_results]
    assert rows["model_score"].tolist() == ref.model_score.tolist()
    assert one["flags"] == ref.flag_results[0].names
    assert rows["score"].tolist() == ref.score.tolist()
    assert rows["blended"].to_numpy() == pytest.approx(ref.blended, abs=1e-3)
    assert one["score"] == int(ref.score[0])
    assert [m["name"] for m in one["members"]] == ensemble.members
    assert not Path(cfg.web.keep_dir).exists()
