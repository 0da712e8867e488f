"""Warnings shown beside a score: a list of ``{code, message, evidence}`` objects per essay.

The page renders every warning the same way whatever its code, so other checks (gaming and
off-topic flags) report through the same list. ``message`` is one plain sentence for a
teacher, ``evidence`` says what in the essay triggered it. In a downloaded CSV the list
becomes two text columns: ``warnings`` (codes) and ``warning_details`` (messages + evidence).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from aes_core.config import WebSection
from aes_core.essay_stats import EssayStats

TOO_SHORT = "too_short"
CODE_SEP = ";"
DETAIL_SEP = " | "


class EssayWarning(BaseModel):
    """One reason to read an essay before trusting its score."""

    code: str = Field(description="stable machine-readable id, e.g. 'too_short'")
    message: str = Field(description="one plain sentence for the teacher")
    evidence: str = Field("", description="what in the essay triggered the warning")


def essay_warnings(stats: EssayStats, web: WebSection) -> list[EssayWarning]:
    """The warnings of one essay from its statistics (empty when nothing looks wrong)."""
    out = []
    if stats.words < web.min_words:
        noun = "word" if stats.words == 1 else "words"
        out.append(EssayWarning(
            code=TOO_SHORT,
            message="This essay is too short to score reliably: please grade it yourself.",
            evidence=f"{stats.words:,} {noun}; the model was trained on essays of at least "
                     f"{web.min_words:,} words.",
        ))
    return out


def warning_codes(warnings: list[dict[str, Any]]) -> str:
    """``'too_short;...'`` for a CSV cell ('' when there are none)."""
    return CODE_SEP.join(w["code"] for w in warnings)


def warning_details(warnings: list[dict[str, Any]]) -> str:
    """``'message (evidence) | ...'`` for a CSV cell ('' when there are none)."""
    return DETAIL_SEP.join(f"{w['message']} ({w['evidence']})" if w.get("evidence")
                           else w["message"] for w in warnings)
