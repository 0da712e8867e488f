"""Stacker vs Nelder-Mead on CPU-built OOF predictions: nested-CV QWK of each, and the choice.

Members: the GBDT member's OOF (``gbdt_profile.py --save-oof``) and a cheap second member,
ridge regression on word TF-IDF fitted on the same folds (vocabulary and idf from each fold's
training rows). ``fit_ensemble`` then fits Nelder-Mead and the stackers on the OOF table and
picks by nested-CV QWK (``ensemble.method`` auto). With ``--test`` (the ``.test.parquet``
written next to the OOF by ``gbdt_profile.py --test``) the chosen ensemble — and, for
information only, the other method — is scored once on aes2/test::

    python benchmarks/gbdt_profile.py --data DATA --set feature_set=rich --test \
        --save-oof oof.parquet
    python benchmarks/stacker_eval.py --data DATA --oof oof.parquet --test
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
from sklearn.linear_model import Ridge  # noqa: E402

from aes_core.config import load_config  # noqa: E402
from aes_core.data import io  # noqa: E402
from aes_core.ensemble.blend import (  # noqa: E402
    EQUAL,
    assemble_oof,
    blend_beats_best_member,
    fit_ensemble,
)
from aes_core.ensemble.gbdt import NgramCounts  # noqa: E402
from aes_core.ensemble.stacker import essay_statistics  # noqa: E402
from aes_core.ensemble.thresholds import cut, fast_qwk  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RIDGE = "ridge_tfidf"


def ridge_member(texts: list[str], y: np.ndarray, folds: np.ndarray, test_texts: list[str],
                 cfg, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """OOF and fold-averaged test predictions (1..6) of ridge on word TF-IDF."""
    counts = NgramCounts.build(texts + test_texts, "word", cfg)
    n = len(texts)
    oof = np.zeros(n)
    test = np.zeros(len(test_texts))
    for k in np.unique(folds):
        tr = np.flatnonzero(folds != k)
        _, x = counts.fold_tfidf(tr, cfg)  # vocabulary and idf: training rows only
        model = Ridge(alpha=alpha).fit(x[tr], y[tr])
        va = np.flatnonzero(folds == k)
        oof[va] = model.predict(x[va])
        if test_texts:
            test += model.predict(x[n:]) / len(np.unique(folds))
    return np.clip(oof, 1, 6), np.clip(test, 1, 6)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED), help="folder with aes2/")
    ap.add_argument("--oof", required=True, help="gbdt_profile.py --save-oof parquet")
    ap.add_argument("--profile", default="gpu-full", help="profile: ensemble + gbdt sections")
    ap.add_argument("--ridge-alpha", type=float, default=3.0)
    ap.add_argument("--test", action="store_true", help="score aes2/test once (see doc)")
    ap.add_argument("--results", default=None, help="JSON file for the numbers")
    args = ap.parse_args(argv)

    cfg = load_config(args.profile)
    data = Path(args.data)
    oof = pd.read_parquet(args.oof)
    train = io.load_train(data / "aes2" / "train.csv.gz").set_index("essay_id")
    texts = train.loc[oof["essay_id"], "full_text"].tolist()
    test_df = pd.DataFrame()
    if args.test:
        test_df = pd.read_parquet(Path(args.oof).with_suffix(".test.parquet"))
        essays = io.load_essays(data / "aes2" / "test.csv.gz").set_index("essay_id")
        test_df["full_text"] = essays.loc[test_df["essay_id"], "full_text"].to_numpy()
    y = oof["score"].to_numpy()
    folds = oof["fold"].to_numpy()
    t0 = time.perf_counter()
    oof[RIDGE], ridge_test = ridge_member(texts, y, folds, test_df.get(
        "full_text", pd.Series(dtype=str)).tolist(), cfg.gbdt, args.ridge_alpha)
    t_ridge = time.perf_counter() - t0
    table = assemble_oof(oof)
    t0 = time.perf_counter()
    stats = essay_statistics(texts)
    fit = fit_ensemble(table, cfg.ensemble, texts=texts, stats=stats)
    t_fit = time.perf_counter() - t0
    art = fit.artifact
    check = blend_beats_best_member(art, cfg.ensemble.min_gain_over_best)
    result = {
        "essays": len(table), "members": art.members, "method": art.method,
        "nested_qwk": art.nested_qwk,
        "in_sample_oof_qwk": {k: art.oof_qwk[k] for k in
                              [*art.members, "optimized", "blend"] if k in art.oof_qwk},
        "nelder_mead_weights": dict(zip(art.members, art.weights, strict=True)),
        "check_blend_beats_best_member": {"passed": check.passed, **check.metadata},
        "seconds": {"ridge_member": round(t_ridge, 1), "fit_ensemble": round(t_fit, 1)},
        "notes": art.notes, "hardware": hardware(),
    }
    print(f"Ensemble of {art.members} on {len(table)} OOF essays ({art.n_folds} folds)")
    print("  nested-CV QWK: " + ", ".join(f"{k} {v:.4f}" for k, v in art.nested_qwk.items()))
    print(f"  applied: {art.method}; blend check ({check.metadata['basis']}): "
          f"{'pass' if check.passed else 'FAIL'}, gain {check.metadata['gain']:+.4f}")
    if args.test:
        p_test = np.column_stack([test_df["gbdt"].to_numpy(), ridge_test])
        y_test = test_df["score"].to_numpy()
        t_texts = test_df["full_text"].tolist()
        applied = fast_qwk(y_test, art.to_scores(art.blend(p_test, t_texts)))
        order = ["optimized", EQUAL, *art.members]
        nm = max(order, key=lambda k: (fit.candidates[k].qwk, -order.index(k)))
        c = fit.candidates[nm]
        info = {"applied_" + art.method: round(applied, 4),
                "nelder_mead": round(fast_qwk(y_test, cut(p_test @ c.weights, c.thresholds)), 4),
                **{m: round(fast_qwk(y_test, cut(p_test[:, j], fit.candidates[m].thresholds)),
                            4) for j, m in enumerate(art.members)}}
        if fit.stacker is not None:
            st = fit.stacker.stacker
            info[f"stacker_{st.kind}"] = round(fast_qwk(y_test, cut(
                st.predict(p_test, t_texts), st.thresholds)), 4)
        result["test_qwk_not_used_for_choice"] = info
        print("  test QWK (information only, never used to choose): "
              + ", ".join(f"{k} {v:.4f}" for k, v in info.items()))
    print(f"  time: ridge member {t_ridge:.0f}s, fit_ensemble {t_fit:.0f}s")
    print("  hardware: " + ", ".join(f"{k} {v}" for k, v in result["hardware"].items()))
    if args.results:
        Path(args.results).write_text(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()
