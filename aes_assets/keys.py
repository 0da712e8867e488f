"""Every asset key of the graph, in one place (assets, checks, jobs, sensors and the driver
refer to these)."""

from __future__ import annotations

import dagster as dg

RAW_ESSAYS = dg.AssetKey("raw_essays")
TEST_ESSAYS = dg.AssetKey("test_essays")
PERSUADE = dg.AssetKey("persuade_reference")
UNLABELLED = dg.AssetKey("unlabelled_essays")
FOLDED = dg.AssetKey("folded_essays")
OOF = dg.AssetKey("oof_predictions")
GBDT = dg.AssetKey("gbdt_member")
GBDT_OOF = dg.AssetKey("gbdt_oof")
ENSEMBLE = dg.AssetKey("ensemble_weights")
REPORT = dg.AssetKey("scoring_report")
TENSORRT = dg.AssetKey("tensorrt_engines")
BUNDLE = dg.AssetKey("serving_bundle")
TRITON_REPO = dg.AssetKey("triton_repo")
SUBMISSION = dg.AssetKey("submission")
STUDENT = dg.AssetKey("student_model")
FLAGGER = dg.AssetKey("essay_flagger")
ROBUSTNESS = dg.AssetKey("robustness_set")

MLM_ASSET, FOLD_HEAD_ASSET, ONNX_ASSET = "mlm_backbone", "fold_head_checkpoints", "onnx_models"


def mlm_key(backbone: str) -> dg.AssetKey:
    return dg.AssetKey([backbone, MLM_ASSET])


def fold_head_key(backbone: str) -> dg.AssetKey:
    return dg.AssetKey([backbone, FOLD_HEAD_ASSET])


def onnx_key(backbone: str) -> dg.AssetKey:
    return dg.AssetKey([backbone, ONNX_ASSET])


def backbone_group(backbone: str) -> str:
    return f"backbone_{backbone}"


def ins_name(key: dg.AssetKey) -> str:
    """A key as a Python identifier for ``ins`` (``a/b`` -> ``a__b``)."""
    return "__".join(key.path)
