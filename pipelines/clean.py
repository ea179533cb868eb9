"""Text cleaning: unicode repair (ftfy) and whitespace normalisation.

ftfy fixes mojibake and HTML entities left by bad decoding without touching correct text. We keep
paragraph breaks (they are signal for a language model) but drop trailing spaces, runs of blank
lines and control characters.
"""

from __future__ import annotations

import re

import ftfy

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    text = ftfy.fix_text(text, normalization="NFC")
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
