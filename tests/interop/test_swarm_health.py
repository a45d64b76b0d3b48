"""`packager health` against a real swarm on 127.0.0.1: Debian's opentracker (whitelist of our hashes),
`packager seed` announcing to it and one aria2c leecher held at a slow rate, scraped over HTTP (BEP 48) and
UDP (BEP 15); then the tracker is killed and health still reports, names it and exits 0 within its bound."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest
from typer.testing import CliRunner

from packager.cli import app
from tests.helpers import need

from .conftest import index_hash, shards_of, swarm_ports
from .harness import stop, wait_until

pytestmark = pytest.mark.interop


def health_json(ws, *args) -> dict:
    result = CliRunner().invoke(app, ["health", str(ws), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def slow_leecher(torrent, out, port, log) -> subprocess.Popen:
    """aria2c downloading at 8 KB/s: a leecher for as long as the test needs one (a 1 MB shard)."""
    return subprocess.Popen(
        [need("aria2c"), "--no-conf=true", f"--log={log}", "--log-level=info", "--seed-time=0",
         "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
         "--disable-ipv6=true", "--interface=127.0.0.1", f"--listen-port={port}", "--max-download-limit=8K",
         "--file-allocation=none", "--summary-interval=0", "--console-log-level=warn", "-d", str(out),
         str(torrent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def rendered(page) -> str:
    """The page's text as headless Chromium renders it (the DOM after parsing, tags dropped)."""
    with tempfile.TemporaryDirectory(prefix="packager-chromium-") as profile:
        r = subprocess.run(
            [need("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=profile),
        )  # fmt: skip
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    return html.unescape(re.sub(r"<[^>]+>", " ", r.stdout))


def counts(data: dict) -> dict[str, tuple]:
    return {t["name"]: (t["seeders"], t["leechers"]) for t in data["torrents"]}


def test_health_counts_our_seeder_and_an_aria2c_leecher_over_http_and_udp(swarm, free_port, tmp_path):  # noqa: F811
    ws, tracker, run = swarm
    shards = shards_of(ws)
    leeched = next(s for s in shards if "-audio-" in s.name)
    port = free_port()
    leecher = slow_leecher(leeched.torrent, tmp_path / "down", port, tmp_path / "aria2.log")
    try:
        assert wait_until(lambda: port in swarm_ports(tracker, leeched.info_hash), 30, step=0.5)
        expected = {s.name: (1, 1 if s is leeched else 0) for s in shards}

        over_http = health_json(ws, "--timeout", "5")  # release.toml's tracker: opentracker's HTTP port
        assert [(s["protocol"], s["error"]) for s in over_http["sources"]] == [("http", None)]
        assert counts(over_http) == expected
        # The member index's own torrent is a swarm of its own, seeded by `packager seed` too; it is
        # reported apart, in no bucket (the buckets are the release's shards).
        index = over_http["member_index"]
        assert (index["name"], index["btih"], index["seeders"], index["leechers"]) == (
            "members.pack", index_hash(ws), 1, 0)  # fmt: skip

        over_udp = health_json(ws, "--tracker", tracker.udp_url, "--status-port", str(run.status_port))
        assert sorted((s["protocol"], s["error"], s["answered"]) for s in over_udp["sources"]) == [
            ("seeder", None, len(shards) + 1),
            ("udp", None, len(shards) + 1),
        ]
        assert counts(over_udp) == expected and over_udp["member_index"]["seeders"] == 1
        whole = over_udp["summary"][0]
        assert whole["buckets"]["1-3"]["torrents"] == len(shards) and whole["share_bytes_4_or_more"] == 0
        page = rendered(ws / "published" / "swarm.html")
        assert f"{len(shards)} torrents" in page and all(s.name in page for s in shards)
        assert "The member index" in page and "members.pack" in page
    finally:
        stop(leecher)

    # The tracker dies: health names it, still counts our seeder, exits 0 within its bound.
    tracker.process.send_signal(signal.SIGKILL)
    tracker.process.wait(timeout=5)
    started = time.monotonic()
    data = health_json(
        ws, "--tracker", tracker.udp_url, "--tracker", tracker.announce_url,
        "--status-port", str(run.status_port), "--timeout", "3",
    )  # fmt: skip
    assert time.monotonic() - started < 3 + 1 + 3
    errors = {s["source"]: s["error"] for s in data["sources"]}
    assert "nothing listens there" in errors[tracker.udp_url]
    assert errors[tracker.announce_url] == "connection refused"
    assert {t["seeders"] for t in data["torrents"]} == {1}
    assert len(json.loads((ws / "published" / "swarm.json").read_text())["history"]) == 1
