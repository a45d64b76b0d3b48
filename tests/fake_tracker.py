"""Scriptable trackers and hostile servers on 127.0.0.1 for the scrape and pick tests.

Each runs in a daemon thread, stops in `close()`, and every wait in it is bounded or ends with the server.
"""

from __future__ import annotations

import http.server
import socket
import struct
import threading
import time
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import libtorrent as lt


class FakeUdpTracker:
    """BEP 15 connect + scrape, answering from `counts` (40 hex -> (seeders, completed, leechers); a hash not
    there gets zeros, as opentracker does). Misbehaviours are switched on by attribute."""

    def __init__(self, counts: dict[str, tuple[int, int, int]] | None = None):
        self.counts = counts or {}
        self.drop = 0  # requests to ignore before answering
        self.silent = False
        self.error: bytes | None = None  # answer every scrape with action 3 and this message
        self.stale_tx_first = False  # answer a scrape first with a wrong transaction id
        self.max_entries: int | None = None  # answer for at most this many hashes
        self.override: tuple[int, int, int] | None = None  # every hash gets these (signed int32) counts
        self.requests: list[tuple[int, int]] = []  # (action, hashes asked)
        self.ids: set[int] = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}/announce"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 16:
                continue
            conn, action, tx = struct.unpack_from(">QII", data)
            self.requests.append((action, (len(data) - 16) // 20 if action == 2 else 0))
            if self.silent or self.drop > 0:
                self.drop -= 1
                continue
            if action == 0 and conn == 0x41727101980:
                ident = int.from_bytes(struct.pack(">I", tx) * 2, "big") ^ 0x5A5A
                self.ids.add(ident)
                self.sock.sendto(struct.pack(">IIQ", 0, tx, ident), peer)
            elif action == 2 and conn in self.ids:
                if self.error is not None:
                    self.sock.sendto(struct.pack(">II", 3, tx) + self.error, peer)
                    continue
                if self.stale_tx_first:
                    self.stale_tx_first = False
                    self.sock.sendto(struct.pack(">II", 2, tx ^ 1) + b"\0" * 12, peer)
                hashes = [data[16 + 20 * i : 36 + 20 * i].hex() for i in range((len(data) - 16) // 20)]
                if self.max_entries is not None:
                    hashes = hashes[: self.max_entries]
                body = b"".join(
                    struct.pack(">iii", *(self.override or self.counts.get(h, (0, 0, 0)))) for h in hashes
                )
                self.sock.sendto(struct.pack(">II", 2, tx) + body, peer)


class FakeHttpTracker:
    """BEP 48 scrape at /scrape (and an /announce path that is never used), answering from `counts`
    (40 hex -> (complete, downloaded, incomplete)); unknown hashes are left out, as opentracker does.
    `reply` replaces the answer: a function of the asked hashes returning the raw body, or None to hang."""

    def __init__(self, counts: dict[str, tuple[int, int, int]] | None = None):
        self.counts = counts or {}
        self.reply: Callable[[list[bytes]], bytes | None] | None = None
        self.trickle = False  # send the body one byte every half second
        self.asked: list[int] = []
        self.stopping = threading.Event()
        tracker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path, _, query = self.path.partition("?")
                pairs = (p.partition("=") for p in query.split("&"))
                hashes = [unquote_to_bytes(v) for k, _, v in pairs if k == "info_hash"]
                tracker.asked.append(len(hashes))
                if not path.endswith("/scrape"):
                    self.send_error(404)
                    return
                body = tracker.reply(hashes) if tracker.reply else tracker.answer(hashes)
                if body is None:
                    tracker.stopping.wait(60)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if tracker.trickle:
                    for i in range(len(body)):
                        if tracker.stopping.wait(0.5):
                            return
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                else:
                    self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/announce"

    def answer(self, hashes: list[bytes]) -> bytes:
        files = {h: self._entry(h.hex()) for h in hashes if h.hex() in self.counts}
        return lt.bencode({b"files": files})

    def _entry(self, h: str) -> dict:
        complete, downloaded, incomplete = self.counts[h]
        return {b"complete": complete, b"downloaded": downloaded, b"incomplete": incomplete}

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class SilentTcpServer:
    """Accepts connections and never says a word: a tracker or mirror that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


def unused_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def elapsed(function: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    value = function()
    return value, time.monotonic() - started
