"""GBDT member with ``objective: regression`` vs ``qwk``: alone and in the stored GPU ensemble.

For each objective it fits the GBDT member on the AES2 train essays with the pipeline's folds
and the profile's GBDT settings (``fit_gbdt``; threads from ``--threads``), checks the folds
equal the stored run's ``fold`` column essay by essay, and caches the OOF and the fold-averaged
test predictions under ``--work`` (the test predictions are not scored there). The ensemble is
then fitted as the product fits it (``fit_ensemble``: Nelder-Mead vs stacker by nested CV) on
the stored run's MiniLM OOF + each GBDT OOF; OOF and nested-CV QWK choose. ``--test`` scores
aes2/test once, after the choice is written: the GBDT alone (OOF thresholds) and the ensemble
with the stored MiniLM test predictions::

    python benchmarks/gbdt_objective_eval.py --storage RUN --threads 2   # OOF, nested CV
    python benchmarks/gbdt_objective_eval.py --storage RUN --threads 1 --fit-only qwk
    python benchmarks/gbdt_objective_eval.py --storage RUN --threads 2 --test  # test, once

``fit_seconds`` are those of the cached fits, under whatever threads and host load they had
(the settings record ``num_threads``): not a speed comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aes_core.config import GbdtSection  # noqa: E402
from aes_core.data import io  # noqa: E402
from aes_core.ensemble.blend import assemble_oof, fit_ensemble  # noqa: E402
from aes_core.ensemble.gbdt import fit_gbdt  # noqa: E402
from aes_core.ensemble.stacker import essay_statistics  # noqa: E402
from aes_core.ensemble.thresholds import cut, fit_thresholds  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.members import GBDT_MEMBER, member_columns  # noqa: E402
from aes_core.metrics import qwk  # noqa: E402
from benchmarks.gbdt_profile import SHARED, load_folded  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("regression", "qwk")
RUNTIME_ONLY = ("num_threads", "n_jobs")  # settings that do not change what a fit learns
STORED = "stored_gpu_run_regression"  # the finished GPU run's own GBDT OOF, for reference


def check_folds(folded: pd.DataFrame, stored: pd.DataFrame) -> None:
    """Fail unless every essay has the same fold here as in the stored run."""
    mine = folded.set_index(folded["essay_id"].astype(str))["fold"]
    theirs = stored.drop_duplicates("essay_id").set_index("essay_id")["fold"]
    if set(mine.index) != set(theirs.index):
        raise SystemExit(f"essays differ from the stored run: {len(mine)} vs {len(theirs)}")
    diff = int((mine != theirs.loc[mine.index]).sum())
    if diff:
        raise SystemExit(f"{diff} essays have another fold than in the stored run")


def fit_member(objective: str, folded: pd.DataFrame, gcfg: GbdtSection, test: pd.DataFrame,
               work: Path) -> dict:
    """Fit (or load the cached) member: OOF and test predictions under ``work``."""
    oof_path, test_path = work / f"{objective}.oof.parquet", work / f"{objective}.test.parquet"
    info_path = work / f"{objective}.json"
    if oof_path.exists() and test_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        saved, want = info["gbdt_config"], gcfg.model_dump()
        if all(saved[k] == v for k, v in want.items() if k not in RUNTIME_ONLY):
            return info
    t0 = time.perf_counter()
    fit = fit_gbdt(folded, gcfg, progress=False)
    fit_s = time.perf_counter() - t0
    folded[["essay_id", "fold", "score"]].assign(gbdt=fit.oof[GBDT_MEMBER].to_numpy()).to_parquet(
        oof_path, index=False)
    test[["essay_id"]].assign(gbdt=fit.member.predict(test["full_text"].tolist())).to_parquet(
        test_path, index=False)
    info = {"gbdt_config": gcfg.model_dump(), "fit_seconds": round(fit_s, 1),
            "best_iterations": fit.best_iterations, "oof_fold_qwk": fit.fold_qwk}
    info_path.write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED), help="folder with aes2/ and persuade/")
    ap.add_argument("--storage", required=True,
                    help="a finished GPU run's storage_root (tables/oof_predictions.parquet, "
                    "test_member_predictions.parquet)")
    ap.add_argument("--profile", default="gpu-full", help="folds, gbdt and ensemble sections")
    ap.add_argument("--threads", type=int, default=2, help="gbdt.num_threads, ensemble.n_jobs")
    ap.add_argument("--work", default=str(ROOT / "var" / "gbdt_objective"), help="cache dir")
    ap.add_argument("--test", action="store_true", help="score aes2/test once (after choosing)")
    ap.add_argument("--fit-only", choices=OBJECTIVES, default=None,
                    help="only fit (and cache) this objective's member, e.g. in a second process")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" /
                                             "gbdt_objective.json"))
    args = ap.parse_args(argv)
    data, run, work = Path(args.data), Path(args.storage), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg, folded = load_folded(data, args.profile, None, None)
    stored_oof = pd.read_parquet(run / "tables" / "oof_predictions.parquet")
    stored_oof["essay_id"] = stored_oof["essay_id"].astype(str)
    check_folds(folded, stored_oof)
    test = io.load_essays(data / "aes2" / "test.csv.gz")
    base = cfg.gbdt.model_copy(update={"num_threads": args.threads, "n_jobs": 1})
    ens_cfg = cfg.ensemble.model_copy(update={"n_jobs": args.threads})

    if args.fit_only:
        return fit_member(args.fit_only, folded,
                          base.model_copy(update={"objective": args.fit_only}), test, work)
    fits = {o: fit_member(o, folded, base.model_copy(update={"objective": o}), test, work)
            for o in OBJECTIVES}
    oofs = {o: pd.read_parquet(work / f"{o}.oof.parquet") for o in OBJECTIVES}
    oofs[STORED] = pd.read_parquet(run / "tables" / "gbdt_oof.parquet")
    train_text = folded.set_index(folded["essay_id"].astype(str))["full_text"]
    minilm = stored_oof.drop(columns=[GBDT_MEMBER], errors="ignore")
    y_oof = None
    result: dict = {"hardware": hardware(), "profile": cfg.profile,
                    "gbdt_settings": {o: fits[o]["gbdt_config"] for o in OBJECTIVES},
                    "ensemble_settings": ens_cfg.model_dump(), "fit_seconds": {},
                    "best_iterations": {}, "oof_qwk": {}, "oof_qwk_rounded": {},
                    "ensemble_oof_qwk": {}, "ensemble_nested_cv_qwk": {},
                    "ensemble_method": {}, "ensemble_nested_detail": {}}
    arts, thresholds = {}, {}
    stats = None
    for name, g in oofs.items():
        table = assemble_oof(minilm, g[["essay_id", GBDT_MEMBER]])
        y_oof = table["score"].to_numpy()
        if stats is None:
            stats = essay_statistics(table["essay_id"].map(train_text).tolist(),
                                     n_jobs=args.threads)
        gb = table[GBDT_MEMBER].to_numpy()
        thresholds[name], thr_qwk = fit_thresholds(gb, y_oof, cfg.ensemble)
        result["oof_qwk"][name] = round(thr_qwk, 4)
        result["oof_qwk_rounded"][name] = round(qwk(y_oof, gb), 4)
        t0 = time.perf_counter()
        art = fit_ensemble(table, ens_cfg, stats=stats).artifact
        arts[name] = art
        result["ensemble_oof_qwk"][name] = round(art.oof_qwk["blend"], 4)
        result["ensemble_nested_cv_qwk"][name] = round(art.oof_qwk["blend_nested"], 4)
        result["ensemble_method"][name] = art.method
        result["ensemble_nested_detail"][name] = art.nested_qwk
        print(f"{name:<28} GBDT OOF QWK {thr_qwk:.4f} (rounded "
              f"{result['oof_qwk_rounded'][name]:.4f}); ensemble ({art.method}) OOF "
              f"{art.oof_qwk['blend']:.4f}, nested CV "
              f"{art.oof_qwk['blend_nested']:.4f}  [{time.perf_counter() - t0:.0f} s]",
              flush=True)
        if name in fits:
            result["fit_seconds"][name] = fits[name]["fit_seconds"]
            result["best_iterations"][name] = fits[name]["best_iterations"]
    nested = result["ensemble_nested_cv_qwk"]
    chosen = max(OBJECTIVES, key=lambda o: (nested[o], result["oof_qwk"][o]))
    result["chosen_by_nested_cv"] = chosen
    print(f"chosen by ensemble nested CV: {chosen}")
    if args.test:
        labels = io.load_labels(data / "aes2" / "test_score.csv.gz").set_index("essay_id")
        stored_test = pd.read_parquet(run / "test_member_predictions.parquet")
        stored_test["essay_id"] = stored_test["essay_id"].astype(str)
        stored_test = stored_test.set_index("essay_id").loc[test["essay_id"].astype(str)]
        y_test = test["essay_id"].map(labels["score"]).to_numpy()
        texts = test["full_text"].tolist()
        result["test_qwk"] = {}
        for o in OBJECTIVES:
            g = pd.read_parquet(work / f"{o}.test.parquet").set_index("essay_id")
            gb = g.loc[test["essay_id"], GBDT_MEMBER].to_numpy()
            art = arts[o]
            p = np.column_stack([gb if m == GBDT_MEMBER else stored_test[m].to_numpy()
                                 for m in art.members])
            result["test_qwk"][o] = {
                "gbdt_alone": round(qwk(y_test, cut(gb, thresholds[o])), 4),
                "ensemble": round(qwk(y_test, art.to_scores(art.blend(p, texts))), 4)}
            print(f"test QWK ({len(test)} essays), {o}: {result['test_qwk'][o]}")
        result["test_essays"] = len(test)
    result["members"] = member_columns(assemble_oof(minilm, oofs["qwk"]))
    print("hardware: " + ", ".join(f"{k} {v}" for k, v in result["hardware"].items()))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
