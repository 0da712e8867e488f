"""Ensemble stage: the GBDT member, Nelder-Mead blend weights + thresholds, the scoring report.

The GBDT member reads only ``folded_essays``, so with the multiprocess executor it trains on
the CPU beside the fold x head step on the GPU.
"""


import time

import dagster as dg
import numpy as np
import pandas as pd

from aes_assets import keys
from aes_assets.configs import run_config
from aes_assets.metadata import code_version, config_metadata, md, png_md
from aes_core.config import AesConfig
from aes_core.contracts import EssayFlaggerResult, GbdtMemberResult, ScoringReportResult
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.ensemble.blend import (
    assemble_oof,
    blend_beats_best_member,
    expected_members,
    fit_ensemble,
)
from aes_core.members import GBDT_MEMBER
from aes_core.report import build_report
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

GROUP = "ensemble"


def ensemble_assets(cfg: AesConfig) -> list:
    """``gbdt_member`` + ``gbdt_oof``, ``ensemble_weights``, ``scoring_report``."""
    GbdtRun = run_config(cfg, "gbdt")
    EnsembleRun = run_config(cfg, "ensemble")

    @dg.multi_asset(
        group_name=GROUP,
        outs={
            "gbdt_member": dg.AssetOut(
                key=keys.GBDT, code_version=code_version(cfg.gbdt),
                description="GBDT member (TF-IDF word+char n-grams + handcrafted features -> "
                            "LightGBM per fold); GbdtMember.load(model_dir).predict(texts)."),
            "gbdt_oof": dg.AssetOut(key=keys.GBDT_OOF, code_version=code_version(cfg.gbdt),
                                    description="GBDT out-of-fold predictions: essay_id, gbdt."),
        },
        ins={"folded_essays": dg.AssetIn(key=keys.FOLDED)},
    )
    def gbdt_member_and_oof(context: dg.AssetExecutionContext, config: GbdtRun,
                            settings: PipelineSettings, artifacts: ArtifactStore,
                            mlflow: MlflowTracker, folded_essays: pd.DataFrame):
        from aes_core.ensemble.gbdt import fit_gbdt

        gcfg = settings.resolve(gbdt=config).gbdt
        if not gcfg.enabled:
            context.log.info("gbdt.enabled is false: no GBDT member")
            yield dg.Output(GbdtMemberResult(enabled=False), output_name="gbdt_member",
                            metadata={"enabled": False})
            yield dg.Output(pd.DataFrame({"essay_id": pd.Series(dtype=str),
                                          GBDT_MEMBER: pd.Series(dtype=float)}),
                            output_name="gbdt_oof", metadata={"rows": 0})
            return
        t0 = time.time()
        fit = fit_gbdt(folded_essays, gcfg, progress=False)
        seconds = round(time.time() - t0, 1)
        folder = artifacts.folder(keys.GBDT, fresh=True)
        fit.member.save(folder)
        with mlflow.run("gbdt_member", params={"gbdt": gcfg.model_dump()},
                        tags={"asset": "gbdt_member", "dagster_run_id": context.run_id}) as run:
            run.metrics({"oof_qwk": fit.oof_qwk, "seconds": seconds})
            for k, q in enumerate(fit.fold_qwk):
                run.metrics({"fold_qwk": q}, step=k)
            run.artifact(folder / "gbdt_member.json", "gbdt_member")
        folds = pd.DataFrame({"fold": range(len(fit.fold_qwk)), "qwk": fit.fold_qwk,
                              "best_iteration": fit.best_iterations})
        result = GbdtMemberResult(enabled=True, model_dir=str(folder), oof_qwk=fit.oof_qwk,
                                  fold_qwk=fit.fold_qwk, best_iterations=fit.best_iterations,
                                  n_essays=len(fit.oof), seconds=seconds)
        context.log.info(f"GBDT member: OOF QWK {fit.oof_qwk:.4f} in {seconds:.0f}s")
        yield dg.Output(result, output_name="gbdt_member", metadata={
            "model_dir": dg.MetadataValue.path(str(folder)), "oof_qwk": fit.oof_qwk,
            "fold_qwk": md(folds, index=False), "seconds": seconds, **config_metadata(gcfg),
        })
        yield dg.Output(fit.oof, output_name="gbdt_oof", metadata={
            "rows": len(fit.oof), "oof_qwk": fit.oof_qwk,
            "mean_prediction": float(fit.oof[GBDT_MEMBER].mean()),
        })

    @dg.asset(
        key=keys.ENSEMBLE, group_name=GROUP,
        ins={"oof_predictions": dg.AssetIn(key=keys.OOF), "gbdt_oof": dg.AssetIn(
            key=keys.GBDT_OOF), "folded_essays": dg.AssetIn(key=keys.FOLDED)},
        code_version=code_version(cfg.ensemble),
        description="EnsembleArtifact: members, Nelder-Mead weights (>=0, sum 1), 5 QWK "
                    "thresholds, OOF QWK of each member / equal blend / optimized blend, per-fold "
                    "spread and a nested-CV estimate.",
    )
    def ensemble_weights(context: dg.AssetExecutionContext, config: EnsembleRun,
                         settings: PipelineSettings, artifacts: ArtifactStore,
                         mlflow: MlflowTracker, oof_predictions: pd.DataFrame,
                         gbdt_oof: pd.DataFrame,
                         folded_essays: pd.DataFrame) -> EnsembleArtifact:
        """Fit blend weights and thresholds (or the stacker) on OOF predictions only."""
        full = settings.resolve(ensemble=config)
        ecfg = full.ensemble
        table = assemble_oof(oof_predictions, gbdt_oof, expected=expected_members(full))
        texts = table["essay_id"].map(folded_essays.set_index(
            folded_essays["essay_id"].astype(str))["full_text"])
        fit = fit_ensemble(table, ecfg, progress=False, texts=texts.astype(str).tolist())
        art = fit.artifact
        folder = artifacts.folder(keys.ENSEMBLE, fresh=True)
        path = art.save(folder / "ensemble.json")
        best_name, best_q = fit.best_member
        with mlflow.run("ensemble_weights", params={"ensemble": ecfg.model_dump()},
                        tags={"asset": "ensemble_weights",
                              "dagster_run_id": context.run_id}) as run:
            run.metrics({f"oof_qwk.{k}": v for k, v in art.oof_qwk.items()})
            run.metrics({f"weight.{m}": w for m, w in zip(art.members, art.weights,
                                                           strict=True)})
            run.artifact(path, "ensemble")
        weights = pd.DataFrame({"member": art.members, "weight": art.weights,
                                "oof_qwk": [art.oof_qwk[m] for m in art.members]})
        spread = np.asarray(art.fold_qwk["blend"])
        context.log.info(f"ensemble: OOF QWK {art.oof_qwk['blend']:.4f} (nested CV "
                         f"{art.oof_qwk.get('blend_nested', float('nan')):.4f}); best member "
                         f"{best_name} {best_q:.4f}")
        context.add_output_metadata({
            "ensemble_json": dg.MetadataValue.path(str(path)),
            "weights": md(weights, index=False, floatfmt=".4f"),
            "thresholds": dg.MetadataValue.json(art.thresholds),
            "blend_oof_qwk": art.oof_qwk["blend"],
            "blend_nested_qwk": art.oof_qwk.get("blend_nested", float("nan")),
            "equal_blend_oof_qwk": art.oof_qwk["equal_blend"],
            "best_member": best_name, "best_member_oof_qwk": best_q,
            "blend_fold_qwk_std": float(spread.std()), "blend_fold_qwk_min": float(spread.min()),
            "method": art.method, "selected": art.selected, "notes": art.notes,
            **config_metadata(ecfg),
        })
        return art

    @dg.asset(
        key=keys.REPORT, group_name=GROUP,
        ins={"oof_predictions": dg.AssetIn(key=keys.OOF), "gbdt_oof": dg.AssetIn(
            key=keys.GBDT_OOF), "ensemble_weights": dg.AssetIn(key=keys.ENSEMBLE),
             "folded_essays": dg.AssetIn(key=keys.FOLDED),
             "essay_flagger": dg.AssetIn(key=keys.FLAGGER),
             "gbdt_member": dg.AssetIn(key=keys.GBDT)},
        code_version=code_version(cfg.ensemble),
        description="Scoring report on OOF predictions: per-prompt QWK, confusion matrix, score "
                    "distribution and calibration plots (PNG in metadata and MLflow), essays "
                    "per gaming / off-topic flag (and the QWK after the flag policy) and a "
                    "Markdown summary.",
    )
    def scoring_report(context: dg.AssetExecutionContext, artifacts: ArtifactStore,
                       mlflow: MlflowTracker, oof_predictions: pd.DataFrame,
                       gbdt_oof: pd.DataFrame, ensemble_weights: EnsembleArtifact,
                       folded_essays: pd.DataFrame, essay_flagger: EssayFlaggerResult,
                       gbdt_member: GbdtMemberResult) -> ScoringReportResult:
        """Score the OOF table with the ensemble artifact, flag its essays, write the report."""
        art = ensemble_weights
        table = assemble_oof(oof_predictions, gbdt_oof, expected=art.members)
        texts = table["essay_id"].map(folded_essays.set_index(
            folded_essays["essay_id"].astype(str))["full_text"]).astype(str).tolist()
        table["blended"] = art.blend(table[art.members].to_numpy(), texts)
        table["pred_score"] = art.to_scores(table["blended"].to_numpy())
        policy = None
        if essay_flagger.folder:
            from aes_core.flags import EssayFlagger

            flagger = EssayFlagger.load(essay_flagger.folder)
            prompts = table["prompt_name"] if "prompt_name" in table.columns else None
            table["flags"] = flagger.flag_frame(texts, prompts)["flags"].to_numpy()
            policy = flagger.cfg
        folder = artifacts.folder(keys.REPORT, fresh=True)
        importance = None
        if gbdt_member.model_dir:
            from aes_core.ensemble.gbdt import load_importance

            importance = load_importance(gbdt_member.model_dir)
        rep = build_report(table, art, folder, flag_policy=policy, importance=importance)
        with mlflow.run("scoring_report", tags={"asset": "scoring_report",
                                                "dagster_run_id": context.run_id}) as run:
            run.metrics({"oof_qwk": rep.overall_qwk})
            if rep.qwk_after_flags is not None:
                run.metrics({"oof_qwk_after_flags": rep.qwk_after_flags})
            for _, r in rep.per_prompt.iterrows():
                key = "".join(ch if ch.isalnum() else "_" for ch in str(r["prompt_name"]))
                run.metrics({f"prompt_qwk.{key}": float(r["qwk"])})
            run.artifact(folder, "scoring_report")
        flag_counts = ({} if rep.flag_table is None else
                       dict(zip(rep.flag_table["flag"], rep.flag_table["essays"], strict=True)))
        flag_meta = {} if rep.flag_table is None else {
            "flag_counts": md(rep.flag_table, index=False),
            "flagged_essays": flag_counts["any gaming flag"],
            **({"oof_qwk_after_flags": rep.qwk_after_flags}
               if rep.qwk_after_flags is not None else {})}
        context.add_output_metadata({
            "summary": dg.MetadataValue.md(rep.markdown),
            "oof_qwk": rep.overall_qwk,
            "per_prompt_qwk": md(rep.per_prompt, index=False),
            "report_dir": dg.MetadataValue.path(str(folder)),
            **flag_meta,
            **{f"plot_{name}": png_md(p) for name, p in rep.plots.items()},
        })
        return ScoringReportResult(
            oof_qwk=rep.overall_qwk, nested_qwk=art.oof_qwk.get("blend_nested"),
            report_dir=str(folder), summary_path=str(folder / "summary.md"),
            plots={k: str(v) for k, v in rep.plots.items()},
            per_prompt=rep.per_prompt.to_dict(orient="records"),
            flag_counts={k: int(v) for k, v in flag_counts.items()},
            qwk_after_flags=rep.qwk_after_flags)

    return [gbdt_member_and_oof, ensemble_weights, scoring_report]


