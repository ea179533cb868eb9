"""URL rules and normalization for link selection.

A URL is normalized before de-duplication so that one page is one line: scheme and host
lower-cased, the default port and the fragment removed, tracking parameters removed (they name
the campaign that shared a link, not the page), every other query parameter kept in its order.
Reddit's API stores URLs HTML-escaped (`&amp;`), so they are unescaped first, as OpenWebText did.

A URL that is kept is an outbound http(s) link to a page: not Reddit itself, not Wikipedia (any
language: WebText removed it so that eval sets drawn from Wikipedia would not leak in), not a
media file by its extension, not on a blocked domain (image and video hosts by default).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Hosts whose pages are images, videos or other media; one a line in a --blocklist file adds more.
DEFAULT_BLOCKLIST = (
    "imgur.com", "gfycat.com", "giphy.com", "tenor.com", "youtube.com", "youtu.be", "vimeo.com",
    "streamable.com", "twitch.tv", "clips.twitch.tv", "flickr.com", "instagram.com", "pinterest.com",
    "tinypic.com", "photobucket.com", "imgflip.com", "i.imgflip.com", "dailymotion.com", "vid.me",
    "liveleak.com", "soundcloud.com", "spotify.com", "pornhub.com", "xvideos.com", "redgifs.com",
    "gyazo.com", "prntscr.com", "puu.sh", "imageshack.us", "deviantart.com", "500px.com",
    "facebook.com", "fbcdn.net", "twimg.com", "googleusercontent.com", "drive.google.com",
)
REDDIT_DOMAINS = ("reddit.com", "redd.it", "redditmedia.com", "reddituploads.com", "redditstatic.com")
WIKIPEDIA_DOMAINS = ("wikipedia.org", "wikipedia.com")
MEDIA_EXTENSIONS = frozenset(
    ".jpg .jpeg .png .gif .gifv .webp .bmp .tif .tiff .svg .ico .heic .mp4 .webm .mov .avi .mkv .wmv "
    ".flv .m4v .mpg .mpeg .3gp .mp3 .wav .ogg .oga .flac .m4a .aac .pdf .zip .rar .7z .gz .tar .exe "
    ".dmg .apk .iso .doc .docx .ppt .pptx .xls .xlsx .epub .swf .torrent".split())
_TRACKING = frozenset("fbclid gclid dclid gbraid wbraid msclkid mc_cid mc_eid yclid igshid twclid "
                      "_ga _gl _hsenc _hsmi mkt_tok oly_anon_id oly_enc_id vero_id wickedid".split())
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def load_blocklist(path: str | Path | None) -> tuple[str, ...]:
    """The default blocklist plus the domains of `path` (one a line, `#` comments)."""
    if path is None:
        return DEFAULT_BLOCKLIST
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--blocklist {path} does not exist; give a text file of domains, one a line")
    extra = []
    for line in file.read_text(encoding="utf-8").splitlines():
        domain = line.split("#", 1)[0].strip().lower().removeprefix("www.")
        if domain:
            extra.append(domain)
    return DEFAULT_BLOCKLIST + tuple(extra)


def under(host: str, domains: Iterable[str]) -> str | None:
    """The domain of `domains` that `host` is, or is a subdomain of."""
    return next((d for d in domains if host == d or host.endswith("." + d)), None)


def normalize(url: str) -> tuple[str | None, str | None]:
    """(normalized URL, None), or (None, why it is not a usable http(s) URL)."""
    url = url.strip()
    if "&" in url:
        url = html.unescape(url)
    if not url or _BAD_CHARS.search(url):
        return None, "malformed_url"
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").rstrip(".")
    except ValueError:  # a bad port, an unbalanced IPv6 bracket
        return None, "malformed_url"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return None, "malformed_url" if not scheme else "not_http"
    if not host or "." not in host and ":" not in host:  # a bare name is no public host
        return None, "malformed_url"
    if ":" in host:  # IPv6 literal: urlsplit removed its brackets
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    query = "&".join(p for p in parts.query.split("&") if p and not _is_tracking(p))
    return urlunsplit((scheme, netloc, parts.path or "/", query, "")), None


def _is_tracking(param: str) -> bool:
    name = param.split("=", 1)[0].lower()
    return name.startswith("utm_") or name in _TRACKING


def host_of(url: str) -> str:
    """The host of a normalized URL, without a leading `www.`: the unit of per-domain counts and
    of the hash partitions."""
    netloc = url.split("/", 3)[2]
    host = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
    return host.removeprefix("www.")


def drop_reason(url: str, blocklist: Iterable[str]) -> str | None:
    """Why a normalized URL is not a page to fetch, or None to keep it."""
    host = host_of(url)
    if under(host, REDDIT_DOMAINS):
        return "reddit_link"
    if under(host, WIKIPEDIA_DOMAINS):
        return "wikipedia"
    path = url.split("/", 3)[3] if url.count("/") >= 3 else ""
    path = path.split("?", 1)[0].lower()
    dot = path.rfind(".")
    if dot > path.rfind("/") and path[dot:] in MEDIA_EXTENSIONS:
        return "media_file"
    if under(host, blocklist):
        return "blocked_domain"
    return None
