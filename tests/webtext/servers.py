"""Real HTTP servers on loopback addresses (127.0.0.2, 127.0.0.3, ...), one a host, in a thread of
the test process, logging when each request arrives. Each site is a dict of path -> handler."""

from __future__ import annotations

import asyncio
import gzip
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RNG = random.Random(7)
WORDS = ["".join(_RNG.choice("bcdfghklmnprstvz") + _RNG.choice("aeiou") for _ in range(_RNG.randint(2, 4)))
         for _ in range(5000)]


def page_text(seed: int, words: int = 160) -> str:
    rng = random.Random(seed)
    sentences = []
    for _ in range(words // 8):
        sentence = " ".join(rng.choice(WORDS) for _ in range(8))
        sentences.append(sentence.capitalize() + ".")
    return " ".join(sentences)


def page_html(seed: int, title: str = "A story") -> str:
    body = "".join(f"<p>{page_text(seed * 10 + k, 60)}</p>\n" for k in range(4))
    return (f"<!DOCTYPE html><html><head><title>{title} {seed}</title></head><body><article>"
            f"<h1>{title} {seed}</h1>\n{body}</article></body></html>")


def html(text: str, charset: str = "utf-8", status: int = 200, pause: float = 0.0) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        if pause:
            await asyncio.sleep(pause)
        return web.Response(body=text.encode(charset), status=status,
                            headers={"Content-Type": f"text/html; charset={charset}"})
    return handle


def fixed(status: int, body: bytes = b"", content_type: str = "text/plain", **headers: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, headers={"Content-Type": content_type, **headers})
    return handle


def redirect(location: str, status: int = 302) -> Handler:
    return fixed(status, Location=location)


def then(*handlers: Handler) -> Handler:
    """The first request gets the first handler, the next the second, ..., the rest the last."""
    calls = {"n": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        return await handlers[min(calls["n"], len(handlers)) - 1](request)
    return handle


def drip(seconds_a_byte: float, total: int = 1000) -> Handler:
    """A 200 HTML page that sends one byte every `seconds_a_byte`: never finished in time."""
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        for _ in range(total):
            await response.write(b"x")
            await asyncio.sleep(seconds_a_byte)
        return response
    return handle


def endless(chunk: bytes = b"<p>more</p>" * 1000) -> Handler:
    """A chunked HTML body that never ends."""
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        try:
            while True:
                await response.write(chunk)
        except ConnectionError:  # the client hung up, as it should
            return response
    return handle


def gzip_bomb(mb: int = 64) -> Handler:
    """A small gzip body that decompresses to `mb` MiB of spaces."""
    body = gzip.compress(b" " * (mb << 20), 9)
    return fixed(200, body, "text/html", **{"Content-Encoding": "gzip"})


def free_port(ip: str) -> int:
    """A port free on `ip` now (the sites then all listen on it, each on its own address)."""
    with socket.socket() as probe:
        probe.bind((ip, 0))
        return probe.getsockname()[1]


class Servers:
    """Sites served on distinct loopback addresses, one port number for all."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, str, float]] = []  # (ip, path, monotonic time)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []
        self.port = 0

    def start(self, sites: dict[str, dict[str, Handler]], port: int) -> int:
        self.port = port
        self.thread.start()
        for ip, routes in sites.items():
            asyncio.run_coroutine_threadsafe(self._serve(ip, routes), self.loop).result(10)
        return self.port

    async def _serve(self, ip: str, routes: dict[str, Handler]) -> None:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            self.arrivals.append((ip, request.path_qs, time.monotonic()))
            handler = routes.get(request.path_qs) or routes.get(request.path)
            if handler is None:
                return web.Response(status=404, text="not here")
            return await handler(request)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", dispatch)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, ip, self.port).start()
        self.runners.append(runner)

    def gaps(self, ip: str) -> list[float]:
        times = sorted(t for i, _, t in self.arrivals if i == ip)
        return [b - a for a, b in zip(times, times[1:])]

    def paths(self, ip: str) -> list[str]:
        return [p for i, p, _ in self.arrivals if i == ip]

    def stop(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
