"""Quality filters: each returns the reason a document is dropped, or None to keep it.

WebText kept pages with at least some substance and removed Wikipedia (so that common eval sets
drawn from it would not leak in). We drop: documents shorter than `min_chars`; documents that are
not mostly text (letters under `min_alpha` of the non-space characters: tables of numbers, code,
link lists); and documents whose URL, when known, is on a blocked domain or one of its
subdomains (`wikipedia.org` blocks `en.wikipedia.org`, `de.m.wikipedia.org`, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

import numpy as np

DEFAULT_BLOCKED_DOMAINS = ("wikipedia.org",)
_NOT_LETTER = re.compile(r"[\W\d_]")  # letters are \w minus digits and _
OTHER, LETTER, SPACE, SURROGATE = range(4)


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 200
    min_alpha: float = 0.6  # the 181 sample articles all have >= 0.67
    blocked_domains: Sequence[str] = field(default=DEFAULT_BLOCKED_DOMAINS)


def blocked_domain(url: str | None, blocked: Sequence[str]) -> str | None:
    """The blocked domain `url` falls under, if any."""
    if not url:
        return None
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower().rstrip(".")
    return next((d for d in blocked if host == d or host.endswith("." + d)), None)


def reject_reason(text: str, url: str | None, config: FilterConfig) -> str | None:
    if len(text) < config.min_chars:
        return "too_short"
    letters, spaces = letters_and_spaces(text)
    if letters < config.min_alpha * (len(text) - spaces):
        return "not_mostly_text"
    domain = blocked_domain(url, config.blocked_domains)
    if domain is not None:
        return f"blocked_domain:{domain}"
    return None


@lru_cache(maxsize=1)
def _kinds() -> np.ndarray:
    """The kind of each UTF-16 code unit, by the same rules as the regexes \\s and [^\\W\\d_]."""
    units = [chr(c) for c in range(1 << 16)]
    kinds = np.array([SPACE if c.isspace() else OTHER if _NOT_LETTER.match(c) else LETTER for c in units],
                     np.uint8)
    kinds[0xD800:0xE000] = SURROGATE
    return kinds


def letters_and_spaces(text: str) -> tuple[int, int]:
    """How many characters of `text` are letters and how many whitespace: a table lookup a UTF-16
    code unit (10x counting regex matches); a text beyond the BMP (a surrogate pair) is counted
    by the regex, since a table of all of Unicode costs a second to build."""
    units = np.frombuffer(text.encode("utf-16-le", "surrogatepass"), np.uint16)
    counts = np.bincount(_kinds()[units], minlength=4)
    if counts[SURROGATE]:
        return len(text) - len(_NOT_LETTER.findall(text)), int(counts[SPACE])
    return int(counts[LETTER]), int(counts[SPACE])
