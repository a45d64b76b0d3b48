"""Real peers on 127.0.0.1 as fixtures: an opentracker with a whitelist, libtorrent sessions, `packager
seed`, nginx, qBittorrent and Transmission daemons. How each is started is harness.py's (the benchmarks
start theirs with it too); here each is a factory whose teardown stops what it started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt
import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.seed.status import read_status
from packager.state import open_state
from tests.helpers import need, prepare, run_build

from .harness import (
    LOOPBACK,
    LT_SETTINGS,
    HarnessError,
    PortPicker,
    Tracker,
    loopback_settings,
    seed_command,
    start_opentracker,
    stop,
    tracker_ready,
    wait_until,
)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A TCP+UDP port free on 127.0.0.1 right now; never the same one twice in a test."""
    return PortPicker()


@pytest.fixture
def opentracker(free_port) -> Iterator[Callable[[Iterable[str]], Tracker]]:
    """Start Debian's opentracker (whitelist build) on 127.0.0.1 serving only the given hex info-hashes, on
    `port` when given (a release built for a tracker URL before the tracker runs)."""
    started: list[Tracker] = []

    def start(whitelist_hashes: Iterable[str], port: int | None = None) -> Tracker:
        try:
            tracker = start_opentracker(whitelist_hashes, port or free_port())
        except FileNotFoundError as e:
            pytest.skip(str(e))
        except HarnessError as e:
            pytest.fail(str(e))
        started.append(tracker)
        return tracker

    yield start
    for tracker in started:
        tracker.close()


# --- libtorrent -----------------------------------------------------------------------------------------


@dataclass
class Peer:
    session: lt.session
    port: int
    handle: lt.torrent_handle | None = None
    alerts: list[str] = field(default_factory=list)

    def drain(self) -> list[lt.alert]:
        got = self.session.pop_alerts()
        self.alerts += [f"{type(a).__name__}: {a.message()}" for a in got]
        return got

    def describe(self) -> str:
        st = self.handle.status() if self.handle is not None else None
        where = f"state {st.state}, progress {st.progress:.3f}, peers {st.num_peers}" if st else "no torrent"
        return f"libtorrent on port {self.port}: {where}; last alerts: {self.alerts[-8:]}"


@pytest.fixture
def lt_session(free_port) -> Iterator[Callable[[], Peer]]:
    """A libtorrent session on 127.0.0.1 with discovery off; closed in teardown."""
    peers: list[Peer] = []

    def start() -> Peer:
        port = free_port()
        peer = Peer(lt.session(loopback_settings(port)), port)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        if peer.handle is not None:
            peer.session.remove_torrent(peer.handle)
        peer.session.pause()
    peers.clear()  # the last reference: libtorrent's destructor joins its threads


def add_torrent(peer: Peer, torrent: Path, save_path: Path, flags: int = 0) -> lt.torrent_handle:
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(str(torrent))
    params.save_path = str(save_path)
    params.flags |= flags
    peer.handle = peer.session.add_torrent(params)
    return peer.handle


@pytest.fixture
def lt_seeder(lt_session) -> Callable[[Path, Path], Peer]:
    """Seed `torrent_path` from `data_dir` once libtorrent has checked every piece and announced."""

    def start(torrent_path: Path, data_dir: Path, seconds: float = 20) -> Peer:
        peer = lt_session()
        # No seed_mode: a full check proves the .torrent matches the data before anyone downloads.
        handle = add_torrent(peer, torrent_path, data_dir)
        hashes = handle.info_hashes()
        # A hybrid torrent is announced twice, under its v1 and its truncated v2 info-hash (BEP 52).
        expected = set()
        if handle.trackers() and hashes.has_v1():
            expected.add(lt.protocol_version.V1)
        if handle.trackers() and hashes.has_v2():
            expected.add(lt.protocol_version.V2)
        replies: set = set()

        def ready() -> bool:
            replies.update(a.version for a in peer.drain() if isinstance(a, lt.tracker_reply_alert))
            return handle.status().is_seeding and expected <= replies

        if not wait_until(ready, seconds):
            pytest.fail(f"seeder not ready in {seconds} s: {peer.describe()}")
        return peer

    return start


# --- packager seed as a process ---------------------------------------------------------------------------


