"""The ensemble artifact (JSON) and how it turns member predictions into scores.

This is the one place that blends: the submission asset, the Triton scorer model, the
sensor and the teachers' page all call :meth:`EnsembleArtifact.blend` / ``to_scores``.

``method`` says how: ``nelder_mead`` is the weighted sum of the members (``weights``);
``stacker`` is a meta-model over the members and essay statistics, saved as a folder next to
``ensemble.json`` (``stacker_dir``), which needs the essay texts: ``blend(preds, texts)``.
``thresholds`` are always those of the method applied.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from aes_core.ensemble.thresholds import cut

STACKER_DIRNAME = "stacker"  # the stacker's folder, beside ensemble.json


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
    method: Literal["nelder_mead", "stacker"] = Field(
        "nelder_mead", description="how blend() combines members: weighted sum or stacker")
    stacker_dir: str | None = Field(
        None, description="the stacker's folder (method stacker); relative = to ensemble.json")
    nested_qwk: dict[str, float] = Field(
        default_factory=dict, description="nested-CV QWK (fitted without the scored fold) of "
        "each member (own thresholds), nelder_mead, stacker and stacker_<kind>")
    _stacker: Any = PrivateAttr(default=None)

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

    @property
    def needs_texts(self) -> bool:
        """True when :meth:`blend` needs the essay texts (a stacker ensemble)."""
        return self.method == "stacker"

    def attach_stacker(self, stacker: Any) -> EnsembleArtifact:
        """Use an in-memory fitted stacker (``save`` writes it next to ensemble.json)."""
        self._stacker = stacker
        return self

    def stacker(self) -> Any:
        """The stacker this artifact applies (in memory, or loaded from ``stacker_dir``)."""
        if self.method != "stacker":
            raise ValueError("this ensemble blends with Nelder-Mead weights; it has no stacker")
        if self._stacker is None:
            if not self.stacker_dir:
                raise ValueError("stacker ensemble without stacker_dir: save() it, or load it "
                                 "with EnsembleArtifact.load(path to ensemble.json)")
            folder = Path(self.stacker_dir).resolve()
            meta = folder / "stacker.json"
            if not meta.exists():
                raise FileNotFoundError(f"{meta} not found: the stacker of this ensemble is "
                                        f"missing (stacker_dir {self.stacker_dir!r})")
            self._stacker = _load_stacker(str(folder), meta.stat().st_mtime_ns)
        return self._stacker

    def blend(self, member_preds: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """[N, M] predictions on the 1..6 scale, columns in ``members`` order -> [N].

        Nelder-Mead: the weighted sum (``texts`` is not needed). Stacker: the meta-model over
        the predictions and the statistics of ``texts`` (row-aligned; required).
        """
        member_preds = np.asarray(member_preds, dtype=np.float64)
        if member_preds.ndim != 2 or member_preds.shape[1] != len(self.members):
            raise ValueError(f"expected [N, {len(self.members)}] member predictions, "
                             f"got {member_preds.shape}")
        if self.method == "nelder_mead":
            return member_preds @ np.asarray(self.weights)
        if texts is None:
            raise ValueError("this ensemble blends with a stacker, which needs the essay "
                             "texts: call blend(member_preds, texts)")
        texts = list(texts)
        if len(texts) != len(member_preds):
            raise ValueError(f"{len(texts)} texts for {len(member_preds)} prediction rows")
        if not texts:
            return np.zeros(0)
        return self.stacker().predict(member_preds, texts)

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
        """Write the JSON; a stacker ensemble also writes its stacker to ``<dir>/stacker/``.

        On disk ``stacker_dir`` is relative (the folder moves as a whole); in memory it
        becomes that folder's absolute path, so the artifact's dict can be loaded anywhere.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        on_disk = self
        if self.method == "stacker":
            target = path.parent / STACKER_DIRNAME
            source = Path(self.stacker_dir).resolve() if self.stacker_dir else None
            if self._stacker is not None:
                if target.exists():
                    shutil.rmtree(target)
                self._stacker.save(target)
            elif source is None or not source.exists():
                raise ValueError(f"stacker ensemble: stacker folder {self.stacker_dir!r} not "
                                 f"found and no stacker in memory; cannot save to {path}")
            elif source != target.resolve():
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(source, target)
            self.stacker_dir = str(target.resolve())
            on_disk = self.model_copy(update={"stacker_dir": STACKER_DIRNAME})
        tmp = path.with_name(path.name + ".tmp")  # readers never see a half-written file
        tmp.write_text(on_disk.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EnsembleArtifact:
        """Read ensemble.json; a relative ``stacker_dir`` resolves against its folder."""
        path = Path(path)
        art = cls.model_validate(json.loads(path.read_text()))
        if art.stacker_dir and not Path(art.stacker_dir).is_absolute():
            art.stacker_dir = str((path.parent / art.stacker_dir).resolve())
        return art


@lru_cache(maxsize=4)
def _load_stacker(folder: str, mtime_ns: int) -> Any:
    """Loaded once per folder and version (``mtime_ns`` of its stacker.json)."""
    from aes_core.ensemble.stacker import Stacker  # the stacker imports LightGBM: load lazily

    return Stacker.load(folder)


def apply_thresholds(pred: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Serving's threshold rule is the fitting's rule: one implementation, ``thresholds.cut``."""
    return cut(pred, thresholds).astype(int)

