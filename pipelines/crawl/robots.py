"""robots.txt as RFC 9309 says, parsed by protego.

- 2xx: the rules of the file (at most 500 KiB are parsed, the RFC's floor), for our product token.
- 4xx ("unavailable"): everything is allowed; except 429, which is the server asking us to slow
  down, taken as 5xx as major crawlers do.
- 5xx, or the server unreachable (timeout, connection error, DNS): everything is disallowed for
  now; the URLs of that host end as `robots_unreachable`, not fetched.
- Redirects of robots.txt are followed (the fetcher, at most 5 hops).
`Crawl-delay` of the matching group is honoured, capped by the crawl's --max-crawl-delay.
"""

from __future__ import annotations

from dataclasses import dataclass

from protego import Protego

ROBOTS_LIMIT = 500 * 1024


@dataclass
class Robots:
    verdict: str  # "rules", "allow" (4xx), "unreachable" (5xx, network)
    parser: Protego | None = None
    failure: str | None = None  # why there was no answer at all (timeout, dns_error, private_address)

    def allows(self, url: str, agent: str) -> bool:
        if self.verdict == "rules":
            return self.parser.can_fetch(url, agent)
        return self.verdict == "allow"

    def crawl_delay(self, agent: str) -> float:
        if self.parser is None:
            return 0.0
        delay = self.parser.crawl_delay(agent)
        return float(delay) if delay else 0.0


def robots_from(status: int | None, body: bytes = b"") -> Robots:
    """The rules of a robots.txt fetch that ended with `status` (None: no response at all)."""
    if status is None or status >= 500 or status == 429:
        return Robots("unreachable")
    if status >= 400:
        return Robots("allow")
    if 200 <= status < 300:
        text = body[:ROBOTS_LIMIT].decode("utf-8", "replace")
        return Robots("rules", Protego.parse(text))
    return Robots("unreachable")  # a redirect chain that did not end: RFC 9309 treats it as unreachable


def robots_url(url: str) -> str:
    """The robots.txt of the origin of `url` (scheme, host and port)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}/robots.txt"
