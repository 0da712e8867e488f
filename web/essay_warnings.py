"""Warnings shown beside a score: a list of ``{code, message, evidence, level}`` per essay.

The page renders every warning the same way whatever its code: the essay's own statistics
(``too_short``) and the serving bundle's flags (gaming flags as warnings, ``unknown_prompt`` as
a softer notice) report through the same list. ``message`` is one plain sentence for a
teacher, ``evidence`` says what in the essay triggered it. In a downloaded CSV the list
becomes two text columns: ``warnings`` (codes) and ``warning_details`` (messages + evidence).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from aes_core.config import WebSection
from aes_core.essay_stats import EssayStats
from aes_core.flags import EssayFlags

TOO_SHORT = "too_short"
CODE_SEP = ";"
DETAIL_SEP = " | "
CHECK_IT = "please read it before you trust the score."
FLAG_MESSAGES = {  # one sentence per flag of aes_core.flags (docs/flags.md)
    TOO_SHORT: "This essay is too short to score reliably: please grade it yourself.",
    "repetition": f"Large parts of this essay are repeated: {CHECK_IT}",
    "prompt_copy": f"This essay copies the assignment text: {CHECK_IT}",
    "gibberish": f"Much of this essay is not English words: {CHECK_IT}",
    "off_topic": f"This essay does not seem to answer its assignment: {CHECK_IT}",
    "unknown_prompt": "This essay is on an assignment the scorer was not trained on: its score "
                      "may be less reliable.",
}
NOTICE_FLAGS = ("unknown_prompt",)


class EssayWarning(BaseModel):
    """One reason to read an essay before trusting its score."""

    code: str = Field(description="stable machine-readable id, e.g. 'too_short'")
    message: str = Field(description="one plain sentence for the teacher")
    evidence: str = Field("", description="what in the essay triggered the warning")
    level: Literal["warning", "notice"] = Field(
        "warning", description="'notice': worth knowing, nothing wrong with the essay")


def flag_warnings(flags: EssayFlags, score: int | None = None,
                  model_score: int | None = None) -> list[EssayWarning]:
    """One warning per flag of an essay (notices last); when the flag policy lowered the score
    (``score`` < ``model_score``) the first warning says so."""
    out = [EssayWarning(code=f.name, evidence=f.evidence,
                        message=FLAG_MESSAGES.get(f.name, f"Flagged: {f.name}."),
                        level="notice" if f.name in NOTICE_FLAGS else "warning")
           for f in flags.flags]
    out.sort(key=lambda w: w.level == "notice")
    if out and score is not None and model_score is not None and score < model_score:
        first = out[0]
        first.message += (f" The score shown is capped at {score} because of this; without "
                          f"the check it would be {model_score}.")
    return out


def essay_warnings(stats: EssayStats, web: WebSection, flags: EssayFlags | None = None,
                   score: int | None = None,
                   model_score: int | None = None) -> list[EssayWarning]:
    """The warnings of one essay from its flags (with ``score`` and ``model_score``: whether
    the flag policy capped it) and its statistics; empty when nothing looks wrong. A flag
    replaces the statistics' warning of the same code."""
    out = flag_warnings(flags, score, model_score) if flags is not None else []
    codes = {w.code for w in out}
    if stats.words < web.min_words and TOO_SHORT not in codes:
        noun = "word" if stats.words == 1 else "words"
        out.append(EssayWarning(
            code=TOO_SHORT,
            message="This essay is too short to score reliably: please grade it yourself.",
            evidence=f"{stats.words:,} {noun}; the model was trained on essays of at least "
                     f"{web.min_words:,} words.",
        ))
    return sorted(out, key=lambda w: w.level == "notice")


def warning_codes(warnings: list[dict[str, Any]]) -> str:
    """``'too_short;...'`` for a CSV cell ('' when there are none)."""
    return CODE_SEP.join(w["code"] for w in warnings)


def warning_details(warnings: list[dict[str, Any]]) -> str:
    """``'message (evidence) | ...'`` for a CSV cell ('' when there are none)."""
    return DETAIL_SEP.join(f"{w['message']} ({w['evidence']})" if w.get("evidence")
                           else w["message"] for w in warnings)
