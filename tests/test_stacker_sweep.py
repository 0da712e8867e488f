"""benchmarks/stacker_sweep.py on a stored run's OOF tables (made here from sample essays)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aes_core.config import SAMPLE_DIR
from tests.bench_support import benchmark_module


def _sweep():
    return benchmark_module("stacker_sweep")


@pytest.fixture()
def storage(tmp_path) -> tuple[Path, Path]:
    """A storage root with the two OOF tables of 150 sample essays, and their texts."""
    train = pd.read_csv(SAMPLE_DIR / "train.csv.gz", keep_default_na=False).head(150)
    r = np.random.default_rng(0)
    y = train["score"].to_numpy()
    oof = pd.DataFrame({"essay_id": train["essay_id"].astype(str), "fold": np.arange(150) % 3,
                        "score": y, "prompt_name": r.choice(["Venus", "Mars"], 150),
                        "flag": 0, "tiny__mean": np.clip(y + r.normal(0, 0.7, 150), 1, 6)})
    gbdt = pd.DataFrame({"essay_id": oof["essay_id"],
                         "gbdt": np.clip(y + r.normal(0, 0.5, 150), 1, 6)})
    (tmp_path / "tables").mkdir()
    oof.to_parquet(tmp_path / "tables" / "oof_predictions.parquet")
    gbdt.to_parquet(tmp_path / "tables" / "gbdt_oof.parquet")
    csv = tmp_path / "train.csv"
    train.to_csv(csv, index=False)
    return tmp_path, csv


def test_sweep_refits_each_setting_with_and_without_prompts(storage, tmp_path):
    root, csv = storage
    out = tmp_path / "sweep.json"
    rows = _sweep().main(["--storage", str(root), "--train", str(csv), "--profile", "cpu-small",
                          "--n-jobs", "1", "--set", '{"restarts": 1}',
                          "--set", '{"restarts": 1, "stacker_models": ["ridge"]}',
                          "--prompt-features", "--json", str(out)])
    assert [(r["settings"].get("stacker_models"), r["features"]) for r in rows] == [
        (None, "stats"), (None, "stats+prompt"), (["ridge"], "stats"), (["ridge"], "stats+prompt")]
    for r in rows:
        assert 0 < r["blend_nested"] <= 1 and r["method"] in ("nelder_mead", "stacker")
    assert "stacker_lightgbm" not in rows[2]  # only the ridge stacker was tried
    assert json.loads(out.read_text())["rows"] == rows


def test_sweep_names_essays_without_text(storage, tmp_path):
    root, csv = storage
    short = tmp_path / "short.csv"
    pd.read_csv(csv).head(100).to_csv(short, index=False)
    with pytest.raises(SystemExit, match="no text for 50 OOF essays"):
        _sweep().main(["--storage", str(root), "--train", str(short), "--profile", "cpu-small"])
    with pytest.raises(SystemExit, match="no tables/oof_predictions.parquet"):
        _sweep().main(["--storage", str(tmp_path / "nothing"), "--train", str(csv)])
