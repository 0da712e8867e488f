"""Student stage: ``student_model``, a regressor distilled from the serving bundle's ensemble.

The ensemble pseudo-labels train and/or unlabelled essays with its blended score; one backbone
+ head (``student.*``) is fine-tuned from ``{backbone}/mlm_backbone`` to reproduce it and
saved into the bundle (``student/<hash>/``, recorded in the manifest). Serving uses it with
the ensemble's thresholds when ``serving.scorer: student``; the Triton repository serves it
as the model ``student``. Library: ``aes_core.student``.
"""


import dagster as dg
import pandas as pd

from aes_assets import keys
from aes_assets.metadata import code_version, config_metadata
from aes_core.config import AesConfig
from aes_core.contracts import MlmBackbone
from aes_core.serving.manifest import ServingManifest, StudentEntry
from aes_resources.gpu import GpuResource
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

GROUP = "export"
STUDENT = keys.STUDENT


def student_assets(cfg: AesConfig) -> list[dg.AssetsDefinition]:
    """``student_model`` when ``student.enabled`` (else nothing)."""
    if not cfg.student.enabled:
        return []
    from aes_core.student import student_backbone

    backbone = student_backbone(cfg)

    @dg.asset(
        key=STUDENT, group_name=GROUP,
        ins={"folded_essays": dg.AssetIn(key=keys.FOLDED),
             "unlabelled_essays": dg.AssetIn(key=keys.UNLABELLED),
             "serving_bundle": dg.AssetIn(key=keys.BUNDLE),
             "mlm_backbone": dg.AssetIn(key=keys.mlm_key(backbone.name))},
        code_version=code_version(cfg.student, cfg.train, backbone.encoder_only(),
                                  cfg.gpu.weight_settings()),
        description="A student regressor trained to reproduce the ensemble's blended score "
                    "(pseudo-labels on train/unlabelled essays), saved into the serving "
                    "bundle; serving.scorer: student serves it with the ensemble's thresholds.",
        kinds={"pytorch"},
    )
    def student_model(context: dg.AssetExecutionContext, settings: PipelineSettings,
                      artifacts: ArtifactStore, mlflow: MlflowTracker, gpu: GpuResource,
                      folded_essays: pd.DataFrame, unlabelled_essays: pd.DataFrame,
                      serving_bundle: ServingManifest,
                      mlm_backbone: MlmBackbone) -> StudentEntry:
        from pathlib import Path

        from aes_core.student import StudentJob, distill

        full = settings.config
        tags = dict(context.run.tags)
        job = StudentJob(cfg=full, backbone_path=Path(mlm_backbone.path),
                         bundle_dir=full.bundle_dir,
                         work_dir=artifacts.folder(context.asset_key),
                         trainer_kwargs=gpu.trainer_kwargs("student", tags),
                         device=gpu.inference_device("student", tags), amp_dtype=gpu.amp_dtype(),
                         log_fn=context.log.info, progress=False)
        with mlflow.run("student_model", params={"student": full.student.model_dump(),
                                                 "backbone_path": mlm_backbone.path},
                        tags={"asset": "student_model",
                              "dagster_run_id": context.run_id}) as run:
            entry = distill(job, folded_essays, unlabelled_essays)
            run.metrics({"holdout_rmse": entry.holdout_rmse,
                         "holdout_agreement_qwk": entry.holdout_agreement_qwk,
                         "train_essays": entry.train_essays, "seconds": entry.seconds})
        context.add_output_metadata({
            "student_dir": dg.MetadataValue.path(str(full.bundle_dir / entry.folder)),
            "backbone": entry.backbone, "head": entry.spec.head,
            "max_length": entry.spec.max_length, "train_essays": entry.train_essays,
            "holdout_essays": entry.holdout_essays, "holdout_rmse": entry.holdout_rmse,
            "holdout_agreement_qwk": entry.holdout_agreement_qwk, "seconds": entry.seconds,
            **config_metadata(full.student)})
        return entry

    return [student_model]
