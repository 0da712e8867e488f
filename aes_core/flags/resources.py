"""The committed text resources: one assignment sentence per PERSUADE prompt, and non-essays."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROMPT_TEXTS_FILE = HERE / "prompt_texts.yaml"
NON_ESSAY_FILE = HERE / "non_essay_passages.txt"
_TITLE = re.compile(r"^=== (.+) ===$", re.M)


@lru_cache(maxsize=1)
def prompt_texts() -> dict[str, str]:
    """PERSUADE prompt name -> a one-sentence assignment text (our paraphrase)."""
    data = yaml.safe_load(PROMPT_TEXTS_FILE.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{PROMPT_TEXTS_FILE}: expected a mapping prompt name -> text")
    return {str(k): " ".join(v.split()) for k, v in data.items()}


@lru_cache(maxsize=1)
def non_essay_passages() -> tuple[tuple[str, str], ...]:
    """(title, text) of generic English passages that are not student essays, one paragraph each."""
    raw = NON_ESSAY_FILE.read_text()
    parts = _TITLE.split(raw)[1:]
    passages = tuple((parts[i].strip(), " ".join(parts[i + 1].split()))
                     for i in range(0, len(parts), 2))
    if not passages:
        raise ValueError(f"{NON_ESSAY_FILE}: no '=== title ===' passages found")
    return passages
