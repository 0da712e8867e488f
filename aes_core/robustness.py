"""Perturbed essays (gaming attempts, off-topic texts) and how a scorer + the flags handle them.

``build_perturbations`` turns labelled essays into a seeded set of perturbed essays, one row
per (source essay, attack): ``essay_id`` (``<source>::<attack>``), ``source_id``, ``attack``,
``full_text``, ``prompt_name`` (the prompt the text is presented as), ``expected_flag`` (the
flag meant to catch it, "" for none), ``detail`` and, when the sources are scored,
``source_score``. The random draws of one row depend only on (seed, source id, attack), so the
set is reproducible and a row does not change when other essays or attacks are added.

``evaluate_robustness`` flags clean and perturbed essays, scores both with anything that has
``predict_scores(texts) -> scores`` and reports per attack the flag rate and the mean score
shift (perturbed minus clean, before and after ``apply_flag_policy``).
``robustness_check`` compares that report with the FlagsSection margins.

``robustness_table`` keeps a set in one table (clean sources + perturbed essays, column
``set``; the pipeline's ``robustness_set``), ``split_robustness_table`` takes it apart again
and ``attack_table`` turns a report into one row per attack for display.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from aes_core.config import FlagsSection
from aes_core.data.contract import CheckResult
from aes_core.ensemble.features import WORD_RE, paragraphs
from aes_core.flags.flagger import FLAG_SEP, GAMING_FLAGS, EssayFlagger, apply_flag_policy
from aes_core.flags.resources import non_essay_passages, prompt_texts
from aes_core.serving.base import Scorer, score_frame

EXPECTED_FLAG: dict[str, str] = {
    "off_topic": "off_topic",            # an essay of another prompt, sent as this prompt's
    "non_essay": "off_topic",            # fluent English that is no student essay
    "repeated_paragraphs": "repetition",  # every paragraph twice
    "prompt_copy": "prompt_copy",        # the prompt's name + text pasted several times
    "shuffled_sentences": "",            # same sentences, random order (no flag expected)
    "gibberish": "gibberish",            # word-like random tokens, same shape as the essay
    "truncated": "too_short",            # the first share of the words
}
ATTACKS: tuple[str, ...] = tuple(EXPECTED_FLAG)
ID_SEP = "::"
PARAGRAPH_BREAK = "\n\n"
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_NO_PROMPT = ("", "unknown")


class ScoresScorer(Protocol):
    """Anything that scores essay texts on the 1..6 scale."""

    def predict_scores(self, texts: list[str]) -> np.ndarray:
        ...


class EnsembleScores:
    """``predict_scores`` for a serving :class:`~aes_core.serving.base.Scorer` (the blended,
    thresholded 1..6 scores that teachers see)."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def predict_scores(self, texts: list[str]) -> np.ndarray:
        essays = pd.DataFrame({"essay_id": [str(i) for i in range(len(texts))],
                               "full_text": list(texts)})
        return score_frame(self.scorer, essays).score.astype(float)


# -- perturbations ---------------------------------------------------------------------------


def _rng(seed: int, source_id: str, attack: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(source_id.encode()),
                                  zlib.crc32(attack.encode())])


def repeat_paragraphs(text: str, copies: int = 2) -> str:
    """Every paragraph ``copies`` times in a row (about ``copies`` x the length)."""
    return PARAGRAPH_BREAK.join(p.strip() for p in paragraphs(text) for _ in range(copies))


def paste_prompt(text: str, name: str, prompt_text: str, copies: int,
                 rng: np.random.Generator) -> str:
    """``name. prompt_text`` pasted ``copies`` times as paragraphs at a random paragraph break."""
    head = name if name.rstrip()[-1:] in ".?!" else f"{name}."
    block = [f"{head} {prompt_text}".strip()] * copies
    paras = [p.strip() for p in paragraphs(text)]
    at = int(rng.integers(0, len(paras) + 1))
    return PARAGRAPH_BREAK.join(paras[:at] + block + paras[at:])


def shuffle_sentences(text: str, rng: np.random.Generator) -> str:
    """All sentences in random order, refilled into paragraphs of the original sizes."""
    paras = [[s for s in _SENTENCE_SPLIT.split(p.strip()) if s] for p in paragraphs(text)]
    pool = [s for p in paras for s in p]
    order = rng.permutation(len(pool))
    shuffled = iter([pool[i] for i in order])
    return PARAGRAPH_BREAK.join(" ".join(next(shuffled) for _ in p) for p in paras)


def _pseudo_word(length: int, rng: np.random.Generator) -> str:
    letters: list[str] = []
    vowel = bool(rng.random() < 0.3)
    while len(letters) < length:
        pool = _VOWELS if vowel else _CONSONANTS
        letters.append(pool[int(rng.integers(len(pool)))])
        vowel = not vowel
    return "".join(letters)


