"""Profile the GBDT member on the AES2 train data: seconds per phase, OOF QWK, hardware.

Uses the pipeline's folds (PERSUADE join + MSKF with the profile's fold settings) and
``fit_gbdt`` itself, so the phases are the library's: handcrafted features, TF-IDF word / char
fits, design matrix, LightGBM training, validation predictions. ``--set key=value`` overrides
``gbdt`` fields; ``--label`` files the run under that name in ``--results`` (JSON, merged)::

    python benchmarks/gbdt_profile.py --data /path/to/data --threads 2 --label before
    python benchmarks/gbdt_profile.py --data /path/to/data --set feature_set=rich --test

``--tfidf-only`` times just the TF-IDF phase both ways (a vectorizer fitted per fold, as
before, against n-grams counted once as ``fit_gbdt`` does) and checks the vocabularies match.

``--test`` also scores aes2/test once (fold models averaged, OOF-fitted thresholds): run it
for a final configuration only, never to choose one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aes_core.config import FoldSection, GbdtSection, load_config  # noqa: E402
from aes_core.data import io  # noqa: E402
from aes_core.data.folds import build_folded  # noqa: E402
from aes_core.ensemble.gbdt import NgramCounts, _vectorizers, fit_gbdt  # noqa: E402
from aes_core.ensemble.thresholds import cut, fit_thresholds  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.metrics import qwk  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_sets(pairs: list[str], base: GbdtSection) -> GbdtSection:
    """``key=value`` strings -> a validated copy of ``base`` (values parsed as JSON if they can)."""
    updates = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in GbdtSection.model_fields:
            raise SystemExit(f"--set {pair!r}: expected <gbdt field>=<value>; fields: "
                             f"{sorted(GbdtSection.model_fields)}")
        try:
            updates[key] = json.loads(raw)
        except json.JSONDecodeError:
            updates[key] = raw
    return GbdtSection.model_validate({**base.model_dump(), **updates})


def _cpu() -> float:
    """CPU seconds of this process and its finished children (feature workers), all threads."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_folded(data: Path, profile: str, n_folds: int | None, max_essays: int | None):
    cfg = load_config(profile)
    train = io.load_train(data / "aes2" / "train.csv.gz")
    if max_essays and max_essays < len(train):
        train = train.sample(max_essays, random_state=42).reset_index(drop=True)
    persuade = io.load_persuade(data / "persuade" / "persuade_reference.csv.gz")
    folds = cfg.folds if n_folds is None else FoldSection(
        **{**cfg.folds.model_dump(), "n_folds": n_folds})
    folded, _ = build_folded(train, persuade, folds)
    return cfg, folded


def tfidf_compare(folded, gcfg: GbdtSection, args) -> dict:
    """Seconds (wall, CPU) of the TF-IDF phase, per-fold fits vs counts shared by all folds."""
    texts = folded["full_text"].astype(str).tolist()
    fold = folded["fold"].to_numpy()
    t0, c0 = time.perf_counter(), _cpu()
    per_fold_vocab = []
    for k in sorted(set(fold)):
        tr, va = (fold != k).nonzero()[0], (fold == k).nonzero()[0]
        word, char = _vectorizers(gcfg)
        for vec in (word, char):
            vec.fit_transform([texts[i] for i in tr])
            vec.transform([texts[i] for i in va])
        per_fold_vocab.append((word.vocabulary_, char.vocabulary_))
    old = (time.perf_counter() - t0, _cpu() - c0)
    t0, c0 = time.perf_counter(), _cpu()
    counts = {kind: NgramCounts.build(texts, kind, gcfg) for kind in ("word", "char")}
    same = True
    for k in sorted(set(fold)):
        tr = (fold != k).nonzero()[0]
        vecs = [counts[kind].fold_tfidf(tr, gcfg)[0] for kind in ("word", "char")]
        same &= all(v.vocabulary_ == ref for v, ref in zip(vecs, per_fold_vocab[k],
                                                           strict=True))
    new = (time.perf_counter() - t0, _cpu() - c0)
    result = {"label": args.label, "essays_train": len(folded), "threads": args.threads,
              "tfidf_per_fold_fits": {"wall_seconds": round(old[0], 1),
                                      "cpu_seconds": round(old[1], 1)},
              "tfidf_counted_once": {"wall_seconds": round(new[0], 1),
                                     "cpu_seconds": round(new[1], 1)},
              "identical_vocabularies": bool(same), "load_average": round(os.getloadavg()[0], 2),
              "hardware": hardware()}
    print(f"TF-IDF phase, {len(folded)} essays, {len(set(fold))} folds (word 1-"
          f"{gcfg.word_ngram_max} + char_wb {gcfg.char_ngram_min}-{gcfg.char_ngram_max}):")
    print(f"  per-fold vectorizer fits  wall {old[0]:7.1f} s  CPU {old[1]:7.1f} s")
    print(f"  n-grams counted once      wall {new[0]:7.1f} s  CPU {new[1]:7.1f} s  "
          f"(identical vocabularies: {same})")
    _merge(args, result)
    return result


