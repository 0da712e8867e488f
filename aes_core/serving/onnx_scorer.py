"""In-process ONNX Runtime scorer: exported members (folds × heads) + optional GBDT member.

Essays are sorted by length (characters, longest first) and cut into batches of
``batch_size`` padded only to the longest essay of each batch (dynamic padding). The Triton
client sends exactly these batches as requests and the Triton scorer runs each request as one
padded batch, so both paths see identical inputs: this matters for the BiLSTM head, whose
backward pass runs over the padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.onnx import ONNX_FILE, OUTPUT_NAME, load_spec
from aes_core.members import GBDT_MEMBER
from aes_core.models.backbone import encode_newlines
from aes_core.models.regressor import BACKBONE_DIR, RegressorSpec


def logits_to_scores_np(logits: np.ndarray, loss: str) -> np.ndarray:
    """NumPy twin of ``regressor.logits_to_scores`` (float64), used by every serving path."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if loss == "bce":
        x = 1.0 / (1.0 + np.exp(-x))
    return 1.0 + 5.0 * x


def tokenize(tokenizer, texts: list[str], spec: RegressorSpec) -> list[list[int]]:
    """Token ids per essay (no padding), exactly as in training: newline tokens, truncation."""
    enc = tokenizer([encode_newlines(t, spec.add_newline_tokens) for t in texts],
                    truncation=True, max_length=spec.max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (input_ids, attention_mask) int64 [B, T]."""
    width = max((len(s) for s in seqs), default=1) or 1
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def length_sorted_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar character length (longest first, stable)."""
    order = np.argsort(-np.asarray([len(t) for t in texts], dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


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

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT_NAME], {"input_ids": input_ids,
                                               "attention_mask": attention_mask})[0]
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
        missing = [m for m in ensemble.members if m != GBDT_MEMBER and not members.get(m)]
        if missing:
            raise ValueError(f"ensemble members {missing} have no exported fold models; "
                             f"given: {sorted(members)}")
        self.members = {m: [OnnxMember.load(f, intra_op_threads) for f in members[m]]
                        for m in ensemble.members if m != GBDT_MEMBER}
        self.gbdt = None
        if GBDT_MEMBER in ensemble.members:
            if gbdt_dir is None:
                raise ValueError("the ensemble has a 'gbdt' member but no gbdt_dir was given")
            from aes_core.ensemble.gbdt import GbdtMember

            self.gbdt = GbdtMember.load(gbdt_dir)
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
        tok = self._tokenizer(folds[0].folder)
        seqs = tokenize(tok, texts, folds[0].spec)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids, mask = pad_batch(seqs, pad)
        return fold_average([m.logits(ids, mask) for m in folds], folds[0].spec.loss)

    def predict_members(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.ensemble.members)), dtype=np.float64)
        if not texts:
            return out
        batches = length_sorted_batches(texts, self.batch_size)
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
