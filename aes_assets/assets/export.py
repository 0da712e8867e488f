"""Export stage: ``{backbone}/onnx_models`` (fold x head, parity-checked, written into the
serving bundle), ``tensorrt_engines``, ``serving_bundle`` (the manifest that commits a bundle)
and the generated Triton model repository ``triton_repo``.

``{backbone}/onnx_models`` shares the fold x head partitions and the single-run backfill
policy of the checkpoints; its parity with PyTorch is a blocking asset check emitted by the
asset itself, so nothing downstream runs on a bad export.
"""


import dagster as dg
import pandas as pd

from aes_assets import keys
from aes_assets.assets.training import as_partition_dict
from aes_assets.configs import run_config
from aes_assets.metadata import code_version, config_metadata, md
from aes_assets.partitions import fold_head_partitions
from aes_core.config import AesConfig
from aes_core.contracts import (
    EssayFlaggerResult,
    FoldHeadCheckpoint,
    GbdtMemberResult,
    OnnxExport,
    TritonRepoResult,
)
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.bundle import ExportTask, build_bundle, export_member, typical_stats
from aes_core.serving.manifest import Bundle, ServingManifest
from aes_core.training.parallel import cpu_slots, failures, run_jobs
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

GROUP = "export"
PARITY_CHECK = "onnx_parity"


def onnx_models_asset(cfg: AesConfig, backbone: str) -> dg.AssetsDefinition:
    """``{backbone}/onnx_models``: one ONNX member folder per fold x head, parity-checked."""
    key = keys.onnx_key(backbone)
    ExportRun = run_config(cfg, "export")

    @dg.asset(
        key=key, group_name=GROUP, partitions_def=fold_head_partitions(cfg, backbone),
        backfill_policy=dg.BackfillPolicy.single_run(),
        ins={"checkpoint": dg.AssetIn(key=keys.fold_head_key(backbone)),
             "test_essays": dg.AssetIn(key=keys.TEST_ESSAYS)},
        check_specs=[dg.AssetCheckSpec(
            PARITY_CHECK, asset=key, blocking=True,
            description="ONNX Runtime vs PyTorch on real essays: max |logit diff| <= "
                        "export.parity_atol and identical rounded scores, every partition")],
        code_version=code_version(cfg.export),
        description=f"Backbone {backbone!r}: each fold x head regressor in the serving bundle "
                    "(weights, tokenizer, spec) with its ONNX export (dynamic batch and "
                    "sequence axes) and parity report.",
        kinds={"onnx"},
    )
    def _onnx(context: dg.AssetExecutionContext, config: ExportRun,
              settings: PipelineSettings, mlflow: MlflowTracker, checkpoint,
              test_essays: pd.DataFrame):
        full = settings.resolve(export=config)
        ecfg = full.export
        ckpts: dict[str, FoldHeadCheckpoint] = (
            {context.partition_key: checkpoint} if isinstance(checkpoint, FoldHeadCheckpoint)
            else checkpoint)
        pks = list(context.partition_keys)
        texts = test_essays["full_text"].astype(str).head(ecfg.parity_essays).tolist()
        tasks = [ExportTask(checkpoint_json=ckpts[pk].model_dump_json(),
                            bundle_dir=str(full.bundle_dir), opset=ecfg.opset,
                            parity_texts=texts, parity_atol=ecfg.parity_atol) for pk in pks]
        results = run_jobs(export_member, tasks, cpu_slots(ecfg.workers, len(tasks)))
        failed = failures(results)
        if failed:
            raise dg.Failure(description="ONNX export failed for " + "; ".join(
                f"{pks[f.index]}: {f.summary}" for f in failed))
        rows = []
        for pk, r in zip(pks, results, strict=True):
            p = r.parity
            context.add_asset_metadata({
                "member_dir": dg.MetadataValue.path(r.member_dir),
                "parity_max_abs_diff": p["max_abs_diff"], "parity_passed": p["passed"],
            }, partition_key=pk)
            rows.append({"partition": pk, "max_abs_diff": p["max_abs_diff"],
                         "rounded_scores_equal": p["rounded_scores_equal"],
                         "passed": p["passed"]})
        with mlflow.run(f"{backbone}/onnx_models", params={"export": ecfg.model_dump()},
                        tags={"asset": key.to_user_string(),
                              "dagster_run_id": context.run_id}) as run:
            run.metrics({"parity_max_abs_diff": max(r["max_abs_diff"] for r in rows),
                         "parity_passed": float(all(r["passed"] for r in rows))})
        table = pd.DataFrame(rows)
        bad = table[~table["passed"]]
        yield dg.Output(results[0] if len(pks) == 1 else dict(zip(pks, results, strict=True)),
                        metadata={"partitions": len(pks), "parity": md(table, index=False),
                                  **config_metadata(ecfg)})
        yield dg.AssetCheckResult(
            check_name=PARITY_CHECK, asset_key=key, passed=bad.empty,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"max_abs_diff": float(table["max_abs_diff"].max()),
                      "atol": ecfg.parity_atol, "partitions": len(pks),
                      "failed_partitions": dg.MetadataValue.json(bad["partition"].tolist()),
                      "rounded_scores_equal": bool(table["rounded_scores_equal"].all()),
                      "essays": len(texts)})

    return _onnx


def export_assets(cfg: AesConfig, backbone: str) -> list:
    """Every per-backbone export asset (the factory pattern of the training stage)."""
    return [onnx_models_asset(cfg, backbone)]


def _onnx_ins(cfg: AesConfig) -> dict[str, dg.AssetIn]:
    return {keys.ins_name(keys.onnx_key(b.name)): dg.AssetIn(key=keys.onnx_key(b.name))
            for b in cfg.backbones}


