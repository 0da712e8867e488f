"""Ensemble stage: the GBDT member, Nelder-Mead blend weights + thresholds, the scoring report.

``oof_predictions`` (essay_id, fold, score, prompt_name, flag + one column per transformer
member) comes from the training stage; it is referenced by key so this module loads on its own.
"""

import base64
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from aes_assets.configs import EnsembleConfig, GbdtConfig, effective
from aes_assets.metadata import md
from aes_core.ensemble.artifact import GBDT_MEMBER, EnsembleArtifact
from aes_core.ensemble.blend import (
    assemble_oof,
    blend_beats_best_member,
    expected_members,
    fit_ensemble,
)
from aes_core.ensemble.gbdt import fit_gbdt
from aes_core.report import build_report
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

GROUP = "ensemble"
OOF_KEY = dg.AssetKey("oof_predictions")


def _mlflow_lib():
    import mlflow as mlflow_lib

    return mlflow_lib


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "gbdt_member": dg.AssetOut(
            description="GBDT member (TF-IDF word+char n-grams + handcrafted features -> "
                        "LightGBM per fold): {model_dir, oof_qwk, fold_qwk, ...}; "
                        "GbdtMember.load(model_dir).predict(texts) -> 1..6."),
        "gbdt_oof": dg.AssetOut(description="GBDT out-of-fold predictions: essay_id, gbdt."),
    },
)
def gbdt_member_and_oof(context: dg.AssetExecutionContext, config: GbdtConfig,
                        settings: PipelineSettings, artifacts: ArtifactStore,
                        mlflow: MlflowTracker, folded_essays: pd.DataFrame):
    """Fit the GBDT member on the training folds; save fold models; emit its OOF column."""
    cfg = effective(settings.load().gbdt, config)
    if not cfg.enabled:
        context.log.info("gbdt.enabled is false: no GBDT member")
        yield dg.Output({"model_dir": None, "enabled": False, "oof_qwk": None},
                        output_name="gbdt_member", metadata={"enabled": False})
        yield dg.Output(pd.DataFrame({"essay_id": pd.Series(dtype=str),
                                      GBDT_MEMBER: pd.Series(dtype=float)}),
                        output_name="gbdt_oof", metadata={"rows": 0})
        return
    fit = fit_gbdt(folded_essays, cfg)
    folder = artifacts.folder(dg.AssetKey("gbdt_member"), fresh=True)
    fit.member.save(folder)
    with mlflow.run("gbdt_member", params={"gbdt": cfg.model_dump()},
                    tags={"asset": "gbdt_member"}) as run:
        if run is not None:
            mlf = _mlflow_lib()
            mlf.log_metric("oof_qwk", fit.oof_qwk)
            for k, q in enumerate(fit.fold_qwk):
                mlf.log_metric("fold_qwk", q, step=k)
            mlf.log_artifact(str(folder / "gbdt_member.json"), "gbdt_member")
    folds = pd.DataFrame({"fold": range(len(fit.fold_qwk)), "qwk": fit.fold_qwk,
                          "best_iteration": fit.best_iterations})
    result = {"model_dir": str(folder), "enabled": True, "oof_qwk": fit.oof_qwk,
              "fold_qwk": fit.fold_qwk, "best_iterations": fit.best_iterations,
              "n_essays": len(fit.oof), "member": GBDT_MEMBER}
    yield dg.Output(result, output_name="gbdt_member", metadata={
        "model_dir": dg.MetadataValue.path(str(folder)), "oof_qwk": fit.oof_qwk,
        "fold_qwk": md(folds, index=False),
    })
    yield dg.Output(fit.oof, output_name="gbdt_oof", metadata={
        "rows": len(fit.oof), "oof_qwk": fit.oof_qwk,
        "mean_prediction": float(fit.oof[GBDT_MEMBER].mean()),
    })


@dg.asset(
    group_name=GROUP,
    ins={"oof_predictions": dg.AssetIn(key=OOF_KEY), "gbdt_oof": dg.AssetIn()},
    description="EnsembleArtifact (JSON): members, Nelder-Mead weights (>=0, sum 1), 5 QWK "
                "thresholds, OOF QWK of each member / equal blend / optimized blend, per-fold "
                "spread and a nested-CV estimate. Also written as ensemble.json.",
)
def ensemble_weights(context: dg.AssetExecutionContext, config: EnsembleConfig,
                     settings: PipelineSettings, artifacts: ArtifactStore,
                     mlflow: MlflowTracker, oof_predictions: pd.DataFrame,
                     gbdt_oof: pd.DataFrame) -> dict:
    """Fit blend weights and thresholds on OOF predictions only."""
    full = settings.load()
    cfg = effective(full.ensemble, config)
    full = full.model_copy(update={"ensemble": cfg})
    table = assemble_oof(oof_predictions, gbdt_oof, expected=expected_members(full))
    fit = fit_ensemble(table, cfg, progress=True)
    art = fit.artifact
    folder = artifacts.folder(dg.AssetKey("ensemble_weights"), fresh=True)
    path = art.save(folder / "ensemble.json")
    best_name, best_q = fit.best_member
    with mlflow.run("ensemble_weights", params={"ensemble": cfg.model_dump()},
                    tags={"asset": "ensemble_weights"}) as run:
        if run is not None:
            mlf = _mlflow_lib()
            mlf.log_metrics({f"oof_qwk.{k}": v for k, v in art.oof_qwk.items()})
            mlf.log_metrics({f"weight.{m}": w for m, w in zip(art.members, art.weights,
                                                               strict=True)})
            mlf.log_artifact(str(path), "ensemble")
    weights = pd.DataFrame({"member": art.members, "weight": art.weights,
                            "oof_qwk": [art.oof_qwk[m] for m in art.members]})
    spread = np.asarray(art.fold_qwk["blend"])
    context.add_output_metadata({
        "ensemble_json": dg.MetadataValue.path(str(path)),
        "weights": md(weights, index=False, floatfmt=".4f"),
        "thresholds": dg.MetadataValue.json(art.thresholds),
        "blend_oof_qwk": art.oof_qwk["blend"],
        "blend_nested_qwk": art.oof_qwk.get("blend_nested", float("nan")),
        "equal_blend_oof_qwk": art.oof_qwk["equal_blend"],
        "best_member": best_name, "best_member_oof_qwk": best_q,
        "blend_fold_qwk_std": float(spread.std()), "blend_fold_qwk_min": float(spread.min()),
        "selected": art.selected, "notes": art.notes,
    })
    return json.loads(art.model_dump_json())


