"""Refit the ensemble on a finished run's stored OOF tables with other ensemble settings:
the nested-CV QWK of each (no test essay is scored), on the CPU in minutes::

    python benchmarks/stacker_sweep.py --storage var/storage --train DATA/aes2/train.csv.gz \
        --set '{}' --set '{"stacker_num_leaves": 15}' --prompt-features --json sweep.json

It reads ``<storage>/tables/oof_predictions.parquet`` and ``tables/gbdt_oof.parquet`` (what
the ``ensemble_weights`` asset fits on), computes the essays' statistics once from
``--train`` (essay_id, full_text) and runs ``fit_ensemble`` with the profile's ``ensemble``
section updated by each ``--set`` (a JSON object of its fields). ``--prompt-features`` also
fits each setting with the essays' prompts (one-hots of the OOF table's ``prompt_name``)
added to the stacker's statistics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aes_core.config import load_config  # noqa: E402
from aes_core.ensemble.blend import assemble_oof, fit_ensemble  # noqa: E402
from aes_core.ensemble.stacker import essay_statistics  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.members import member_columns  # noqa: E402

TABLES = ("tables/oof_predictions.parquet", "tables/gbdt_oof.parquet")
REPORTED = ("blend_nested", "stacker_ridge", "stacker_lightgbm", "optimized")


def load_tables(storage: Path, train_csv: Path, n_jobs: int
                ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(OOF table as the ensemble sees it, essay statistics, prompt one-hots), row-aligned."""
    if not (storage / TABLES[0]).exists():
        raise SystemExit(f"{storage}: no {TABLES[0]} (materialize the OOF assets first)")
    oof = pd.read_parquet(storage / TABLES[0])
    gbdt = storage / TABLES[1]
    table = assemble_oof(oof, pd.read_parquet(gbdt) if gbdt.exists() else None)
    train = pd.read_csv(train_csv, keep_default_na=False)
    text = train.assign(essay_id=train["essay_id"].astype(str)).set_index("essay_id")["full_text"]
    texts = table["essay_id"].map(text)
    if texts.isna().any():
        bad = table.loc[texts.isna(), "essay_id"].head(3).tolist()
        raise SystemExit(f"{train_csv}: no text for {int(texts.isna().sum())} OOF essays "
                         f"(e.g. {bad})")
    stats = essay_statistics(texts.tolist(), n_jobs=n_jobs)
    prompts = oof.assign(essay_id=oof["essay_id"].astype(str)).drop_duplicates("essay_id")
    prompt = table["essay_id"].map(prompts.set_index("essay_id")["prompt_name"])
    return table, stats, pd.get_dummies(prompt.fillna("Unknown")).to_numpy(np.float64)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("::")[0])
    ap.add_argument("--storage", required=True, help="a run's storage_root")
    ap.add_argument("--train", required=True, help="the training essays (essay_id, full_text)")
    ap.add_argument("--profile", default="gpu-full", help="profile whose ensemble section is "
                    "the starting point")
    ap.add_argument("--set", action="append", default=None, dest="sets",
                    help="JSON object of ensemble fields (repeatable; default: the profile's)")
    ap.add_argument("--prompt-features", action="store_true")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    table, stats, prompt = load_tables(Path(a.storage), Path(a.train), a.n_jobs)
    base = load_config(a.profile).ensemble.model_copy(update={"n_jobs": a.n_jobs})
    print(f"{len(table)} essays, members {member_columns(table)}; {hardware().get('cpu', '')}",
          flush=True)
    rows = []
    for spec in a.sets or ["{}"]:
        update = json.loads(spec)
        cfg = base.model_copy(update=update)
        for name, feats in [("stats", stats)] + (
                [("stats+prompt", np.hstack([stats, prompt]))] if a.prompt_features else []):
            t0 = time.time()
            art = fit_ensemble(table, cfg, stats=feats).artifact
            row = {"settings": update, "features": name, "method": art.method,
                   **{k: round(float(art.oof_qwk[k]), 4) for k in REPORTED if k in art.oof_qwk},
                   "seconds": round(time.time() - t0, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.json:
        Path(a.json).write_text(json.dumps({"hardware": hardware(), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
