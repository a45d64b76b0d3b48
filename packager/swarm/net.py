"""Bounded HTTP GET for replies we do not trust: a tracker's scrape (BEP 48), a mirror's torrents.json,
swarm.json and .torrent files, a seeder's status port.

Every fetch has a hard deadline: a timer shuts the socket down when it passes, so a server that accepts and
never answers, or trickles one byte a second, costs at most the deadline. The body has a byte limit, checked
against Content-Length before reading and while reading; no content encoding is accepted (a gzip bomb
needs none of our memory); redirects are followed only when asked, a bounded number of times, to http(s).
http.client itself bounds the status line and header lines (64 KiB) and their count (100).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from .. import __version__
from ..errors import RemoteError

USER_AGENT = f"packager/{__version__}"
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Reply:
    url: str  # after redirects
    body: bytes
    content_type: str


def safe_text(value: bytes | str, limit: int = 200) -> str:
    """A remote party's words (a failure reason, an HTTP reason phrase) made safe to print: decoded,
    control characters (terminal escapes) replaced, cut to `limit` characters."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def display_url(url: str) -> str:
    """`url` without any user:password part, for messages and reports."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def http_get(url: str, max_bytes: int, timeout: float, redirects: int = 0) -> Reply:
    """GET `url` within `timeout` seconds in all (redirects included), refusing a body over `max_bytes`.
    RemoteError says what went wrong, naming the URL (without credentials)."""
    deadline = time.monotonic() + timeout
    for _ in range(redirects + 1):
        status, location, body, content_type = _get_once(url, max_bytes, deadline, timeout)
        if status == 200:
            return Reply(url, body, content_type)
        if status in _REDIRECTS and location and redirects:
            target = urljoin(url, location)
            if urlsplit(target).scheme.lower() not in ("http", "https"):
                raise RemoteError(display_url(url), f"redirects to a non-HTTP URL {safe_text(target)!r}")
            url = target
            continue
        raise RemoteError(display_url(url), f"HTTP {status}")
    raise RemoteError(display_url(url), f"more than {redirects} redirects")


def _get_once(url: str, max_bytes: int, deadline: float, timeout: float) -> tuple[int, str, bytes, str]:
    shown = display_url(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise RemoteError(shown, "not a valid URL (bad port)") from None
    if scheme not in ("http", "https") or not parts.hostname:
        raise RemoteError(shown, "not an http:// or https:// URL")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RemoteError(shown, f"no complete reply within {timeout:.3g} s")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, port, timeout=remaining)
    timer, fired = None, threading.Event()
    try:
        conn.connect()
        # The socket itself, not conn.sock: http.client lets go of that once a reply says it will close.
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, (conn.sock, fired))
        timer.daemon = True
        timer.start()
        conn.request(
            "GET",
            target,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Connection": "close"},
        )
        reply = conn.getresponse()
        if reply.status != 200:
            return reply.status, reply.getheader("Location", ""), b"", ""
        encoding = (reply.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise RemoteError(shown, f"sent a {safe_text(encoding, 40)!r}-encoded body, not asked for")
        claimed = reply.getheader("Content-Length")
        if claimed is not None and claimed.strip().isdigit() and int(claimed) > max_bytes:
            raise RemoteError(shown, f"the reply claims {int(claimed):,} bytes, over {max_bytes:,}")
        body = _read_body(reply, max_bytes, shown)
        if fired.is_set():
            raise RemoteError(shown, f"no complete reply within {timeout:.3g} s")
        if claimed is not None and claimed.strip().isdigit() and len(body) != int(claimed):
            raise RemoteError(shown, f"the reply was cut short: {len(body):,} of {int(claimed):,} bytes")
        return 200, "", body, reply.getheader("Content-Type", "")
    except RemoteError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        if fired.is_set() or time.monotonic() >= deadline - 0.01:
            raise RemoteError(shown, f"no complete reply within {timeout:.3g} s") from None
        raise RemoteError(shown, _describe(e)) from None
    finally:
        if timer is not None:
            timer.cancel()
        conn.close()


def _read_body(reply: http.client.HTTPResponse, max_bytes: int, shown: str) -> bytes:
    chunks, total = [], 0
    while True:
        chunk = reply.read(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise RemoteError(shown, f"the reply is over the limit of {max_bytes:,} bytes")
        chunks.append(chunk)


def _abort(sock: socket.socket, fired: threading.Event) -> None:
    fired.set()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror or e})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(e, http.client.HTTPException):
        return f"not a valid HTTP reply ({type(e).__name__})"
    return safe_text(getattr(e, "strerror", None) or str(e) or type(e).__name__)
