"""Tracker scrape: how many seeders, leechers and completed downloads a tracker knows for each info-hash.

UDP (BEP 15): `connect` (protocol id 0x41727101980, action 0) returns a connection id, then `scrape`
(action 2) asks for up to 74 info-hashes a packet (16 + 74 x 20 = 1496 bytes, one Ethernet frame); the
reply holds, per hash in the order asked, seeders, completed and leechers as big-endian 32-bit integers.
A connection id is used for at most a minute (BEP 15). Datagrams whose transaction id does not match are
dropped (a late reply to an earlier attempt, or a spoofer); action 3 carries the tracker's error message.
BEP 15's retry schedule (15 x 2^n seconds, up to an hour) is for a client that waits; ours starts at one
second and doubles inside the tracker's time bound.

HTTP (BEP 48): the scrape URL is the announce URL with `announce` in its last path part replaced by
`scrape` (a tracker whose URL has none cannot be scraped). Many `info_hash` parameters go in one GET, up
to 50 (chihaya's default limit; opentracker answers 64 and silently drops the rest). The reply is a
bencoded dict whose `files` maps each 20-byte hash to `complete` (seeders), `incomplete` (leechers) and
`downloaded`; a hash the tracker knows no peer for is left out (opentracker does so), which means zero.

Every reply is hostile: a datagram is read into 2 KiB, an HTTP body is refused over 256 KiB, the bencode
decoder is bounded in depth and item count, a count over 10^7 is refused (no swarm has held ten million
peers; a reply claiming billions is a lie or a bug), and the whole exchange with a tracker has a deadline.
"""

from __future__ import annotations

import secrets
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes, urlsplit, urlunsplit

from ..bencode import BencodeError, bdecode
from ..errors import RemoteError
from .net import display_url, http_get, safe_text

UDP_PROTOCOL_ID = 0x41727101980
ACTION_CONNECT, ACTION_SCRAPE, ACTION_ERROR = 0, 2, 3
UDP_MAX_HASHES = 74
UDP_MAX_DATAGRAM = 2048
UDP_FIRST_WAIT = 1.0
CONNECTION_ID_LIFETIME = 60.0
HTTP_MAX_HASHES = 50
HTTP_MAX_REPLY = 256 * 1024
MAX_COUNT = 10_000_000
BENCODE_MAX_DEPTH = 16
BENCODE_MAX_ITEMS = 20_000


@dataclass(frozen=True)
class SwarmCounts:
    seeders: int
    leechers: int
    completed: int


@dataclass(frozen=True)
class ScrapeResult:
    """What one tracker said. `counts` holds every hash it answered for (lowercase 40 hex); `error` says
    why the others (or all) have no answer; a scrape never raises."""

    tracker: str  # the announce URL, without credentials
    protocol: str  # "udp" | "http" | "https"
    counts: dict[str, SwarmCounts] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    requests: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class _Failed(Exception):
    """The exchange with this tracker stops here; the message says why (it ends up in the report)."""


def scrape(url: str, hashes: Sequence[str], timeout: float) -> ScrapeResult:
    """Scrape `hashes` (40 hex each) from the tracker at announce URL `url`, within `timeout` seconds."""
    started = time.monotonic()
    deadline = started + timeout
    protocol = urlsplit(url).scheme.lower()
    counts: dict[str, SwarmCounts] = {}
    wanted = list(dict.fromkeys(h.lower() for h in hashes))
    requests = [0]
    error = None
    try:
        if protocol == "udp":
            _udp_scrape(url, wanted, deadline, timeout, counts, requests)
        elif protocol in ("http", "https"):
            _http_scrape(url, wanted, deadline, timeout, counts, requests)
        else:
            raise _Failed(f"cannot scrape a {protocol or 'schemeless'}:// tracker (udp, http, https only)")
    except _Failed as e:
        error = str(e)
    except RemoteError as e:
        error = e.reason
    except OSError as e:
        error = safe_text(e.strerror or str(e) or type(e).__name__)
    missing = len(wanted) - len(counts)
    if error is None and missing:
        error = f"no answer for {missing} of {len(wanted)} info-hashes"
    elif error is not None and counts:
        error += f" (after answers for {len(counts)} of {len(wanted)} info-hashes)"
    return ScrapeResult(
        display_url(url), protocol, counts, error, round(time.monotonic() - started, 3), requests[0]
    )


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _Failed(f"the reply claims an implausible {what} count ({safe_text(repr(value), 40)})")
    return value


# ---- UDP (BEP 15) ---------------------------------------------------------------------------------------


def _udp_scrape(
    url: str, hashes: list[str], deadline: float, timeout: float, counts: dict, requests: list[int]
) -> None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or not port:
        raise _Failed("a udp:// tracker URL needs a host and a port")
    try:
        family, _, _, _, address = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as e:
        raise _Failed(f"cannot resolve the host name ({e.strerror or e})") from None
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        # A connected UDP socket receives only from the tracker's address, and hears ICMP "port
        # unreachable" as ConnectionRefusedError.
        sock.connect(address)
        session = _UdpSession(sock, deadline, timeout, requests)
        for batch in _batches(hashes, UDP_MAX_HASHES):
            for h, c in zip(batch, session.scrape([bytes.fromhex(h) for h in batch]), strict=False):
                counts[h] = c


