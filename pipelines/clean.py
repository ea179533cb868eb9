"""Text cleaning: unicode repair (ftfy) and whitespace normalisation.

ftfy fixes mojibake and HTML entities left by bad decoding without touching correct text. We keep
paragraph breaks (they are signal for a language model) but drop trailing spaces, runs of blank
lines and control characters.

ftfy fixes a text a line at a time; lines of printable ASCII without "&" have nothing it could
change (no mojibake, entities, escapes or wide characters), so only the other lines go through it.
English web text's lines are rarely pure ASCII but mostly ASCII plus typographic punctuation
(curly quotes, dashes, the ellipsis): in every encoding ftfy tries to undo, those seven characters
are either all UTF-8 continuation bytes (the windows-125x code pages) or all lead bytes (macroman)
or not encodable (latin-1, cp437, iso-8859-2), so with ASCII around them no UTF-8 sequence can be
re-decoded, and ftfy's only change to such a line is to straighten its quotes, done here with
four str.replace. The result equals ftfy.fix_text
(tests/corpus/test_extract.py) at a fifth of its cost on WebText-like text (bench/build_memory.py).
"""

from __future__ import annotations

import re

from ftfy import TextFixerConfig, fix_and_explain

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


_PLAIN = re.compile("[\x20-\x25\x27-\x7e\t\u2018\u2019\u201c\u201d\u2013\u2014\u2026]*\n?")  # no "&"
_FTFY = TextFixerConfig(normalization="NFC", explain=False)


def _uncurl(text: str) -> str:
    """ftfy's uncurl_quotes for the quotes _PLAIN lets through."""
    return text.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')


def fix_unicode(text: str) -> str:
    """ftfy.fix_text(text, normalization="NFC"), skipping the lines it would leave as they are."""
    config, out, pos = _FTFY, [], 0
    while pos < len(text):  # ftfy.fix_text's segments: lines, cut at max_decode_length
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + config.max_decode_length)
        segment = text[pos:end]
        if config.unescape_html == "auto" and "<" in segment:  # as ftfy: markup seen, entities stay
            config = config._replace(unescape_html=False)
        out.append(_uncurl(segment) if _PLAIN.fullmatch(segment) else fix_and_explain(segment, config)[0])
        pos = end
    return "".join(out)


def clean_text(text: str) -> str:
    text = fix_unicode(text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
