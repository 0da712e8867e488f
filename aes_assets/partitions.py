"""Partition definitions, shaped by the active profile."""

from __future__ import annotations

import dagster as dg

from aes_core.config import AesConfig, BackboneSection

FOLD_DIM, HEAD_DIM = "fold", "head"


def fold_head_partitions(cfg: AesConfig,
                         backbone: str | BackboneSection) -> dg.MultiPartitionsDefinition:
    """A backbone's fold x head partitions: every fold times the heads it trains."""
    return dg.MultiPartitionsDefinition({
        FOLD_DIM: dg.StaticPartitionsDefinition([str(i) for i in range(cfg.folds.n_folds)]),
        HEAD_DIM: dg.StaticPartitionsDefinition(cfg.heads_for(backbone)),
    })


def partition_key(fold: int, head: str) -> str:
    """The fold x head partition key (``0|mean``)."""
    return str(dg.MultiPartitionKey({FOLD_DIM: str(fold), HEAD_DIM: head}))


def split_partition_key(pk: str) -> tuple[int, str]:
    """``0|mean`` (or its MultiPartitionKey) -> (0, "mean")."""
    if isinstance(pk, dg.MultiPartitionKey):
        dims = pk.keys_by_dimension
        return int(dims[FOLD_DIM]), dims[HEAD_DIM]
    fold, head = str(pk).split("|", 1)
    return int(fold), head


def head_major(pks) -> list[str]:
    """Partition keys grouped by head, folds in order within each (``0|mean, 1|mean, ...``),
    heads in their first-seen order: handed out one by one to alternating GPUs, every GPU
    then trains a mix of heads (fold-major order would send all of one head to one GPU)."""
    parsed = {str(pk): split_partition_key(pk) for pk in pks}
    heads = list(dict.fromkeys(head for _, head in parsed.values()))
    return sorted(parsed, key=lambda pk: (heads.index(parsed[pk][1]), parsed[pk][0]))
