"""Flags stage: ``essay_flagger`` (gaming / off-topic flags, fitted on the PERSUADE reference and
served from the serving bundle), ``robustness_set`` (seeded perturbations of the test essays)
and its check ``gaming_robustness`` (clean + perturbed essays scored with the bundle's scorer
and flags: no attack may raise the mean score after the flags, few clean essays flagged)."""


import time

import dagster as dg
import pandas as pd

from aes_assets import keys
from aes_assets.configs import run_config
from aes_assets.metadata import code_version, config_metadata, md
from aes_core.config import AesConfig
from aes_core.contracts import EssayFlaggerResult
from aes_core.robustness import (
    EnsembleScores,
    attack_table,
    evaluate_robustness,
    robustness_check,
    robustness_table,
    split_robustness_table,
)
from aes_core.serving.manifest import Bundle
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

GROUP = "flags"
ROBUSTNESS_CHECK = "gaming_robustness"


def flag_assets(cfg: AesConfig) -> list:
    """``essay_flagger`` and ``robustness_set``."""
    FlagsRun = run_config(cfg, "flags")

    @dg.asset(
        key=keys.FLAGGER, group_name=GROUP,
        ins={"persuade_reference": dg.AssetIn(key=keys.PERSUADE)},
        code_version=code_version(cfg.flags),
        description="The essay flagger (too_short, repetition, prompt_copy, gibberish, "
                    "off_topic, unknown_prompt with evidence; the score cap policy): a prompt "
                    "model fitted on the PERSUADE reference + the flags section. serving_bundle "
                    "copies it in, so every scorer applies the same flags.",
    )
    def essay_flagger(context: dg.AssetExecutionContext, config: FlagsRun,
                      settings: PipelineSettings, artifacts: ArtifactStore,
                      persuade_reference: pd.DataFrame) -> EssayFlaggerResult:
        from aes_core.flags import fit_flagger

        fcfg = settings.resolve(flags=config).flags
        if not fcfg.enabled:
            context.log.warning("flags.enabled is false: the bundle will score without flags")
            context.add_output_metadata({"enabled": False, **config_metadata(fcfg)})
            return EssayFlaggerResult(enabled=False)
        t0 = time.time()
        flagger = fit_flagger(persuade_reference, fcfg)
        folder = flagger.save(artifacts.folder(keys.FLAGGER, fresh=True))
        seconds = round(time.time() - t0, 1)
        prompts = list(flagger.prompt_model.prompts)
        context.add_output_metadata({
            "enabled": True, "folder": dg.MetadataValue.path(str(folder)),
            "reference_essays": len(persuade_reference), "prompts": dg.MetadataValue.json(prompts),
            "seconds": seconds, **config_metadata(fcfg),
        })
        return EssayFlaggerResult(enabled=True, folder=str(folder),
                                  reference_essays=len(persuade_reference), prompts=prompts,
                                  seconds=seconds)

    @dg.asset(
        key=keys.ROBUSTNESS, group_name=GROUP,
        ins={"test_essays": dg.AssetIn(key=keys.TEST_ESSAYS),
             "persuade_reference": dg.AssetIn(key=keys.PERSUADE)},
        code_version=code_version(cfg.flags),
        description="Seeded gaming / off-topic perturbations of the (labelled) test essays, at "
                    "most flags.perturb_max_essays sources: off_topic, non_essay, "
                    "repeated_paragraphs, prompt_copy, shuffled_sentences, gibberish, "
                    "truncated, with the clean sources (column `set`). Its check scores them.",
    )
    def robustness_set(context: dg.AssetExecutionContext, config: FlagsRun,
                       settings: PipelineSettings, test_essays: pd.DataFrame,
                       persuade_reference: pd.DataFrame) -> pd.DataFrame:
        fcfg = settings.resolve(flags=config).flags
        table = robustness_table(test_essays, fcfg, reference=persuade_reference)
        counts = table.groupby(["set", "attack"], sort=False).size().rename("essays")
        context.add_output_metadata({
            "rows": len(table), "sources": int((table["set"] == "clean").sum()),
            "per_attack": md(counts.reset_index(), index=False),
            **config_metadata(fcfg),
        })
        return table

    return [essay_flagger, robustness_set]


@dg.asset_check(
    asset=keys.ROBUSTNESS, name=ROBUSTNESS_CHECK,
    additional_deps=[keys.BUNDLE],  # after the bundle in a run that makes both; read from disk
    description="The serving bundle's scorer (in-process) and flags on the clean and perturbed "
                "essays: fails when an attack raises the mean score after the flag policy by "
                "more than flags.max_attack_score_gain, or more than flags.max_clean_flag_rate "
                "of the clean essays carry a gaming flag. Before any serving bundle exists it "
                "warns that it was not evaluated.",
)
def gaming_robustness(context: dg.AssetCheckExecutionContext, settings: PipelineSettings,
                      robustness_set: pd.DataFrame) -> dg.AssetCheckResult:
    cfg = settings.config
    if not Bundle.exists(cfg.bundle_dir):
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={
            "result": f"not evaluated: no serving bundle at {cfg.bundle_dir} yet; materialize "
                      f"serving_bundle, then run this check again"})
    bundle = Bundle.load(cfg.bundle_dir)
    flagger = bundle.flagger()
    if flagger is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={
            "result": "the serving bundle has no flagger (flags.enabled was false): nothing "
                      "keeps gamed essays from their score"})
    clean, perturbed = split_robustness_table(robustness_set)
    t0 = time.time()
    in_process = cfg.serving.model_copy(update={"use_triton": False})
    from aes_core.serving.loader import open_scorer  # torch: lazily

    with open_scorer(bundle, in_process, start_server=False) as choice:
        report, _ = evaluate_robustness(clean, perturbed, flagger, EnsembleScores(choice.scorer))
        via = choice.via
    result = robustness_check(report, cfg.flags)
    data = report.to_dict()
    context.log.info(f"{ROBUSTNESS_CHECK}: {result.description}")
    return dg.AssetCheckResult(
        passed=result.passed, severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "result": result.description,
            "attacks": md(attack_table(report), index=False),
            "report": dg.MetadataValue.json(data),
            "clean_essays": data["n_clean"], "perturbed_essays": len(perturbed),
            "clean_false_flag_rate": data["clean_false_flag_rate"],
            "clean_mean_score": data["clean_mean_score"],
            "max_attack_score_gain": cfg.flags.max_attack_score_gain,
            "max_clean_flag_rate": cfg.flags.max_clean_flag_rate,
            "policy": dg.MetadataValue.json({
                "cap_score_when_flagged": flagger.cfg.cap_score_when_flagged,
                "cap_flags": flagger.cfg.cap_flags}),
            "scored_via": via, "bundle": bundle.version(),
            "seconds": round(time.time() - t0, 1),
        })


FLAG_CHECKS = [gaming_robustness]
