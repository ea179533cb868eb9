"""Which Reddit submissions give a link: WebText's rule and the reasons the others are dropped.

A submission gives a link when it links out (not a self post, not Reddit itself), its score is at
least `min_karma` (WebText: 3), and it was posted inside [since, until) when those are given
(WebText: before December 2017). Its URL must then pass the URL rules of `urls`. Every
submission read ends in exactly one of: kept, or dropped by one named reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pipelines.crawl.urls import DEFAULT_BLOCKLIST, drop_reason, normalize


@dataclass(frozen=True)
class Rules:
    min_karma: int = 3
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # unix seconds, exclusive
    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST
    drop_nsfw: bool = False  # WebText kept them; a user may not want them


@dataclass(frozen=True)
class Link:
    url: str  # normalized
    score: int
    created: int  # unix seconds
    subreddit: str


def parse_date(text: str | None, option: str) -> float | None:
    """YYYY-MM-DD (UTC midnight) as unix seconds."""
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} {text!r}: give a date as YYYY-MM-DD "
                         "(WebText: --until 2017-12-01)") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def select(line: bytes, rules: Rules) -> tuple[Link | None, str | None]:
    """(the submission's link, None) or (None, why it gives none)."""
    try:
        post = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "bad_json"
    if not isinstance(post, dict):
        return None, "bad_json"
    url = post.get("url")
    if not isinstance(url, str) or not url:
        return None, "no_url"
    if post.get("is_self") or str(post.get("domain", "")).startswith("self."):
        return None, "self_post"
    score = _number(post.get("score"))
    if score is None or score < rules.min_karma:
        return None, "low_score"
    created = _number(post.get("created_utc"))
    if created is None:
        return None, "no_date"
    if ((rules.since is not None and created < rules.since)
            or (rules.until is not None and created >= rules.until)):
        return None, "outside_dates"
    if rules.drop_nsfw and post.get("over_18"):
        return None, "over_18"
    normalized, reason = normalize(url)
    if normalized is None:
        return None, reason
    reason = drop_reason(normalized, rules.blocklist)
    if reason is not None:
        return None, reason
    return Link(normalized, int(score), int(created), str(post.get("subreddit") or "")), None


def _number(value: Any) -> float | None:
    """Dumps hold numbers as ints, floats or strings ("1512086400") depending on the year."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
