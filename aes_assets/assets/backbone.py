"""Backbone stage: ``{backbone}/mlm_backbone``, masked-LM continued pretraining per backbone.

Built by a factory (one asset per configured backbone); ``aes_assets.assets.training``
gathers every per-backbone asset.
"""


import dagster as dg
import pandas as pd

from aes_assets import keys
from aes_assets.configs import run_config
from aes_assets.metadata import code_version, config_metadata
from aes_core.config import AesConfig, BackboneSection
from aes_core.contracts import MlmBackbone
from aes_core.models.backbone import resolve_backbone_path
from aes_resources.gpu import GpuResource
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore


def mlm_texts(folded_essays: pd.DataFrame, unlabelled_essays: pd.DataFrame) -> list[str]:
    """Training texts for MLM: the scored train essays plus the unlabelled ones (never test),
    exact duplicates dropped (first occurrence kept)."""
    texts = folded_essays["full_text"].astype(str).tolist()
    texts += unlabelled_essays["full_text"].astype(str).tolist()
    return list(dict.fromkeys(texts))


def mlm_backbone_asset(cfg: AesConfig, backbone: BackboneSection) -> dg.AssetsDefinition:
    """The ``{backbone}/mlm_backbone`` asset: an HF folder (or the base one passed through)."""
    name = backbone.name
    MlmRun = run_config(cfg, "mlm")

    @dg.asset(
        key=keys.mlm_key(name), group_name=keys.backbone_group(name),
        ins={"folded_essays": dg.AssetIn(key=keys.FOLDED),
             "unlabelled_essays": dg.AssetIn(key=keys.UNLABELLED)},
        code_version=code_version(cfg.mlm, backbone.encoder_only(), cfg.gpu.weight_settings()),
        description=f"Backbone {name!r} after masked-LM continued pretraining on train + "
                    "unlabelled essays (passed through when MLM is off).",
        kinds={"pytorch"},
    )
    def _mlm(context: dg.AssetExecutionContext, config: MlmRun, settings: PipelineSettings,
             artifacts: ArtifactStore, mlflow: MlflowTracker, gpu: GpuResource,
             folded_essays: pd.DataFrame, unlabelled_essays: pd.DataFrame) -> MlmBackbone:
        from aes_core.mlm import run_mlm

        full = settings.resolve(mlm=config)
        bb, mcfg = full.backbone(name), full.mlm
        base = resolve_backbone_path(bb)
        if not (mcfg.enabled and bb.use_mlm):
            why = ("mlm.enabled is false" if not mcfg.enabled
                   else f"backbones[{name}].use_mlm is false")
            context.log.info(f"MLM skipped ({why}): passing {base} through")
            context.add_output_metadata({"backbone_path": dg.MetadataValue.path(str(base)),
                                         "mlm_trained": False, "reason": why})
            return MlmBackbone(backbone=name, path=str(base), base_path=str(base),
                               mlm_trained=False, reason=why)
        texts = mlm_texts(folded_essays, unlabelled_essays)
        out = artifacts.folder(context.asset_key)  # run_mlm clears stale state, keeps resumable
        tags = dict(context.run.tags)
        with mlflow.run(f"{name}/mlm_backbone",
                        params={"mlm": mcfg.model_dump(), "backbone": bb.model_dump()},
                        tags={"asset": f"{name}/mlm_backbone", "backbone": name,
                              "dagster_run_id": context.run_id}) as run:
            res = run_mlm(base, out, texts, mcfg, bb.add_newline_tokens,
                          device=gpu.inference_device(name, tags), amp_dtype=gpu.amp_dtype(),
                          num_layers=bb.num_layers, progress=False,
                          trainer_kwargs=gpu.trainer_kwargs(name, tags),
                          log_fn=context.log.info)
            run.metrics({"perplexity_before": res["perplexity_before"],
                         "perplexity_after": res["perplexity_after"]})
            run.params({"output_path": res["path"]})
        result = MlmBackbone(backbone=name, path=res["path"], base_path=str(base),
                             mlm_trained=True, perplexity_before=res["perplexity_before"],
                             perplexity_after=res["perplexity_after"],
                             train_texts=res["train_texts"], holdout_texts=res["holdout_texts"],
                             steps=res["steps"], seconds=res["seconds"])
        context.log.info(f"MLM {name}: held-out perplexity {result.perplexity_before:.2f} -> "
                         f"{result.perplexity_after:.2f} in {result.seconds:.0f}s")
        context.add_output_metadata({
            "backbone_path": dg.MetadataValue.path(result.path),
            "perplexity_before": result.perplexity_before,
            "perplexity_after": result.perplexity_after,
            "train_texts": result.train_texts, "holdout_texts": result.holdout_texts,
            "steps": result.steps, "seconds": result.seconds, **config_metadata(mcfg, bb),
        })
        return result

    return _mlm
