"""Asset checks: the stored essay tables against their schemas (aes_core.data.schema)."""


import dagster as dg
import pandas as pd

from aes_core.data import contract, schema
from aes_resources.settings import PipelineSettings


def _result(r: contract.CheckResult, blocking_severity=dg.AssetCheckSeverity.ERROR):
    return dg.AssetCheckResult(passed=r.passed, severity=blocking_severity,
                               metadata={"result": r.description, **(r.details or {})})


@dg.asset_check(asset="raw_essays", blocking=True,
                description="the stored table matches TrainEssays: essay_id unique, full_text "
                            "non-empty, score int 1..6")
def raw_essays_schema(raw_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(schema.TrainEssays.check(raw_essays))


@dg.asset_check(asset="folded_essays", blocking=True,
                description="the stored table matches FoldedEssays (prompt_name, in_persuade, "
                            "flag 0/1, fold 0..n_folds-1 of the folds config)")
def folded_schema(folded_essays: pd.DataFrame,
                  settings: PipelineSettings) -> dg.AssetCheckResult:
    return _result(schema.FoldedEssays.check(folded_essays,
                                             n_folds=settings.load().folds.n_folds))


@dg.asset_check(asset="folded_essays", blocking=True,
                description="every essay in exactly one of the configured folds, no fold empty")
def folded_one_fold_each(folded_essays: pd.DataFrame,
                         settings: PipelineSettings) -> dg.AssetCheckResult:
    return _result(contract.check_one_fold_each(folded_essays, settings.load().folds.n_folds))


@dg.asset_check(asset="folded_essays",
                description="per-fold score and prompt shares within tolerance of the whole")
def folded_balance(folded_essays: pd.DataFrame,
                   settings: PipelineSettings) -> dg.AssetCheckResult:
    tol = settings.load().folds.balance_tolerance
    return _result(contract.check_fold_balance(folded_essays, tol),
                   dg.AssetCheckSeverity.WARN)


@dg.asset_check(asset="test_essays", blocking=True,
                description="the stored table matches Essays: essay_id unique, full_text non-empty")
def test_essays_contract(test_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(schema.Essays.check(test_essays))


DATA_CHECKS = [raw_essays_schema, folded_schema, folded_one_fold_each, folded_balance,
               test_essays_contract]
