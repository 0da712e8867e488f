"""Turning tables and numbers into Dagster metadata."""

from __future__ import annotations

import dagster as dg
import pandas as pd


def md(df: pd.DataFrame, index: bool = True, floatfmt: str = ".3f") -> dg.MetadataValue:
    return dg.MetadataValue.md(df.to_markdown(index=index, floatfmt=floatfmt))


def score_histogram(df: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in df["score"].value_counts().sort_index().items()}
