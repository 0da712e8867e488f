"""Flags at scoring time: ``fit_flagger`` -> ``EssayFlagger.flag`` -> flags with evidence.

Gaming flags (``GAMING_FLAGS``) mark essays whose score should not be trusted as it stands:
``too_short``, ``repetition``, ``prompt_copy``, ``gibberish``, ``off_topic``. The informational
flag ``unknown_prompt`` marks a student essay on none of the known prompts (the scorer was not
trained on its prompt); it is not a gaming flag. ``apply_flag_policy`` turns flags into the
configured score cap.

Saved folder (``EssayFlagger.save``): ``flagger.json`` (the FlagsSection used) + the prompt
model files (``prompt_model.json``, ``prompt_model.joblib``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aes_core.config import GAMING_FLAG_NAMES, FlagsSection
from aes_core.flags import checks
from aes_core.flags.prompt_model import PromptModel, PromptScores, fit_prompt_model
from aes_core.flags.resources import prompt_texts

GAMING_FLAGS: tuple[str, ...] = GAMING_FLAG_NAMES
INFO_FLAGS: tuple[str, ...] = ("unknown_prompt",)
FLAG_NAMES: tuple[str, ...] = GAMING_FLAGS + INFO_FLAGS
FLAGGER_FILE = "flagger.json"
NO_PROMPT = ("", "unknown")  # prompt names that mean "not given" (lower-cased)
FLAG_SEP, EVIDENCE_SEP = ";", " | "


@dataclass(frozen=True)
class Flag:
    name: str
    evidence: str


@dataclass(frozen=True)
class EssayFlags:
    """The flags of one essay, plus what the prompt model read."""

    flags: tuple[Flag, ...]
    predicted_prompt: str | None     # None when far from every known prompt
    prompt_similarity: float         # cosine to the nearest known prompt's centroid

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.flags]

    @property
    def gaming(self) -> bool:
        return any(f.name in GAMING_FLAGS for f in self.flags)

    @property
    def flags_text(self) -> str:
        """``;``-joined flag names, ``""`` when clean (the ``flags`` column)."""
        return FLAG_SEP.join(self.names)

    @property
    def evidence_text(self) -> str:
        """``name: evidence | name: evidence`` (the ``flag_evidence`` column)."""
        return EVIDENCE_SEP.join(f"{f.name}: {f.evidence}" for f in self.flags)


def _given_prompt(name: object) -> str | None:
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return None
    name = str(name).strip()
    return None if name.lower() in NO_PROMPT else name


def _check_texts(texts: Sequence[str]) -> list[str]:
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}]: expected essay text, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"texts[{i}]: empty essay text")
        out.append(t)
    return out


@dataclass
class EssayFlagger:
    """Thresholds (``cfg``) + the fitted prompt model + the prompt-text table."""

    cfg: FlagsSection
    prompt_model: PromptModel
    prompt_table: dict[str, str]

    def flag(self, texts: Sequence[str],
             prompt_names: Sequence[str | None] | None = None) -> list[EssayFlags]:
        """Flags per essay. ``prompt_names[i]`` is essay i's assigned prompt, if known
        (None, "" or "Unknown" = not given)."""
        texts = _check_texts(texts)
        if prompt_names is None:
            given: list[str | None] = [None] * len(texts)
        else:
            if len(prompt_names) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(prompt_names)} prompt names")
            given = [_given_prompt(p) for p in prompt_names]
        scores = self.prompt_model.score(texts)
        pairs = enumerate(zip(texts, given, strict=True))
        return [self._flag_one(t, g, scores, i) for i, (t, g) in pairs]

    def flag_frame(self, texts: Sequence[str],
                   prompt_names: Sequence[str | None] | None = None) -> pd.DataFrame:
        """Columns ``flags`` (";"-joined, "" when clean), ``flag_evidence``, ``predicted_prompt``,
        ``gaming`` (any gaming flag), one row per text in order."""
        return flags_frame(self.flag(texts, prompt_names))

    # -- one essay ---------------------------------------------------------------------------

    def _flag_one(self, text: str, given: str | None, scores: PromptScores,
                  i: int) -> EssayFlags:
        cfg, found = self.cfg, []
        n_words = checks.word_count(text)
        if n_words.value < cfg.min_words:
            found.append(Flag("too_short", f"{n_words.evidence} (fewer than {cfg.min_words})"))
        rep = self._repetition(text)
        if rep is not None:
            found.append(rep)
        copy = checks.best_prompt_copy(text, self._prompts_for(given), cfg.prompt_ngram,
                                       cfg.prompt_min_span, cfg.prompt_name_run,
                                       cfg.evidence_chars)
        if copy.value >= cfg.max_prompt_copy_share:
            found.append(Flag("prompt_copy", copy.evidence))
        oov = checks.oov_share(text)
        if oov.value >= cfg.max_oov_share:
            found.append(Flag("gibberish", oov.evidence))
        topic, predicted, best_sim = self._topic(given, scores, i)
        if topic is not None:
            found.append(topic)
        return EssayFlags(tuple(found), predicted, best_sim)

    def _repetition(self, text: str) -> Flag | None:
        cfg = self.cfg
        para = checks.repeated_paragraph_share(text, cfg.min_paragraph_words, cfg.evidence_chars)
        if para.value >= cfg.max_repeated_paragraph_share:
            return Flag("repetition", para.evidence)
        grams = checks.repeated_ngram_share(text, cfg.repeat_ngram, cfg.evidence_chars)
        if grams.value >= cfg.max_repeated_ngram_share:
            return Flag("repetition", grams.evidence)
        return None

    def _prompts_for(self, given: str | None) -> list[tuple[str, str]]:
        """(name, text) to compare with: the given prompt, else every prompt we know of."""
        if given is not None:
            return [(given, self.prompt_table.get(given, ""))]
        names = dict.fromkeys([*self.prompt_table, *self.prompt_model.prompts])
        return [(n, self.prompt_table.get(n, "")) for n in names]

    def _topic(self, given: str | None, scores: PromptScores,
               i: int) -> tuple[Flag | None, str | None, float]:
        """off_topic / unknown_prompt / nothing, the predicted prompt and the best cosine."""
        cfg, prompts = self.cfg, self.prompt_model.prompts
        probs, sims, share = scores.probs[i], scores.similarity[i], scores.essay_vocab_share[i]
        best = int(np.argmax(sims))
        best_sim = float(sims[best])
        gi = self.prompt_model.index(given) if given is not None else None
        if best_sim >= cfg.far_similarity:
            predicted = int(np.argmax(probs))
            if gi is not None and predicted != gi and probs[gi] < cfg.max_given_prompt_prob:
                return (Flag("off_topic", f"reads as {prompts[predicted]!r} "
                                          f"(p={probs[predicted]:.2f}), not {given!r} "
                                          f"(p={probs[gi]:.2f})"),
                        prompts[predicted], best_sim)
            return None, prompts[predicted], best_sim
        where = (f"far from every known prompt (cosine {best_sim:.2f} to the nearest, "
                 f"{prompts[best]!r}; < {cfg.far_similarity})")
        if share < cfg.min_essay_vocab_share:
            return (Flag("off_topic", f"{where} and unlike a student essay ({share:.0%} "
                                      f"student-essay vocabulary, < "
                                      f"{cfg.min_essay_vocab_share:.0%})"), None, best_sim)
        if gi == best:  # weakly on topic: the nearest prompt is the given one
            return None, given, best_sim
        if gi is not None and cfg.far_essay_with_given_prompt == "off_topic":
            return Flag("off_topic", f"not about {given!r}: {where}"), None, best_sim
        return Flag("unknown_prompt", where), None, best_sim

    # -- persistence -------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.prompt_model.save(folder)
        meta = {"config": self.cfg.model_dump(), "prompt_table": self.prompt_table}
        (folder / FLAGGER_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, cfg: FlagsSection | None = None) -> EssayFlagger:
        """Load a saved flagger; ``cfg`` (if given) replaces the saved thresholds (the prompt
        model stays as fitted)."""
        folder = Path(folder)
        path = folder / FLAGGER_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: not a saved flagger folder")
        meta = json.loads(path.read_text())
        saved = FlagsSection.model_validate(meta["config"])
        return cls(cfg or saved, PromptModel.load(folder), dict(meta["prompt_table"]))


def fit_flagger(persuade: pd.DataFrame, cfg: FlagsSection) -> EssayFlagger:
    """Fit the prompt model on reference essays (``full_text``, ``prompt_name``)."""
    missing = [c for c in ("full_text", "prompt_name") if c not in persuade.columns]
    if missing:
        raise ValueError(f"prompt reference: missing column(s) {missing}; "
                         f"found {list(persuade.columns)}")
    texts = persuade["full_text"]
    bad = [i + 1 for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"prompt reference: empty essay text in row(s) {bad[:10]}, "
                         "field 'full_text'")
    names = persuade["prompt_name"].map(_given_prompt)
    if names.isna().any():
        rows = [i + 1 for i in np.flatnonzero(names.isna().to_numpy())]
        raise ValueError(f"prompt reference: no prompt_name in row(s) {rows[:10]}, "
                         "field 'prompt_name'")
    model = fit_prompt_model(texts.tolist(), names.tolist(), cfg)
    return EssayFlagger(cfg, model, dict(prompt_texts()))


def flags_frame(results: Sequence[EssayFlags]) -> pd.DataFrame:
    """Columns ``flags``, ``flag_evidence``, ``predicted_prompt``, ``gaming``."""
    return pd.DataFrame({
        "flags": [r.flags_text for r in results],
        "flag_evidence": [r.evidence_text for r in results],
        "predicted_prompt": [r.predicted_prompt or "" for r in results],
        "gaming": [r.gaming for r in results],
    })


def _names(item: EssayFlags | str) -> list[str]:
    if isinstance(item, EssayFlags):
        return item.names
    return [n for n in str(item).split(FLAG_SEP) if n]


def apply_flag_policy(scores: np.ndarray, flags: Sequence[EssayFlags | str],
                      cfg: FlagsSection) -> np.ndarray:
    """Scores after the flag policy: an essay with a flag in ``cfg.cap_flags`` scores at most
    ``cfg.cap_score_when_flagged`` (None = scores unchanged). ``flags`` holds EssayFlags or the
    ``flags`` column strings."""
    scores = np.asarray(scores, dtype=float)
    if len(flags) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(flags)} flag entries")
    out = scores.copy()
    if cfg.cap_score_when_flagged is None:
        return out
    capped = np.array([any(n in cfg.cap_flags for n in _names(f)) for f in flags], dtype=bool)
    out[capped] = np.minimum(out[capped], cfg.cap_score_when_flagged)
    return out