class _UdpSession:
    def __init__(self, sock: socket.socket, deadline: float, timeout: float, requests: list[int]):
        self.sock, self.deadline, self.timeout, self.requests = sock, deadline, timeout, requests
        self.connection_id: int | None = None
        self.connected_at = 0.0
        self.wait = UDP_FIRST_WAIT
        self.attempts = 0

    def scrape(self, batch: list[bytes]) -> list[SwarmCounts]:
        """Counts for the hashes of `batch`, in order; fewer if the tracker answered for fewer."""
        while True:
            if self.connection_id is None or time.monotonic() - self.connected_at > CONNECTION_ID_LIFETIME:
                self._connect()
            tx = secrets.randbits(32)
            packet = struct.pack(">QII", self.connection_id, ACTION_SCRAPE, tx) + b"".join(batch)
            reply = self._roundtrip(packet, tx, ACTION_SCRAPE, 8)
            if reply is not None:
                return self._parse_scrape(reply, len(batch))
            # Unanswered: our connection id may have expired at the tracker; get a fresh one.
            self.connection_id = None

    def _connect(self) -> None:
        while True:
            tx = secrets.randbits(32)
            reply = self._roundtrip(
                struct.pack(">QII", UDP_PROTOCOL_ID, ACTION_CONNECT, tx), tx, ACTION_CONNECT, 16
            )
            if reply is not None:
                self.connection_id = struct.unpack_from(">Q", reply, 8)[0]
                self.connected_at = time.monotonic()
                return

    def _roundtrip(self, packet: bytes, tx: int, action: int, min_length: int) -> bytes | None:
        """Send once and wait for the matching reply; None if none came in this attempt's wait.
        _Failed at the deadline, on the tracker's error, or when nothing listens."""
        now = time.monotonic()
        if now >= self.deadline:
            raise _Failed(f"no reply within {self.timeout:g} s ({self.attempts} requests sent)")
        self.attempts += 1
        self.requests[0] += 1
        try:
            self.sock.send(packet)
        except ConnectionRefusedError:
            raise _Failed("nothing listens there (ICMP port unreachable)") from None
        until = min(now + self.wait, self.deadline)
        self.wait *= 2
        while (left := until - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(UDP_MAX_DATAGRAM)
            except TimeoutError:
                break
            except ConnectionRefusedError:
                raise _Failed("nothing listens there (ICMP port unreachable)") from None
            if len(data) < 8:
                continue
            got_action, got_tx = struct.unpack_from(">II", data)
            if got_tx != tx:
                continue  # a late reply to an earlier attempt, or not from the tracker at all
            if got_action == ACTION_ERROR:
                raise _Failed(f"the tracker says: {safe_text(data[8:])!r}")
            if got_action != action or len(data) < min_length:
                raise _Failed(f"malformed reply (action {got_action}, {len(data)} bytes)")
            self.wait = UDP_FIRST_WAIT
            return data
        return None

    @staticmethod
    def _parse_scrape(reply: bytes, asked: int) -> list[SwarmCounts]:
        answered = min((len(reply) - 8) // 12, asked)
        out = []
        for i in range(answered):
            seeders, completed, leechers = struct.unpack_from(">iii", reply, 8 + 12 * i)
            out.append(
                SwarmCounts(
                    _count(seeders, "seeder"), _count(leechers, "leecher"), _count(completed, "completed")
                )
            )
        return out


# ---- HTTP (BEP 48) --------------------------------------------------------------------------------------


def scrape_url(announce: str) -> str | None:
    """BEP 48: `announce` in the last path part becomes `scrape`; None when there is none to replace."""
    parts = urlsplit(announce)
    head, _, last = parts.path.rpartition("/")
    if "announce" not in last:
        return None
    path = f"{head}/{last.replace('announce', 'scrape', 1)}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _http_scrape(
    url: str, hashes: list[str], deadline: float, timeout: float, counts: dict, requests: list[int]
) -> None:
    base = scrape_url(url)
    if base is None:
        raise _Failed("its URL has no 'announce' to turn into 'scrape' (BEP 48), so it cannot be scraped")
    for batch in _batches(hashes, HTTP_MAX_HASHES):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failed(f"no reply within {timeout:g} s")
        query = "&".join("info_hash=" + quote_from_bytes(bytes.fromhex(h), safe="") for h in batch)
        requests[0] += 1
        try:
            reply = http_get(f"{base}{'&' if '?' in base else '?'}{query}", HTTP_MAX_REPLY, remaining)
        except RemoteError:
            # http_get names the time it was given, what was left of ours: the user gave `timeout`.
            if time.monotonic() >= deadline - 0.01:
                raise _Failed(f"no complete reply within {timeout:g} s") from None
            raise
        counts.update(parse_http_scrape(reply.body, batch))


def parse_http_scrape(body: bytes, asked: Sequence[str]) -> dict[str, SwarmCounts]:
    """Counts for each hash of `asked` from a BEP 48 reply; a hash left out of `files` has no peer."""
    try:
        reply = bdecode(body, max_depth=BENCODE_MAX_DEPTH, max_items=BENCODE_MAX_ITEMS)
    except BencodeError as e:
        raise _Failed(f"not a bencoded scrape reply ({e})") from None
    if not isinstance(reply, dict):
        raise _Failed("the scrape reply is not a bencoded dictionary")
    if b"failure reason" in reply:
        raise _Failed(f"the tracker says: {safe_text(_as_bytes(reply[b'failure reason']))!r}")
    files = reply.get(b"files", {})
    if not isinstance(files, dict):
        raise _Failed("the scrape reply's 'files' is not a dictionary")
    out = {}
    for h in asked:
        entry = files.get(bytes.fromhex(h))
        if entry is None:
            out[h] = SwarmCounts(0, 0, 0)
            continue
        if not isinstance(entry, dict):
            raise _Failed("a scrape entry is not a dictionary")
        out[h] = SwarmCounts(
            _count(entry.get(b"complete", 0), "seeder"),
            _count(entry.get(b"incomplete", 0), "leecher"),
            _count(entry.get(b"downloaded", 0), "completed"),
        )
    return out


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else repr(value).encode()