@dataclass
class SeederProcess:
    process: subprocess.Popen
    status_port: int
    log: Path

    def status(self) -> dict | None:
        return read_status(self.status_port)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def seeder(free_port, tmp_path) -> Iterator:
    started: list[SeederProcess] = []

    def start(ws: Path) -> SeederProcess:
        port = free_port()
        log = tmp_path / f"seed-{len(started)}.log"
        command = seed_command(ws, f"{LOOPBACK}:{free_port()}", port, LT_SETTINGS)
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        run = SeederProcess(process, port, log)
        started.append(run)
        return run

    yield start
    for run in started:
        stop(run.process, 60)


# --- Debian's nginx, configured as README says -------------------------------------------------------------

README = Path(__file__).parents[2] / "README.md"


def readme_nginx_server() -> str:
    """The nginx `server` block README.md gives for serving a mirror's folder (shards/ in it)."""
    blocks = re.findall(r"```nginx\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "README.md should hold one nginx block"
    return blocks[0]


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return need("nginx")  # skips, naming the package list


@pytest.fixture
def nginx(tmp_path, free_port):
    """Start nginx in the foreground (its own prefix, config, pid file and logs under tmp_path) serving
    `folder` at /music/ with README's server block on 127.0.0.1; yields (URL of /music/, access log)."""
    started = []

    def start(folder: Path, port: int) -> tuple[str, Path]:
        prefix = tmp_path / "nginx"
        for sub in ("logs", "tmp"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        server = (
            readme_nginx_server()
            .replace("listen 80;", f"listen {LOOPBACK}:{port};")
            .replace("alias /srv/music/;", f"alias {folder}/;")
        )
        conf = prefix / "nginx.conf"
        # master_process off: one process as the test's own user, which can read pytest's 0700 tmp_path.
        conf.write_text(
            f"daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/logs/error.log info;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            # $body_bytes_sent last: what each reply's body cost, for tests that count the bytes served.
            '  log_format counted \'$remote_addr "$request" $status "$http_range" $body_bytes_sent\';\n'
            f"  access_log {prefix}/logs/access.log counted;\n"
            + "".join(f"  {kind}_temp_path {prefix}/tmp/{kind};\n"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + server
            + "}\n"
        )  # fmt: skip
        log = prefix / "logs" / "stdout.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [nginx_binary(), "-p", str(prefix), "-c", str(conf)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        started.append(process)

        def up() -> bool:
            if process.poll() is not None:
                return True
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
            except OSError:
                return False
            return True

        assert wait_until(up, 10, step=0.1) and process.poll() is None, (
            log.read_text() + (prefix / "logs" / "error.log").read_text()
        )
        return f"http://{LOOPBACK}:{port}/music/", prefix / "logs" / "access.log"

    yield start
    for process in started:
        stop(process)


def served_bytes(access_log: Path, pattern: str) -> int:
    """Body bytes nginx sent for requests whose line matches `pattern` (the `counted` log format)."""
    total = 0
    for line in access_log.read_text().splitlines():
        if re.search(pattern, line):
            total += int(line.rsplit(" ", 1)[1])
    return total


# ---- a published release seeded by `packager seed`, and the seedbox clients `push` hands torrents to -------

START_SECONDS = 30


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"packager {' '.join(args)}: exit {result.exit_code}\n{result.output}"
    return result.stdout


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


def swarm_ports(tracker, info_hash: str) -> set[int]:
    """The peer ports opentracker hands out for a swarm (asked by a probe that leaves again at once)."""
    import libtorrent as lt

    reply = lt.bdecode(tracker.announce(info_hash, port=1, left=1))
    tracker.announce(info_hash, port=1, event="stopped")
    peers = reply.get(b"peers", b"") if isinstance(reply, dict) else b""
    return {int.from_bytes(peers[i + 4 : i + 6], "big") for i in range(0, len(peers) - 5, 6)}


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
        stop(process, 10)
        shutil.rmtree(home, ignore_errors=True)


# qBittorrent's states for a complete torrent that is seeding (or ready to, with no peer asking).
QBT_SEEDING = {"uploading", "stalledUP", "queuedUP", "forcedUP"}
QBT_CHECKING = {"checkingUP", "checkingDL", "checkingResumeData", "allocating"}


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
        stop(process, 10)
        shutil.rmtree(home, ignore_errors=True)
