"""Bounded HTTP GET for replies we do not trust: a tracker's scrape (BEP 48), a mirror's torrents.json,
swarm.json and .torrent files, a seeder's status port; and byte ranges of a shard or of the member index
from a mirror or a web seed (``http_range``, for fetch).

Every fetch has a hard deadline: a timer shuts the socket down when it passes, so a server that accepts and
never answers, or trickles one byte a second, costs at most the deadline. The body has a byte limit, checked
against Content-Length before reading and while reading; no content encoding is accepted (a gzip bomb
needs none of our memory); redirects are followed only when asked, a bounded number of times, to http(s).
http.client itself bounds the status line and header lines (64 KiB) and their count (100).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from .. import __version__
from ..errors import EnvironmentProblem, RemoteError

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
            url = _redirect_target(url, location)
            continue
        raise RemoteError(display_url(url), f"HTTP {status}")
    raise RemoteError(display_url(url), f"more than {redirects} redirects")


_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)")


@dataclass(frozen=True)
class RangeReply:
    url: str  # after redirects
    total: int | None  # the file's size, as Content-Range gave it


def http_range(
    url: str,
    start: int,
    size: int,
    write: Callable[[bytes], object],
    timeout: float,
    redirects: int = 3,
    total: int | None = None,
) -> RangeReply:
    """GET bytes [start, start + size) of `url`, handing them to `write` in chunks as they arrive, within
    `timeout` seconds in all. Only a 206 reply whose Content-Range is exactly that range (and, given
    `total`, of a file of that size) and whose body is exactly `size` bytes is accepted: a server that
    ignores Range (200), sends another range, more or fewer bytes, an encoded body, or never ends, is a
    RemoteError naming the URL; what `write` was given before then must be discarded by the caller."""
    if size <= 0:
        raise ValueError("an empty range")
    deadline = time.monotonic() + timeout
    headers = {"Range": f"bytes={start}-{start + size - 1}"}
    for _ in range(redirects + 1):
        with _exchange(url, deadline, timeout, headers) as reply:
            shown = display_url(url)
            if reply.status in _REDIRECTS and redirects:
                url = _redirect_target(url, reply.getheader("Location", ""))
                continue
            if reply.status == 200:
                raise RemoteError(shown, "ignores Range requests (HTTP 200 for a byte range)")
            if reply.status != 206:
                raise RemoteError(shown, f"HTTP {reply.status}")
            _identity_only(reply, shown)
            found = _CONTENT_RANGE.fullmatch((reply.getheader("Content-Range") or "").strip())
            if (
                found is None
                or (int(found[1]), int(found[2])) != (start, start + size - 1)
                or (total is not None and found[3] != str(total))
            ):
                expected = f"bytes {start}-{start + size - 1}/{total if total is not None else '*'}"
                got = safe_text(reply.getheader("Content-Range") or "none", 80)
                raise RemoteError(shown, f"sent Content-Range {got!r}, not {expected!r}")
            claimed = reply.getheader("Content-Length")
            if claimed is not None and claimed.strip() != str(size):
                raise RemoteError(shown, f"sends {safe_text(claimed, 20)} bytes for a {size}-byte range")
            done = 0
            while done < size:
                chunk = reply.read(min(_CHUNK, size - done))
                if not chunk:
                    break
                done += len(chunk)
                try:
                    write(chunk)
                except OSError as e:  # our disk, not the server: never reported as a remote failure
                    raise EnvironmentProblem(f"cannot store what {shown} sends: {e.strerror or e}") from None
            if done != size and time.monotonic() >= deadline - 0.01:  # the deadline's timer cut it
                raise RemoteError(
                    shown, f"no complete reply within {timeout:.3g} s ({done:,} of {size:,} bytes)"
                )
            if done != size:
                raise RemoteError(shown, f"the reply was cut short: {done:,} of {size:,} bytes")
            return RangeReply(url, int(found[3]) if found[3] != "*" else None)
    raise RemoteError(display_url(url), f"more than {redirects} redirects")


def _redirect_target(url: str, location: str) -> str:
    target = urljoin(url, location)
    if not location or urlsplit(target).scheme.lower() not in ("http", "https"):
        raise RemoteError(display_url(url), f"redirects to a non-HTTP URL {safe_text(target)!r}")
    return target


def _identity_only(reply: http.client.HTTPResponse, shown: str) -> None:
    encoding = (reply.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise RemoteError(shown, f"sent a {safe_text(encoding, 40)!r}-encoded body, not asked for")


@contextlib.contextmanager
def _exchange(
    url: str, deadline: float, timeout: float, headers: dict[str, str]
) -> Iterator[http.client.HTTPResponse]:
    """One request to `url`, its reply's status and headers read; reading the body is the caller's. The
    deadline's timer shuts the socket down, so a read never outlasts it; failures are RemoteError."""
    shown = display_url(url)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise RemoteError(shown, "not a valid URL (bad port)") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise RemoteError(shown, "not an http:// or https:// URL")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RemoteError(shown, f"no complete reply within {timeout:.3g} s")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kind = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
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
            headers={
                "User-Agent": USER_AGENT,
                "Accept-Encoding": "identity",
                "Connection": "close",
                **headers,
            },
        )
        yield conn.getresponse()
        if fired.is_set():
            raise RemoteError(shown, f"no complete reply within {timeout:.3g} s")
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


def _get_once(url: str, max_bytes: int, deadline: float, timeout: float) -> tuple[int, str, bytes, str]:
    shown = display_url(url)
    with _exchange(url, deadline, timeout, {}) as reply:
        if reply.status != 200:
            return reply.status, reply.getheader("Location", ""), b"", ""
        _identity_only(reply, shown)
        claimed = reply.getheader("Content-Length")
        length = int(claimed) if claimed is not None and claimed.strip().isdigit() else None
        if length is not None and length > max_bytes:
            raise RemoteError(shown, f"the reply claims {length:,} bytes, over {max_bytes:,}")
        body = _read_body(reply, max_bytes, shown)
        if length is not None and len(body) != length:
            if time.monotonic() >= deadline - 0.01:  # the deadline's timer cut it
                raise RemoteError(shown, f"no complete reply within {timeout:.3g} s")
            raise RemoteError(shown, f"the reply was cut short: {len(body):,} of {length:,} bytes")
        return 200, "", body, reply.getheader("Content-Type", "")


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
