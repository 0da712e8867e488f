"""ONNX export of every registered head (dynamic axes, parity on real essays) and the
TensorRT profile/config logic (the build itself needs a builder + GPU: skipped here)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from aes_core.config import ExportSection
from aes_core.export.onnx import ONNX_FILE, check_parity, export_onnx, load_spec
from aes_core.export.tensorrt import (
    SeqProfile,
    build_engine,
    sequence_profile,
    tensorrt_unavailable_reason,
    workspace_bytes,
)
from aes_core.models.heads import HEADS
from tests.serving_support import make_regressor, sample_essays


@pytest.mark.parametrize("head", sorted(HEADS))
def test_export_parity_every_head(tmp_path, tiny_backbone, head):
    reg = make_regressor(tiny_backbone, tmp_path / "reg", head, seed=1)
    onnx_path = export_onnx(reg, tmp_path / "member")
    assert onnx_path.name == ONNX_FILE and load_spec(tmp_path / "member").head == head
    assert (tmp_path / "member" / "backbone" / "tokenizer_config.json").exists()
    texts = sample_essays(6)["full_text"].tolist()
    report = check_parity(reg, onnx_path, texts, atol=1e-4, batch_size=4)
    assert report.passed, report.to_dict()
    assert report.n_essays == 6 and report.max_abs_diff < 1e-4
    # dynamic batch and sequence axes: shapes never seen at export time
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for b, t in [(1, 7), (5, 63)]:
        ids = np.full((b, t), 1012, dtype=np.int64)
        out = sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        assert out.shape == (b,) and np.isfinite(out).all()


def test_parity_detects_a_different_model(tmp_path, tiny_backbone):
    a = make_regressor(tiny_backbone, tmp_path / "a", "mean", seed=1)
    b = make_regressor(tiny_backbone, tmp_path / "b", "mean", seed=2)
    onnx_b = export_onnx(b, tmp_path / "mb")
    report = check_parity(a, onnx_b, sample_essays(4)["full_text"].tolist(), atol=1e-4)
    assert not report.passed and report.max_abs_diff > 1e-4


def test_sequence_profile_from_token_lengths():
    cfg = ExportSection(trt_opt_quantile=0.5, trt_min_quantile=0.0, trt_max_batch=16)
    lengths = [30, 80, 120, 200, 700, 900]
    p = sequence_profile(lengths, max_length=512, cfg=cfg)
    assert (p.min_len, p.max_len) == (30, 512)
    assert p.opt_len == int(np.ceil(np.quantile(np.minimum(lengths, 512), 0.5)))
    assert p.min_len <= p.opt_len <= p.max_len
    assert (p.min_batch, p.opt_batch, p.max_batch) == (1, 8, 16)
    assert p.shapes() == ((1, 30), (8, p.opt_len), (16, 512))
    # every essay longer than max_length: the profile collapses to max_length, still valid
    q = sequence_profile([600, 700], max_length=256, cfg=cfg)
    assert q.min_len == q.opt_len == q.max_len == 256
    with pytest.raises(ValueError, match="at least one"):
        sequence_profile([], 128, cfg)
    with pytest.raises(ValueError, match="positive"):
        sequence_profile([0, 5], 128, cfg)


def test_workspace_from_config():
    assert workspace_bytes(ExportSection(trt_workspace_mb=2048)) == 2048 * 2**20


def test_build_engine_records_skip_reason_without_builder(tmp_path, tiny_backbone):
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT builder and GPU present: the real build runs in the asset")
    reg = make_regressor(tiny_backbone, tmp_path / "reg", "mean", seed=1)
    onnx_path = export_onnx(reg, tmp_path / "m")
    cfg = ExportSection(trt_workspace_mb=256)
    res = build_engine(onnx_path, tmp_path / "engine", SeqProfile(8, 32, 64, 1, 4, 8), cfg)
    assert res.skipped and res.plan_path is None and res.reason == reason
    assert res.workspace_bytes == 256 * 2**20 and res.profile["opt_len"] == 32
    assert not (tmp_path / "engine").exists()


def test_loader_ignores_stale_folds_beyond_the_ensemble(tmp_path):
    import json

    from aes_core.config import load_config
    from aes_core.ensemble.artifact import EnsembleArtifact
    from aes_core.serving.loader import resolve_artifacts

    # folds 0..3 exported by an earlier 4-fold run; the current ensemble was fit on 3 folds:
    # fold 3's model must not be averaged in (Triton's repository only holds folds 0..2)
    cfg = load_config("cpu-small").model_copy(update={"storage_root": str(tmp_path)})
    tables = tmp_path / "tables"
    for fold in range(4):
        d = tmp_path / "artifacts" / "minilm" / "onnx_models" / f"{fold}__mean"
        d.mkdir(parents=True)
        (d / ONNX_FILE).write_bytes(b"")
        meta = tables / "minilm" / "onnx_models" / f"{fold}__mean.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"member_dir": str(d), "fold": fold, "head": "mean"}))
    EnsembleArtifact(members=["minilm__mean"], weights=[1.0], n_folds=3).save(
        tables / "ensemble_weights.json")
    dirs = resolve_artifacts(cfg).members["minilm__mean"]
    assert [d.name for d in dirs] == ["0__mean", "1__mean", "2__mean"]
