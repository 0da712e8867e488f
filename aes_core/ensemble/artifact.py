"""The ensemble artifact (JSON) and how it turns member predictions into scores.

This is the one place that blends: the submission asset, the Triton scorer model, the
sensor and the teachers' page all call :meth:`EnsembleArtifact.blend` / ``to_scores``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, model_validator

from aes_core.ensemble.thresholds import cut


class EnsembleArtifact(BaseModel):
    """Members (``{backbone}__{head}`` or ``gbdt``), weights summing to 1, 5 thresholds."""

    members: list[str]
    weights: list[float]
    thresholds: list[float] = Field(default_factory=lambda: [1.5, 2.5, 3.5, 4.5, 5.5])
    oof_qwk: dict[str, float] = Field(default_factory=dict, description="member/blend -> QWK")
    fold_qwk: dict[str, list[float]] = Field(default_factory=dict)
    n_folds: int = 0
    notes: str = ""
    oof_qwk_rounded: dict[str, float] = Field(
        default_factory=dict, description="member/blend -> QWK with plain rounding (1.5..5.5)"
    )
    selected: str = Field("", description="optimized | equal_blend | <member> (best on OOF)")

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleArtifact:
        if len(self.members) != len(self.weights):
            raise ValueError(f"{len(self.members)} members but {len(self.weights)} weights")
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        if any(w < 0 for w in self.weights):
            raise ValueError(f"negative weight in {self.weights}")
        if abs(sum(self.weights) - 1.0) > 1e-6:
            raise ValueError(f"weights sum to {sum(self.weights)}, expected 1")
        if len(self.thresholds) != 5 or list(self.thresholds) != sorted(self.thresholds):
            raise ValueError(f"thresholds must be 5 increasing cut points, got {self.thresholds}")
        return self

    def blend(self, member_preds: np.ndarray) -> np.ndarray:
        """[N, M] predictions on the 1..6 scale, columns in ``members`` order -> [N]."""
        member_preds = np.asarray(member_preds, dtype=np.float64)
        if member_preds.ndim != 2 or member_preds.shape[1] != len(self.members):
            raise ValueError(f"expected [N, {len(self.members)}] member predictions, "
                             f"got {member_preds.shape}")
        return member_preds @ np.asarray(self.weights)

    def to_scores(self, blended: np.ndarray) -> np.ndarray:
        """Blended predictions -> integer scores 1..6 by the thresholds."""
        return apply_thresholds(blended, self.thresholds)

    def score_spread(self, blended: np.ndarray, temperature: float = 0.35) -> np.ndarray:
        """A probability-like spread over scores 1..6 from the distance to each cut point."""
        b = np.asarray(blended, dtype=np.float64)[:, None]
        cuts = np.asarray(self.thresholds)[None, :]
        above = 1.0 / (1.0 + np.exp(-(b - cuts) / temperature))  # P(score > k)
        cum = np.concatenate([np.ones_like(b), above, np.zeros_like(b)], axis=1)
        return np.clip(cum[:, :-1] - cum[:, 1:], 0.0, 1.0)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")  # readers never see a half-written file
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EnsembleArtifact:
        return cls.model_validate(json.loads(Path(path).read_text()))


def apply_thresholds(pred: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Serving's threshold rule is the fitting's rule: one implementation, ``thresholds.cut``."""
    return cut(pred, thresholds).astype(int)

