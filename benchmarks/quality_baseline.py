"""Classic baseline: the GBDT member (TF-IDF + handcrafted + LightGBM) on the shared AES2 data.

Prints the OOF QWK over K folds (the same PERSUADE-joined MSKF folds as the pipeline), the
QWK on aes2/test (fold models averaged; rounded and with OOF-fitted thresholds) and the
hardware. No Dagster needed::

    .venv/bin/python benchmarks/quality_baseline.py            # 5 folds, gpu-full GBDT config
    .venv/bin/python benchmarks/quality_baseline.py --n-folds 3 --max-essays 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aes_core.config import FoldSection, load_config  # noqa: E402
from aes_core.data import io  # noqa: E402
from aes_core.data.folds import build_folded  # noqa: E402
from aes_core.ensemble.gbdt import fit_gbdt  # noqa: E402
from aes_core.ensemble.thresholds import cut, fit_thresholds  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.metrics import qwk  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED), help="folder with aes2/ and persuade/")
    ap.add_argument("--profile", default="gpu-full", help="profile whose gbdt section is used")
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--max-essays", type=int, default=None, help="seeded subsample of train")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    data = Path(args.data)
    cfg = load_config(args.profile)
    t0 = time.perf_counter()
    train = io.load_train(data / "aes2" / "train.csv.gz")
    if args.max_essays and args.max_essays < len(train):
        train = train.sample(args.max_essays, random_state=42).reset_index(drop=True)
    persuade = io.load_persuade(data / "persuade" / "persuade_reference.csv.gz")
    folds_cfg = FoldSection(**{**cfg.folds.model_dump(), "n_folds": args.n_folds})
    folded, _ = build_folded(train, persuade, folds_cfg)
    fit = fit_gbdt(folded, cfg.gbdt)
    t_fit = time.perf_counter() - t0

    y = folded["score"].to_numpy()
    oof = fit.oof["gbdt"].to_numpy()
    thr, oof_thr_qwk = fit_thresholds(oof, y, cfg.ensemble)

    test = io.load_essays(data / "aes2" / "test.csv.gz")
    labels = io.load_labels(data / "aes2" / "test_score.csv.gz").set_index("essay_id")["score"]
    t1 = time.perf_counter()
    pred = fit.member.predict(test["full_text"].tolist())
    t_pred = time.perf_counter() - t1
    y_test = test["essay_id"].map(labels).to_numpy()

    result = {
        "essays_train": len(folded), "essays_test": len(test), "n_folds": args.n_folds,
        "profile": cfg.profile, "gbdt_config": cfg.gbdt.model_dump(),
        "oof_qwk": round(fit.oof_qwk, 4), "oof_fold_qwk": [round(q, 4) for q in fit.fold_qwk],
        "oof_qwk_thresholded": round(oof_thr_qwk, 4), "thresholds": thr,
        "test_qwk": round(qwk(y_test, pred), 4),
        "test_qwk_oof_thresholds": round(qwk(y_test, cut(pred, thr)), 4),
        "best_iterations": fit.best_iterations,
        "fit_seconds": round(t_fit, 1), "test_predict_seconds": round(t_pred, 1),
        "hardware": hardware(),
    }
    print(f"GBDT baseline ({args.n_folds} folds, {len(folded)} train essays, "
          f"{len(test)} test essays, profile {cfg.profile})")
    print(f"  OOF QWK (rounded)             {result['oof_qwk']:.4f}  "
          f"per fold {result['oof_fold_qwk']}")
    print(f"  OOF QWK (OOF thresholds)      {result['oof_qwk_thresholded']:.4f}  "
          f"(in-sample; thresholds {thr})")
    print(f"  test QWK (rounded)            {result['test_qwk']:.4f}")
    print(f"  test QWK (OOF thresholds)     {result['test_qwk_oof_thresholds']:.4f}")
    print(f"  time: fit {t_fit:.0f}s, predict test {t_pred:.1f}s")
    print("  hardware: " + ", ".join(f"{k} {v}" for k, v in result["hardware"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
