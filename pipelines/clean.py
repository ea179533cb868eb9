"""Text cleaning: unicode repair (ftfy) and whitespace normalisation.

ftfy fixes mojibake and HTML entities left by bad decoding without touching correct text. We keep
paragraph breaks (they are signal for a language model) but drop trailing spaces, runs of blank
lines and control characters.

ftfy fixes a text a line at a time, and most lines need nothing of it but straight quotes; the
result equals ftfy.fix_text (tests/corpus/test_extract.py) at a fifth of its cost on WebText-like
text. Two kinds of line skip ftfy's machinery:
- Lines of ASCII (no "&") and typographic punctuation (curly quotes, dashes, the ellipsis): in
  every encoding ftfy tries to undo, those seven characters are either all UTF-8 continuation
  bytes (the windows-125x code pages) or all lead bytes (macroman) or not encodable (latin-1,
  cp437, iso-8859-2), so no UTF-8 sequence can be re-decoded, and ftfy's only change is to
  straighten the quotes: four str.replace.
- Other lines, by ftfy's own gates: ftfy re-decodes a line only when its badness regex finds
  mojibake (`is_bad`), and its other fixes act on characters listed in its tables (C1 controls,
  ligatures, wide forms, control characters, line breaks, surrogates, escapes, entities) or on a
  line that is not NFC. A line with none of those, before or after its quotes are straightened,
  gets only ftfy.fixes.uncurl_quotes: one regex search and a table match instead of ftfy's eight
  fixers and two passes.
"""

from __future__ import annotations

import re
import unicodedata

from ftfy import TextFixerConfig, chardata, fix_and_explain
from ftfy.badness import is_bad
from ftfy.fixes import uncurl_quotes

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


_PLAIN = re.compile("[\x20-\x25\x27-\x7e\t\u2018\u2019\u201c\u201d\u2013\u2014\u2026]*\n?")  # no "&"
_FTFY = TextFixerConfig(normalization="NFC", explain=False)
# every character one of ftfy's fixers other than fix_encoding and uncurl_quotes acts on
_TOUCHED = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(
    {ord(c) for c in "&\x1b\r\u2028\u2029\x85"} | set(range(0x80, 0xA0)) | set(chardata.LIGATURES)
    | set(chardata.WIDTH_MAP) | set(chardata.CONTROL_CHARS))) + "\ud800-\udfff]")


def _uncurl(text: str) -> str:
    """ftfy's uncurl_quotes for the quotes _PLAIN lets through."""
    return text.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')


def _quotes_only(segment: str) -> str | None:
    """What ftfy makes of a line that needs nothing but straight quotes, or None for other lines."""
    if _TOUCHED.search(segment) or is_bad(segment):
        return None
    straight = uncurl_quotes(segment)
    if (straight != segment and is_bad(straight)) or not unicodedata.is_normalized("NFC", straight):
        return None
    return straight


def fix_unicode(text: str) -> str:
    """ftfy.fix_text(text, normalization="NFC"), skipping the lines it would leave as they are."""
    config, out, pos = _FTFY, [], 0
    while pos < len(text):  # ftfy.fix_text's segments: lines, cut at max_decode_length
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + config.max_decode_length)
        segment = text[pos:end]
        if config.unescape_html == "auto" and "<" in segment:  # as ftfy: markup seen, entities stay
            config = config._replace(unescape_html=False)
        if _PLAIN.fullmatch(segment):
            out.append(_uncurl(segment))
        else:
            fixed = _quotes_only(segment)
            out.append(fixed if fixed is not None else fix_and_explain(segment, config)[0])
        pos = end
    return "".join(out)


def clean_text(text: str) -> str:
    text = fix_unicode(text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
