"""The serving stage as Dagster assets: onnx_models (a single-run backfill with one blocking
parity check over its partitions), tensorrt_engines (skip reason here), serving_bundle,
triton_repo and submission through a real Triton server, then in-process with identical
scores; finally the bundle alone, copied away from a deleted pipeline storage, still serves.

Upstream data/GBDT assets are the real ones; the fold x head checkpoints (tiny real
regressors) and the ensemble weights come from stand-in assets under the real keys, stored by
the real IO manager (training and blending have their own tests).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from aes_assets import keys
from aes_assets.definitions import build_definitions
from aes_assets.partitions import fold_head_partitions
from aes_assets.pipeline import RANGE_END, RANGE_START
from aes_core.config import load_config
from aes_core.contracts import FoldHeadCheckpoint, TritonRepoResult
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.tensorrt import tensorrt_unavailable_reason
from aes_core.serving.manifest import Bundle
from aes_resources.storage import decode
from tests.conftest import tiny_overrides, write_profile
from tests.serving_support import BACKBONE, make_checkpoints

pytestmark = pytest.mark.slow
ONNX_KEY = keys.onnx_key(BACKBONE)


def stand_ins(cfg, ckpts: dict[str, FoldHeadCheckpoint], ens: EnsembleArtifact) -> list:
    """The training stage's and the blend's outputs under their real keys."""

    @dg.asset(key=keys.fold_head_key(BACKBONE), partitions_def=fold_head_partitions(cfg, BACKBONE),
              backfill_policy=dg.BackfillPolicy.single_run(),
              group_name=keys.backbone_group(BACKBONE))
    def fold_head_checkpoints(context):
        out = {pk: ckpts[pk] for pk in context.partition_keys}
        return out if len(out) > 1 else next(iter(out.values()))

    @dg.asset(key=keys.ENSEMBLE, group_name="ensemble")
    def ensemble_weights():
        return ens

    return [fold_head_checkpoints, ensemble_weights]


def _graph(defs, replaced: list) -> list:
    """The definitions' assets and checks with ``replaced`` standing in for their keys."""
    gone = {k for a in replaced for k in a.keys}
    assets = [a for a in defs.assets if not set(a.keys) & gone]
    checks = [c for c in defs.asset_checks or []
              if not {k.asset_key for k in c.check_keys} & gone]
    return assets + checks + replaced


def _materialize(assets, resources, keys_, partition_key=None, run_config=None, instance=None,
                 tags=None, raise_on_error=True):
    res = dg.materialize(assets, selection=dg.AssetSelection.assets(*keys_),
                         partition_key=partition_key, resources=resources,
                         run_config=run_config, instance=instance, tags=tags,
                         raise_on_error=raise_on_error)
    assert res.success or not raise_on_error
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
    defs = build_definitions(str(profile))
    ckpts = make_checkpoints(tmp / "checkpoints", tiny_backbone, cfg.heads_for(BACKBONE),
                             cfg.folds.n_folds)
    members = [f"{BACKBONE}__{h}" for h in cfg.heads_for(BACKBONE)] + ["gbdt"]
    ens = EnsembleArtifact(members=members, weights=[0.2, 0.2, 0.6], n_folds=cfg.folds.n_folds)
    assets = _graph(defs, stand_ins(cfg, ckpts, ens))
    rs = defs.resources
    instance = dg.DagsterInstance.ephemeral()
    _materialize(assets, rs, ["raw_essays", "persuade_reference", "folded_essays",
                              "test_essays", "gbdt_member", "gbdt_oof", "ensemble_weights",
                              "essay_flagger"], instance=instance)
    pks = fold_head_partitions(cfg, BACKBONE).get_partition_keys()
    backfill = {RANGE_START: pks[0], RANGE_END: pks[-1]}  # one run over every partition
    _materialize(assets, rs, [keys.fold_head_key(BACKBONE)], instance=instance, tags=backfill)
    onnx = _materialize(assets, rs, [ONNX_KEY], instance=instance, tags=backfill)
    res = _materialize(assets, rs, ["serving_bundle", "tensorrt_engines", "triton_repo",
                                    "submission"], instance=instance)
    return {"cfg": cfg, "defs": defs, "assets": assets, "instance": instance, "onnx": onnx,
            "res": res, "storage": Path(cfg.storage_root), "tmp": tmp, "ckpts": ckpts,
            "pks": pks}


