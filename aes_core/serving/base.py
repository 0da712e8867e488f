"""The scorer interface shared by the submission asset, the sensor and the teachers' page.

``score_frame`` is the one place where scores are made: it blends the members, thresholds the
blend and, given the serving bundle's flagger, flags every essay and applies the flag policy
(a capped ``score``, the model's own in ``model_score``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.members import GBDT_MEMBER

if TYPE_CHECKING:
    from aes_core.flags import EssayFlagger, EssayFlags


@dataclass
class ScoredEssays:
    essay_id: list[str]
    score: np.ndarray            # [N] int 1..6
    blended: np.ndarray          # [N] float, the weighted sum before thresholds
    member_preds: np.ndarray     # [N, M] float 1..6, fold-averaged, columns = members
    members: list[str]
    spread: np.ndarray           # [N, 6] probability-like spread over scores 1..6 (the model's)
    flag_results: list[EssayFlags] | None = None  # per essay, when scored with a flagger
    model_score: np.ndarray | None = None  # [N] int 1..6 before the flag policy (with flags)

    @property
    def flagged(self) -> bool:
        return self.flag_results is not None

    def with_flags(self, results: list[EssayFlags], flagger: EssayFlagger) -> ScoredEssays:
        """These scores with ``results`` attached and ``flagger``'s policy applied to ``score``
        (the unflagged score moves to ``model_score``)."""
        from aes_core.flags import apply_flag_policy

        capped = apply_flag_policy(self.score, results, flagger.cfg).astype(int)
        return replace(self, score=capped, model_score=self.score, flag_results=list(results))

    def to_frame(self, with_members: bool = False) -> pd.DataFrame:
        """``essay_id, score`` (+ ``flags, flag_evidence, model_score`` when flagged)
        (+ ``blended`` and one column per member with ``with_members``)."""
        df = pd.DataFrame({"essay_id": self.essay_id, "score": self.score.astype(int)})
        if self.flag_results is not None:
            df["flags"] = [r.flags_text for r in self.flag_results]
            df["flag_evidence"] = [r.evidence_text for r in self.flag_results]
            df["model_score"] = np.asarray(self.model_score).astype(int)
        if with_members:
            df["blended"] = self.blended
            for j, m in enumerate(self.members):
                df[m] = self.member_preds[:, j]
        return df


class Scorer(Protocol):
    """Anything that maps texts to fold-averaged member predictions."""

    ensemble: EnsembleArtifact

    def predict_members(self, texts: list[str]) -> np.ndarray:
        """[N] texts -> [N, M] predictions on the 1..6 scale in ``ensemble.members`` order."""
        ...


def decode_texts(values: np.ndarray) -> list[str]:
    """Essay texts from a served TEXT tensor (bytes or str); names an empty batch or the row
    that is not UTF-8 (``ValueError``)."""
    if values.size == 0:
        raise ValueError("empty batch: send at least one essay")
    texts = []
    for i, x in enumerate(values.reshape(-1)):
        try:
            texts.append(x.decode("utf-8") if isinstance(x, bytes) else str(x))
        except UnicodeDecodeError as e:
            raise ValueError(f"TEXT row {i} is not valid UTF-8: {e}") from e
    return texts


def require_fold_models(ensemble: EnsembleArtifact, members: Mapping[str, Sequence]) -> None:
    """Raise unless every transformer member of ``ensemble`` has fold models in ``members``
    (what every scorer is built from)."""
    missing = [m for m in ensemble.members if m != GBDT_MEMBER and not members.get(m)]
    if missing:
        raise ValueError(f"ensemble members {missing} have no fold models; given: "
                         f"{sorted(members)}")


def score_frame(scorer: Scorer, essays: pd.DataFrame,
                flagger: EssayFlagger | None = None) -> ScoredEssays:
    """Score a table (essay_id, full_text [, prompt_name]) with any scorer; identical blending
    for all. With ``flagger`` (the serving bundle's ``Bundle.flagger()``) every essay is
    flagged (its ``prompt_name`` used when the table has one) and flagged scores are capped by
    the flagger's policy."""
    texts = essays["full_text"].tolist()
    preds = scorer.predict_members(texts) if texts else np.zeros((0, len(scorer.ensemble.members)))
    blended = scorer.ensemble.blend(preds, texts)  # a stacker ensemble needs the texts
    scored = ScoredEssays(
        essay_id=essays["essay_id"].astype(str).tolist(),
        score=scorer.ensemble.to_scores(blended),
        blended=blended,
        member_preds=preds,
        members=list(scorer.ensemble.members),
        spread=scorer.ensemble.score_spread(blended),
    )
    if flagger is None:
        return scored
    prompts = essays["prompt_name"].tolist() if "prompt_name" in essays.columns else None
    return scored.with_flags(flagger.flag(texts, prompts) if texts else [], flagger)
