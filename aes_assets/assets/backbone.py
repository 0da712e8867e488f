"""Backbone stage: ``{backbone}/mlm_backbone``, masked-LM continued pretraining per backbone.

Built by a factory (one asset per configured backbone); see ``aes_assets.assets.training``
for ``backbone_assets``, which gathers every per-backbone asset.
"""


import dagster as dg
import pandas as pd

from aes_assets.configs import MlmConfig, effective
from aes_core.config import AesConfig, BackboneSection
from aes_core.models.backbone import resolve_backbone_path
from aes_resources.gpu import GpuResource
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

MLM_ASSET = "mlm_backbone"


def backbone_group(backbone: str) -> str:
    return f"backbone_{backbone}"


def mlm_texts(folded_essays: pd.DataFrame, unlabelled_essays: pd.DataFrame) -> list[str]:
    """Training texts for MLM: the scored train essays plus the unlabelled ones (never test)."""
    texts = folded_essays["full_text"].astype(str).tolist()
    texts += unlabelled_essays["full_text"].astype(str).tolist()
    return list(dict.fromkeys(texts))  # drop exact duplicates, keep order


def mlm_backbone_asset(cfg: AesConfig, backbone: BackboneSection) -> dg.AssetsDefinition:
    """The ``{backbone}/mlm_backbone`` asset: an HF folder (or the base one passed through)."""
    name = backbone.name

    @dg.asset(
        name=MLM_ASSET, key_prefix=[name], group_name=backbone_group(name),
        ins={"folded_essays": dg.AssetIn(key="folded_essays"),
             "unlabelled_essays": dg.AssetIn(key="unlabelled_essays")},
        description=f"Backbone {name!r} after masked-LM continued pretraining on train + "
                    "unlabelled essays (passed through when MLM is off).",
        kinds={"pytorch"},
    )
    def _mlm(context: dg.AssetExecutionContext, config: MlmConfig, settings: PipelineSettings,
             artifacts: ArtifactStore, mlflow: MlflowTracker, gpu: GpuResource,
             folded_essays: pd.DataFrame, unlabelled_essays: pd.DataFrame) -> dict:
        from aes_core.mlm import run_mlm

        full = settings.load()
        bb = full.backbone(name)
        mcfg = effective(full.mlm, config)
        base = resolve_backbone_path(bb)
        if not (mcfg.enabled and bb.use_mlm):
            why = "mlm.enabled is false" if not mcfg.enabled else f"backbones[{name}].use_mlm " \
                                                                   "is false"
            context.log.info(f"MLM skipped ({why}): passing {base} through")
            context.add_output_metadata({"backbone_path": dg.MetadataValue.path(str(base)),
                                         "mlm_trained": False, "reason": why})
            return {"path": str(base), "base_path": str(base), "mlm_trained": False,
                    "perplexity_before": None, "perplexity_after": None, "reason": why}
        texts = mlm_texts(folded_essays, unlabelled_essays)
        out = artifacts.folder(context.asset_key, fresh=True)
        with mlflow.run(f"{name}/mlm_backbone",
                        params={"mlm": mcfg.model_dump(), "backbone": bb.model_dump()},
                        tags={"asset": f"{name}/mlm_backbone", "backbone": name}):
            result = run_mlm(base, out, texts, mcfg, bb.add_newline_tokens,
                             device=gpu.inference_device(), amp_dtype=gpu.amp_dtype(),
                             num_layers=bb.num_layers)
            if mlflow.enabled:
                import mlflow as mlf

                mlf.log_metrics({"perplexity_before": result["perplexity_before"],
                                 "perplexity_after": result["perplexity_after"]})
                mlf.log_param("output_path", result["path"])
        context.log.info(f"MLM {name}: held-out perplexity {result['perplexity_before']:.2f} -> "
                         f"{result['perplexity_after']:.2f}")
        context.add_output_metadata({
            "backbone_path": dg.MetadataValue.path(result["path"]),
            "perplexity_before": result["perplexity_before"],
            "perplexity_after": result["perplexity_after"],
            "train_texts": result["train_texts"], "holdout_texts": result["holdout_texts"],
            "steps": result["steps"], "seconds": result["seconds"],
        })
        return result

    return _mlm
