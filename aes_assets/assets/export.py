"""Export stage: ``{backbone}/onnx_models`` (fold × head, parity-checked), ``tensorrt_engines``
and the generated Triton model repository ``triton_repo``.

``{backbone}/onnx_models`` is built per backbone by :func:`export_assets` on the same fold ×
head partitions as ``{backbone}/fold_head_checkpoints``; its parity with PyTorch is a blocking
asset check emitted by the asset itself, so nothing downstream runs on a bad export.
"""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from aes_assets.configs import ExportConfig, ServingConfig, effective
from aes_assets.metadata import md
from aes_assets.partitions import fold_and_head, fold_head_partitions
from aes_core.config import AesConfig
from aes_core.ensemble.artifact import GBDT_MEMBER, EnsembleArtifact, member_name
from aes_core.export.onnx import check_parity, export_onnx
from aes_core.export.tensorrt import build_engine, sequence_profile
from aes_core.export.triton_repo import write_triton_repo
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

GROUP = "export"
ONNX_ASSET = "onnx_models"
CHECKPOINTS_ASSET = "fold_head_checkpoints"
PARITY_CHECK = "onnx_parity"


def onnx_key(backbone: str) -> dg.AssetKey:
    return dg.AssetKey([backbone, ONNX_ASSET])


def checkpoints_key(backbone: str) -> dg.AssetKey:
    return dg.AssetKey([backbone, CHECKPOINTS_ASSET])


def onnx_models_asset(cfg: AesConfig, backbone: str) -> dg.AssetsDefinition:
    """``{backbone}/onnx_models``: one ONNX member folder per fold × head, parity-checked."""
    key = onnx_key(backbone)

    @dg.asset(
        key=key, group_name=GROUP, partitions_def=fold_head_partitions(cfg),
        ins={"checkpoint": dg.AssetIn(key=checkpoints_key(backbone)),
             "test_essays": dg.AssetIn(key="test_essays")},
        check_specs=[dg.AssetCheckSpec(
            PARITY_CHECK, asset=key, blocking=True,
            description="ONNX Runtime vs PyTorch on real essays: max |logit diff| <= "
                        "export.parity_atol and identical rounded scores")],
        description=f"Backbone {backbone!r}: ONNX export (dynamic batch and sequence axes) of "
                    "each fold x head regressor, with tokenizer and spec: {member_dir, ...}.",
        kinds={"onnx"},
    )
    def _onnx(context: dg.AssetExecutionContext, config: ExportConfig,
              settings: PipelineSettings, artifacts: ArtifactStore, mlflow: MlflowTracker,
              checkpoint: dict, test_essays: pd.DataFrame):
        ecfg = effective(settings.load().export, config)
        fold, head = fold_and_head(context)
        model_dir = Path(checkpoint["model_dir"])
        out = artifacts.folder(key, context.partition_key, fresh=True)
        onnx_path = export_onnx(model_dir, out, opset=ecfg.opset)
        texts = test_essays["full_text"].astype(str).head(ecfg.parity_essays).tolist()
        report = check_parity(model_dir, onnx_path, texts, atol=ecfg.parity_atol)
        member = member_name(backbone, head)
        with mlflow.run(f"onnx_models[{backbone}:{context.partition_key}]",
                        params={"export": ecfg.model_dump()},
                        tags={"asset": key.to_user_string(), "member": member,
                              "fold": str(fold)}) as run:
            if run is not None:
                import mlflow as mlflow_lib

                mlflow_lib.log_metrics({"parity_max_abs_diff": report.max_abs_diff,
                                        "parity_passed": float(report.passed)})
        result = {"member_dir": str(out), "onnx_path": str(onnx_path), "model_dir":
                  str(model_dir), "backbone": backbone, "head": head, "fold": fold,
                  "member": member, "parity": report.to_dict()}
        yield dg.Output(result, metadata={
            "onnx_path": dg.MetadataValue.path(str(onnx_path)),
            "onnx_mb": round(onnx_path.stat().st_size / 2**20, 2),
            "parity_max_abs_diff": report.max_abs_diff, "parity_passed": report.passed,
        })
        yield dg.AssetCheckResult(
            check_name=PARITY_CHECK, asset_key=key, passed=report.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"max_abs_diff": report.max_abs_diff, "atol": report.atol,
                      "score_max_abs_diff": report.score_max_abs_diff,
                      "rounded_scores_equal": report.rounded_scores_equal,
                      "essays": report.n_essays,
                      "mismatched_rows": dg.MetadataValue.json(report.mismatched_rows)})

    return _onnx


def export_assets(cfg: AesConfig, backbone: str) -> list:
    """Every per-backbone export asset (the factory pattern of the training stage)."""
    return [onnx_models_asset(cfg, backbone)]


def _by_member(onnx_models: dict[str, dict]) -> dict[str, list[dict]]:
    """{partition: meta} of all backbones -> {member: [meta per fold, in fold order]}."""
    out: dict[str, list[dict]] = {}
    for meta in onnx_models.values():
        out.setdefault(meta["member"], []).append(meta)
    return {m: sorted(v, key=lambda x: int(x["fold"])) for m, v in out.items()}


def _onnx_ins(cfg: AesConfig) -> dict[str, dg.AssetIn]:
    return {f"onnx_{b.name}": dg.AssetIn(key=onnx_key(b.name)) for b in cfg.backbones}


