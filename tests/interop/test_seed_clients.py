"""`packager seed` and `packager push` with real programs, on 127.0.0.1 only, every wait bounded:

- opentracker in whitelist mode with `packager tracker-whitelist`'s list; `packager seed` as a process;
  aria2c and transmission-cli download published torrents through the tracker; `packager verify` checks them;
- `packager push` into a qbittorrent-nox (seeding without a recheck) and a transmission-daemon (which
  verifies first, as it always does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.state import open_state
from tests.helpers import need, prepare, run_build, sha256_of

from .conftest import LOOPBACK, tracker_ready, wait_until

pytestmark = pytest.mark.interop

DOWNLOAD_SECONDS = 60
START_SECONDS = 30


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"packager {' '.join(args)}: exit {result.exit_code}\n{result.output}"
    return result.stdout


def stop(process: subprocess.Popen, seconds: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass(frozen=True)
class Shard:
    name: str
    data: Path
    torrent: Path
    info_hash: str
    length: int


def build_release(make_workspace, archive) -> Path:
    """A published release of a metadata shard and audio shards of about 1 MB (several pieces each)."""
    ws = make_workspace(audio_shard="1MB")
    rows = []
    for i in range(6):
        path = f"audio/track {i}.ogg"
        size = archive.add(path, os.urandom(350_000 + 7919 * i))
        rows.append({"id": f"t{i}", "path": path, "kind": "audio", "popularity": 90 - i, "size": size})
    meta = b"".join(json.dumps({"n": i, "title": "x" * 40}).encode() + b"\n" for i in range(3000))
    archive.add("meta/all.jsonl", meta)
    rows.append({"id": "m", "path": "meta/all.jsonl", "kind": "metadata", "popularity": 0, "size": len(meta)})
    prepare(ws, archive, rows)
    assert not run_build(ws).failed
    for phase in ("metadata", "audio"):
        cli("publish", str(ws), "--phase", phase)
    return ws


def index_hash(ws: Path) -> str:
    """The v1 info-hash of the member index's own torrent, as the published index root gives it."""
    return json.loads((ws / layout.PUBLISHED / layout.MEMBER_INDEX).read_text())["torrent"]["info_hash_v1"]


def shards_of(ws: Path) -> list[Shard]:
    with open_state(ws) as state:
        rows = state.seedable()
    return [Shard(r.name, ws / r.file, ws / r.torrent_file, r.info_hash_v1, r.length) for r in rows]


@pytest.fixture
def swarm(make_workspace, archive, opentracker, seeder, tmp_path):
    """A published release, opentracker allowing just our whitelist, and `packager seed` announcing to it."""
    ws = build_release(make_workspace, archive)
    whitelist = tmp_path / "whitelist.txt"
    cli("tracker-whitelist", str(ws), "-o", str(whitelist))
    hashes = whitelist.read_text().split()
    assert hashes == (ws / "published" / "whitelist.txt").read_text().split()
    tracker = opentracker(hashes)
    # Info-hashes do not cover trackers: point the .torrent files at this tracker's port, hashes unchanged.
    config = ws / layout.CONFIG
    config.write_text(config.read_text().replace("http://127.0.0.1:6969/announce", tracker.announce_url))
    cli("torrent", str(ws))  # the member index's torrent too
    assert [s.info_hash for s in shards_of(ws)] + [index_hash(ws)] == hashes
    run = seeder(ws)
    count = len(hashes)
    seen: list = []

    def ready() -> bool:
        seen.append(run.status())
        return tracker_ready(seen[-1], count) or run.process.poll() is not None

    assert wait_until(ready, START_SECONDS, step=0.2), f"{seen[-1]}\n{run.output()}"
    assert run.process.poll() is None, run.output()
    return ws, tracker, run


def mirror_of(ws: Path, tmp_path: Path) -> Path:
    """What a downloader has: the published folder, then the shards it fetches into mirror/shards/."""
    mirror = tmp_path / "mirror"
    shutil.copytree(ws / "published", mirror)
    (mirror / "shards").mkdir(exist_ok=True)
    return mirror


