"""The scorer interface shared by the submission asset, the sensor and the teachers' page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from aes_core.ensemble.artifact import EnsembleArtifact


@dataclass
class ScoredEssays:
    essay_id: list[str]
    score: np.ndarray            # [N] int 1..6
    blended: np.ndarray          # [N] float, the weighted sum before thresholds
    member_preds: np.ndarray     # [N, M] float 1..6, fold-averaged, columns = members
    members: list[str]
    spread: np.ndarray           # [N, 6] probability-like spread over scores 1..6

    def to_frame(self, with_members: bool = False) -> pd.DataFrame:
        df = pd.DataFrame({"essay_id": self.essay_id, "score": self.score.astype(int)})
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


def score_frame(scorer: Scorer, essays: pd.DataFrame) -> ScoredEssays:
    """Score a table (essay_id, full_text) with any scorer; identical blending for all."""
    texts = essays["full_text"].tolist()
    preds = scorer.predict_members(texts) if texts else np.zeros((0, len(scorer.ensemble.members)))
    blended = scorer.ensemble.blend(preds, texts)  # a stacker ensemble needs the texts
    return ScoredEssays(
        essay_id=essays["essay_id"].astype(str).tolist(),
        score=scorer.ensemble.to_scores(blended),
        blended=blended,
        member_preds=preds,
        members=list(scorer.ensemble.members),
        spread=scorer.ensemble.score_spread(blended),
    )