def _gather(kwargs: dict) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for name, value in kwargs.items():
        if name.startswith("onnx_"):
            merged.update({f"{name[5:]}:{k}": v for k, v in value.items()})
    return merged


def serving_assets(cfg: AesConfig) -> list:
    """``tensorrt_engines`` and ``triton_repo`` (inputs: every backbone's onnx_models)."""

    @dg.asset(
        name="tensorrt_engines", group_name=GROUP,
        ins={**_onnx_ins(cfg), "test_essays": dg.AssetIn(key="test_essays")},
        description="fp16 TensorRT engines per fold x head with sequence-length profiles from "
                    "the essays' token lengths; where no TensorRT builder or GPU exists, a "
                    "recorded skip reason (Triton then serves the ONNX models).",
        kinds={"tensorrt"},
    )
    def tensorrt_engines(context: dg.AssetExecutionContext, config: ExportConfig,
                         settings: PipelineSettings, artifacts: ArtifactStore,
                         test_essays: pd.DataFrame, **onnx_models) -> dict:
        from aes_core.models.regressor import load_regressor_tokenizer
        from aes_core.serving.onnx_scorer import tokenize

        full = settings.load()
        ecfg = effective(full.export, config)
        texts = test_essays["full_text"].astype(str).head(ecfg.trt_profile_essays).tolist()
        engines: dict[str, list[str | None]] = {}
        rows, reasons, profiles = [], set(), {}
        for member, metas in _by_member(_gather(onnx_models)).items():
            spec_dir = Path(metas[0]["member_dir"])
            from aes_core.export.onnx import load_spec

            spec = load_spec(spec_dir)
            lengths = [len(s) for s in tokenize(load_regressor_tokenizer(spec_dir), texts, spec)]
            profile = sequence_profile(lengths, spec.max_length, ecfg)
            profiles[member] = profile.__dict__
            engines[member] = []
            for meta in metas:
                out = artifacts.folder(dg.AssetKey("tensorrt_engines"),
                                       f"{member}__f{meta['fold']}", fresh=True)
                res = build_engine(meta["onnx_path"], out, profile, ecfg)
                engines[member].append(res.plan_path)
                reasons.add(res.reason)
                rows.append({"member": member, "fold": meta["fold"], "built": not res.skipped,
                             "min/opt/max len": f"{profile.min_len}/{profile.opt_len}/"
                                                f"{profile.max_len}"})
        skipped = not any(p for ps in engines.values() for p in ps)
        reason = "; ".join(sorted(reasons))
        if skipped:
            context.log.warning(f"TensorRT engines skipped: {reason}")
        context.add_output_metadata({
            "skipped": skipped, "reason": reason, "fp16": ecfg.trt_fp16,
            "workspace_mb": ecfg.trt_workspace_mb,
            "engines": md(pd.DataFrame(rows), index=False) if rows else "none",
        })
        return {"engines": engines, "skipped": skipped, "reason": reason,
                "profiles": profiles, "fp16": ecfg.trt_fp16,
                "workspace_mb": ecfg.trt_workspace_mb}

    @dg.asset(
        name="triton_repo", group_name=GROUP,
        ins={**_onnx_ins(cfg), "ensemble_weights": dg.AssetIn(key="ensemble_weights"),
             "gbdt_member": dg.AssetIn(key="gbdt_member"),
             "tensorrt_engines": dg.AssetIn(key="tensorrt_engines")},
        description="The Triton model repository (serving.triton_repo): one model per fold x "
                    "head member + a Python BLS `scorer` (TEXT -> SCORE/BLENDED/MEMBERS) that "
                    "averages folds, blends with the ensemble weights and thresholds.",
        kinds={"triton"},
    )
    def triton_repo(context: dg.AssetExecutionContext, config: ServingConfig,
                    settings: PipelineSettings, ensemble_weights: dict, gbdt_member: dict,
                    tensorrt_engines: dict, **onnx_models) -> dict:
        scfg = effective(settings.load().serving, config)
        ensemble = EnsembleArtifact.model_validate(ensemble_weights)
        by_member = _by_member(_gather(onnx_models))
        member_dirs = {m: [meta["member_dir"] for meta in by_member.get(m, [])]
                       for m in ensemble.members if m != GBDT_MEMBER}
        missing = [m for m, d in member_dirs.items() if not d]
        if missing:
            raise ValueError(f"ensemble members {missing} have no onnx_models partitions; "
                             f"exported members: {sorted(by_member)}")
        gbdt_dir = gbdt_member.get("model_dir") if GBDT_MEMBER in ensemble.members else None
        manifest = write_triton_repo(scfg.triton_repo, ensemble, member_dirs, scfg,
                                     gbdt_dir=gbdt_dir, plans=tensorrt_engines.get("engines"))
        context.add_output_metadata({
            "repository": dg.MetadataValue.path(scfg.triton_repo),
            "variant": manifest.variant, "models": len(manifest.model_names()),
            "model_names": dg.MetadataValue.json(manifest.model_names()),
            "plans": len(manifest.plans),
            "scorer_config": dg.MetadataValue.md(
                "```\n" + (Path(scfg.triton_repo) / "scorer" / "config.pbtxt").read_text()
                + "```"),
        })
        return {"repo": scfg.triton_repo, "variant": manifest.variant,
                "models": manifest.members, "member_dirs": member_dirs,
                "gbdt_dir": gbdt_dir, "ensemble": json.loads(ensemble.model_dump_json())}

    return [tensorrt_engines, triton_repo]
