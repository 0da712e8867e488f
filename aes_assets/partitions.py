"""Partition definitions, shaped by the active profile."""

from __future__ import annotations

import dagster as dg

from aes_core.config import AesConfig

FOLD_DIM, HEAD_DIM = "fold", "head"


def fold_head_partitions(cfg: AesConfig) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({
        FOLD_DIM: dg.StaticPartitionsDefinition([str(i) for i in range(cfg.folds.n_folds)]),
        HEAD_DIM: dg.StaticPartitionsDefinition(list(cfg.heads.heads)),
    })


def fold_and_head(context: dg.AssetExecutionContext) -> tuple[int, str]:
    keys = context.partition_key.keys_by_dimension
    return int(keys[FOLD_DIM]), keys[HEAD_DIM]
