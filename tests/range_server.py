"""A static HTTP server with byte ranges on 127.0.0.1, honest or hostile, counting what it sends.

`RangeServer(folder)` serves `folder` as nginx would (200 for a whole file, 206 for one `bytes=a-b` range,
416 outside the file, 404 for what is not a file); `behave` turns it into a liar for the paths it matches:
flipped bytes, a 200 for a range, another Content-Range, a body that never ends, a redirect loop, a hang.
Every body byte sent is counted per path, so a test asserts on what a lookup or a fetch cost.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LOOPBACK = "127.0.0.1"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RangeServer:
    HONEST = "honest"
    FLIP = "flip"  # flip one byte in every body
    IGNORE_RANGE = "ignore-range"  # 200 with the whole file
    WRONG_RANGE = "wrong-range"  # the bytes one further on, labelled as such
    ENDLESS = "endless"  # 206 headers, then bytes forever
    HANG = "hang"  # accept, never answer
    TRICKLE = "trickle"  # the right headers, then a byte every 100 ms
    REDIRECT_LOOP = "redirect-loop"
    NOT_FOUND = "404"

    def __init__(self, folder: Path, prefix: str = "/"):
        self.folder, self.prefix = Path(folder), prefix
        self.sent: Counter[str] = Counter()
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.behaviour: list[tuple[str, str]] = []  # (path regex, behaviour)
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.httpd.server_address[1]}{self.prefix}"

    def behave(self, pattern: str, behaviour: str) -> None:
        self.behaviour.append((pattern, behaviour))

    def bytes_sent(self, pattern: str = ".") -> int:
        return sum(n for path, n in self.sent.items() if re.search(pattern, path))

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _how(self, path: str) -> str:
        for pattern, behaviour in reversed(self.behaviour):
            if re.search(pattern, path):
                return behaviour
        return self.HONEST

    def _send(self, h: BaseHTTPRequestHandler, path: str, data: bytes) -> None:
        self.sent[path] += len(data)  # before: the client may have read it all before write() returns
        h.wfile.write(data)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(h.path).path)
        rng = h.headers.get("Range")
        how = self._how(path)
        file = self.folder / path[len(self.prefix) :] if path.startswith(self.prefix) else None
        if how == self.HANG:
            self._stop.wait(30)
            return
        if how == self.REDIRECT_LOOP:
            return self._status(h, path, rng, 302, {"Location": h.path})
        if how == self.NOT_FOUND or file is None or not file.is_file():
            return self._status(h, path, rng, 404)
        data = file.read_bytes()
        m = _RANGE.fullmatch(rng or "")
        if m is None or how == self.IGNORE_RANGE:
            self.requests.append((path, rng, 200))
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            return self._send(h, path, data)
        start = int(m[1])
        end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
        if start >= len(data) or end < start:
            return self._status(h, path, rng, 416, {"Content-Range": f"bytes */{len(data)}"})
        if how == self.WRONG_RANGE:
            start, end = start + 1, min(end + 1, len(data) - 1)
        body = bytearray(data[start : end + 1])
        if how == self.FLIP:
            body[len(body) // 2] ^= 0x20
        self.requests.append((path, rng, 206))
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        if how == self.TRICKLE:
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            for k in range(len(body)):
                if self._stop.wait(0.1):
                    return
                try:
                    self._send(h, path, body[k : k + 1])
                    h.wfile.flush()
                except OSError:
                    return
            return
        if how == self.ENDLESS:
            h.end_headers()
            chunk = bytes(65536)
            while not self._stop.is_set():
                try:
                    self._send(h, path, chunk)
                except OSError:
                    return
                time.sleep(0.001)
            return
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        self._send(h, path, bytes(body))

    def _status(self, h, path: str, rng: str | None, status: int, headers: dict | None = None) -> None:
        self.requests.append((path, rng, status))
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()
