"""`packager fetch --via bittorrent` against a real swarm on 127.0.0.1: opentracker (whitelist) and
`packager seed` as a process. One member of an 80 MB shard costs its own pieces and no more (libtorrent's
payload counter); a lying peer's pieces are refused and fetched again from an honest one; with no peer, a
bounded wait ends in exit 3 with a hint; nothing partial is left under the output folder."""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt
import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.fetch import FetchOptions, SwarmSettings, Via, fetch
from packager.fetch.bittorrent import NoPeers
from packager.fetch.work import WORK_PREFIX
from packager.member_index import Location, MemberIndex
from tests.helpers import patience, prepare, run_build, wait_until

from .conftest import cli
from .harness import LOOPBACK, LT_SETTINGS, tracker_ready

pytestmark = pytest.mark.interop

SHARD_BYTES = 80 * 10**6
FETCH_SECONDS = 60  # on a quiet machine; patience() stretches it on a loaded one


def swarm_settings(timeout: float | None = None) -> SwarmSettings:
    return SwarmSettings(f"{LOOPBACK}:0", False, timeout or patience(FETCH_SECONDS), LT_SETTINGS)


def fetch_or_explain(run, *args, **kw):
    """fetch(), and on NoPeers what the seeder said of its swarms (its status and its output's tail): a
    failure says whether the seeder was announced, had peers, or had stopped."""
    try:
        return fetch(*args, **kw)
    except NoPeers as e:
        pytest.fail(f"{e.message}\nseeder status: {run.status()}\nseeder output: {run.output()}")


@dataclass
class BigRelease:
    ws: Path
    downloader: Path  # the published files only, as a downloader gets them from a mirror: no shards
    shard: Path
    torrent: Path
    tracker: object
    files: dict[str, bytes]

    def locate(self, ident: str) -> Location:
        with MemberIndex.open(self.downloader) as index:
            (loc,), _ = index.locate([ident])
        return loc


@pytest.fixture
def big_release(make_workspace, archive, free_port, opentracker, tmp_path) -> BigRelease:
    """One audio shard of 80 MB (40 tracks of 2 MB), announced to an opentracker that runs on the port the
    .torrent names (it is written before the tracker starts: the published .torrent never changes)."""
    port = free_port()
    ws = make_workspace(audio_shard="100MB")
    config = ws / layout.CONFIG
    config.write_text(config.read_text().replace("127.0.0.1:6969", f"{LOOPBACK}:{port}"))
    rows, files = [], {}
    for i in range(40):
        body = os.urandom(SHARD_BYTES // 40 + 4099 * i)
        path = f"audio/{i % 5}/track {i:02d}.ogg"
        archive.add(path, body)
        files[f"t{i:02d}"] = body
        rows.append(
            {"id": f"t{i:02d}", "path": path, "kind": "audio", "popularity": 90 - i, "size": len(body)}
        )
    prepare(ws, archive, rows)
    assert not run_build(ws).failed
    cli("publish", str(ws), "--phase", "audio")
    hashes = (ws / layout.PUBLISHED / layout.WHITELIST).read_text().split()
    tracker = opentracker(hashes, port=port)
    downloader = tmp_path / "downloader"
    shutil.copytree(ws / layout.PUBLISHED, downloader)
    (shard,) = (ws / layout.SHARDS).glob("*.tar.zst")
    assert shard.stat().st_size >= 64 * 2**20
    torrent = downloader / layout.TORRENTS / f"{shard.name}.torrent"
    return BigRelease(ws, downloader, shard, torrent, tracker, files)


def start_seeder(seeder, ws: Path):
    """`packager seed`: the shard's torrent and the member index's, both announced."""
    run = seeder(ws)
    seen: list = []

    def ready() -> bool:
        seen.append(run.status())
        return tracker_ready(seen[-1], 2) or run.process.poll() is not None

    assert wait_until(ready, patience(30), step=0.2) and run.process.poll() is None, (
        f"{seen[-1]}\n{run.output()}"
    )
    return run


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith(WORK_PREFIX)]


def test_one_member_costs_its_own_pieces(big_release, seeder, tmp_path):
    run = start_seeder(seeder, big_release.ws)
    loc = big_release.locate("t17")
    out = tmp_path / "out"
    options = FetchOptions(via=Via.BITTORRENT, swarm=swarm_settings())
    report = fetch_or_explain(run, str(big_release.downloader), ["t17"], out, options)
    (item,) = report.items
    assert item.via == "bittorrent" and item.file == out / loc.path
    assert item.file.read_bytes() == big_release.files["t17"]
    (t,) = report.torrents
    piece = loc.torrent.piece_size
    assert t.pieces == list(range(loc.first_piece, loc.last_piece + 1))
    # libtorrent's own counter of payload bytes received: the member's pieces, plus at most two pieces of
    # redundant requests, out of an 80 MB shard.
    assert 0 < t.payload_download <= (loc.pieces + 2) * piece
    assert t.payload_download < loc.torrent.shard_size / 20
    assert not leftovers(out)


