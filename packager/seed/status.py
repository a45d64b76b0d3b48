"""The status port: the seeder's latest snapshot as JSON on 127.0.0.1, and the client that reads it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import EnvironmentProblem, RemoteError
from ..swarm.net import http_get
from .events import SeedSnapshot

# A snapshot is about 300 bytes a torrent: 10^5 torrents fit in 40 MB. Whatever sends more is no seeder.
MAX_STATUS_BYTES = 64 * 2**20


class StatusServer:
    """GET http://127.0.0.1:PORT/ answers the latest snapshot as JSON; /summary the same without the list of
    torrents (a few hundred bytes whatever their number). Port 0 picks a free port."""

    def __init__(self, port: int, snapshot: Callable[[], SeedSnapshot]):
        get = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
                path = self.path.split("?")[0]
                if path not in ("/", "/status", "/summary"):
                    self.send_error(404)
                    return
                body = json.dumps(get().as_dict(torrents=path != "/summary")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # the library never prints
                pass

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as e:
            raise EnvironmentProblem(
                f"127.0.0.1:{port}: cannot serve the status: {e.strerror or e}",
                hint="choose another --status-port",
            ) from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="seed-status", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def read_status(
    port: int, path: str = "/", timeout: float = 2, max_bytes: int = MAX_STATUS_BYTES
) -> dict | None:
    """What a running seeder's --status-port serves (on 127.0.0.1), or None when nothing answers yet or
    what answers is no status (over `max_bytes`, not complete within `timeout` seconds in all, not a JSON
    object, nested past the parser's depth): for monitoring scripts, the benchmark and the tests alike."""
    try:
        doc = json.loads(http_get(f"http://127.0.0.1:{port}{path}", max_bytes, timeout).body)
    except (RemoteError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
