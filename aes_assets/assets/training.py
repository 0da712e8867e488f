"""Training stage: the backbone-keyed asset factory and the out-of-fold table.

Per configured backbone ``b`` (a config entry, no code): ``b/mlm_backbone`` and
``b/fold_head_checkpoints`` (fold x head partitions, two-stage recipe). ``oof_predictions``
gathers every backbone's partitions into one table. Other stages add their own per-backbone
assets the same way: write ``def my_assets(cfg, backbone) -> list`` and extend
``backbone_assets``.
"""


import dagster as dg
import pandas as pd

from aes_assets.assets.backbone import backbone_group, mlm_backbone_asset
from aes_assets.configs import TrainConfig, effective
from aes_assets.metadata import md
from aes_assets.partitions import FOLD_DIM, HEAD_DIM, fold_and_head, fold_head_partitions
from aes_core.config import AesConfig, BackboneSection
from aes_resources.gpu import GpuResource
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

FOLD_HEAD_ASSET = "fold_head_checkpoints"
OOF_ASSET = "oof_predictions"


def fold_head_key(backbone: str) -> dg.AssetKey:
    return dg.AssetKey([backbone, FOLD_HEAD_ASSET])


def mlm_key(backbone: str) -> dg.AssetKey:
    return dg.AssetKey([backbone, "mlm_backbone"])


def partition_key(fold: int, head: str) -> str:
    return str(dg.MultiPartitionKey({FOLD_DIM: str(fold), HEAD_DIM: head}))


def fold_head_asset(cfg: AesConfig, backbone: BackboneSection) -> dg.AssetsDefinition:
    """``{backbone}/fold_head_checkpoints``: one partition = one fold x head, two stages."""
    name = backbone.name

    @dg.asset(
        name=FOLD_HEAD_ASSET, key_prefix=[name], group_name=backbone_group(name),
        partitions_def=fold_head_partitions(cfg),
        ins={"folded_essays": dg.AssetIn(key="folded_essays"),
             "mlm_backbone": dg.AssetIn(key=mlm_key(name))},
        description=f"Backbone {name!r} + head fine-tuned on folds != i in two stages; the "
                    "final model folder, stage QWKs and OOF predictions on fold i.",
        kinds={"pytorch"},
    )
    def _fold_head(context: dg.AssetExecutionContext, config: TrainConfig,
                   settings: PipelineSettings, artifacts: ArtifactStore, mlflow: MlflowTracker,
                   gpu: GpuResource, folded_essays: pd.DataFrame, mlm_backbone: dict) -> dict:
        from pathlib import Path

        from aes_core.training.stages import FoldHeadJob, train_fold_head

        full = settings.load()
        full = full.model_copy(update={"train": effective(full.train, config)})
        fold, head = fold_and_head(context)
        pk = context.partition_key
        tags = dict(context.run.tags)
        out = artifacts.folder(context.asset_key, pk)
        job = FoldHeadJob(
            cfg=full, backbone=full.backbone(name), backbone_path=Path(mlm_backbone["path"]),
            fold=fold, head=head, out_dir=out, trainer_kwargs=gpu.trainer_kwargs(pk, tags),
            device=gpu.inference_device(pk, tags), amp_dtype=gpu.amp_dtype(),
            log_fn=context.log.info,
        )
        context.log.info(f"{name} fold {fold} head {head}: trainer {job.trainer_kwargs}, "
                         f"artifacts {out}")
        params = {"train": full.train.model_dump(), "heads": full.heads.model_dump(),
                  "backbone": full.backbone(name).model_dump(), "fold": fold, "head": head,
                  "backbone_path": mlm_backbone["path"],
                  "trainer": {k: str(v) for k, v in job.trainer_kwargs.items()}}
        run_tags = {"asset": f"{name}/{FOLD_HEAD_ASSET}", "partition": pk, "backbone": name,
                    "head": head, "fold": str(fold), "dagster_run_id": context.run_id}
        with mlflow.run(f"{name}/{FOLD_HEAD_ASSET}[{pk}]", params=params, tags=run_tags) as run:
            if run is not None:
                from lightning.pytorch.loggers import MLFlowLogger

                def loggers(stage: str) -> list:
                    return [MLFlowLogger(experiment_name=mlflow.experiment,
                                         tracking_uri=mlflow.tracking_uri,
                                         run_id=run.info.run_id, prefix=stage)]

                job.loggers = loggers
            result = train_fold_head(job, folded_essays)
            if run is not None:
                import mlflow as mlf

                mlf.log_metrics({k: v for k, v in (
                    ("stage1_val_qwk", result["stage1_val_qwk"]),
                    ("stage2_val_qwk", result["stage2_val_qwk"]),
                    ("fold_qwk", result["fold_qwk"])) if v is not None})
                mlf.log_param("checkpoint_path", result["model_dir"])
                mlf.set_tag("notes", "; ".join(result["notes"])[:5000] or "none")
        context.add_output_metadata({
            "model_dir": dg.MetadataValue.path(result["model_dir"]),
            "stage1_val_qwk": result["stage1_val_qwk"],
            "stage2_val_qwk": result["stage2_val_qwk"],
            "fold_qwk": result["fold_qwk"], "fold_essays": result["fold_essays"],
            "stage1_resumed_from": str(result["stage1"].get("resumed_from")),
            "notes": "; ".join(result["notes"]) or "none",
            "trainable_params": result["trainable_params"],
        })
        return result

    return _fold_head


