"""Web seeds proven against Debian's nginx: README's configuration, as it is, serves a release's shards/ on
127.0.0.1; with no tracker, no DHT and no BitTorrent seeder at all, a libtorrent session and aria2c each
download a torrent completely from the web seed (BEP 19) alone, and `packager verify` passes on what they
wrote."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.torrent import read_torrent
from tests.helpers import need, prepare, run_build, sha256_of

from .conftest import add_torrent, cli, mirror_of, shards_of
from .harness import LOOPBACK, wait_until

pytestmark = pytest.mark.interop

README = Path(__file__).parents[2] / "README.md"
DOWNLOAD_SECONDS = 60


@pytest.fixture
def web_seeded(make_workspace, archive, free_port, nginx):
    """A published release whose torrents name the nginx web seed and no tracker, and that nginx."""
    port = free_port()
    ws = make_workspace(audio_shard="1MB")
    config = ws / layout.CONFIG
    base = f"http://{LOOPBACK}:{port}/music/shards/"
    config.write_text(
        config.read_text().replace(
            'trackers = [["http://127.0.0.1:6969/announce"]]', f'trackers = []\nweb_seeds = ["{base}"]'
        )
    )
    rows = []
    for i in range(4):
        path = f"audio/track {i}.ogg"
        size = archive.add(path, os.urandom(300_000 + 7919 * i))
        rows.append({"id": f"t{i}", "path": path, "kind": "audio", "popularity": 90 - i, "size": size})
    prepare(ws, archive, rows)
    assert not run_build(ws).failed
    cli("publish", str(ws), "--phase", "audio")
    served, access_log = nginx(ws, port)  # the workspace holds shards/ as a mirror's folder does
    assert served + "shards/" == base
    return ws, base, access_log


def test_libtorrent_and_aria2c_download_from_the_web_seed_alone(web_seeded, lt_session, free_port, tmp_path):
    ws, base, access_log = web_seeded
    shards = shards_of(ws)
    assert len(shards) >= 2
    mirror = mirror_of(ws, tmp_path)
    downloads = mirror / "shards"
    first, second = shards[0], shards[1]
    info = read_torrent(mirror / "torrents" / first.torrent.name)
    assert info.trackers == () and info.web_seeds == (base + first.data.name,)  # BEP 19: the file's own URL

    peer = lt_session()
    handle = add_torrent(peer, mirror / "torrents" / first.torrent.name, downloads)

    def done() -> bool:
        peer.drain()
        return handle.status().is_seeding

    assert wait_until(done, DOWNLOAD_SECONDS, step=0.1), peer.describe()
    st = handle.status()
    assert st.num_peers <= 1 and st.total_payload_download >= first.length  # the web seed is its one peer
    assert handle.url_seeds() == [base + first.data.name]

    log = tmp_path / "aria2.log"
    result = subprocess.run(
        [need("aria2c"), "--no-conf=true", f"--log={log}", "--log-level=info", "--seed-time=0",
         "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
         "--disable-ipv6=true", f"--listen-port={free_port()}", "--file-allocation=none",
         f"--bt-stop-timeout={DOWNLOAD_SECONDS}", "--summary-interval=0", "--console-log-level=warn",
         "-d", str(downloads), str(mirror / "torrents" / second.torrent.name)],
        capture_output=True, text=True, timeout=DOWNLOAD_SECONDS + 10,
    )  # fmt: skip
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    assert result.returncode == 0, f"aria2c exit {result.returncode}: {result.stdout[-1500:]}\n{tail}"

    for shard in (first, second):
        assert sha256_of(downloads / shard.data.name) == sha256_of(shard.data)
    requests = access_log.read_text().splitlines()
    for shard in (first, second):
        served = [line for line in requests if f"/music/shards/{shard.data.name} " in line]
        assert served and all('" 206 ' in line or '" 200 ' in line for line in served), served[:5]
    assert any('" 206 ' in line for line in requests)  # byte ranges, as web seeding needs
    assert not any('" 30' in line for line in requests)  # no redirects

    files = [str(downloads / first.data.name), str(downloads / second.data.name)]
    result = CliRunner().invoke(app, ["verify", *files, "--deep", "--json"])
    assert result.exit_code == 0, result.output