def _merge(args, result: dict) -> None:
    if args.results:
        path = Path(args.results)
        runs = json.loads(path.read_text()) if path.exists() else {}
        runs.setdefault("runs", {})[args.label] = result
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(runs, indent=2))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED), help="folder with aes2/ and persuade/")
    ap.add_argument("--profile", default="gpu-full", help="profile: folds + gbdt section")
    ap.add_argument("--n-folds", type=int, default=None, help="default: the profile's")
    ap.add_argument("--max-essays", type=int, default=None, help="seeded subsample of train")
    ap.add_argument("--threads", type=int, default=2, help="gbdt.num_threads (and BLAS)")
    ap.add_argument("--set", action="append", default=[], help="gbdt override key=value")
    ap.add_argument("--test", action="store_true", help="also score aes2/test (final config)")
    ap.add_argument("--label", default="run", help="name of this run in --results")
    ap.add_argument("--results", default=None, help="JSON file; this run is merged under --label")
    ap.add_argument("--tfidf-only", action="store_true",
                    help="time only the TF-IDF phase: per-fold vectorizer fits (the former "
                         "path) against n-grams counted once (fit_gbdt's), same vocabularies")
    ap.add_argument("--save-oof", default=None,
                    help="parquet: essay_id, fold, score, prompt_name, gbdt (OOF) for "
                         "stacker_eval.py; with --test also <name>.test.parquet")
    args = ap.parse_args(argv)

    data = Path(args.data)
    cfg, folded = load_folded(data, args.profile, args.n_folds, args.max_essays)
    gcfg = parse_sets(args.set, cfg.gbdt.model_copy(update={"num_threads": args.threads}))
    if args.tfidf_only:
        return tfidf_compare(folded, gcfg, args)
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), _cpu()
    fit = fit_gbdt(folded, gcfg, progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    phase_wall = getattr(fit, "timings", {})
    phase_cpu = getattr(fit, "cpu_seconds", {})
    y = folded["score"].to_numpy()
    oof = fit.oof["gbdt"].to_numpy()
    thr, oof_thr_qwk = fit_thresholds(oof, y, cfg.ensemble)
    result: dict = {
        "label": args.label, "profile": cfg.profile, "essays_train": len(folded),
        "n_folds": int(folded["fold"].nunique()), "threads": args.threads,
        "gbdt_config": gcfg.model_dump(), "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "phase_seconds": {k: round(v, 1) for k, v in phase_wall.items()},
        "phase_cpu_seconds": {k: round(v, 1) for k, v in phase_cpu.items()},
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "oof_qwk": round(fit.oof_qwk, 4), "oof_fold_qwk": [round(q, 4) for q in fit.fold_qwk],
        "oof_qwk_thresholded": round(oof_thr_qwk, 4), "best_iterations": fit.best_iterations,
        "hardware": hardware(),
    }
    print(f"GBDT member: {len(folded)} essays, {result['n_folds']} folds, "
          f"{args.threads} threads, feature_set {getattr(gcfg, 'feature_set', 'basic')}")
    print(f"  {'phase':<22} {'wall s':>8} {'CPU s':>8}")
    for k, v in phase_wall.items():
        print(f"  {k:<22} {v:8.1f} {phase_cpu.get(k, float('nan')):8.1f}")
    print(f"  {'fit_gbdt (all procs)':<22} {wall:8.1f} {cpu:8.1f}   load average "
          f"{result['load_average_before_after']} (before, after)")
    print(f"  OOF QWK rounded {fit.oof_qwk:.4f} (folds {result['oof_fold_qwk']}), "
          f"with OOF thresholds {oof_thr_qwk:.4f}; best iterations {fit.best_iterations}")
    if args.test:
        test = io.load_essays(data / "aes2" / "test.csv.gz")
        labels = io.load_labels(data / "aes2" / "test_score.csv.gz").set_index("essay_id")
        y_test = test["essay_id"].map(labels["score"]).to_numpy()
        t1 = time.perf_counter()
        pred = fit.member.predict(test["full_text"].tolist())
        result["test_predict_seconds"] = round(time.perf_counter() - t1, 1)
        result["test_qwk"] = round(qwk(y_test, pred), 4)
        result["test_qwk_oof_thresholds"] = round(qwk(y_test, cut(pred, thr)), 4)
        print(f"  test QWK rounded {result['test_qwk']:.4f}, with OOF thresholds "
              f"{result['test_qwk_oof_thresholds']:.4f} ({len(test)} essays)")
    if args.save_oof:
        out = folded[["essay_id", "fold", "score", "prompt_name"]].assign(gbdt=oof)
        out.to_parquet(args.save_oof, index=False)
        if args.test:
            test.assign(gbdt=pred, score=y_test)[["essay_id", "score", "gbdt"]].to_parquet(
                Path(args.save_oof).with_suffix(".test.parquet"), index=False)
    print("  hardware: " + ", ".join(f"{k} {v}" for k, v in result["hardware"].items()))
    _merge(args, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
