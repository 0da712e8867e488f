"""benchmarks/train_sweep.py: recipe variants trained on every fold, figures from their OOF."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aes_core.config import load_config
from aes_core.data import io
from aes_core.data.folds import build_folded
from aes_core.models.tiny import build_tiny_bert
from tests.bench_support import benchmark_module
from tests.conftest import tiny_overrides, write_profile


def _sweep():
    return benchmark_module("train_sweep")


@pytest.fixture()
def setup(tmp_path, tiny_backbone) -> dict[str, Path]:
    over = tiny_overrides(tmp_path, tiny_backbone)
    over["train"] = {**over["train"], "stage1_epochs": 1, "stage2_epochs": 1,
                     "max_train_essays": 24}
    profile = write_profile(tmp_path, over)
    cfg = load_config(str(profile))
    raw = io.load_train(cfg.data.train_path)
    folded, _ = build_folded(raw, io.load_persuade(cfg.data.persuade_path), cfg.folds)
    folded = folded.groupby("fold").sample(16, random_state=0).reset_index(drop=True)
    folded_path = tmp_path / "folded.parquet"
    folded.to_parquet(folded_path)
    other = build_tiny_bert(tmp_path / "other_bert", seed=1)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"backbone": "tiny", "head": "mean", "variants": [
        {"name": "base"}, {"name": "other_lr", "weights": "other",
                           "train": {"lr": 3e-3, "stage2_epochs": 0},
                           "backbone": {"chunking": True, "chunk_overlap": 16,
                                        "max_chunks": 2}}]}))
    return {"profile": profile, "folded": folded_path, "tiny": tiny_backbone, "other": other,
            "sweep": sweep, "tmp": tmp_path}


def _args(s: dict[str, Path], *extra: str) -> list[str]:
    return ["--profile", str(s["profile"]), "--folded", str(s["folded"]),
            "--weights", f"tiny={s['tiny']}", "--weights", f"other={s['other']}",
            "--sweep", str(s["sweep"]), "--work", str(s["tmp"] / "work"),
            "--out", str(s["tmp"] / "out.json"), *extra]


def test_each_variant_trains_every_fold_and_is_scored_on_its_oof(setup):
    assert _sweep().main(_args(setup)) == 0
    report = json.loads((setup["tmp"] / "out.json").read_text())
    folded = pd.read_parquet(setup["folded"])
    assert report["folds"] == [0, 1]
    rows = {r["name"]: r for r in report["variants"]}
    assert set(rows) == {"base", "other_lr"}
    for r in rows.values():
        assert r["essays"] == len(folded) and not r["failed"]
        assert set(r["fold_qwk"]) == {"0", "1"}
        assert -1 <= r["oof_qwk_rounded"] <= 1 and r["rmse"] > 0
    # each variant trained with its own settings and weights
    assert rows["base"]["weights"] == "tiny" and rows["other_lr"]["weights"] == "other"
    assert set(rows["other_lr"]["kept_stage"].values()) == {"stage1"}  # stage 2 off
    spec = json.loads((setup["tmp"] / "work" / "other_lr" / "fold0" / "model" /
                       "aes_model.json").read_text())
    assert spec["chunking"] is True and spec["max_chunks"] == 2  # whole essays in windows
    base_spec = json.loads((setup["tmp"] / "work" / "base" / "fold0" / "model" /
                            "aes_model.json").read_text())
    assert base_spec["chunking"] is False
    # one token cache per way of reading essays: the chunked windows are not the first 64
    assert len(list((setup["tmp"] / "work").glob("tokens_*"))) == 2
    done = json.loads((setup["tmp"] / "work" / "other_lr" / "fold0" / "result.json")
                      .read_text())
    assert "stage 2 skipped: train.stage2_epochs = 0" in done["notes"]
    oof = pd.read_parquet(setup["tmp"] / "work" / "base" / "fold1" / "oof.parquet")
    assert set(oof["essay_id"]) == set(folded.loc[folded.fold == 1, "essay_id"].astype(str))
    assert sorted(report["ranking_nested_thresholds"]) == ["base", "other_lr"]
    assert (setup["tmp"] / "out.png").stat().st_size > 0  # the bar chart beside the JSON


def test_only_runs_the_named_variants(setup):
    assert _sweep().main(_args(setup, "--only", "other_lr")) == 0
    report = json.loads((setup["tmp"] / "out.json").read_text())
    assert [r["name"] for r in report["variants"]] == ["other_lr"]
    assert not (setup["tmp"] / "work" / "base").exists()


def test_bad_variants_are_named(setup, tmp_path):
    cfg = load_config(str(setup["profile"]))
    sweep = _sweep()
    with pytest.raises(ValueError, match=r"'typo'.*unknown train field\(s\) \['lrr'\]"):
        sweep.variant_config(cfg, "tiny", sweep.Variant(name="typo", train={"lrr": 1e-4}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"backbone": "tiny", "variants": [{"name": "a"},
                                                                      {"name": "a"}]}))
    with pytest.raises(ValueError, match=r"'p'.*backbone field\(s\) \['path'\] cannot"):
        sweep.variant_config(cfg, "tiny", sweep.Variant(name="p", backbone={"path": "/x"}))
    with pytest.raises(ValueError, match="chunk_overlap"):
        sweep.variant_config(cfg, "tiny", sweep.Variant(
            name="c", backbone={"chunking": True, "chunk_overlap": 60}))
    with pytest.raises(ValueError, match=r"unique; repeated: \['a'\]"):
        sweep.read_sweep(bad)
    with pytest.raises(SystemExit, match="no variant"):
        sweep.main(_args(setup, "--only", "nope"))
    with pytest.raises(ValueError, match="NAME=FOLDER"):
        sweep.parse_weights(["just_a_path"])
