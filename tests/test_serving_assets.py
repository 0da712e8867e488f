"""The serving stage as Dagster assets: onnx_models (blocking parity check), tensorrt_engines
(skip reason here), triton_repo and submission through a real Triton server, then in-process
with identical scores. Upstream data/GBDT assets are the real ones; the fold x head
checkpoints are tiny real regressors stored where the training stage stores them.
"""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from aes_assets.definitions import build_definitions
from aes_core.config import load_config
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.tensorrt import tensorrt_unavailable_reason
from tests.conftest import tiny_overrides, write_profile
from tests.serving_support import BACKBONE, save_ensemble, write_checkpoints

pytestmark = pytest.mark.slow


def _materialize(defs, keys, partition_key=None, run_config=None, instance=None):
    assets = list(defs.assets) + list(defs.asset_checks or [])
    res = dg.materialize(assets, selection=dg.AssetSelection.assets(*keys),
                         partition_key=partition_key, resources=defs.resources,
                         run_config=run_config, instance=instance)
    assert res.success
    return res


def _check_evals(res):
    return [e.event_specific_data for e in res.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_backbone):
    tmp = tmp_path_factory.mktemp("serving_assets")
    ov = tiny_overrides(tmp, tiny_backbone)
    ov["serving"].update({"use_triton": True, "history_dir": str(tmp / "history"),
                          "request_batch_size": 8, "max_batch_size": 8})
    ov["heads"]["heads"] = ["mean", "lstm"]
    profile = write_profile(tmp, ov)
    cfg = load_config(str(profile))
    storage = tmp / "storage"
    write_checkpoints(storage, tiny_backbone, cfg.heads.heads, cfg.folds.n_folds)
    defs = build_definitions(str(profile))
    instance = dg.DagsterInstance.ephemeral()
    _materialize(defs, ["raw_essays", "persuade_reference", "folded_essays", "test_essays",
                        "gbdt_member", "gbdt_oof"], instance=instance)
    members = [f"{BACKBONE}__{h}" for h in cfg.heads.heads] + ["gbdt"]
    save_ensemble(storage, EnsembleArtifact(members=members, weights=[0.2, 0.2, 0.6],
                                            n_folds=cfg.folds.n_folds))
    onnx_key = dg.AssetKey([BACKBONE, "onnx_models"])
    parity = []
    pdef = defs.resolve_asset_graph().get(onnx_key).partitions_def
    for pk in pdef.get_partition_keys():
        parity += _check_evals(_materialize(defs, [onnx_key], partition_key=pk,
                                            instance=instance))
    res = _materialize(defs, ["tensorrt_engines", "triton_repo", "submission"],
                       instance=instance)
    return {"cfg": cfg, "defs": defs, "instance": instance, "parity": parity, "res": res,
            "storage": storage, "tmp": tmp}


def _meta(res, key):
    mats = res.asset_materializations_for_node(key)
    return mats[-1].metadata


def test_onnx_parity_check_passes_per_partition(pipeline):
    parity = pipeline["parity"]
    assert len(parity) == 4  # 2 folds x 2 heads
    for ev in parity:
        assert ev.passed and ev.check_name == "onnx_parity"
        assert ev.metadata["max_abs_diff"].value <= ev.metadata["atol"].value
        assert ev.metadata["rounded_scores_equal"].value is True


def test_failed_parity_blocks(pipeline):
    """A tolerance no export can meet fails the blocking check (and the run's downstream)."""
    defs, key = pipeline["defs"], dg.AssetKey([BACKBONE, "onnx_models"])
    assets = list(defs.assets) + list(defs.asset_checks or [])
    res = dg.materialize(assets, selection=dg.AssetSelection.assets(key),
                         partition_key="0|lstm", resources=defs.resources,
                         run_config={"ops": {"tiny__onnx_models": {"config": {
                             "parity_atol": 1e-15}}}}, raise_on_error=False)
    evals = _check_evals(res)
    assert evals and not evals[0].passed
    assert evals[0].metadata["atol"].value == 1e-15


def test_tensorrt_records_skip_reason(pipeline):
    meta = _meta(pipeline["res"], "tensorrt_engines")
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("a TensorRT builder and GPU exist here: the build path ran instead")
    assert meta["skipped"].value is True
    assert meta["reason"].value == reason and "tensorrt" in reason.lower()


def test_submission_through_triton(pipeline):
    cfg, res = pipeline["cfg"], pipeline["res"]
    meta = _meta(res, "submission")
    assert meta["scored_via"].value.startswith("triton")
    sub = pd.read_csv(pipeline["storage"] / "submission.csv", dtype={"essay_id": str})
    test = res.output_for_node("submission")
    assert list(sub.columns) == ["essay_id", "score"]
    from aes_core.data import io

    ids = io.load_essays(cfg.data.test_path)["essay_id"].astype(str)
    assert sorted(sub["essay_id"]) == sorted(ids) and sub["essay_id"].is_unique
    assert sub["score"].between(1, 6).all() and sub["score"].dtype.kind == "i"
    assert (test["score"].to_numpy() == sub["score"].to_numpy()).all()
    assert "test_qwk" in meta and "confusion_matrix" in meta
    repo = _meta(res, "triton_repo")
    assert repo["models"].value == 5  # 2 folds x 2 heads + scorer (gbdt runs in the scorer)


def test_submission_in_process_is_identical(pipeline):
    defs = pipeline["defs"]
    before = pd.read_csv(pipeline["storage"] / "submission.csv", dtype={"essay_id": str})
    res = _materialize(defs, ["submission"], instance=pipeline["instance"],
                       run_config={"ops": {"submission": {"config": {"use_triton": False}}}})
    assert _meta(res, "submission")["scored_via"].value.startswith("onnxruntime")
    after = pd.read_csv(pipeline["storage"] / "submission.csv", dtype={"essay_id": str})
    pd.testing.assert_frame_equal(before, after)
    stored = json.loads((pipeline["storage"] / "tables" / "triton_repo.json").read_text())
    assert set(stored["member_dirs"]) == {"tiny__mean", "tiny__lstm"}
    assert np.isfinite(_meta(res, "submission")["test_qwk"].value)


def test_submission_falls_back_when_no_server_starts(pipeline):
    """A tritonserver that cannot start (here: exits at once) -> in-process, same scores."""
    tmp = pipeline["tmp"]
    import yaml

    prof = yaml.safe_load((tmp / "test.yaml").read_text())
    prof["serving"]["triton_binary"] = "/bin/false"
    broken = tmp / "broken.yaml"
    broken.write_text(yaml.safe_dump(prof))
    defs = build_definitions(str(broken))
    before = pd.read_csv(pipeline["storage"] / "submission.csv", dtype={"essay_id": str})
    res = _materialize(defs, ["submission"], instance=pipeline["instance"])
    assert _meta(res, "submission")["scored_via"].value.startswith("onnxruntime")
    assert "exited with code" in _meta(res, "submission")["triton_fallback_reason"].value
    after = pd.read_csv(pipeline["storage"] / "submission.csv", dtype={"essay_id": str})
    pd.testing.assert_frame_equal(before, after)


def test_write_submission_rejects_non_integer_scores(tmp_path):
    from aes_core.serving.submission import SubmissionError, write_submission

    # a fractional score must fail validation, not be truncated to a valid-looking int
    df = pd.DataFrame({"essay_id": ["a", "b"], "score": [3, 2.5]})
    with pytest.raises(SubmissionError, match=r"scores outside 1..6 for essay_id \['b'\]"):
        write_submission(df, ["a", "b"], tmp_path / "submission.csv")
    assert not (tmp_path / "submission.csv").exists()