def gibberish_like(text: str, rng: np.random.Generator) -> str:
    """Word-like random tokens with the essay's paragraph, sentence and word lengths."""
    out = []
    for para in paragraphs(text):
        sents = []
        for sent in _SENTENCE_SPLIT.split(para.strip()):
            lengths = [len(w) for w in WORD_RE.findall(sent)]
            if not lengths:
                continue
            toks = [_pseudo_word(n, rng) for n in lengths]
            toks[0] = toks[0].capitalize()
            sents.append(" ".join(toks) + ".")
        if sents:
            out.append(" ".join(sents))
    return PARAGRAPH_BREAK.join(out)


def truncate_words(text: str, share: float) -> str:
    """The text up to the end of its first ``share`` of words (at least one word)."""
    ends = [m.end() for m in WORD_RE.finditer(text)]
    if not ends:
        return text
    keep = max(1, int(round(share * len(ends))))
    return text[: ends[keep - 1]]


def _check_essays(essays: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in ("essay_id", "full_text") if c not in essays.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {list(essays.columns)}")
    ids = essays["essay_id"].astype(str)
    dup = ids[ids.duplicated()].tolist()
    if dup:
        raise ValueError(f"{source}: duplicate essay_id {dup[:5]}")
    bad = [i + 1 for i, t in enumerate(essays["full_text"])
           if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"{source}: empty essay text in row(s) {bad[:10]}, field 'full_text'")
    out = essays.assign(essay_id=ids).reset_index(drop=True)
    names = out["prompt_name"] if "prompt_name" in out.columns else pd.Series([""] * len(out))
    out["prompt_name"] = [
        "" if not isinstance(p, str) or p.strip().lower() in _NO_PROMPT else p for p in names]
    return out


def build_perturbations(essays: pd.DataFrame, cfg: FlagsSection,
                        attacks: Sequence[str] = ATTACKS) -> pd.DataFrame:
    """Seeded perturbed essays from ``essays`` (``essay_id, full_text`` [+ ``score``,
    ``prompt_name``]); ``off_topic`` rows need sources of at least two known prompts (a source
    without a known prompt gets no ``off_topic`` row)."""
    unknown = [a for a in attacks if a not in EXPECTED_FLAG]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; known: {list(ATTACKS)}")
    src = _check_essays(essays, "perturbation sources")
    if cfg.perturb_max_essays is not None and len(src) > cfg.perturb_max_essays:
        src = src.sample(cfg.perturb_max_essays, random_state=cfg.perturb_seed)
        src = src.sort_index().reset_index(drop=True)
    table, passages = prompt_texts(), non_essay_passages()
    by_prompt = {p: g.index.to_numpy() for p, g in src.groupby("prompt_name") if p}
    rows: list[dict[str, Any]] = []
    for r in src.itertuples(index=False):
        for attack in attacks:
            rng = _rng(cfg.perturb_seed, r.essay_id, attack)
            made = _perturb(attack, r.full_text, r.prompt_name, rng, cfg, src, by_prompt,
                            table, passages)
            if made is None:
                continue
            text, detail = made
            row = {"essay_id": f"{r.essay_id}{ID_SEP}{attack}", "source_id": r.essay_id,
                   "attack": attack, "full_text": text, "prompt_name": r.prompt_name,
                   "expected_flag": EXPECTED_FLAG[attack], "detail": detail}
            if "score" in src.columns:
                row["source_score"] = r.score
            rows.append(row)
    return pd.DataFrame(rows)


def _perturb(attack: str, text: str, prompt: str, rng: np.random.Generator, cfg: FlagsSection,
             src: pd.DataFrame, by_prompt: dict[str, np.ndarray], table: dict[str, str],
             passages: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    if attack == "off_topic":
        others = [p for p in sorted(by_prompt) if p != prompt]
        if not prompt or not others:
            return None
        other = others[int(rng.integers(len(others)))]
        donor = int(rng.choice(by_prompt[other]))
        return src.at[donor, "full_text"], f"essay {src.at[donor, 'essay_id']} of {other!r}"
    if attack == "non_essay":
        title, passage = passages[int(rng.integers(len(passages)))]
        return passage, f"passage {title!r}"
    if attack == "repeated_paragraphs":
        return repeat_paragraphs(text), "every paragraph twice"
    if attack == "prompt_copy":
        name = prompt if prompt in table else sorted(table)[int(rng.integers(len(table)))]
        pasted = paste_prompt(text, name, table[name], cfg.perturb_prompt_copies, rng)
        return pasted, f"{cfg.perturb_prompt_copies} copies of prompt {name!r}"
    if attack == "shuffled_sentences":
        return shuffle_sentences(text, rng), "sentences in random order"
    if attack == "gibberish":
        return gibberish_like(text, rng), "random word-like tokens"
    share = cfg.perturb_truncate_share
    return truncate_words(text, share), f"first {share:.0%} of the words"


# -- evaluation ------------------------------------------------------------------------------


@dataclass
class RobustnessReport:
    """Per-attack and clean-set numbers; ``to_dict`` is the benchmark's JSON body."""

    attacks: dict[str, dict[str, float | int | str | None]]
    clean: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"attacks": self.attacks, **self.clean}


def _score_unique(scorer: ScoresScorer, texts: list[str]) -> np.ndarray:
    """Score each distinct text once (perturbation sets repeat the non-essay passages)."""
    uniq = list(dict.fromkeys(texts))
    scores = np.asarray(scorer.predict_scores(uniq), dtype=float)
    if scores.shape != (len(uniq),):
        raise ValueError(f"scorer returned shape {scores.shape} for {len(uniq)} texts")
    lookup = dict(zip(uniq, scores, strict=True))
    return np.array([lookup[t] for t in texts])


def _flag_names(flags: Sequence[str]) -> list[set[str]]:
    return [set(f.split(FLAG_SEP)) - {""} for f in flags]


def evaluate_robustness(clean: pd.DataFrame, perturbed: pd.DataFrame, flagger: EssayFlagger,
                        scorer: ScoresScorer | None = None,
                        cfg: FlagsSection | None = None) -> tuple[RobustnessReport,
                                                                  pd.DataFrame]:
    """Flag (and score) clean + perturbed essays; returns the report and a per-row table
    (both sets, columns ``set`` = clean | perturbed, ``flags``, ``flag_evidence``, ``score``,
    ``score_after_flags``)."""
    cfg = cfg or flagger.cfg
    clean = _check_essays(clean, "clean essays")
    missing = sorted(set(perturbed["source_id"].astype(str)) - set(clean["essay_id"]))
    if missing:
        raise ValueError(f"perturbed essays: source_id {missing[:5]} not among the clean essays")
    table = pd.concat([clean.assign(set="clean", attack="", source_id=clean["essay_id"]),
                       perturbed.assign(set="perturbed")], ignore_index=True)
    flags = flagger.flag(table["full_text"].tolist(), table["prompt_name"].tolist())
    table["flags"] = [f.flags_text for f in flags]
    table["flag_evidence"] = [f.evidence_text for f in flags]
    names = _flag_names(table["flags"])
    table["gaming"] = [bool(n & set(GAMING_FLAGS)) for n in names]
    if scorer is not None:
        table["score"] = _score_unique(scorer, table["full_text"].tolist())
        table["score_after_flags"] = apply_flag_policy(table["score"].to_numpy(),
                                                       table["flags"].tolist(), cfg)
    is_clean = table["set"] == "clean"
    base = table[is_clean].set_index("essay_id")
    attacks: dict[str, dict[str, float | int | str | None]] = {}
    for attack, rows in table[~is_clean].groupby("attack", sort=False):
        expected = EXPECTED_FLAG.get(str(attack), "")
        row_names = [names[i] for i in rows.index]
        entry: dict[str, float | int | str | None] = {
            "n": len(rows), "expected_flag": expected or None,
            "flag_rate": float(rows["gaming"].mean()),
            "expected_flag_rate": (float(np.mean([expected in n for n in row_names]))
                                   if expected else None),
        }
        if scorer is not None:
            src = base.loc[rows["source_id"]]
            entry["mean_score_shift"] = float(
                np.mean(rows["score"].to_numpy() - src["score"].to_numpy()))
            entry["mean_score_shift_after_flags"] = float(np.mean(
                rows["score_after_flags"].to_numpy() - src["score_after_flags"].to_numpy()))
        attacks[str(attack)] = entry
    clean_names = [names[i] for i in table.index[is_clean]]
    clean_info: dict[str, Any] = {
        "n_clean": int(is_clean.sum()),
        "clean_false_flag_rate": float(table.loc[is_clean, "gaming"].mean()),
        "clean_flag_counts": {f: int(sum(f in n for n in clean_names)) for f in
                              (*GAMING_FLAGS, "unknown_prompt")},
    }
    if scorer is not None:
        clean_info["clean_mean_score"] = float(base["score"].mean())
        clean_info["clean_mean_score_after_flags"] = float(base["score_after_flags"].mean())
    return RobustnessReport(attacks, clean_info), table


def robustness_check(report: RobustnessReport | dict[str, Any],
                     cfg: FlagsSection) -> CheckResult:
    """Passes when no attack raises the mean score (after flags) by more than
    ``cfg.max_attack_score_gain`` and at most ``cfg.max_clean_flag_rate`` of clean essays carry a
    gaming flag."""
    data = report.to_dict() if isinstance(report, RobustnessReport) else report
    problems = []
    for attack, entry in data["attacks"].items():
        gain = entry.get("mean_score_shift_after_flags")
        if gain is not None and gain > cfg.max_attack_score_gain:
            problems.append(f"{attack} raises the mean score by {gain:+.2f} after flags "
                            f"(limit {cfg.max_attack_score_gain:+.2f})")
    rate = data["clean_false_flag_rate"]
    if rate > cfg.max_clean_flag_rate:
        problems.append(f"{rate:.1%} of clean essays flagged (limit {cfg.max_clean_flag_rate:.1%})")
    desc = "; ".join(problems) or (
        f"no attack gains more than {cfg.max_attack_score_gain:+.2f} after flags; "
        f"{rate:.1%} of clean essays flagged")
    return CheckResult(not problems, desc, details=data)


# -- one table for a stored set --------------------------------------------------------------

CLEAN, PERTURBED = "clean", "perturbed"
_TABLE_COLUMNS = ["essay_id", "set", "source_id", "attack", "full_text", "prompt_name",
                  "expected_flag", "detail"]


def robustness_sources(essays: pd.DataFrame,
                       reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """The clean essays a set starts from: ``essays`` with prompt names from ``reference``
    (PERSUADE ``full_text, prompt_name``, joined by normalized text) when it is given and,
    when some essays have a ``score``, only those (graded by a person: genuine essays)."""
    from aes_core.data.folds import join_persuade

    src = _check_essays(essays, "robustness sources")
    if reference is not None:
        src = join_persuade(src.drop(columns="prompt_name"), reference)[0]
    if "score" in src.columns and src["score"].notna().any():
        src = src[src["score"].notna()]
    return _check_essays(src.reset_index(drop=True), "robustness sources")


def robustness_table(essays: pd.DataFrame, cfg: FlagsSection,
                     reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Clean sources (``set`` = clean, ``attack`` "") and their perturbations (``set`` =
    perturbed) in one table, sources chosen by :func:`robustness_sources` and subsampled to
    ``cfg.perturb_max_essays``; ``source_score`` when the sources are scored."""
    src = robustness_sources(essays, reference)
    perturbed = build_perturbations(src, cfg)
    used = src[src["essay_id"].isin(set(perturbed["source_id"]))]
    clean = pd.DataFrame({"essay_id": used["essay_id"], "source_id": used["essay_id"],
                          "attack": "", "full_text": used["full_text"],
                          "prompt_name": used["prompt_name"], "expected_flag": "",
                          "detail": "clean source essay"})
    if "score" in used.columns:
        clean["source_score"] = used["score"].to_numpy()
    table = pd.concat([clean.assign(set=CLEAN), perturbed.assign(set=PERTURBED)],
                      ignore_index=True)
    extra = [c for c in table.columns if c not in _TABLE_COLUMNS]
    return table[_TABLE_COLUMNS + extra]


def split_robustness_table(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clean essays, perturbed essays) of a :func:`robustness_table`, as
    :func:`evaluate_robustness` takes them."""
    missing = [c for c in _TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"robustness table: missing column(s) {missing}; "
                         f"found {list(table.columns)}")
    odd = sorted(set(table["set"]) - {CLEAN, PERTURBED})
    if odd:
        raise ValueError(f"robustness table, field 'set': unknown value(s) {odd}")
    is_clean = table["set"] == CLEAN
    clean = table.loc[is_clean, ["essay_id", "full_text", "prompt_name"]]
    return clean.reset_index(drop=True), table[~is_clean].reset_index(drop=True)


def attack_table(report: RobustnessReport | dict[str, Any]) -> pd.DataFrame:
    """One row per attack (after a first ``clean`` row): essays, expected flag, share with a
    gaming flag, share with the expected flag, mean score shift before and after flags."""
    data = report.to_dict() if isinstance(report, RobustnessReport) else report
    rows = [{"attack": CLEAN, "essays": data["n_clean"], "expected_flag": "",
             "flagged": data["clean_false_flag_rate"], "expected_flag_rate": None,
             "mean_shift": None, "mean_shift_after_flags": None}]
    for attack, e in data["attacks"].items():
        rows.append({"attack": attack, "essays": e["n"], "expected_flag": e["expected_flag"] or "",
                     "flagged": e["flag_rate"], "expected_flag_rate": e["expected_flag_rate"],
                     "mean_shift": e.get("mean_score_shift"),
                     "mean_shift_after_flags": e.get("mean_score_shift_after_flags")})
    return pd.DataFrame(rows)