def _exports(kwargs: dict) -> list[OnnxExport]:
    return [e for v in kwargs.values() for e in as_partition_dict(v).values()]


def serving_assets(cfg: AesConfig) -> list:
    """``tensorrt_engines``, ``serving_bundle`` and ``triton_repo``."""
    ServingRun = run_config(cfg, "serving")
    ExportRun = run_config(cfg, "export")

    @dg.asset(
        key=keys.TENSORRT, group_name=GROUP,
        ins={**_onnx_ins(cfg), "test_essays": dg.AssetIn(key=keys.TEST_ESSAYS)},
        code_version=code_version(cfg.export),
        description="fp16 TensorRT engines per fold x head with sequence-length profiles from "
                    "the essays' token lengths; where no TensorRT builder or GPU exists, a "
                    "recorded skip reason (Triton then serves the exported models).",
        kinds={"tensorrt"},
    )
    def tensorrt_engines(context: dg.AssetExecutionContext, config: ExportRun,
                         settings: PipelineSettings, artifacts: ArtifactStore,
                         test_essays: pd.DataFrame, **onnx_models) -> dict:
        from aes_core.export.tensorrt import build_engines

        ecfg = settings.resolve(export=config).export
        texts = test_essays["full_text"].astype(str).head(ecfg.trt_profile_essays).tolist()
        out = build_engines(_exports(onnx_models), texts, ecfg,
                            lambda name: artifacts.folder(keys.TENSORRT, name, fresh=True))
        if out["skipped"]:
            context.log.warning(f"TensorRT engines skipped: {out['reason']}")
        context.add_output_metadata({
            "skipped": out["skipped"], "reason": out["reason"], "fp16": ecfg.trt_fp16,
            "workspace_mb": ecfg.trt_workspace_mb,
            "engines": md(pd.DataFrame(out["rows"]), index=False) if out["rows"] else "none",
        })
        return out

    @dg.asset(
        key=keys.BUNDLE, group_name=GROUP,
        ins={**_onnx_ins(cfg), "ensemble_weights": dg.AssetIn(key=keys.ENSEMBLE),
             "gbdt_member": dg.AssetIn(key=keys.GBDT),
             "folded_essays": dg.AssetIn(key=keys.FOLDED),
             "essay_flagger": dg.AssetIn(key=keys.FLAGGER)},
        code_version=code_version(cfg.web, cfg.serving),
        description="The serving bundle (serving.bundle_dir): manifest.json + the ensemble, "
                    "its fold models, the GBDT member, typical essay statistics and the essay "
                    "flagger. Serving, the inbox, the rescoring schedule and the teachers' page "
                    "read only this.",
    )
    def serving_bundle(context: dg.AssetExecutionContext, settings: PipelineSettings,
                       ensemble_weights: EnsembleArtifact, gbdt_member: GbdtMemberResult,
                       folded_essays: pd.DataFrame, essay_flagger: EssayFlaggerResult,
                       **onnx_models) -> ServingManifest:
        full = settings.config
        stats = typical_stats(folded_essays, full.web.typical_low_q, full.web.typical_high_q)
        manifest = build_bundle(full.bundle_dir, ensemble_weights, _exports(onnx_models),
                                gbdt_member.model_dir, stats, flagger_dir=essay_flagger.folder,
                                profile=full.profile, config_hash=settings.config_hash)
        context.add_output_metadata({
            "bundle_dir": dg.MetadataValue.path(str(full.bundle_dir)),
            "members": dg.MetadataValue.json(manifest.member_names()),
            "fold_models": sum(len(m.folds) for m in manifest.members),
            "flagger": essay_flagger.folder is not None,
            "git_commit": manifest.git_commit,
        })
        return manifest

    @dg.asset(
        key=keys.TRITON_REPO, group_name=GROUP,
        ins={"serving_bundle": dg.AssetIn(key=keys.BUNDLE),
             "tensorrt_engines": dg.AssetIn(key=keys.TENSORRT)},
        deps=[keys.STUDENT] if cfg.student.enabled else [],  # the repository serves it too
        code_version=code_version(cfg.serving),
        description="The Triton model repository (serving.triton_repo), generated from the "
                    "serving bundle: with serving.backend torch_gpu (auto on a CUDA host) one "
                    "`scorer` model runs every fold model with PyTorch on the GPU; with "
                    "onnx_cpu one ONNX Runtime model per fold x head + a Python BLS `scorer`. "
                    "Either way TEXT -> SCORE/BLENDED/MEMBERS (folds averaged, blended, "
                    "thresholded), plus a `student` model when the bundle has one.",
        kinds={"triton"},
    )
    def triton_repo(context: dg.AssetExecutionContext, config: ServingRun,
                    settings: PipelineSettings, serving_bundle: ServingManifest,
                    tensorrt_engines: dict) -> TritonRepoResult:
        from aes_core.export.triton_repo import write_triton_repo

        full = settings.resolve(serving=config)
        scfg = full.serving
        bundle = Bundle.load(full.bundle_dir)
        written = write_triton_repo(scfg.triton_repo, bundle, scfg,
                                    plans=tensorrt_engines.get("engines"))
        context.add_output_metadata({
            "repository": dg.MetadataValue.path(scfg.triton_repo),
            "backend": written.backend, "serving_backend": written.serving_backend,
            "instance_kind": written.instance_kind, "student_model": bool(written.student),
            "models": len(written.model_names()),
            "model_names": dg.MetadataValue.json(written.model_names()),
            "plans": len(written.plans), **config_metadata(scfg),
        })
        return TritonRepoResult(repo=scfg.triton_repo, backend=written.backend,
                                models=written.members,
                                manifest_path=str(full.bundle_dir / "manifest.json"))

    return [tensorrt_engines, serving_bundle, triton_repo]

