"""Turning tables, numbers and configurations into Dagster metadata and code versions."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import BaseModel

from aes_core.config import config_hash
from aes_core.tracking import code_hash


def md(df: pd.DataFrame, index: bool = True, floatfmt: str = ".3f") -> dg.MetadataValue:
    return dg.MetadataValue.md(df.to_markdown(index=index, floatfmt=floatfmt))


def score_histogram(df: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in df["score"].value_counts().sort_index().items()}


def png_md(path: Path) -> dg.MetadataValue:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{Path(path).stem}](data:image/png;base64,{data})")


def config_metadata(*sections: BaseModel) -> dict[str, dg.MetadataValue]:
    """The effective configuration an asset ran with (recorded on every materialization)."""
    merged = {}
    for s in sections:
        merged[type(s).__name__] = s.model_dump(mode="json")
    return {"config": dg.MetadataValue.json(merged), "config_hash": config_hash(merged)}


def file_stamp(path: str | None) -> str:
    """Size and modification time of an input file: a changed file changes the code version
    of the asset that reads it, so the driver re-materializes it."""
    if not path:
        return "none"
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}-{st.st_mtime_ns}"


def code_version(*parts: BaseModel | Mapping[str, Any] | str) -> str:
    """Library code + the profile's configuration of the asset (+ input file stamps)."""
    items = [p.model_dump(mode="json") if isinstance(p, BaseModel)
             else dict(p) if isinstance(p, Mapping) else p for p in parts]
    return f"{code_hash()}-{config_hash({'parts': items})}"
