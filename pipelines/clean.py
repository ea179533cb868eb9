"""Text cleaning: unicode repair (ftfy) and whitespace normalisation.

ftfy fixes mojibake and HTML entities left by bad decoding without touching correct text. We keep
paragraph breaks (they are signal for a language model) but drop trailing spaces, runs of blank
lines and control characters.

ftfy fixes a text a line at a time; lines of printable ASCII without "&" have nothing it could
change (no mojibake, entities, escapes, curly quotes or wide characters), so only the other lines
go through it. On English web text that skips most lines and halves the cost of a build's cleaning
(the result equals ftfy.fix_text: tests/corpus/test_extract.py).
"""

from __future__ import annotations

import re

from ftfy import TextFixerConfig, fix_and_explain

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t]*\n?")  # printable ASCII and tabs, no "&"
_FTFY = TextFixerConfig(normalization="NFC", explain=False)


def fix_unicode(text: str) -> str:
    """ftfy.fix_text(text, normalization="NFC"), skipping the lines it would leave as they are."""
    config, out, pos = _FTFY, [], 0
    while pos < len(text):  # ftfy.fix_text's segments: lines, cut at max_decode_length
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + config.max_decode_length)
        segment = text[pos:end]
        if config.unescape_html == "auto" and "<" in segment:  # as ftfy: markup seen, entities stay
            config = config._replace(unescape_html=False)
        out.append(segment if _PLAIN.fullmatch(segment) else fix_and_explain(segment, config)[0])
        pos = end
    return "".join(out)


def clean_text(text: str) -> str:
    text = fix_unicode(text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
