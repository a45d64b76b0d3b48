"""Our .torrent files in real clients: libtorrent and aria2c download through opentracker, transmission-show
and aria2c read them. Everything stays on 127.0.0.1; each run and download has a deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from packager.container import MemberSource, write_shard
from packager.hashing import ShardHasher, ShardHashes
from packager.torrent import (
    TorrentIdentity,
    TorrentSpec,
    build_metainfo,
    identity,
    piece_size_for,
    write_torrent,
)
from tests.helpers import need, sha256_of

from .conftest import add_torrent
from .harness import aria2c_command, wait_until

pytestmark = pytest.mark.interop

DOWNLOAD_SECONDS = 60
TOOL_SECONDS = 20


@dataclass(frozen=True)
class Shard:
    path: Path
    hashes: ShardHashes

    def spec(self, fmt: str, tracker_url: str | None = None) -> TorrentSpec:
        trackers = ((tracker_url,),) if tracker_url else ()
        return TorrentSpec(self.path.name, self.hashes, fmt, trackers=trackers)

    def swarm_hashes(self, fmt: str) -> list[str]:
        """What clients announce: the v1 info-hash and/or the v2 one truncated to 20 bytes (BEP 52)."""
        ident = identity(self.spec(fmt))
        return [h for h in (ident.info_hash_v1, ident.info_hash_v2_truncated) if h]


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory) -> Path:
    """The demo's synthetic archive (incompressible audio, art, metadata), generated once per module."""
    from packager.demo import generate_archive

    base = tmp_path_factory.mktemp("demo")
    generate_archive(base / "archive", audio_files=48)
    return base


@pytest.fixture
def shard(tmp_path: Path, demo_archive: Path) -> Shard:
    """A real demo shard, written by the shard writer and hashed while written (v1 and v2 hashes both)."""
    catalog = [json.loads(line) for line in (demo_archive / "catalog.jsonl").read_text().splitlines()]
    audio = sorted((r for r in catalog if r["kind"] == "audio"), key=lambda r: (-r["popularity"], r["id"]))
    members = [
        MemberSource(
            id=r["id"],
            path=r["path"],
            kind="audio",
            popularity=r["popularity"],
            size=r["size"],
            source=demo_archive / "archive" / r["path"],
            mtime=1735689600,
        )
        for r in audio[:30]
    ]
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    path = seed_dir / "demo-audio-t1-00001.tar.zst"
    hasher = ShardHasher(piece_size_for(sum(m.size for m in members)), v2=True)
    with path.open("wb") as out:
        write_shard(
            out, members, level=-1, frame_size=256 * 1024, manifest_mtime=1735689600, sinks=hasher.sinks
        )
    hashes = hasher.finish()
    # Not a multiple of the piece size or the 16 KiB block, so the short last piece and leaf are exercised.
    assert hashes.length % hashes.piece_size and hashes.length % (16 * 1024)
    return Shard(path, hashes)


@pytest.fixture
def swarm(shard, opentracker, lt_seeder, tmp_path):
    """Build `fmt`'s torrent announcing to a fresh opentracker that allows only it; libtorrent seeds it."""

    def start(fmt: str) -> tuple[Path, TorrentIdentity]:
        tracker = opentracker(shard.swarm_hashes(fmt))
        spec = shard.spec(fmt, tracker.announce_url)
        torrent = tmp_path / f"{fmt}.torrent"
        write_torrent(torrent, build_metainfo(spec))
        # The tracker URL sits outside the info dict, so the whitelist made before it still matches.
        assert identity(spec).info_hash_v1 == identity(shard.spec(fmt)).info_hash_v1
        lt_seeder(torrent, shard.path.parent)
        return torrent, identity(spec)

    return start


@pytest.mark.parametrize("fmt", ["v1", "hybrid", "v2"])
def test_libtorrent_downloads_through_opentracker(fmt, shard, swarm, lt_session, tmp_path):
    torrent, ident = swarm(fmt)
    out = tmp_path / f"lt-{fmt}"
    out.mkdir()
    leecher = lt_session()
    handle = add_torrent(leecher, torrent, out)

    def done() -> bool:
        leecher.drain()
        return handle.status().is_seeding

    assert wait_until(done, DOWNLOAD_SECONDS, step=0.1), leecher.describe()
    assert sha256_of(out / shard.path.name) == shard.hashes.sha256.hex()
    hashes = handle.info_hashes()
    assert (str(hashes.v1) if hashes.has_v1() else None) == ident.info_hash_v1
    assert (str(hashes.v2) if hashes.has_v2() else None) == ident.info_hash_v2


