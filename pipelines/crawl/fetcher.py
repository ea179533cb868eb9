"""The polite fetcher: asyncio and aiohttp, a global and a per-host limit, robots.txt, retries.

Politeness is per host (its name without `www.`): at most `per_host` requests to it at once, and
request starts at least `delay` seconds apart (or its robots.txt Crawl-delay, when longer). Every
request to a host takes the next start slot of that host, robots.txt and redirect hops included,
so the gaps a server sees are never shorter. Across processes politeness holds because each host
belongs to one rank (pipelines/fetch.py partitions hosts by hash).

URLs come from an iterator; at most `queue` of them wait in memory at once, in per-host queues,
each host drained by its own task, so memory is bounded by the queue and not by the URL list.
Every URL ends in exactly one outcome of OUTCOMES, written to the WarcOutput's journal.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import aiohttp

from pipelines.crawl.netsafe import (
    BadEncoding,
    BodyTooLarge,
    PinnedResolver,
    PrivateAddressError,
    charset_of,
    read_body,
    socket_factory,
)
from pipelines.crawl.robots import ROBOTS_LIMIT, Robots, robots_from, robots_url
from pipelines.crawl.urls import host_of
from pipelines.crawl.warc import WarcOutput

OUTCOMES = ("fetched", "robots_disallowed", "robots_unreachable", "http_3xx", "http_4xx", "http_5xx",
            "redirect_loop", "too_many_redirects", "timeout", "too_large", "wrong_type", "bad_response",
            "dns_error", "connection_error", "private_address", "bad_url")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_RETRIED = ("timeout", "connection_error", "http_5xx", "http_429")
# headers that describe the bytes on the wire: the WARC holds the decoded body, so they are renamed
_WIRE_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


@dataclass(frozen=True)
class FetchSettings:
    user_agent: str = "megagpt-webtext/0.1 (+https://github.com/megagpt; crawler contact: set --user-agent)"
    concurrency: int = 64  # requests in flight, all hosts
    per_host: int = 1  # requests in flight to one host
    delay: float = 1.0  # seconds between request starts to one host
    max_crawl_delay: float = 30.0  # a robots.txt Crawl-delay is honoured up to this
    connect_timeout: float = 10.0
    read_timeout: float = 20.0  # no byte for this long
    total_timeout: float = 60.0  # a whole request, however it trickles
    max_bytes: int = 4 << 20  # body, decompressed
    max_redirects: int = 5
    retries: int = 2
    backoff: float = 2.0  # seconds before the first retry, doubled each time
    max_retry_after: float = 600.0
    allow_private: bool = False
    queue: int = 20_000  # URLs waiting in memory
    resolve: tuple[tuple[str, str], ...] = ()  # (host, ip) pinned, as curl --resolve

    @property
    def agent_token(self) -> str:
        """The product token robots.txt groups are matched against."""
        return self.user_agent.split("/", 1)[0].split()[0]


@dataclass
class Host:
    name: str
    next_start: float = 0.0
    last_start: float = 0.0
    crawl_delay: float = 0.0
    robots: dict[str, Robots] = field(default_factory=dict)  # by origin (scheme, host, port)
    pending: deque = field(default_factory=deque)
    task: asyncio.Task | None = None
    robots_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one robots.txt fetch a host


@dataclass
class Answer:
    """One HTTP exchange: a redirect target, a page, a retryable failure or a final outcome."""

    outcome: str
    status: int | None = None
    location: str | None = None
    retry_after: float | None = None
    page: dict | None = None


class Fetcher:
    def __init__(self, settings: FetchSettings, output: WarcOutput, progress=None):
        self.s, self.output, self.progress = settings, output, progress
        self.hosts: dict[str, Host] = {}
        self.waiting = 0
        self.room = asyncio.Event()

    async def run(self, urls: Iterable[str]) -> None:
        s = self.s
        # force_close: no keep-alive. aiohttp resends a request at once, outside our slots, when a
        # reused connection turns out closed (a 5 ms gap was seen at a test server); with a delay
        # of a second between requests to a host a kept connection would rarely be reused anyway.
        connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=0, ttl_dns_cache=300,
                                         force_close=True,
                                         resolver=PinnedResolver(dict(s.resolve)),
                                         socket_factory=socket_factory(s.allow_private))
        timeout = aiohttp.ClientTimeout(total=s.total_timeout, connect=s.connect_timeout,
                                        sock_read=s.read_timeout)
        self.slots = asyncio.Semaphore(s.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                         headers={"User-Agent": s.user_agent,
                                                  "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
                                                  "Accept-Encoding": "gzip, deflate"},
                                         max_line_size=8190, max_field_size=8190, max_headers=100,
                                         cookie_jar=aiohttp.DummyCookieJar()) as self.session:
            for n, url in enumerate(urls):
                while self.waiting >= s.queue:
                    self.room.clear()
                    await self.room.wait()
                self._enqueue(url)
                if n % 256 == 0:
                    await asyncio.sleep(0)  # let the host tasks start while the input is read
            while any(h.task for h in self.hosts.values()):
                await asyncio.gather(*[h.task for h in list(self.hosts.values()) if h.task])

    def _enqueue(self, url: str) -> None:
        try:
            name = host_of(url)
        except IndexError:
            self._finish(url, "bad_url")
            return
        host = self.hosts.get(name)
        if host is None:
            if len(self.hosts) > 4 * self.s.queue:
                self._forget_idle_hosts()
            host = self.hosts[name] = Host(name)
        host.pending.append(url)
        self.waiting += 1
        if host.task is None:
            host.task = asyncio.create_task(self._drain(host))

    def _forget_idle_hosts(self) -> None:
        """Drop hosts with nothing queued whose next slot has passed: forgetting them cannot shorten
        a gap (their robots.txt is fetched again if they come back)."""
        now = time.monotonic()
        for name in [n for n, h in self.hosts.items() if h.task is None and h.next_start < now]:
            del self.hosts[name]

    async def _drain(self, host: Host) -> None:
        try:
            await asyncio.gather(*[self._worker(host) for _ in range(self.s.per_host)])
        finally:
            host.task = None
            if host.pending:  # queued between the last worker's check and now
                host.task = asyncio.create_task(self._drain(host))

    async def _worker(self, host: Host) -> None:
        while host.pending:
            url = host.pending.popleft()
            try:
                await self._fetch(host, url)
            finally:
                self.waiting -= 1
                self.room.set()

    def _finish(self, url: str, outcome: str, status: int | None = None, final: str | None = None) -> None:
        self.output.done(url, outcome, status=status, final=final)
        if self.progress is not None:
            self.progress.update()

    async def _fetch(self, host: Host, link: str) -> None:
        """Follow `link` through its redirects to a final outcome; retry what may pass later."""
        url, seen = link, {link}
        for _ in range(self.s.max_redirects + 1):
            current = self._host(url)
            robots = await self._robots(current, url)
            if not robots.allows(url, self.s.agent_token):
                outcome = ("robots_disallowed" if robots.verdict == "rules" else
                           robots.failure or "robots_unreachable")
                return self._finish(link, outcome, final=url)
            answer = await self._with_retries(current, url)
            if answer.location is None:
                break
            url = urljoin(url, answer.location)
            if urlsplit(url).scheme not in ("http", "https"):
                return self._finish(link, "http_3xx", answer.status, url)
            if url in seen:
                return self._finish(link, "redirect_loop", answer.status, url)
            seen.add(url)
        else:
            return self._finish(link, "too_many_redirects", answer.status, url)
        if answer.page is None:
            return self._finish(link, answer.outcome, answer.status, url)
        self.output.write(link, answer.page["request"], answer.page, "fetched")
        if self.progress is not None:
            self.progress.update()

    def _host(self, url: str) -> Host:
        name = host_of(url)
        if name not in self.hosts:
            self.hosts[name] = Host(name)
        return self.hosts[name]

    async def _slot(self, host: Host) -> None:
        """Wait for the host's next request start; the one after is a delay later."""
        now = time.monotonic()
        start = max(now, host.next_start)
        host.last_start, host.next_start = start, start + max(self.s.delay, host.crawl_delay)
        if start > now:
            await asyncio.sleep(start - now)

    async def _robots(self, host: Host, url: str) -> Robots:
        origin = robots_url(url)
        async with host.robots_lock:
            if origin not in host.robots:
                await self._fetch_robots(host, origin)
        return host.robots[origin]

    async def _fetch_robots(self, host: Host, origin: str) -> None:
        answer, target = None, origin
        for _ in range(self.s.max_redirects + 1):
            answer = await self._with_retries(self._host(target), target, limit=ROBOTS_LIMIT, robots=True)
            if answer.location is None:
                break
            target = urljoin(target, answer.location)
        body = answer.page["body"] if answer.page else b""
        robots = robots_from(answer.status, body)
        if answer.status is None:  # the host's URLs end with why it could not be reached
            robots.failure = answer.outcome
        host.robots[origin] = robots
        host.crawl_delay = min(robots.crawl_delay(self.s.agent_token), self.s.max_crawl_delay)
        host.next_start = max(host.next_start, host.last_start + host.crawl_delay)  # robots.txt counts too

    async def _with_retries(self, host: Host, url: str, limit: int | None = None,
                            robots: bool = False) -> Answer:
        backoff = self.s.backoff
        for attempt in range(self.s.retries + 1):
            await self._slot(host)
            async with self.slots:
                answer = await self._exchange(url, limit or self.s.max_bytes, robots)
            if answer.outcome not in _RETRIED or attempt == self.s.retries:
                break
            wait = answer.retry_after if answer.retry_after is not None else backoff
            if wait > self.s.max_retry_after:
                break
            host.next_start = max(host.next_start, time.monotonic() + wait)  # the whole host waits
            backoff *= 2
        if answer.outcome == "http_429":
            answer.outcome = "http_4xx"
        return answer

    async def _exchange(self, url: str, limit: int, robots: bool) -> Answer:
        """One GET, no redirect followed; the body read only for a 2xx HTML page (or robots.txt)."""
        try:
            async with asyncio.timeout(self.s.total_timeout), \
                    self.session.get(url, allow_redirects=False) as response:
                return await self._answer(response, limit, robots)
        except TimeoutError:
            return Answer("timeout")
        except BodyTooLarge:
            return Answer("too_large")
        except aiohttp.ClientConnectorDNSError:
            return Answer("dns_error")
        except aiohttp.ClientConnectorError as err:
            if isinstance(err.os_error, PrivateAddressError):
                return Answer("private_address")
            return Answer("connection_error")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError):
            return Answer("connection_error")
        except (aiohttp.ClientResponseError, BadEncoding, aiohttp.InvalidURL, ValueError):
            return Answer("bad_response")  # headers too long, broken HTTP, an undecodable body

    async def _answer(self, response: aiohttp.ClientResponse, limit: int, robots: bool) -> Answer:
        status = response.status
        if 300 <= status < 400 and response.headers.get("Location"):
            return Answer("http_3xx", status, location=response.headers["Location"])
        if status == 429 or status >= 500:
            return Answer("http_429" if status == 429 else "http_5xx", status,
                          retry_after=_retry_after(response.headers.get("Retry-After")))
        if status >= 300 or status < 200:
            return Answer(f"http_{status // 100}xx", status)
        content_type = response.headers.get("Content-Type", "")
        if not robots and content_type.split(";")[0].strip().lower() not in _HTML_TYPES:
            return Answer("wrong_type", status)
        peer = response.connection.transport.get_extra_info("peername") if response.connection else None
        body = await read_body(response, limit)
        if robots:
            return Answer("fetched", status, page={"body": body})
        return Answer("fetched", status, page=_page(response, body, content_type, peer))


def _page(response: aiohttp.ClientResponse, body: bytes, content_type: str, peer) -> dict:
    """What the WARC records need: the body as UTF-8 (decoded by the header's charset, else the
    <meta> tag's, bad bytes replaced) and headers that describe it."""
    charset = charset_of(content_type, body)
    text = body.decode(charset, "replace").encode("utf-8")
    headers = []
    for name, value in response.raw_headers:
        name, value = name.decode("latin-1"), value.decode("latin-1")
        if name.lower() in _WIRE_HEADERS or name.lower() == "content-type":
            name = f"X-Crawler-{name}"
        headers.append((name, value))
    mime = content_type.split(";")[0].strip().lower()
    headers += [("Content-Type", f"{mime}; charset=utf-8"), ("Content-Length", str(len(text)))]
    request = response.request_info
    path = request.url.raw_path_qs
    return {"url": str(response.url), "status": response.status, "reason": response.reason or "",
            "headers": headers, "body": text, "ip": peer[0] if peer else None,
            "request": {"path": path, "headers": [("Host", request.url.host or "")]
                        + [(k, v) for k, v in request.headers.items() if k.lower() != "host"]}}


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (a number, or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
