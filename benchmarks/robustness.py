"""Gaming and off-topic essays: flag rates and score shifts on perturbed essays.

Builds the seeded perturbation set (``aes_core.robustness``) from labelled essays whose prompt
names come from the PERSUADE join, flags clean + perturbed essays with a flagger whose prompt
model never saw the evaluated essays, scores them with the scorer named on the command line
and prints, per attack, the share flagged and the mean score shift (perturbed - clean) before
and after the flag policy (``flags.cap_score_when_flagged``). Two more sets are flagged:
Python standard-library module docstrings (fluent English, no essays; expected off_topic;
never used for tuning) and unlabelled PERSUADE essays of prompts outside the labelled data
(student essays; expected unknown_prompt without a prompt name, off_topic when sent as a
known prompt's essay; their ``--split train`` numbers informed ``flags.far_similarity``).

    .venv/bin/python benchmarks/robustness.py                       # test split, GBDT scorer
    .venv/bin/python benchmarks/robustness.py --split train --scorer none   # tuning numbers
    .venv/bin/python benchmarks/robustness.py --scorer ensemble --profile gpu-full

``--split test``: sources = aes2/test (labels from test_score), the prompt model is fitted on
the PERSUADE reference minus the test texts, the GBDT scorer on aes2/train. ``--split train``
(for tuning thresholds): sources = a seeded half of aes2/train; the prompt model and the GBDT
scorer see only the other half. ``--scorer ensemble`` scores with the latest materialized
ensemble of ``--profile`` (``aes_core.serving.loader.load_scorer``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io as _io
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aes_core.config import FlagsSection, FoldSection, GbdtSection, load_config  # noqa: E402
from aes_core.data import io  # noqa: E402
from aes_core.data.folds import build_folded, join_persuade  # noqa: E402
from aes_core.data.normalize import normalize_text  # noqa: E402
from aes_core.ensemble.features import words  # noqa: E402
from aes_core.ensemble.gbdt import GbdtMember, fit_gbdt  # noqa: E402
from aes_core.ensemble.thresholds import cut, fit_thresholds  # noqa: E402
from aes_core.flags import GAMING_FLAGS, EssayFlagger, fit_flagger  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.robustness import (  # noqa: E402
    EnsembleScores,
    ScoresScorer,
    build_perturbations,
    evaluate_robustness,
    robustness_check,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "robustness.json"
# Modest GBDT settings: the whole member trains in a few minutes on 2 cores. One LightGBM
# thread: on a shared machine its OpenMP threads spin and run ~10x slower than one.
GBDT_SETTINGS = {"word_max_features": 3000, "char_max_features": 3000, "n_estimators": 200,
                 "learning_rate": 0.1, "early_stopping_rounds": 30, "num_threads": 1}
GBDT_FOLDS = 3
SPLIT_SEED = 42
# Unlabelled essays of the eight PERSUADE prompts outside the labelled data, found by words
# their assignments use; none of the seven labelled prompts asks about these.
OTHER_PROMPT_WORDS = re.compile(
    r"phones? while driving|texting and driving|community service|extracurricular|"
    r"summer projects?|distance learning|online (?:classes|school)|multiple opinions|"
    r"more than one person", re.I)
HELDOUT_MAX = 600
MIN_DOC_WORDS = 150


class GbdtScores:
    """The GBDT member's mean fold prediction, cut into 1..6 with OOF-fitted thresholds."""

    def __init__(self, member: GbdtMember, thresholds: list[float]):
        self.member, self.thresholds = member, thresholds

    def predict_scores(self, texts: list[str]) -> np.ndarray:
        return cut(self.member.predict(texts), self.thresholds).astype(float)