def liar_session(free_port, torrent: Path, data: Path) -> lt.session:
    """A peer that claims every piece (resume data, no check) and serves a corrupted copy of the shard."""
    session = lt.session(
        {
            "listen_interfaces": f"{LOOPBACK}:{free_port()}",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            **dict(LT_SETTINGS),
        }
    )
    params = lt.load_torrent_file(str(torrent))
    params.save_path = str(data.parent)
    params.have_pieces = [True] * params.ti.num_pieces()
    params.flags |= lt.torrent_flags.no_verify_files
    params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    session.add_torrent(params)
    return session


def test_a_lying_peer_is_refused_and_an_honest_one_used(big_release, seeder, free_port, tmp_path):
    loc = big_release.locate("t05")
    liar_dir = tmp_path / "liar"
    liar_dir.mkdir()
    bad = liar_dir / big_release.shard.name
    shutil.copyfile(big_release.shard, bad)
    with open(bad, "r+b") as f:  # every piece of the member damaged
        for piece in range(loc.first_piece, loc.last_piece + 1):
            f.seek(piece * loc.torrent.piece_size + 100)
            f.write(b"\xff" * 64)
    liar = liar_session(free_port, big_release.torrent, bad)
    notes: list[str] = []
    result: dict = {}

    def run() -> None:
        try:
            result["report"] = fetch(
                str(big_release.downloader),
                ["t05"],
                tmp_path / "out",
                FetchOptions(via=Via.BITTORRENT, swarm=swarm_settings()),
                notes.append,
            )
        except Exception as e:  # reported by the assertions below
            result["error"] = e

    worker = threading.Thread(target=run)
    worker.start()
    try:
        # Only the liar is in the swarm: its pieces arrive and fail their SHA-1.
        refused = lambda: any("failed its SHA-1" in n for n in notes)  # noqa: E731
        assert wait_until(refused, patience(FETCH_SECONDS)), notes
        assert not (tmp_path / "out" / loc.path).exists()
        start_seeder(seeder, big_release.ws)  # the fetch asks the tracker again and finds it
        worker.join(patience(FETCH_SECONDS))
    finally:
        worker.join(patience(FETCH_SECONDS))
        liar.pause()
    assert "error" not in result, result.get("error")
    (item,) = result["report"].items
    assert item.file.read_bytes() == big_release.files["t05"]
    assert result["report"].torrents[0].hash_failures >= 1
    assert not leftovers(tmp_path / "out")


def test_the_member_index_comes_through_its_own_torrent(big_release, seeder, tmp_path):
    """A downloader with the small published files only (no pack, no shard): the index parts a lookup needs
    come from the index's torrent, the member from the shard's, both seeded by `packager seed`."""
    (big_release.downloader / layout.MEMBER_INDEX_PACK).unlink()
    run = start_seeder(seeder, big_release.ws)
    notes: list[str] = []
    options = FetchOptions(via=Via.BITTORRENT, swarm=swarm_settings())
    out = tmp_path / "out"
    report = fetch_or_explain(run, str(big_release.downloader), ["t33"], out, options, notes.append)
    assert any("reading the member index through its torrent" in n for n in notes), notes
    (item,) = report.items
    assert item.file.read_bytes() == big_release.files["t33"]
    pack = (big_release.ws / layout.PUBLISHED / layout.MEMBER_INDEX_PACK).stat().st_size
    # 40 members: the pack is one piece; what a lookup costs at scale is measured on 10^6 members (README).
    assert 0 < report.index_swarm_bytes <= pack
    assert not leftovers(tmp_path / "out")


def test_no_peer_in_time_is_exit_3_with_a_hint(big_release, tmp_path):
    out = tmp_path / "out"
    args = [
        "fetch",
        str(big_release.downloader),
        "t01",
        "-o",
        str(out),
        "--via",
        "bittorrent",
        "--timeout",
        "3",
    ]
    args += ["--listen", f"{LOOPBACK}:0", "--no-dht"] + [f"--lt={k}={str(v).lower()}" for k, v in LT_SETTINGS]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "no peer sent the pieces within 3 s" in result.output and "hint:" in result.output
    assert "0 peers connected" in result.output
    assert [p for p in out.rglob("*")] == []
