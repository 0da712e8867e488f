"""Asset checks: the data contract of the essay tables."""


import dagster as dg
import pandas as pd

from aes_core.data import contract
from aes_resources.settings import PipelineSettings


def _result(r: contract.CheckResult, blocking_severity=dg.AssetCheckSeverity.ERROR):
    return dg.AssetCheckResult(passed=r.passed, severity=blocking_severity,
                               metadata={"result": r.description, **(r.details or {})})


@dg.asset_check(asset="raw_essays", blocking=True,
                description="essay_id, full_text, score present with the right types")
def raw_essays_schema(raw_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(contract.check_schema(
        raw_essays, {k: contract.FOLDED_COLUMNS[k] for k in ("essay_id", "full_text", "score")}))


@dg.asset_check(asset="raw_essays", blocking=True, description="essay_id is unique")
def raw_essays_unique_ids(raw_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(contract.check_unique_ids(raw_essays))


@dg.asset_check(asset="raw_essays", blocking=True, description="every score within 1..6")
def raw_essays_score_range(raw_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(contract.check_score_range(raw_essays))


@dg.asset_check(asset="raw_essays", blocking=True, description="no empty or non-text essays")
def raw_essays_texts(raw_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(contract.check_texts(raw_essays))


@dg.asset_check(asset="folded_essays", blocking=True,
                description="schema of the folded table (prompt_name, flag, fold added)")
def folded_schema(folded_essays: pd.DataFrame) -> dg.AssetCheckResult:
    return _result(contract.check_schema(folded_essays, contract.FOLDED_COLUMNS))


@dg.asset_check(asset="folded_essays", blocking=True,
                description="every essay in exactly one fold, no fold empty")
def folded_one_fold_each(folded_essays: pd.DataFrame,
                         settings: PipelineSettings) -> dg.AssetCheckResult:
    return _result(contract.check_one_fold_each(folded_essays, settings.config.folds.n_folds))


@dg.asset_check(asset="folded_essays",
                description="per-fold score and prompt shares within tolerance of the whole")
def folded_balance(folded_essays: pd.DataFrame,
                   settings: PipelineSettings) -> dg.AssetCheckResult:
    tol = settings.config.folds.balance_tolerance
    return _result(contract.check_fold_balance(folded_essays, tol),
                   dg.AssetCheckSeverity.WARN)


@dg.asset_check(asset="test_essays", blocking=True, description="unique ids, non-empty texts")
def test_essays_contract(test_essays: pd.DataFrame) -> dg.AssetCheckResult:
    r1, r2 = contract.check_unique_ids(test_essays), contract.check_texts(test_essays)
    return dg.AssetCheckResult(passed=r1.passed and r2.passed,
                               metadata={"ids": r1.description, "texts": r2.description})


DATA_CHECKS = [raw_essays_schema, raw_essays_unique_ids, raw_essays_score_range, raw_essays_texts,
               folded_schema, folded_one_fold_each, folded_balance, test_essays_contract]
