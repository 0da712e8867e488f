"""The distilled student: pseudo-labels from the bundle's ensemble, Lightning training of a tiny
backbone on CPU, saved into the bundle and recorded in the manifest, then scored in process
(with the ensemble's thresholds) and kept by a rebuilt bundle of the same ensemble.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aes_core.config import SAMPLE_DIR, AesConfig, ServingSection
from aes_core.contracts import OnnxExport
from aes_core.data import io
from aes_core.export.bundle import build_bundle
from aes_core.serving.base import score_frame
from aes_core.serving.loader import in_process_scorer
from aes_core.serving.manifest import Bundle
from aes_core.serving.torch_scorer import TorchScorer
from aes_core.student import (
    StudentJob,
    distill,
    holdout_split,
    pseudo_labels,
    select_essays,
    student_backbone,
)
from tests.gpu_serving_support import build_tiny_bundle, one_torch_thread  # noqa: F401
from tests.serving_support import sample_essays


def _cfg(backbone_dir, **student) -> AesConfig:
    return AesConfig.model_validate({
        "backbones": [{"name": "tiny", "path": str(backbone_dir), "max_length": 64}],
        "heads": {"heads": ["mean", "lstm"], "lstm_hidden": 8, "attention_hidden": 8},
        "train": {"freeze_layers": 0, "log_every_n_steps": 1},
        "student": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "essays": "train",
                    "max_essays": 40, "holdout_fraction": 0.25, "lr": 1e-3, **student}})


@pytest.fixture(scope="module")
def folded():
    return io.load_train(SAMPLE_DIR / "train.csv.gz").head(60)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_backbone, folded):
    tmp = tmp_path_factory.mktemp("student")
    bundle = build_tiny_bundle(tmp / "bundle", tiny_backbone, ["mean", "lstm"])
    cfg = _cfg(tiny_backbone)
    job = StudentJob(cfg, tiny_backbone, bundle.root, tmp / "work")
    entry = distill(job, folded)
    return {"bundle_dir": bundle.root, "before": bundle, "entry": entry, "cfg": cfg, "job": job}


def test_select_essays(folded):
    unl = pd.DataFrame({"full_text": ["an unlabelled essay", folded["full_text"].iloc[0], " "]})
    cfg = _cfg("unused").student
    both = cfg.model_copy(update={"essays": "train+unlabelled", "max_essays": None})
    texts = select_essays(both, folded, unl)
    assert len(texts) == len(folded) + 1  # duplicate and blank dropped
    only = select_essays(cfg.model_copy(update={"essays": "unlabelled"}), folded,
                         pd.DataFrame({"full_text": [f"essay {i}" for i in range(9)]}))
    assert len(only) == 9
    capped = select_essays(cfg.model_copy(update={"max_essays": 10}), folded, None)
    assert capped == select_essays(cfg.model_copy(update={"max_essays": 10}), folded, None)
    assert len(capped) == 10
    with pytest.raises(ValueError, match="at least 4"):
        select_essays(cfg.model_copy(update={"essays": "unlabelled"}), folded, None)
    tr, ho = holdout_split(40, 0.25, 1)
    assert len(ho) == 10 and not set(tr) & set(ho) and len(tr) + len(ho) == 40


def test_student_backbone_overrides(tiny_backbone):
    bb = student_backbone(_cfg(tiny_backbone, max_length=32, num_layers=1))
    assert (bb.name, bb.max_length, bb.num_layers, bb.chunking) == ("tiny", 32, 1, False)
    with pytest.raises(ValueError, match="student.backbone"):
        student_backbone(_cfg(tiny_backbone, backbone="nope"))


def test_distilled_student_is_in_the_bundle(distilled):
    entry = distilled["entry"]
    bundle = Bundle.load(distilled["bundle_dir"])
    assert bundle.manifest.student == entry
    assert bundle.version() != distilled["before"].version()  # a new manifest: reloaded
    assert bundle.student_dir.is_dir() and (bundle.student_dir / "model.safetensors").exists()
    assert entry.train_essays == 30 and entry.holdout_essays == 10
    assert entry.spec.head == "mean" and entry.spec.max_length == 64
    assert entry.holdout_rmse is not None and np.isfinite(entry.holdout_rmse)
    assert -1.0 <= entry.holdout_agreement_qwk <= 1.0
    assert entry.distilled_from == bundle.ensemble_identity()
    ens = bundle.student_ensemble()
    assert ens.members == ["student"] and ens.thresholds == bundle.ensemble.thresholds
    assert not (distilled["job"].work_dir / entry.folder.split("/")[-1]).exists()


def test_student_scores_in_process(distilled):
    bundle = Bundle.load(distilled["bundle_dir"])
    essays = sample_essays(12)
    scorer = in_process_scorer(bundle, ServingSection(scorer="student"))
    assert isinstance(scorer, TorchScorer) and scorer.n_models == 1
    scored = score_frame(scorer, essays)
    scorer.close()
    assert scored.members == ["student"]
    assert ((scored.blended >= 1) & (scored.blended <= 6)).all()
    assert (scored.score == bundle.ensemble.to_scores(scored.blended)).all()


def test_same_student_is_not_trained_again(distilled, folded):
    again = distill(distilled["job"], folded)
    assert again == distilled["entry"]


def test_rebuilt_bundle_keeps_its_student_only_for_the_same_ensemble(distilled):
    bundle = Bundle.load(distilled["bundle_dir"])
    exports = [OnnxExport(member=m.name, backbone=m.backbone, head=m.head, fold=k,
                          member_dir=str(bundle.path(f)), onnx_path=str(bundle.path(f)),
                          model_dir=str(bundle.path(f)),
                          parity={"passed": True})  # checked when the bundle was built
               for m in bundle.manifest.members for k, f in enumerate(m.folds)]
    kept = build_bundle(bundle.root, bundle.ensemble, exports, None, None)
    assert kept.student == distilled["entry"]
    other = bundle.ensemble.model_copy(update={"weights": [0.9, 0.1]})
    dropped = build_bundle(bundle.root, other, exports, None, None)
    assert dropped.student is None
    # the ensemble back for the tests after this one (its student is gone: they do not use it)
    build_bundle(bundle.root, bundle.ensemble, exports, None, None)


def test_pseudo_labels_are_the_blended_score(distilled):
    bundle = Bundle.load(distilled["bundle_dir"])
    texts = sample_essays(6)["full_text"].tolist()
    blended = pseudo_labels(bundle, distilled["cfg"], texts)
    scorer = in_process_scorer(bundle, ServingSection())
    assert np.allclose(blended, bundle.ensemble.blend(scorer.predict_members(texts)))


def test_pseudo_labels_never_capture_cuda_graphs(distilled, monkeypatch):
    """Labelling scores batches, not single essays; a failed capture would leave the CUDA
    generator unusable for the student's training in the same process."""
    import aes_core.serving.loader as loader

    seen = []

    def spy(bundle, serving, **kw):
        seen.append(serving)
        return in_process_scorer(bundle, serving, **kw)

    monkeypatch.setattr(loader, "in_process_scorer", spy)
    base = distilled["cfg"]
    cfg = base.model_copy(update={"serving": base.serving.model_copy(update={"cuda_graphs": 4})})
    texts = sample_essays(3)["full_text"].tolist()
    blended = pseudo_labels(Bundle.load(distilled["bundle_dir"]), cfg, texts)
    assert len(blended) == 3
    assert [(s.cuda_graphs, s.scorer) for s in seen] == [(0, "ensemble")]
    assert cfg.serving.cuda_graphs == 4  # the caller's settings are left as they were


