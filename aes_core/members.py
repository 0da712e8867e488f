"""Ensemble member names and the columns of the OOF table, shared by every stage.

A member is one column of predictions on the 1..6 scale: ``{backbone}__{head}`` for a
transformer (e.g. ``minilm__mean``, averaged over folds) or ``gbdt``. The OOF table
(``oof_predictions``) holds :data:`OOF_META_COLUMNS` and one column per member.
"""

from __future__ import annotations

from collections.abc import Iterable

GBDT_MEMBER = "gbdt"
MEMBER_SEPARATOR = "__"
OOF_META_COLUMNS = ("essay_id", "fold", "score", "prompt_name", "flag")


def member_name(backbone: str, head: str) -> str:
    """The member trained from ``backbone`` with ``head``: ``{backbone}__{head}``."""
    return f"{backbone}{MEMBER_SEPARATOR}{head}"


def split_member_name(name: str) -> tuple[str, str]:
    """``(backbone, head)`` of a transformer member; ValueError for ``gbdt`` or a bad name."""
    backbone, sep, head = name.partition(MEMBER_SEPARATOR)
    if not (sep and backbone and head):
        raise ValueError(f"member {name!r} is not '<backbone>{MEMBER_SEPARATOR}<head>'")
    return backbone, head


def member_columns(columns: Iterable[str]) -> list[str]:
    """The member columns of an OOF table (every column that is not a meta column), in order.

    Takes a DataFrame (its column names) or any iterable of column names.
    """
    return [c for c in columns if c not in OOF_META_COLUMNS]