def aria2c_download(torrent: Path, out: Path, port: int, log: Path) -> subprocess.CompletedProcess:
    command = [
        need("aria2c"),
        "--no-conf=true",
        f"--log={log}",
        "--log-level=info",
        "--seed-time=0",
        # The seeder's address must come from opentracker's reply: every other source is off.
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        "--interface=127.0.0.1",
        f"--listen-port={port}",
        "--bt-tracker-interval=5",
        f"--bt-stop-timeout={DOWNLOAD_SECONDS}",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "-d",
        str(out),
        str(torrent),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_SECONDS + 10)


class TransmissionCli:
    """transmission-cli downloading one torrent; it has no exit-when-done, so its finish script drops a
    marker and we stop it."""

    def __init__(self, torrent: Path, out: Path, port: int, home: Path):
        binary = need("transmission-cli")
        self.port, self.home = port, home
        config = home / "config"
        config.mkdir(parents=True)
        settings = {
            "bind-address-ipv4": LOOPBACK,
            "bind-address-ipv6": "::1",
            "peer-port": port,
            "peer-port-random-on-start": False,
            "dht-enabled": False,
            "lpd-enabled": False,
            "pex-enabled": False,
            "utp-enabled": False,
            "port-forwarding-enabled": False,
            "rpc-enabled": False,
            "incomplete-dir-enabled": False,
            "download-dir": str(out),
        }
        (config / "settings.json").write_text(json.dumps(settings))
        self.marker = home / "finished"
        script = home / "finished.sh"
        script.write_text(f"#!/bin/sh\ntouch '{self.marker}'\n")
        script.chmod(0o755)
        self.log = home / "transmission.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [
                    binary,
                    "-g",
                    str(config),
                    "-w",
                    str(out),
                    "-p",
                    str(port),
                    "-M",
                    "-f",
                    str(script),
                    str(torrent),
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def finished(self) -> bool:
        return self.marker.exists()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-1500:]


def swarm_ports(tracker, info_hash: str) -> set[int]:
    """The peer ports opentracker hands out for a swarm (asked by a probe that leaves again at once)."""
    import libtorrent as lt

    reply = lt.bdecode(tracker.announce(info_hash, port=1, left=1))
    tracker.announce(info_hash, port=1, event="stopped")
    peers = reply.get(b"peers", b"") if isinstance(reply, dict) else b""
    return {int.from_bytes(peers[i + 4 : i + 6], "big") for i in range(0, len(peers) - 5, 6)}


def test_aria2c_and_transmission_download_from_our_seeder_through_opentracker(
    swarm, seeder, free_port, tmp_path
):
    ws, tracker, run = swarm
    audio = [s for s in shards_of(ws) if "-audio-" in s.name]
    assert len(audio) >= 2
    mirror = mirror_of(ws, tmp_path)
    downloads = mirror / "shards"

    first = audio[0]
    log = tmp_path / "aria2.log"
    result = aria2c_download(first.torrent, downloads, free_port(), log)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    assert result.returncode == 0, f"aria2c exit {result.returncode}: {result.stdout[-1500:]}\n{tail}"
    assert sha256_of(downloads / first.data.name) == sha256_of(first.data)

    # A mirror complete without HTTP: the member index's pack comes from its own torrent, into members/.
    pack = mirror / layout.MEMBER_INDEX_PACK
    pack.unlink()
    log = tmp_path / "aria2-index.log"
    result = aria2c_download(ws / layout.MEMBER_INDEX_TORRENT, pack.parent, free_port(), log)
    assert result.returncode == 0, f"aria2c exit {result.returncode}: {result.stdout[-1500:]}"
    assert sha256_of(pack) == sha256_of(ws / layout.PUBLISHED / layout.MEMBER_INDEX_PACK)

    # Transmission drops every 127.0.0.0/8 peer a tracker names ("martian" addresses, libtransmission
    # net.c), so it cannot dial our seeder on loopback; it does accept a connection from it. It announces
    # first; then the seeder restarts (from its resume data), gets Transmission from opentracker and dials it.
    second = audio[1]
    port = free_port()
    leecher = TransmissionCli(second.torrent, downloads, port, tmp_path / "transmission")
    try:
        assert wait_until(lambda: port in swarm_ports(tracker, second.info_hash), 20, step=0.5), (
            leecher.output()
        )
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(timeout=60) == 0, run.output()
        run = seeder(ws)
        assert wait_until(leecher.finished, DOWNLOAD_SECONDS, step=0.2), f"{leecher.output()}\n{run.status()}"
    finally:
        stop(leecher.process)
    assert sha256_of(downloads / second.data.name) == sha256_of(second.data)

    # Our own check of what the two clients wrote, against the published release.json and SHA256SUMS.
    files = [str(downloads / first.data.name), str(downloads / second.data.name)]
    result = CliRunner().invoke(app, ["verify", *files, "--deep", "--json"])
    assert result.exit_code == 0, result.output

    # All-time totals (the first download was served before the restart; its total came back with the resume
    # data); the status is refreshed every second.
    def served_both() -> bool:
        uploaded = {t["name"]: t["uploaded"] for t in run.status()["torrents"]}
        return uploaded[first.name] >= first.length and uploaded[second.name] >= second.length

    assert wait_until(served_both, 5, step=0.2), run.status()
    assert run.status()["rechecked"] == 0
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=60) == 0, run.output()
    with open_state(ws) as state:
        rows = {r.info_hash: r for r in state.seed_status()}
    assert rows[first.info_hash].uploaded >= first.length
    assert rows[first.info_hash].tracker_replies >= 1 and rows[first.info_hash].tracker_error is None