def backbone_assets(cfg: AesConfig, backbone: BackboneSection) -> list[dg.AssetsDefinition]:
    """Every asset keyed by one backbone (``{backbone}/...``)."""
    return [mlm_backbone_asset(cfg, backbone), fold_head_asset(cfg, backbone)]


def oof_predictions_asset(cfg: AesConfig) -> dg.AssetsDefinition:
    """``oof_predictions``: every backbone x head member's out-of-fold predictions."""
    names = [b.name for b in cfg.backbones]

    @dg.asset(
        name=OOF_ASSET, group_name="training",
        deps=[fold_head_key(n) for n in names],
        ins={"folded_essays": dg.AssetIn(key="folded_essays")},
        description="Out-of-fold predictions (1..6) of every {backbone}__{head} member on "
                    "every essay; fails listing partitions that are not trained.",
    )
    def _oof(context: dg.AssetExecutionContext, settings: PipelineSettings,
             artifacts: ArtifactStore, mlflow: MlflowTracker,
             folded_essays: pd.DataFrame) -> pd.DataFrame:
        from aes_core.training.oof import MissingPartitionsError, build_oof_table, qwk_reports
        full = settings.load()
        dirs = {}
        for bb in full.backbones:
            for head in full.heads.heads:
                for fold in range(full.folds.n_folds):
                    dirs[(bb.name, head, fold)] = artifacts.path(
                        fold_head_key(bb.name), partition_key(fold, head))
        try:
            table = build_oof_table(folded_essays, dirs)
        except MissingPartitionsError as e:
            raise dg.Failure(description=str(e)) from e
        reports = qwk_reports(table)
        overall = reports["overall"]["qwk"].to_dict()
        with mlflow.run(OOF_ASSET, params={"members": list(overall)},
                        tags={"asset": OOF_ASSET}) as run:
            if run is not None:
                import mlflow as mlf

                mlf.log_metrics({f"oof_qwk.{m}": v for m, v in overall.items()})
        for m, v in overall.items():
            context.log.info(f"OOF QWK {m}: {v:.4f}")
        context.add_output_metadata({
            "rows": len(table), "members": list(overall),
            "qwk_per_head": md(reports["overall"]), "qwk_per_fold": md(reports["per_fold"]),
            "qwk_per_prompt": md(reports["per_prompt"]),
            **{f"qwk/{m}": float(v) for m, v in overall.items()},
        })
        return table

    return _oof


def training_assets(cfg: AesConfig) -> list[dg.AssetsDefinition]:
    """All backbones' assets plus ``oof_predictions``, shaped by the configuration."""
    out: list[dg.AssetsDefinition] = []
    for bb in cfg.backbones:
        out += backbone_assets(cfg, bb)
    return out + [oof_predictions_asset(cfg)]