def _meta(res, key):
    mats = res.asset_materializations_for_node(key)
    return mats[-1].metadata


def test_onnx_parity_check_covers_every_partition_of_the_backfill(pipeline):
    onnx = pipeline["onnx"]
    (ev,) = _check_evals(onnx)  # one check result for the one step over 4 partitions
    assert ev.passed and ev.check_name == "onnx_parity"
    meta = {k: v.value for k, v in ev.metadata.items()}
    assert meta["partitions"] == 4 and meta["failed_partitions"] == []  # 2 folds x 2 heads
    assert 0 <= meta["max_abs_diff"] <= meta["atol"] == pipeline["cfg"].export.parity_atol
    assert meta["rounded_scores_equal"] is True
    mats = onnx.asset_materializations_for_node("tiny__onnx_models")
    assert sorted(m.partition for m in mats) == sorted(pipeline["pks"])
    assert all(m.metadata["parity_passed"].value is True for m in mats)
    # each partition's export is a folder of the committed bundle
    bundle = Bundle.load(pipeline["cfg"].bundle_dir)
    served = {p for ps in bundle.member_dirs().values() for p in ps}
    stored = {Path(m.metadata["member_dir"].value) for m in mats}
    assert stored == served and len(served) == 4


def test_failed_parity_blocks(pipeline):
    """A tolerance no export can meet fails the blocking check; the served bundle stays as it
    was and no bundle can be built from the failed export."""
    assets, rs, inst = pipeline["assets"], pipeline["defs"].resources, pipeline["instance"]
    bundle_dir = pipeline["cfg"].bundle_dir
    manifest_before = (bundle_dir / "manifest.json").read_text()
    res = _materialize(assets, rs, [ONNX_KEY], partition_key="0|lstm", instance=inst,
                       run_config={"ops": {"tiny__onnx_models": {"config": {
                           "parity_atol": 1e-15}}}}, raise_on_error=False)
    (ev,) = _check_evals(res)
    assert not ev.passed
    assert ev.metadata["atol"].value == 1e-15
    assert ev.metadata["failed_partitions"].value == ["0|lstm"]
    bundle = Bundle.load(bundle_dir)  # untouched: still complete, still the same commit
    assert (bundle_dir / "manifest.json").read_text() == manifest_before
    served = bundle.member_dirs()["tiny__lstm"][0]
    assert (served / "model.onnx").exists() and '"passed": true' in (
        served / "parity.json").read_text()
    bad = _materialize(assets, rs, ["serving_bundle"], instance=inst, raise_on_error=False)
    assert not bad.success
    error = str(bad.get_step_failure_events()[0].event_specific_data.error)
    assert "tiny__lstm: the ONNX export of fold(s) [0] failed its parity check" in error
    assert (bundle_dir / "manifest.json").read_text() == manifest_before
    # re-run at the profile's tolerance: the checked export in the bundle is reused
    ok = _materialize(assets, rs, [ONNX_KEY], partition_key="0|lstm", instance=inst)
    assert _check_evals(ok)[0].passed
    assert Path(_meta(ok, "tiny__onnx_models")["member_dir"].value) == served


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
    # where the scoring spent its time, from the server's counters: one request per batch
    from aes_core.data import io

    stages = meta["scoring_stages"].value
    n_test = len(io.load_essays(cfg.data.test_path))
    assert stages["essays"] == n_test
    assert stages["requests"] == -(-n_test // cfg.serving.request_batch_size)
    assert stages["device_ms_per_request"] > 0 and stages["tokenize_ms_per_request"] > 0
    sub = pd.read_csv(pipeline["storage"] / "submission.csv", dtype={"essay_id": str})
    test = res.output_for_node("submission")
    assert list(sub.columns) == ["essay_id", "score", "flags", "flag_evidence", "model_score"]

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
    res = _materialize(pipeline["assets"], defs.resources, ["submission"],
                       instance=pipeline["instance"],
                       run_config={"ops": {"submission": {"config": {"use_triton": False}}}})
    assert _meta(res, "submission")["scored_via"].value.startswith("onnxruntime")
    after = pd.read_csv(pipeline["storage"] / "submission.csv", dtype={"essay_id": str})
    pd.testing.assert_frame_equal(before, after)
    stored = decode(".json", (pipeline["storage"] / "tables" / "triton_repo.json").read_bytes())
    assert isinstance(stored, TritonRepoResult)  # stage results load back typed
    assert stored.models == {"tiny__mean": ["tiny__mean__f0", "tiny__mean__f1"],
                             "tiny__lstm": ["tiny__lstm__f0", "tiny__lstm__f1"], "gbdt": []}
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
    res = _materialize(list(defs.assets), defs.resources, ["submission"],
                       instance=pipeline["instance"])
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


def test_a_copied_bundle_serves_without_any_pipeline_storage(pipeline, tmp_path):
    """The bundle folder alone serves: copied elsewhere, with the pipeline's storage, the
    trained checkpoints and the Triton repository deleted, in-process ONNX Runtime and a
    Triton server on a repository generated from the copy, with the copy's flagger, give the
    submission's scores and flags.
    (Deletes the module's storage: keep this test last.)"""
    from aes_core.data import io
    from aes_core.export.triton_repo import write_triton_repo
    from aes_core.serving.base import score_frame
    from aes_core.serving.loader import IN_PROCESS, load_bundle, open_scorer
    from aes_core.serving.triton import free_port

    cfg = pipeline["cfg"]
    submitted = pd.read_csv(pipeline["storage"] / "submission.csv", dtype={"essay_id": str})
    copy = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(cfg.bundle_dir, copy)
    for gone in (cfg.storage_root, pipeline["tmp"] / "checkpoints", cfg.serving.triton_repo):
        shutil.rmtree(gone)
    assert not Path(cfg.storage_root).exists()
    assert str(cfg.storage_root) not in (copy / "manifest.json").read_text()

    bundle = load_bundle(copy)
    assert bundle.manifest.member_names() == ["tiny__mean", "tiny__lstm", "gbdt"]
    essays = io.load_essays(cfg.data.test_path)[["essay_id", "full_text"]]
    serving = cfg.serving.model_copy(update={
        "bundle_dir": str(copy), "triton_repo": str(tmp_path / "repo"), "use_triton": True,
        "http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()})
    in_process = serving.model_copy(update={"use_triton": False})
    flagger = bundle.flagger()  # the flags travel with the bundle too
    assert flagger is not None and bundle.flagger_dir.is_relative_to(copy)
    with open_scorer(bundle, in_process) as choice:
        assert choice.via == IN_PROCESS
        local = score_frame(choice.scorer, essays, flagger)
    write_triton_repo(serving.triton_repo, bundle, serving)
    with open_scorer(bundle, serving, start_server=True) as choice:
        assert choice.via.startswith("triton"), choice.fallback_reason
        remote = score_frame(choice.scorer, essays, flagger)
    np.testing.assert_array_equal(remote.score, local.score)
    np.testing.assert_allclose(remote.member_preds, local.member_preds, rtol=0, atol=1e-6)
    scores = local.to_frame().set_index("essay_id")
    assert (scores.loc[submitted["essay_id"], "score"].to_numpy()
            == submitted["score"].to_numpy()).all()
    assert (scores.loc[submitted["essay_id"], "flags"].fillna("").to_numpy()
            == submitted["flags"].fillna("").to_numpy()).all()