# --- push -------------------------------------------------------------------------------------------------


@pytest.fixture
def published(make_workspace, archive) -> Path:
    return build_release(make_workspace, archive)


def push_json(ws: Path, url: str, *extra: str) -> list[dict]:
    result = CliRunner().invoke(
        app, ["push", str(ws), "--client", url, "--data-path", str(ws / "shards"), *extra, "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@dataclass
class Daemon:
    process: subprocess.Popen
    port: int
    home: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def qbittorrent(free_port) -> Iterator[Daemon]:
    """qbittorrent-nox with its own profile, Web UI and peer port on 127.0.0.1 only, discovery off."""
    binary = need("qbittorrent-nox")
    home = Path(tempfile.mkdtemp(prefix="packager-qbt-"))
    config = home / "qBittorrent" / "config"
    config.mkdir(parents=True)
    web, peer = free_port(), free_port()
    # 4.5 reads the legal notice from its config (else it asks on stdin); admin/adminadmin is its default
    # login.
    (config / "qBittorrent.conf").write_text(
        "[LegalNotice]\nAccepted=true\n\n"
        f"[BitTorrent]\nSession\\Port={peer}\nSession\\DHTEnabled=false\nSession\\LSDEnabled=false\n"
        "Session\\PeXEnabled=false\nSession\\Interface=lo\nSession\\InterfaceName=lo\n"
        "Session\\InterfaceAddress=127.0.0.1\n\n"
        f"[Preferences]\nWebUI\\Address=127.0.0.1\nWebUI\\Port={web}\nWebUI\\LocalHostAuth=true\n"
        "Connection\\UPnP=false\nGeneral\\Locale=en\n"
    )
    log = home / "qbittorrent.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--profile={home}", f"--webui-port={web}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    daemon = Daemon(process, web, home, log)
    try:
        import qbittorrentapi

        def up() -> bool:
            if process.poll() is not None:
                return True
            try:
                qbittorrentapi.Client(
                    host=f"http://127.0.0.1:{web}", username="admin", password="adminadmin"
                ).auth_log_in()
            except qbittorrentapi.APIError:
                return False
            return True

        assert wait_until(up, 30, step=0.2) and process.poll() is None, daemon.output()
        yield daemon
    finally:
        stop(process)
        shutil.rmtree(home, ignore_errors=True)


# qBittorrent's states for a complete torrent that is seeding (or ready to, with no peer asking).
QBT_SEEDING = {"uploading", "stalledUP", "queuedUP", "forcedUP"}
QBT_CHECKING = {"checkingUP", "checkingDL", "checkingResumeData", "allocating"}


def test_push_to_qbittorrent_seeds_without_a_recheck(published, qbittorrent):
    import qbittorrentapi

    ws = published
    shards = shards_of(ws)
    url = f"qbittorrent+http://admin:adminadmin@127.0.0.1:{qbittorrent.port}"
    results = push_json(ws, url, "--category", "packager-test", "--tag", "phase-1", "--tag", "demo")
    assert {r["result"] for r in results} == {"added"}, results
    index = index_hash(ws)
    assert {r["info_hash"] for r in results} == {s.info_hash for s in shards} | {index}
    # The index's data is the published pack, not a shard: the client is told its own folder.
    folders = {r["info_hash"]: r["save_path"] for r in results}
    members = str((ws / layout.PUBLISHED / layout.MEMBER_INDEX_DIR).resolve())
    assert folders == {**{s.info_hash: str(ws / "shards") for s in shards}, index: members}

    client = qbittorrentapi.Client(
        host=f"http://127.0.0.1:{qbittorrent.port}", username="admin", password="adminadmin"
    )
    seen: set[str] = set()

    def seeding() -> bool:
        info = client.torrents_info(category="packager-test")
        seen.update(t["state"] for t in info)
        return len(info) == len(shards) + 1 and all(t["state"] in QBT_SEEDING for t in info)

    assert wait_until(seeding, 20, step=0.1), (
        seen,
        [(t["name"], t["state"]) for t in client.torrents_info()],
    )
    assert not seen & QBT_CHECKING, f"qBittorrent re-checked: states seen {seen}"
    for t in client.torrents_info(category="packager-test"):
        assert t["progress"] == 1 and t["save_path"].rstrip("/") == folders[t["hash"]]
        assert set(t["tags"].split(", ")) == {"phase-1", "demo"}
    again = push_json(ws, url)
    assert {r["result"] for r in again} == {"present"}


@pytest.fixture
def transmission(free_port) -> Iterator[Daemon]:
    """transmission-daemon with its own config folder, RPC and peers on 127.0.0.1, discovery off."""
    binary = need("transmission-daemon")
    home = Path(tempfile.mkdtemp(prefix="packager-transmission-"))
    rpc, peer = free_port(), free_port()
    settings = {
        "rpc-bind-address": LOOPBACK,
        "rpc-port": rpc,
        "rpc-authentication-required": False,
        "rpc-whitelist": LOOPBACK,
        "rpc-whitelist-enabled": True,
        "rpc-host-whitelist-enabled": False,
        "bind-address-ipv4": LOOPBACK,
        "bind-address-ipv6": "::1",
        "peer-port": peer,
        "peer-port-random-on-start": False,
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": False,
        "utp-enabled": False,
        "port-forwarding-enabled": False,
        "download-dir": str(home / "downloads"),
        "incomplete-dir-enabled": False,
    }
    (home / "settings.json").write_text(json.dumps(settings))
    log = home / "transmission.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-f", "-g", str(home)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    daemon = Daemon(process, rpc, home, log)
    try:
        import transmission_rpc

        def up() -> bool:
            if process.poll() is not None:
                return True
            try:
                transmission_rpc.Client(host=LOOPBACK, port=rpc, timeout=2)
            except transmission_rpc.TransmissionError:
                return False
            return True

        assert wait_until(up, 30, step=0.2) and process.poll() is None, daemon.output()
        yield daemon
    finally:
        stop(process)
        shutil.rmtree(home, ignore_errors=True)


def test_push_to_transmission_verifies_then_seeds(published, transmission):
    import transmission_rpc

    ws = published
    shards = shards_of(ws)
    url = f"transmission+http://127.0.0.1:{transmission.port}"
    results = push_json(ws, url, "--tag", "phase-1")
    assert {r["result"] for r in results} == {"added"}, results
    client = transmission_rpc.Client(host=LOOPBACK, port=transmission.port, timeout=10)

    def seeding() -> bool:
        got = client.get_torrents(arguments=["hashString", "status", "percentDone", "labels", "downloadDir"])
        return len(got) == len(shards) + 1 and all(
            t.status.value == "seeding" and t.percent_done == 1 for t in got
        )

    # Transmission verifies each torrent: the member index's finds its pack in published/members/.
    assert wait_until(seeding, 30, step=0.2), [(t.name, t.status) for t in client.get_torrents()]
    got = client.get_torrents(arguments=["hashString", "labels", "downloadDir"])
    index, members = index_hash(ws), str((ws / layout.PUBLISHED / layout.MEMBER_INDEX_DIR).resolve())
    assert {t.hash_string for t in got} == {s.info_hash for s in shards} | {index}
    assert {t.hash_string: (t.labels, t.download_dir.rstrip("/")) for t in got} == {
        t.hash_string: (["phase-1"], members if t.hash_string == index else str(ws / "shards")) for t in got
    }
    again = push_json(ws, url)
    assert {r["result"] for r in again} == {"present"}