@dg.asset_check(asset=keys.ENSEMBLE, blocking=True,
                description="applied blend's nested-CV QWK >= best single member's nested-CV "
                            "QWK (+ min gain); both fitted without the scored fold")
def ensemble_beats_best_member(settings: PipelineSettings,
                               ensemble_weights: EnsembleArtifact) -> dg.AssetCheckResult:
    return _blend_vs_best_member(ensemble_weights, settings.config.ensemble.min_gain_over_best)


def _blend_vs_best_member(art: EnsembleArtifact, margin: float) -> dg.AssetCheckResult:
    """Thin wrapper of :func:`aes_core.ensemble.blend.blend_beats_best_member`."""
    result = blend_beats_best_member(art, margin)
    return dg.AssetCheckResult(passed=result.passed, metadata=result.metadata)


@dg.asset_check(asset=keys.ENSEMBLE,
                description="in-sample blend QWK minus nested-CV QWK within ensemble."
                            "max_overfit_gap (warns on an overfitted blend)")
def ensemble_overfit_gap(settings: PipelineSettings,
                         ensemble_weights: EnsembleArtifact) -> dg.AssetCheckResult:
    art = ensemble_weights
    limit = settings.config.ensemble.max_overfit_gap
    nested = art.oof_qwk.get("blend_nested")
    if nested is None:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"result": "nested CV disabled"})
    gap = art.oof_qwk["blend"] - nested
    return dg.AssetCheckResult(
        passed=bool(gap <= limit), severity=dg.AssetCheckSeverity.WARN,
        metadata={"in_sample_qwk": art.oof_qwk["blend"], "nested_qwk": nested, "gap": gap,
                  "limit": limit, "fold_qwk": dg.MetadataValue.json(art.fold_qwk["blend"])})


ENSEMBLE_CHECKS = [ensemble_beats_best_member, ensemble_overfit_gap]