def gbdt_scorer(train: pd.DataFrame, persuade: pd.DataFrame, cache: Path) -> GbdtScores:
    """Train (or load from ``cache``, keyed by the training ids) the GBDT member on ``train``."""
    ids = "\n".join(sorted(train["essay_id"].astype(str)))
    key = f"{len(train)}_{hashlib.sha256(ids.encode()).hexdigest()[:12]}"
    folder = cache / key
    meta = folder / "thresholds.json"
    if meta.exists():
        return GbdtScores(GbdtMember.load(folder), json.loads(meta.read_text()))
    cfg = load_config()
    gbdt_cfg = GbdtSection(**{**cfg.gbdt.model_dump(), **GBDT_SETTINGS})
    folded, _ = build_folded(train, persuade, FoldSection(n_folds=GBDT_FOLDS))
    fit = fit_gbdt(folded, gbdt_cfg)
    thr, _ = fit_thresholds(fit.oof["gbdt"].to_numpy(), folded["score"].to_numpy(),
                            cfg.ensemble)
    fit.member.save(folder)
    meta.write_text(json.dumps(thr))
    print(f"GBDT member: OOF QWK {fit.oof_qwk:.3f} on {len(folded)} essays -> {folder}")
    return GbdtScores(fit.member, thr)


def stdlib_docstrings() -> list[str]:
    """Docstrings (>= 150 words) of the Python standard-library modules that import here."""
    out = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in ("antigravity", "this"):
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()), \
                    contextlib.redirect_stderr(_io.StringIO()):
                warnings.simplefilter("ignore")
                doc = importlib.import_module(name).__doc__ or ""
        except BaseException:  # noqa: BLE001  (some modules exit or need a display)
            continue
        if len(words(doc)) >= MIN_DOC_WORDS:
            out.append(doc)
    return out


def heldout_sets(data: Path, persuade: pd.DataFrame) -> dict[str, list[str]]:
    unl = io.load_unlabelled(data / "persuade" / "unlabelled_essays.csv.gz")
    known = set(persuade["full_text"].map(normalize_text))
    unl = unl[~unl["full_text"].map(normalize_text).isin(known)]
    other = unl[unl["full_text"].str.contains(OTHER_PROMPT_WORDS)]
    other = other.sample(min(HELDOUT_MAX, len(other)), random_state=SPLIT_SEED)
    return {"stdlib_docstrings": stdlib_docstrings(),
            "other_prompt_essays": other["full_text"].tolist()}


def flag_heldout(flagger: EssayFlagger, sets: dict[str, list[str]],
                 prompts: list[str]) -> dict[str, dict]:
    """Each held-out set flagged without a prompt, and as the essay of a known prompt."""
    rng = np.random.default_rng(SPLIT_SEED)
    out = {}
    for name, texts in sets.items():
        given = [prompts[i] for i in rng.integers(len(prompts), size=len(texts))]
        for label, names in (("no_prompt", None), ("given_prompt", given)):
            res = flagger.flag(texts, names)
            out[f"{name}/{label}"] = {
                "n": len(texts),
                "gaming_flag_rate": float(np.mean([r.gaming for r in res])),
                "off_topic_rate": float(np.mean(["off_topic" in r.names for r in res])),
                "unknown_prompt_rate": float(np.mean(["unknown_prompt" in r.names
                                                      for r in res])),
            }
    return out


