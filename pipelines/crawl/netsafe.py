"""What a crawl of untrusted links must refuse: internal addresses, huge or bombing bodies, and
bytes that are not text in the charset they claim.

- Addresses are checked when the socket is made, after DNS resolution (aiohttp's `socket_factory`
  sees every resolved address it is about to connect to): a check of the URL's host name before
  the request would miss a public name that resolves to 10.0.0.1, an IP literal, and a redirect
  to an internal host. Loopback, private, link-local, multicast, reserved and other non-global
  addresses are refused unless the crawl allows private addresses (the tests' loopback servers).
- Bodies are decompressed here, not by aiohttp, so that the limit bounds the *decompressed* size:
  each zlib call may produce at most the bytes left under the limit, so a gzip bomb stops at the
  limit with memory flat, and so does an endless chunked body.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import socket
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import ClientResponse, ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult


class PrivateAddressError(OSError):
    """The host resolved to an address a crawl must not connect to."""


class BodyTooLarge(Exception):
    pass


class BadEncoding(Exception):
    """A Content-Encoding that was not asked for, or a compressed body that does not decompress."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id is no part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return ip.is_global and not ip.is_multicast


def socket_factory(allow_private: bool) -> Callable[[Any], socket.socket]:
    """A socket factory for aiohttp.TCPConnector that refuses non-public addresses."""

    def make(addr_info: Any) -> socket.socket:
        family, type_, proto, _, address = addr_info
        if not allow_private and not is_public(address[0]):
            # one message for every address: aiohappyeyeballs then raises this error itself
            raise PrivateAddressError("refused: the host resolves to a private address (--allow-private)")
        return socket.socket(family=family, type=type_, proto=proto)

    return make


class PinnedResolver(AbstractResolver):
    """DNS with some names pinned to addresses (`--resolve HOST=IP`, as curl's --resolve): how the
    tests give real host names to loopback servers. The address check still applies to them."""

    def __init__(self, pins: dict[str, str]):
        self.pins = {name.lower(): ip for name, ip in pins.items()}
        self.system = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        ip = self.pins.get(host.lower().rstrip("."))
        if ip is None:
            return await self.system.resolve(host, port, family)
        kind = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [ResolveResult(hostname=host, host=ip, port=port, family=kind, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        await self.system.close()


def _decoder(encoding: str) -> Any:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=31)
    if encoding == "deflate":
        return zlib.decompressobj(wbits=47)  # zlib or gzip header, detected
    raise BadEncoding(f"Content-Encoding {encoding!r}, not asked for")


async def read_body(response: ClientResponse, limit: int) -> bytes:
    """The body, decompressed, at most `limit` bytes (BodyTooLarge past it)."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"Content-Length {length}")
    decoder = _decoder(response.headers.get("Content-Encoding", ""))
    body = bytearray()
    raw = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        raw += len(chunk)
        if raw > limit:  # endless input that decompresses to little is cut too
            raise BodyTooLarge(f"more than {limit} bytes on the wire")
        while chunk:
            if decoder is None:
                data, chunk = chunk, b""
            else:
                try:
                    data = decoder.decompress(chunk, limit + 1 - len(body))
                except zlib.error as err:
                    raise BadEncoding(f"does not decompress ({err})") from None
                chunk = decoder.unconsumed_tail
            body += data
            if len(body) > limit:
                raise BodyTooLarge(f"more than {limit} bytes decompressed")
    return bytes(body)


_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([a-zA-Z0-9_:.-]{1,40})""", re.I)


def charset_of(content_type: str | None, body: bytes) -> str:
    """The charset of an HTML body: the HTTP header's, else a <meta> tag's, else UTF-8."""
    for candidate in (_header_charset(content_type), _meta_charset(body)):
        if candidate:
            try:
                return codecs.lookup(candidate).name
            except LookupError:
                continue
    return "utf-8"


def _header_charset(content_type: str | None) -> str | None:
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'")
    return None


def _meta_charset(body: bytes) -> str | None:
    match = _META_CHARSET.search(body[:4096])
    return match.group(1).decode("ascii") if match else None
