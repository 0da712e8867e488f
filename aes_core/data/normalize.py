"""Text normalization used to join essays to PERSUADE regardless of whitespace/encoding quirks."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                         "\u2013": "-", "\u2014": "-", "\u00a0": " ", "\u00c2": ""})


def normalize_text(text: str) -> str:
    """NFKC, fold curly quotes/dashes and stray mojibake bytes, collapse whitespace, strip."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_QUOTES)
    return _WS.sub(" ", text).strip()
