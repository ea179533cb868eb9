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
from urllib.parse import urlsplit

DEFAULT_BLOCKED_DOMAINS = ("wikipedia.org",)
_SPACE = re.compile(r"\s")
_NOT_LETTER = re.compile(r"[\W\d_]")  # what str.isalpha() is not (letters are \w minus digits and _)


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
    visible = len(text) - len(_SPACE.findall(text))
    letters = len(text) - len(_NOT_LETTER.findall(text))  # regex counts in C: 10x a Python loop
    if letters < config.min_alpha * visible:
        return "not_mostly_text"
    domain = blocked_domain(url, config.blocked_domains)
    if domain is not None:
        return f"blocked_domain:{domain}"
    return None