def test_student_asset(tmp_path, tiny_backbone, folded):
    """The Dagster asset itself, invoked with real resources (settings, storage, MLflow
    SQLite store, CPU trainer) and real inputs."""
    import dagster as dg

    from aes_assets.assets.student import STUDENT, student_assets
    from aes_core.contracts import MlmBackbone
    from aes_resources.gpu import GpuResource
    from aes_resources.mlflow import MlflowTracker
    from aes_resources.settings import PipelineSettings
    from aes_resources.storage import ArtifactStore

    bundle = build_tiny_bundle(tmp_path / "bundle", tiny_backbone, ["mean"])
    cfg = _cfg(tiny_backbone).model_copy(update={
        "storage_root": str(tmp_path / "storage"),
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "serving": ServingSection(bundle_dir=str(bundle.root))})
    off = cfg.model_copy(update={"student": cfg.student.model_copy(update={"enabled": False})})
    assert student_assets(off) == []
    (asset,) = student_assets(cfg)
    assert asset.key == STUDENT
    assert {k.to_user_string() for k in asset.dependency_keys} == {
        "folded_essays", "unlabelled_essays", "serving_bundle", "tiny/mlm_backbone"}
    mlm = MlmBackbone(backbone="tiny", path=str(tiny_backbone), base_path=str(tiny_backbone),
                      mlm_trained=False)
    unl = pd.DataFrame({"essay_id": ["u1"], "full_text": ["An unlabelled essay about school."]})
    inputs = {"folded_essays": folded, "unlabelled_essays": unl,
              "serving_bundle": bundle.manifest, "tiny/mlm_backbone": mlm}
    outputs = {}

    class Store(dg.IOManager):  # the upstream stages' outputs, as the pipeline hands them over
        def load_input(self, context):
            return inputs[context.asset_key.to_user_string()]

        def handle_output(self, context, obj):
            outputs[context.asset_key.to_user_string()] = obj

    sources = [dg.SourceAsset(dg.AssetKey.from_user_string(k)) for k in inputs]
    res = dg.materialize([asset, *sources], resources={
        "settings": PipelineSettings.from_config(cfg),
        "artifacts": ArtifactStore(root=str(tmp_path / "artifacts")),
        "mlflow": MlflowTracker.from_config(cfg),
        "gpu": GpuResource(accelerator="cpu"), "io_manager": Store()})
    assert res.success
    entry = outputs["student_model"]
    assert Bundle.load(bundle.root).manifest.student == entry
    assert entry.train_essays + entry.holdout_essays == 40
    meta = res.asset_materializations_for_node("student_model")[0].metadata
    assert meta["holdout_essays"].value == entry.holdout_essays


def test_student_has_its_own_instance_count():
    """The tokenizer-bound student gets more Triton instances than the ensemble's scorer."""
    from aes_core.export.triton_repo import SCORER, STUDENT, scorer_config

    serving = ServingSection(backend="torch_gpu", instance_count=1, student_instance_count=3)
    group = "instance_group [ {{ count: {} kind: KIND_GPU }} ]"
    assert group.format(1) in scorer_config(serving, ["a"], name=SCORER, kind="KIND_GPU")
    assert group.format(3) in scorer_config(serving, ["student"], name=STUDENT, kind="KIND_GPU")
    same = serving.model_copy(update={"student_instance_count": None})
    assert group.format(1) in scorer_config(same, ["student"], name=STUDENT, kind="KIND_GPU")
