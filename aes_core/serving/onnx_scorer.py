"""In-process ONNX Runtime scorer: exported members (folds × heads) + optional GBDT member.

Essays are sorted by length (characters, longest first) and cut into batches of
``batch_size`` padded only to the longest window of each batch (dynamic padding; chunked
members read every essay as windows, ``aes_core.models.tokens``). The Triton client sends
exactly these batches as requests and the Triton scorer runs each request as one padded batch,
so both paths see identical inputs: this matters for the BiLSTM head, whose backward pass runs
over the padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.onnx import ONNX_FILE, OUTPUT_NAME, load_spec
from aes_core.members import GBDT_MEMBER
from aes_core.models.regressor import BACKBONE_DIR, SIGMOID_LOSSES, RegressorSpec
from aes_core.models.tokens import (  # pad_batch, tokenize: imported from here elsewhere
    EssayBatch,
    encode_batch,
    pad_batch,  # noqa: F401
    text_batches,
    tokenize,  # noqa: F401
)
from aes_core.serving.base import require_fold_models


def logits_to_scores_np(logits: np.ndarray, loss: str) -> np.ndarray:
    """NumPy twin of ``regressor.logits_to_scores`` (float64), used by every serving path."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    x = 1.0 / (1.0 + np.exp(-x)) if loss in SIGMOID_LOSSES else np.clip(x, 0.0, 1.0)
    return 1.0 + 5.0 * x


def fold_average(fold_logits: list[np.ndarray], loss: str) -> np.ndarray:
    """[F] arrays of logits [B] -> [B] mean score over folds (1..6 scale, float64)."""
    return np.mean(np.stack([logits_to_scores_np(x, loss) for x in fold_logits]), axis=0)


@dataclass
class OnnxMember:
    """One exported fold model: ONNX session + spec (+ tokenizer folder)."""

    folder: Path
    spec: RegressorSpec
    session: object

    @classmethod
    def load(cls, folder: str | Path, intra_op_threads: int = 0) -> OnnxMember:
        import onnxruntime as ort

        folder = Path(folder)
        if not (folder / ONNX_FILE).exists():
            raise FileNotFoundError(f"{folder}: no {ONNX_FILE} (materialize onnx_models)")
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        sess = ort.InferenceSession(str(folder / ONNX_FILE), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
        return cls(folder=folder, spec=load_spec(folder), session=sess)

    def logits(self, batch: EssayBatch) -> np.ndarray:
        """[B] logits, one per essay of the batch."""
        out = self.session.run([OUTPUT_NAME], batch.feeds())[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


class OnnxScorer:
    """Implements ``aes_core.serving.base.Scorer`` with ONNX Runtime in this process.

    ``members`` maps each transformer member name (``{backbone}__{head}``) to its fold
    folders; ``gbdt_dir`` is the GBDT member folder when the ensemble has ``gbdt``.
    """

    def __init__(self, ensemble: EnsembleArtifact, members: dict[str, list[str | Path]],
                 gbdt_dir: str | Path | None = None, batch_size: int = 16,
                 intra_op_threads: int = 0, show_progress: bool = False):
        self.ensemble = ensemble
        self.batch_size = batch_size
        self.show_progress = show_progress
        require_fold_models(ensemble, members)
        self.members = {m: [OnnxMember.load(f, intra_op_threads) for f in members[m]]
                        for m in ensemble.members if m != GBDT_MEMBER}
        self.gbdt = None
        if GBDT_MEMBER in ensemble.members:
            if gbdt_dir is None:
                raise ValueError("the ensemble has a 'gbdt' member but no gbdt_dir was given")
            from aes_core.ensemble.gbdt import GbdtMember

            # each essay analyzed once for all folds; warmed up here, not in the first request
            self.gbdt = GbdtMember.load(gbdt_dir).warm_up()
        self._tokenizers: dict[Path, object] = {}

    def _tokenizer(self, folder: Path):
        from transformers import AutoTokenizer

        key = folder / BACKBONE_DIR
        if key not in self._tokenizers:
            self._tokenizers[key] = AutoTokenizer.from_pretrained(str(key),
                                                                  local_files_only=True)
        return self._tokenizers[key]

    def predict_batch(self, name: str, texts: list[str]) -> np.ndarray:
        """[B] fold-averaged scores of one member for one batch (padded together)."""
        folds = self.members[name]
        batch = encode_batch(self._tokenizer(folds[0].folder), texts, folds[0].spec)
        return fold_average([m.logits(batch) for m in folds], folds[0].spec.loss)

    def predict_members(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.ensemble.members)), dtype=np.float64)
        if not texts:
            return out
        batches = text_batches(texts, self.batch_size)
        if self.show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="onnx scoring", leave=False)
        for idx in batches:
            chunk = [texts[i] for i in idx]
            for j, m in enumerate(self.ensemble.members):
                if m != GBDT_MEMBER:
                    out[idx, j] = self.predict_batch(m, chunk)
        if self.gbdt is not None:
            j = self.ensemble.members.index(GBDT_MEMBER)
            out[:, j] = np.asarray(self.gbdt.predict(texts), dtype=np.float64).reshape(-1)
        return out