def aria2c(*args: str, log: Path, seconds: float) -> subprocess.CompletedProcess:
    command = [need("aria2c"), "--no-conf=true", f"--log={log}", "--log-level=info", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=seconds)


def test_aria2c_downloads_v1_through_opentracker(shard, swarm, free_port, tmp_path):
    need("aria2c")
    torrent, ident = swarm("v1")
    out = tmp_path / "aria2"
    log = tmp_path / "aria2.log"
    # The seeder's address must come from opentracker's announce reply, so every other source is off.
    command = aria2c_command(
        torrent, out, free_port(), DOWNLOAD_SECONDS, [f"--log={log}", "--log-level=info"]
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_SECONDS)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    assert result.returncode == 0, f"aria2c exit {result.returncode}: {result.stdout[-2000:]}\n{tail}"
    assert sha256_of(out / shard.path.name) == shard.hashes.sha256.hex()
    announce = re.search(r"GET /announce\?info_hash=([^&]+)&", log.read_text(errors="replace"))
    assert announce, "aria2c never announced to the tracker"
    assert unquote_to_bytes(announce.group(1)).hex() == ident.info_hash_v1


@pytest.mark.parametrize("fmt", ["v1", "hybrid"])
def test_aria2c_info_hash(fmt, shard, tmp_path):
    """aria2c 1.36 re-encodes the info dict without the BEP 52 keys, so for hybrid it gets another v1 hash."""
    need("aria2c")
    torrent = tmp_path / f"{fmt}.torrent"
    write_torrent(torrent, build_metainfo(shard.spec(fmt)))
    shown = aria2c("-S", str(torrent), log=tmp_path / "aria2-show.log", seconds=TOOL_SECONDS)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    info_hash = re.search(r"^Info Hash: ([0-9a-f]{40})$", shown.stdout, re.M).group(1)
    if fmt == "v1":
        assert info_hash == identity(shard.spec(fmt)).info_hash_v1
    else:
        assert info_hash != identity(shard.spec(fmt)).info_hash_v1  # README: aria2 misses hybrid swarms


def transmission_show(torrent: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [need("transmission-show"), str(torrent)], capture_output=True, text=True, timeout=TOOL_SECONDS
    )


def transmission_major() -> int:
    version = subprocess.run(
        [need("transmission-show"), "--version"], capture_output=True, text=True, timeout=TOOL_SECONDS
    )
    match = re.search(r"transmission-show (\d+)\.", version.stdout + version.stderr)
    assert match, version.stdout + version.stderr
    return int(match.group(1))


_UNITS = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def test_transmission_show_v1(shard, tmp_path):
    torrent = tmp_path / "v1.torrent"
    write_torrent(torrent, build_metainfo(shard.spec("v1")))
    shown = transmission_show(torrent)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    fields = dict(re.findall(r"^\s+([A-Za-z ]+): (.*)$", shown.stdout, re.M))
    assert fields["Name"] == shard.path.name
    assert fields["Hash"] == identity(shard.spec("v1")).info_hash_v1
    assert int(fields["Piece Count"]) == len(shard.hashes.v1_pieces) // 20
    # Transmission prints sizes rounded to 3 significant digits in powers of 1000.
    number, unit = fields["Total Size"].split()
    assert abs(float(number) * _UNITS[unit] - shard.hashes.length) <= 0.01 * _UNITS[unit]


@pytest.mark.parametrize("fmt", ["hybrid", "v2"])
def test_transmission_show_on_bep52(fmt, shard, tmp_path):
    """Transmission 3.00 (Debian 12) cannot parse any info dict with a `file tree`; 4.0 reads hybrids."""
    torrent = tmp_path / f"{fmt}.torrent"
    write_torrent(torrent, build_metainfo(shard.spec(fmt)))
    shown = transmission_show(torrent)
    if transmission_major() < 4:
        assert shown.returncode != 0
        assert "Error parsing .torrent file" in shown.stdout + shown.stderr
    elif fmt == "hybrid":
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert identity(shard.spec(fmt)).info_hash_v1 in shown.stdout
    else:
        pytest.skip("Transmission 4 behaviour on v2-only torrents not pinned here")
