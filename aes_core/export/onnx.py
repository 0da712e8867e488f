"""Export a saved EssayRegressor to ONNX and check parity with PyTorch on real essays.

An exported member folder is self-contained (what the ONNX Runtime scorer, the Triton
repository and the teachers' page read)::

    model.onnx        inputs input_ids / attention_mask [batch, seq] int64 -> logits [batch];
                      chunked models: input_ids / attention_mask [windows, seq] int64 and
                      window_weights [essays, windows] float32 -> logits [essays]
    aes_model.json    the RegressorSpec (head, loss, max_length, newline tokens, chunking)
    backbone/         tokenizer + HF config (no weights)

The TorchScript exporter (``dynamo=False``) is used: it handles all registered heads,
including the BiLSTM with a dynamic sequence axis, and needs no ``onnxscript``.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from aes_core.models.regressor import (
    BACKBONE_DIR,
    SPEC_FILE,
    EssayRegressor,
    load_regressor_tokenizer,
    logits_to_scores,
)
from aes_core.models.spec import ONNX_FILE, load_spec  # noqa: F401  (re-exported)
from aes_core.models.tokens import ATTENTION_MASK, INPUT_IDS, WINDOW_WEIGHTS, encode_batch

INPUT_NAMES = [INPUT_IDS, ATTENTION_MASK]
OUTPUT_NAME = "logits"


class ExportError(RuntimeError):
    """An export or parity check failed; the message names the model folder."""


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: EssayRegressor):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


class _PooledLogits(_LogitsOnly):
    """Chunked models: the third input pools windows into essays."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                window_weights: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask, window_weights)


def _example_inputs(chunked: bool) -> tuple[tuple[torch.Tensor, ...], dict[str, dict[int, str]]]:
    """Tracing inputs and dynamic axes: 2 essays (chunked: 3 windows, 2 + 1)."""
    rows = 3 if chunked else 2
    ids = torch.randint(low=1000, high=2000, size=(rows, 16), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[-1, 10:] = 0
    if not chunked:
        return (ids, mask), {INPUT_IDS: {0: "batch", 1: "seq"},
                             ATTENTION_MASK: {0: "batch", 1: "seq"}, OUTPUT_NAME: {0: "batch"}}
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float32)
    return (ids, mask, weights), {INPUT_IDS: {0: "windows", 1: "seq"},
                                  ATTENTION_MASK: {0: "windows", 1: "seq"},
                                  WINDOW_WEIGHTS: {0: "essays", 1: "windows"},
                                  OUTPUT_NAME: {0: "essays"}}


def export_onnx(model_dir: str | Path, out_dir: str | Path, opset: int = 17) -> Path:
    """Export ``model_dir`` (EssayRegressor folder) to ``out_dir/model.onnx`` + tokenizer/spec.

    Batch (chunked: windows and essays) and sequence axes are dynamic. Returns the ONNX path.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = EssayRegressor.from_pretrained(model_dir)
    chunked = model.spec.chunking
    wrapper = (_PooledLogits if chunked else _LogitsOnly)(model).eval()
    inputs, axes = _example_inputs(chunked)
    onnx_path = out_dir / ONNX_FILE
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, inputs, str(onnx_path),
            input_names=INPUT_NAMES + ([WINDOW_WEIGHTS] if chunked else []),
            output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False, dynamic_axes=axes,
        )
    if not onnx_path.exists():
        raise ExportError(f"{model_dir}: torch.onnx.export wrote no file at {onnx_path}")
    if not _same(model_dir / SPEC_FILE, out_dir / SPEC_FILE):  # a linked copy already has them
        shutil.copy2(model_dir / SPEC_FILE, out_dir / SPEC_FILE)
        if (out_dir / BACKBONE_DIR).exists():
            shutil.rmtree(out_dir / BACKBONE_DIR)
        shutil.copytree(model_dir / BACKBONE_DIR, out_dir / BACKBONE_DIR)
    return onnx_path


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


@dataclass
class ParityReport:
    """Max |onnx − torch| over real essays, and whether final scores agree exactly."""

    n_essays: int
    max_abs_diff: float
    score_max_abs_diff: float
    rounded_scores_equal: bool
    atol: float
    mismatched_rows: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol and self.rounded_scores_equal

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_parity(model_dir: str | Path, onnx_path: str | Path, texts: list[str],
                 atol: float = 1e-3, batch_size: int = 8) -> ParityReport:
    """Run PyTorch and ONNX Runtime on the same tokenized essays (padded batches, the windows
    of chunked models).

    Final scores are compared after rounding to the 1..6 integer scale (the thresholds of
    the ensemble are applied later to the blend; identical rounded member scores and a
    tiny max difference together guarantee identical served scores in practice).
    """
    import onnxruntime as ort

    if not texts:
        raise ExportError(f"{model_dir}: parity needs at least one essay")
    model = EssayRegressor.from_pretrained(model_dir)
    spec = model.spec
    tok = load_regressor_tokenizer(model_dir)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    torch_logits, onnx_logits = [], []
    for i in range(0, len(texts), batch_size):
        batch = encode_batch(tok, texts[i:i + batch_size], spec)
        with torch.no_grad():
            torch_logits.append(model(*batch.tensors().values()).numpy())
        onnx_logits.append(sess.run([OUTPUT_NAME], batch.feeds())[0])
    t = np.concatenate(torch_logits).astype(np.float64)
    o = np.concatenate(onnx_logits).astype(np.float64)
    ts = logits_to_scores(torch.from_numpy(t), spec.loss).numpy()
    os_ = logits_to_scores(torch.from_numpy(o), spec.loss).numpy()
    rt, ro = np.clip(np.rint(ts), 1, 6), np.clip(np.rint(os_), 1, 6)
    mismatched = [int(i) for i in np.flatnonzero(rt != ro)]
    return ParityReport(
        n_essays=len(texts), max_abs_diff=float(np.max(np.abs(t - o))),
        score_max_abs_diff=float(np.max(np.abs(ts - os_))),
        rounded_scores_equal=not mismatched, atol=atol, mismatched_rows=mismatched,
    )
