"""ONNX export of every registered head (dynamic axes, parity on real essays), the serving
bundle those exports are committed into (folds of the ensemble only, relocatable, clear errors
when incomplete) and the TensorRT profile/config logic (the build itself needs a builder +
GPU: skipped here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from aes_core.config import ExportSection
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.bundle import ExportTask, build_bundle, export_member
from aes_core.export.onnx import ONNX_FILE, check_parity, export_onnx, load_spec
from aes_core.export.tensorrt import (
    SeqProfile,
    build_engine,
    sequence_profile,
    tensorrt_unavailable_reason,
    workspace_bytes,
)
from aes_core.models.heads import HEADS
from aes_core.serving.manifest import Bundle, BundleError, write_manifest
from tests.serving_support import (
    commit_bundle,
    export_checkpoints,
    make_checkpoints,
    make_regressor,
    sample_essays,
)


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


@pytest.fixture(scope="module")
def four_fold_bundle(tmp_path_factory, tiny_backbone):
    """Folds 0..3 exported (an earlier 4-fold run), then a bundle for a 3-fold ensemble."""
    tmp = tmp_path_factory.mktemp("bundle")
    ckpts = make_checkpoints(tmp / "checkpoints", tiny_backbone, ["mean"], 4)
    exports = export_checkpoints(tmp / "bundle", ckpts)
    ens = EnsembleArtifact(members=["tiny__mean"], weights=[1.0], n_folds=3)
    return {"bundle": commit_bundle(tmp / "bundle", ens, exports), "exports": exports,
            "ckpts": ckpts, "tmp": tmp}


def test_bundle_holds_only_the_ensembles_folds(four_fold_bundle):
    # fold 3's model must not be averaged in (Triton's repository only holds folds 0..2)
    bundle, exports = four_fold_bundle["bundle"], four_fold_bundle["exports"]
    (entry,) = bundle.manifest.members
    assert entry.name == "tiny__mean" and (entry.backbone, entry.head) == ("tiny", "mean")
    assert [Path(f).name.split("-")[0] for f in entry.folds] == ["fold0", "fold1", "fold2"]
    assert bundle.member_dirs()["tiny__mean"] == [Path(e.member_dir) for e in exports[:3]]
    assert not Path(exports[3].member_dir).exists()  # no longer referenced: pruned
    assert entry.spec == load_spec(exports[0].member_dir)
    for folder in bundle.member_dirs()["tiny__mean"]:
        assert folder.is_relative_to(bundle.root)
        assert {ONNX_FILE, "model.safetensors", "aes_model.json", "parity.json"} <= {
            p.name for p in folder.iterdir()}
    assert all(not Path(p).is_absolute() for p in entry.folds)  # relocatable


def test_export_member_reuses_a_checked_export(four_fold_bundle):
    e0 = four_fold_bundle["exports"][0]
    before = (Path(e0.member_dir) / ONNX_FILE).stat().st_mtime_ns
    (again,) = export_checkpoints(four_fold_bundle["bundle"].root,
                                  [four_fold_bundle["ckpts"]["0|mean"]])
    assert again.member_dir == e0.member_dir and again.parity == e0.parity
    assert (Path(e0.member_dir) / ONNX_FILE).stat().st_mtime_ns == before


def test_bundle_load_names_a_missing_member_folder(four_fold_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(four_fold_bundle["bundle"].root, copy)
    assert Bundle.load(copy).member_dirs()["tiny__mean"][0].is_relative_to(copy)
    gone = Bundle.load(copy).manifest.members[0].folds[1]
    shutil.rmtree(copy / gone)
    with pytest.raises(BundleError, match=rf"serving bundle {copy} is incomplete: member "
                                          rf"tiny__mean: {gone} is missing"):
        Bundle.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no serving bundle .* serving_bundle asset"):
        Bundle.load(copy)


def test_write_manifest_keeps_a_working_manifest(four_fold_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(four_fold_bundle["bundle"].root, copy)
    good = (copy / "manifest.json").read_text()
    m = Bundle.load(copy).manifest
    entry = m.members[0]
    broken = m.model_copy(update={"members": [entry.model_copy(update={
        "folds": [*entry.folds, "members/tiny__mean/fold9-x"]})]})
    with pytest.raises(BundleError, match="member tiny__mean: members/tiny__mean/fold9-x is "
                                          "missing"):
        write_manifest(copy, broken)
    assert (copy / "manifest.json").read_text() == good


def _rebased(exports, src: Path, dst: Path):
    return [e.model_copy(update={"member_dir": str(dst / Path(e.member_dir).relative_to(src))})
            for e in exports]


def test_a_bundle_is_never_committed_with_a_missing_export(four_fold_bundle, tmp_path):
    """Fold 3's export was pruned by the 3-fold commit; a 4-fold ensemble built from the stored
    export records must fail before anything changes, naming the folder."""
    src = four_fold_bundle["bundle"].root
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    exports = _rebased(four_fold_bundle["exports"], src, copy)
    gone = Path(exports[3].member_dir)
    assert not gone.exists()
    ens = EnsembleArtifact(members=["tiny__mean"], weights=[1.0], n_folds=4)
    with pytest.raises(ValueError, match=rf"tiny__mean: the exported folder of fold 3 "
                                         rf"\({gone.relative_to(copy)}\) is missing"):
        build_bundle(copy, ens, exports, None, None)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    assert Bundle.load(copy).ensemble.n_folds == 3


def test_failed_parity_never_touches_the_served_folder(four_fold_bundle, tmp_path):
    """An export failing its parity check is kept aside; the bundle cannot be built from it."""
    copy = tmp_path / "copy"
    shutil.copytree(four_fold_bundle["bundle"].root, copy)
    ck = four_fold_bundle["ckpts"]["1|mean"]
    served = copy / Bundle.load(copy).manifest.members[0].folds[1]
    onnx_before = (served / ONNX_FILE).read_bytes()
    bad = export_member(ExportTask(checkpoint_json=ck.model_dump_json(), bundle_dir=str(copy),
                                   opset=17, parity_texts=sample_essays(4)["full_text"].tolist(),
                                   parity_atol=1e-15))
    assert not bad.parity["passed"] and Path(bad.member_dir) != served
    assert (served / ONNX_FILE).read_bytes() == onnx_before
    assert json.loads((served / "parity.json").read_text())["passed"] is True
    Bundle.load(copy)  # still complete
    exports = _rebased(four_fold_bundle["exports"][:3], four_fold_bundle["bundle"].root, copy)
    exports[1] = bad
    ens = Bundle.load(copy).ensemble
    with pytest.raises(ValueError, match=r"tiny__mean: the ONNX export of fold\(s\) \[1\] "
                                         r"failed its parity check"):
        build_bundle(copy, ens, exports, None, None)
    assert Bundle.load(copy).member_dirs()["tiny__mean"][1] == served