def load_split(data: Path, split: str, persuade: pd.DataFrame
               ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(sources with prompt names, reference for the prompt model, scorer training essays)."""
    train = io.load_train(data / "aes2" / "train.csv.gz")
    test = io.load_essays(data / "aes2" / "test.csv.gz")
    test = test.merge(io.load_labels(data / "aes2" / "test_score.csv.gz"), on="essay_id",
                      validate="one_to_one")
    if split == "test":
        sources, scorer_train, held_back = test, train, test
    else:
        sources = train.sample(frac=0.5, random_state=SPLIT_SEED)
        scorer_train = train.drop(sources.index)
        held_back = pd.concat([sources, test])
    sources, _ = join_persuade(sources.reset_index(drop=True), persuade)
    unseen = set(held_back["full_text"].map(normalize_text))
    reference = persuade[~persuade["full_text"].map(normalize_text).isin(unseen)]
    return sources, reference, scorer_train.reset_index(drop=True)


def make_scorer(kind: str, scorer_train: pd.DataFrame, persuade: pd.DataFrame,
                profile: str | None, cache: Path) -> tuple[ScoresScorer | None, str]:
    if kind == "none":
        return None, "none"
    if kind == "gbdt":
        desc = (f"GBDT member ({GBDT_FOLDS} folds, {GBDT_SETTINGS}) trained on "
                f"{len(scorer_train)} aes2/train essays, OOF-fitted thresholds")
        return gbdt_scorer(scorer_train, persuade, cache), desc
    from aes_core.serving.loader import load_scorer

    cfg = load_config(profile)
    return EnsembleScores(load_scorer(cfg)), f"ensemble of profile {cfg.profile}"


def print_table(result: dict) -> None:
    print(f"\n{'attack':<22}{'n':>6}{'flagged':>9}{'expected':>10}{'shift':>8}{'after':>8}")
    for attack, e in result["attacks"].items():
        exp = "-" if e["expected_flag_rate"] is None else f"{e['expected_flag_rate']:.3f}"
        shift = e.get("mean_score_shift")
        after = e.get("mean_score_shift_after_flags")
        fmt = (lambda v: "-" if v is None else f"{v:+.2f}")  # noqa: E731
        print(f"{attack:<22}{e['n']:>6}{e['flag_rate']:>9.3f}{exp:>10}{fmt(shift):>8}"
              f"{fmt(after):>8}")
    print(f"clean essays: {result['n_clean']}, flagged (gaming) "
          f"{result['clean_false_flag_rate']:.3%}, counts {result['clean_flag_counts']}")
    for name, e in result.get("heldout", {}).items():
        print(f"held-out {name:<36} n={e['n']:<5} gaming {e['gaming_flag_rate']:.3f}  "
              f"off_topic {e['off_topic_rate']:.3f}  unknown_prompt "
              f"{e['unknown_prompt_rate']:.3f}")
    print(f"check: {'PASS' if result['check']['passed'] else 'FAIL'} - "
          f"{result['check']['description']}")
    print("hardware: " + ", ".join(f"{k} {v}" for k, v in result["hardware"].items()))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED), help="folder with aes2/ and persuade/")
    ap.add_argument("--split", choices=("test", "train"), default="test")
    ap.add_argument("--scorer", choices=("gbdt", "ensemble", "none"), default="gbdt")
    ap.add_argument("--profile", default=None, help="profile for flags settings and ensemble")
    ap.add_argument("--gbdt-cache", default=str(ROOT / "var" / "robustness" / "gbdt"))
    ap.add_argument("--no-heldout", action="store_true", help="skip the held-out sets")
    ap.add_argument("--out", default=None, help=f"JSON path (default {OUT} for --split test)")
    args = ap.parse_args(argv)

    data = Path(args.data)
    cfg: FlagsSection = load_config(args.profile).flags
    persuade = io.load_persuade(data / "persuade" / "persuade_reference.csv.gz")
    sources, reference, scorer_train = load_split(data, args.split, persuade)
    t0 = time.perf_counter()
    flagger = fit_flagger(reference, cfg)
    t_fit = time.perf_counter() - t0
    perturbed = build_perturbations(sources, cfg)
    scorer, scorer_desc = make_scorer(args.scorer, scorer_train, persuade, args.profile,
                                      Path(args.gbdt_cache))
    t1 = time.perf_counter()
    report, _ = evaluate_robustness(sources, perturbed, flagger, scorer, cfg)
    t_eval = time.perf_counter() - t1
    result = {"hardware": hardware(), "scorer": scorer_desc, "split": args.split,
              **report.to_dict()}
    result["check"] = {k: v for k, v in vars(robustness_check(report, cfg)).items()
                       if k != "details"}
    if not args.no_heldout:
        result["heldout"] = flag_heldout(flagger, heldout_sets(data, persuade),
                                         flagger.prompt_model.prompts)
    result["gaming_flags"] = list(GAMING_FLAGS)
    result["prompt_model"] = flagger.prompt_model.info
    result["flags_config"] = cfg.model_dump()
    result["seconds"] = {"fit_flagger": round(t_fit, 1), "flag_and_score": round(t_eval, 1),
                         "texts": len(sources) + len(perturbed)}
    print_table(result)
    out = args.out or (str(OUT) if args.split == "test" else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