def _png_md(path: Path) -> dg.MetadataValue:
    data = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{path.stem}](data:image/png;base64,{data})")


@dg.asset(
    group_name=GROUP,
    ins={"oof_predictions": dg.AssetIn(key=OOF_KEY), "gbdt_oof": dg.AssetIn(),
         "ensemble_weights": dg.AssetIn()},
    description="Scoring report on OOF predictions: per-prompt QWK, confusion matrix, score "
                "distribution and calibration plots (PNG in metadata and MLflow); the Markdown "
                "summary is the `summary` metadata entry of each materialization.",
)
def scoring_report(context: dg.AssetExecutionContext, settings: PipelineSettings,
                   artifacts: ArtifactStore, mlflow: MlflowTracker,
                   oof_predictions: pd.DataFrame, gbdt_oof: pd.DataFrame,
                   ensemble_weights: dict) -> dict:
    """Score the OOF table with the ensemble artifact and write the report."""
    art = EnsembleArtifact.model_validate(ensemble_weights)
    table = assemble_oof(oof_predictions, gbdt_oof, expected=art.members)
    table["blended"] = art.blend(table[art.members].to_numpy())
    table["pred_score"] = art.to_scores(table["blended"].to_numpy())
    folder = artifacts.folder(dg.AssetKey("scoring_report"), fresh=True)
    rep = build_report(table, art, folder)
    with mlflow.run("scoring_report", tags={"asset": "scoring_report"}) as run:
        if run is not None:
            mlf = _mlflow_lib()
            mlf.log_metric("oof_qwk", rep.overall_qwk)
            for _, r in rep.per_prompt.iterrows():
                key = "".join(ch if ch.isalnum() else "_" for ch in str(r["prompt_name"]))
                mlf.log_metric(f"prompt_qwk.{key}", float(r["qwk"]))
            mlf.log_artifacts(str(folder), "scoring_report")
    context.add_output_metadata({
        "summary": dg.MetadataValue.md(rep.markdown),
        "oof_qwk": rep.overall_qwk,
        "per_prompt_qwk": md(rep.per_prompt, index=False),
        "report_dir": dg.MetadataValue.path(str(folder)),
        **{f"plot_{name}": _png_md(p) for name, p in rep.plots.items()},
    })
    return {"oof_qwk": rep.overall_qwk, "report_dir": str(folder),
            "plots": {k: str(v) for k, v in rep.plots.items()},
            "per_prompt": rep.per_prompt.to_dict(orient="records")}


@dg.asset_check(asset="ensemble_weights", blocking=True,
                description="applied blend's nested-CV QWK >= best single member's nested-CV "
                            "QWK (+ min gain); both fitted without the scored fold")
def ensemble_beats_best_member(settings: PipelineSettings,
                               ensemble_weights: dict) -> dg.AssetCheckResult:
    art = EnsembleArtifact.model_validate(ensemble_weights)
    margin = settings.load().ensemble.min_gain_over_best
    return _blend_vs_best_member(art, margin)


def _blend_vs_best_member(art: EnsembleArtifact, margin: float) -> dg.AssetCheckResult:
    """Thin wrapper of :func:`aes_core.ensemble.blend.blend_beats_best_member`."""
    result = blend_beats_best_member(art, margin)
    return dg.AssetCheckResult(passed=result.passed, metadata=result.metadata)


@dg.asset_check(asset="ensemble_weights",
                description="in-sample blend QWK minus nested-CV QWK within ensemble."
                            "max_overfit_gap (warns on an overfitted blend)")
def ensemble_overfit_gap(settings: PipelineSettings,
                         ensemble_weights: dict) -> dg.AssetCheckResult:
    art = EnsembleArtifact.model_validate(ensemble_weights)
    limit = settings.load().ensemble.max_overfit_gap
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


def missing_upstream_specs(assets: list) -> list[dg.AssetSpec]:
    """An external spec for ``oof_predictions`` while no loaded asset produces it.

    Lets the ensemble stage load (and read a stored OOF table) before or without the
    training stage's assets.
    """
    produced: set[dg.AssetKey] = set()
    for a in assets:
        produced |= set(getattr(a, "keys", set()) or {getattr(a, "key", None)})
    if OOF_KEY in produced:
        return []
    return [dg.AssetSpec(OOF_KEY, group_name="training",
                         description="OOF predictions of the transformer members (training "
                                     "stage; external until its assets are loaded).")]
