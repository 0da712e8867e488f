"""Asset checks: the stored essay tables against their schemas (aes_core.data.schema), with
expectations from the configuration the asset was built with (never from the checked data)."""


import dagster as dg
import pandas as pd

from aes_assets import keys
from aes_core.config import FoldSection
from aes_core.data import contract, schema
from aes_resources.settings import PipelineSettings


def _result(r: contract.CheckResult, blocking_severity=dg.AssetCheckSeverity.ERROR):
    return dg.AssetCheckResult(passed=r.passed, severity=blocking_severity,
                               metadata={"result": r.description, **(r.details or {})})


def folds_config(context: dg.AssetCheckExecutionContext,
                 settings: PipelineSettings) -> FoldSection:
    """The folds section ``folded_essays`` was materialized with (its recorded ``config``
    metadata, so a launchpad override is honoured), else the profile's."""
    event = context.instance.get_latest_materialization_event(keys.FOLDED)
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    recorded = meta.get("config")
    if recorded is not None and FoldSection.__name__ in recorded.value:
        return FoldSection.model_validate(recorded.value[FoldSection.__name__])
    return settings.config.folds


@dg.asset_check(asset=keys.RAW_ESSAYS, blocking=True,
                description="the stored table matches TrainEssays: essay_id unique, full_text "
                            "non-empty, score int 1..6")
def raw_essays_schema(raw_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(schema.TrainEssays.check(raw_essays))


@dg.asset_check(asset=keys.FOLDED, blocking=True,
                description="the stored table matches FoldedEssays (prompt_name, in_persuade, "
                            "flag 0/1, fold 0..n_folds-1 of the folds config)")
def folded_schema(context: dg.AssetCheckExecutionContext, folded_essays: pd.DataFrame,
                  settings: PipelineSettings) -> dg.AssetCheckResult:
    n_folds = folds_config(context, settings).n_folds
    return _result(schema.FoldedEssays.check(folded_essays, n_folds=n_folds))


@dg.asset_check(asset=keys.FOLDED, blocking=True,
                description="every essay in exactly one of the configured folds, no fold empty")
def folded_one_fold_each(context: dg.AssetCheckExecutionContext, folded_essays: pd.DataFrame,
                         settings: PipelineSettings) -> dg.AssetCheckResult:
    n_folds = folds_config(context, settings).n_folds
    return _result(contract.check_one_fold_each(folded_essays, n_folds))


@dg.asset_check(asset=keys.FOLDED,
                description="per-fold score and prompt shares within tolerance of the whole")
def folded_balance(context: dg.AssetCheckExecutionContext, folded_essays: pd.DataFrame,
                   settings: PipelineSettings) -> dg.AssetCheckResult:
    tol = folds_config(context, settings).balance_tolerance
    return _result(contract.check_fold_balance(folded_essays, tol),
                   dg.AssetCheckSeverity.WARN)


@dg.asset_check(asset=keys.TEST_ESSAYS, blocking=True,
                description="the stored table matches Essays: essay_id unique, full_text non-empty")
def test_essays_contract(test_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(schema.Essays.check(test_essays))


DATA_CHECKS = [raw_essays_schema, folded_schema, folded_one_fold_each, folded_balance,
               test_essays_contract]
