"""The seeder: settings, what is seeded, fast resume without re-hashing, file faults, status, the whitelist.

Peers here are libtorrent sessions in this process that connect to the seeder directly on 127.0.0.1; the
interop tests (tests/interop/test_seed_clients.py) add opentracker, aria2c, Transmission and qBittorrent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt
import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.clients import parse_client_url, push
from packager.config import SeedSettings, load_config
from packager.errors import ClientError, ConfigError, EnvironmentProblem, ListenError, UsageError
from packager.seed.events import SeedSnapshot, TorrentFault
from packager.seed.resume import ResumeStore
from packager.seed.seeder import Seeder, seed
from packager.seed.selection import published_torrents, whitelist_hashes
from packager.seed.session import DISK_IO, parse_libtorrent_flag, session_settings
from packager.seed.status import read_status
from packager.state import open_state
from packager.workspace import Workspace
from tests import helpers
from tests.helpers import prepare, rows_for, run_build, sha256_of

LOOPBACK = "127.0.0.1"
# Every peer in these tests is 127.0.0.1: libtorrent otherwise keeps one connection per address.
TEST_LT = (
    ("allow_multiple_connections_per_ip", True),
    ("enable_outgoing_utp", False),
    ("enable_incoming_utp", False),
)
WAIT = 20.0


def wait_until(predicate: Callable[[], bool], seconds: float = WAIT, step: float = 0.05) -> bool:
    return helpers.wait_until(predicate, seconds, step)


def test_settings(**kw) -> SeedSettings:
    return SeedSettings(listen=f"{LOOPBACK}:0", dht=False, libtorrent=TEST_LT, **kw)


test_settings.__test__ = False  # a helper, not a test


def publish(ws: Path, phases: tuple[str, ...] | None = None) -> None:
    """Publish phases (default: every phase with built shards) with `packager publish`'s library call."""
    from packager.publish import publish as publish_phase

    with Workspace.open(ws) as w:
        every = tuple(p.name for p in w.config.phases if w.state.shards(phase=p.name, state="built"))
        for phase in every if phases is None else phases:
            publish_phase(w, phase)


def make_release(make_workspace, archive, art_format: str = "v1", publish_phases=None, big: int = 0) -> Path:
    """A built release of small shards (about 100 kB), plus one shard of `big` random bytes if asked."""
    ws = make_workspace()
    if art_format != "v1":
        config = ws / layout.CONFIG
        text = config.read_text()
        config.write_text(text.replace('kinds = ["art"]', f'kinds = ["art"]\nformat = "{art_format}"'))
    rows = rows_for(archive, n=12, size=(20_000, 40_000))
    for i in range(3):
        path = f"art/cover {i}.jpg"
        size = archive.add(path, os.urandom(30_000))
        rows.append({"id": f"a{i}", "path": path, "kind": "art", "popularity": 10 - i, "size": size})
    if big:
        size = archive.add("audio/big.ogg", os.urandom(big))
        rows.append({"id": "big", "path": "audio/big.ogg", "kind": "audio", "popularity": 99, "size": size})
    prepare(ws, archive, rows)
    report = run_build(ws)
    assert not report.failed and len(report.built) >= 4
    publish(ws, publish_phases)
    return ws


@pytest.fixture
def release(make_workspace, archive) -> Path:
    return make_release(make_workspace, archive)


def torrents_of(ws: Path):
    with Workspace.open(ws) as w:
        return published_torrents(w)


# --- a libtorrent leecher in this process --------------------------------------------------------------


class Leecher:
    def __init__(self):
        settings = {
            "listen_interfaces": f"{LOOPBACK}:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            **dict(TEST_LT),
            "alert_mask": lt.alert_category.error,
        }
        self.session = lt.session(settings)

    def fetch(self, torrent: Path, out: Path, seeder_port: int) -> lt.torrent_handle:
        params = lt.load_torrent_file(str(torrent))
        params.save_path = str(out)
        # Peers come from us, not from the (absent) tracker.
        params.trackers = []
        handle = self.session.add_torrent(params)
        handle.connect_peer((LOOPBACK, seeder_port))
        return handle

    def done(self, handle: lt.torrent_handle) -> bool:
        self.session.pop_alerts()
        return handle.status().is_seeding


@pytest.fixture
def leecher() -> Leecher:
    peer = Leecher()
    yield peer
    peer.session.pause()


class SeedThread:
    """seed() in a thread, as the CLI runs it, with its events and snapshots collected."""

    def __init__(self, ws: Path, settings: SeedSettings, **kw):
        self.stop = threading.Event()
        self.events: list = []
        self.snapshots: list[SeedSnapshot] = []
        self.report = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with Workspace.open(ws) as w:
                    self.report = seed(
                        w,
                        settings=settings,
                        stop=self.stop,
                        on_event=self.events.append,
                        on_snapshot=self.snapshots.append,
                        **kw,
                    )
            except BaseException as e:  # surfaced by the test
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        listening = next(e for e in self.events if type(e).__name__ == "Listening")
        return int(listening.endpoints[0].rsplit(":", 1)[1])

    def latest(self) -> SeedSnapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def all_seeding(self, count: int) -> bool:
        snap = self.latest()
        return snap is not None and sum(t.state == "seeding" for t in snap.torrents) == count

    def close(self, seconds: float = 30) -> None:
        self.stop.set()
        self.thread.join(seconds)
        assert not self.thread.is_alive(), "seeder did not stop in time"


@pytest.fixture
def seed_thread():
    started: list[SeedThread] = []

    def start(ws: Path, settings: SeedSettings | None = None, **kw) -> SeedThread:
        run = SeedThread(ws, settings or test_settings(), **kw)
        started.append(run)
        assert wait_until(lambda: run.snapshots or run.error or not run.thread.is_alive()), (
            "seeder never started"
        )
        if run.error:
            raise run.error
        return run

    yield start
    for run in started:
        run.close()


# --- settings --------------------------------------------------------------------------------------------


def test_session_settings_start_from_high_performance_seed_with_limits_lifted():
    pack = session_settings(SeedSettings(seed_choking="anti_leech", upload_limit=5_000_000, lsd=True))
    hp = lt.high_performance_seed()
    assert pack["send_buffer_watermark"] == hp["send_buffer_watermark"]
    for key in (
        "active_seeds",
        "active_limit",
        "active_tracker_limit",
        "active_dht_limit",
        "active_lsd_limit",
    ):
        assert pack[key] == -1
    assert pack["seed_choking_algorithm"] == int(lt.seed_choking_algorithm_t.anti_leech)
    assert pack["upload_rate_limit"] == 5_000_000 and pack["enable_lsd"] is True
    assert DISK_IO == "pread_disk_io_constructor"


def test_settings_come_from_release_toml_then_flags(workspace):
    config = workspace / layout.CONFIG
    config.write_text(
        config.read_text() + '\n[seed]\nlisten = "127.0.0.1:7000"\nupload_limit = "10MB"\n'
        'dht = false\nseed_choking = "fastest_upload"\n[seed.libtorrent]\nconnection_speed = 50\n'
    )
    settings = load_config(workspace).seed
    assert (settings.listen, settings.upload_limit, settings.dht) == ("127.0.0.1:7000", 10_000_000, False)
    assert session_settings(settings)["connection_speed"] == 50
    flags = settings.with_overrides(
        listen="127.0.0.1:7001", dht=None, libtorrent=(parse_libtorrent_flag("max_rejects=3"),)
    )
    assert flags.listen == "127.0.0.1:7001" and flags.dht is False
    assert session_settings(flags)["max_rejects"] == 3 and session_settings(flags)["connection_speed"] == 50


@pytest.mark.parametrize(
    "table, key",
    [
        ("dht = 1", "seed.dht"),
        ("colour = 1", "seed.colour"),
        ('seed_choking = "fair"', "seed"),
        ('upload_limit = "fast"', "seed.upload_limit"),
    ],
)
def test_bad_seed_table_names_the_key(workspace, table, key):
    config = workspace / layout.CONFIG
    config.write_text(config.read_text() + f"\n[seed]\n{table}\n")
    with pytest.raises(ConfigError) as e:
        load_config(workspace)
    assert e.value.key == key and e.value.exit_code == 2


def test_raw_libtorrent_names_are_checked_where_the_session_is_made(release):
    config = release / layout.CONFIG
    text = config.read_text()
    bad = (("no_such_setting = 1", "does not exist"), ('connections_limit = "many"', "expected int"))
    for line, message in bad:
        config.write_text(text + f"\n[seed.libtorrent]\n{line}\n")
        settings = load_config(release).seed  # loading the config needs no libtorrent
        name = line.split()[0]
        with pytest.raises(ConfigError) as e:
            session_settings(settings)
        assert e.value.key == f"seed.libtorrent.{name}" and message in e.value.message
        assert e.value.message.startswith(f"{config}: seed.libtorrent.{name}: libtorrent setting")
        command = ["seed", str(release), "--listen", f"{LOOPBACK}:0", "--duration", "0"]
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and f"seed.libtorrent.{name}" in result.output, result.output


def test_raw_libtorrent_settings_are_checked():
    assert parse_libtorrent_flag("allow_multiple_connections_per_ip=true") == (
        "allow_multiple_connections_per_ip",
        True,
    )
    assert parse_libtorrent_flag("connections_limit=10") == ("connections_limit", 10)
    for bad in ("no_such_setting=1", "connections_limit=many", "connections_limit"):
        with pytest.raises(UsageError):
            parse_libtorrent_flag(bad)


# --- what is seeded -----------------------------------------------------------------------------------------


def test_nothing_published_and_unknown_phases_are_usage_errors(make_workspace, archive):
    ws = make_release(make_workspace, archive, publish_phases=())
    with Workspace.open(ws) as w, pytest.raises(UsageError, match="nothing is published"):
        published_torrents(w)
    publish(ws, ("metadata",))
    with Workspace.open(ws) as w:
        with pytest.raises(UsageError, match="'audio' is not published"):
            published_torrents(w, ["audio"])
        *shards, index = published_torrents(w)  # and the member index's own torrent, last
        assert {t.phase for t in shards} == {"metadata"} and index.shard_id == 0


def test_whitelist_has_v1_and_truncated_v2_hashes(make_workspace, archive, tmp_path):
    ws = make_release(make_workspace, archive, art_format="hybrid")
    with Workspace.open(ws) as w:
        rows = w.state.seedable()
        expected = []
        for r in rows:
            expected += [h for h in (r.info_hash_v1, r.info_hash_v2 and r.info_hash_v2[:40]) if h]
        index = json.loads((w.published_dir / layout.MEMBER_INDEX).read_text())["torrent"]["info_hash_v1"]
        assert whitelist_hashes(w) == expected + [index]  # and the member index's own torrent
        assert any(r.info_hash_v2 for r in rows) and all(len(h) == 40 for h in expected)
    result = CliRunner().invoke(app, ["tracker-whitelist", str(ws)])
    assert result.exit_code == 0 and result.stdout.split() == expected + [index]
    out = tmp_path / "whitelist.txt"
    result = CliRunner().invoke(app, ["tracker-whitelist", str(ws), "-o", str(out), "--phase", "art"])
    assert result.exit_code == 0
    art = [h for r in rows if r.phase == "art" for h in (r.info_hash_v1, r.info_hash_v2[:40])]
    assert out.read_text() == "".join(f"{h}\n" for h in art)
    published = ws / "published" / "whitelist.txt"
    if published.exists():  # written by `packager publish`: the same list
        assert sorted(published.read_text().split()) == sorted(expected + [index])


# --- seeding, resume, faults --------------------------------------------------------------------------------


def test_fresh_torrents_seed_in_seed_mode_then_resume_without_any_recheck(release):
    torrents = torrents_of(release)
    first = Seeder(ResumeStore(release / layout.RESUME), torrents, test_settings())
    first.start()
    assert (first.report.fresh, first.report.resumed) == (len(torrents), 0)
    handles = list(first.handles().values())
    assert all(h.status().seed_mode for h in handles)
    first.close()
    resume = release / layout.RESUME
    assert sorted(p.name for p in resume.iterdir()) == sorted(f"{t.key}.fastresume" for t in torrents)

    snaps: list[SeedSnapshot] = []
    t0 = time.monotonic()
    second = Seeder(ResumeStore(release / layout.RESUME), torrents, test_settings(), on_snapshot=snaps.append)
    second.start()
    try:
        assert (second.report.fresh, second.report.resumed) == (0, len(torrents))

        def seeding() -> bool:
            second.step(50)
            return bool(snaps) and all(t.state == "seeding" for t in snaps[-1].torrents)

        assert wait_until(seeding, 10), snaps[-1:] or "no snapshot"
        elapsed = time.monotonic() - t0
        assert snaps[-1].rechecked == 0
        assert all(t.state not in ("checking", "queued for check") for s in snaps for t in s.torrents)
        assert elapsed < 5, f"{elapsed:.1f} s to resume {len(torrents)} small torrents"
    finally:
        second.close()


def test_resumed_torrents_announce_to_the_trackers_of_the_current_torrent_files(release):
    torrents = torrents_of(release)
    first = Seeder(ResumeStore(release / layout.RESUME), torrents, test_settings())
    first.start()
    first.close()
    config = release / layout.CONFIG
    config.write_text(config.read_text().replace("127.0.0.1:6969", "127.0.0.1:6970"))
    result = CliRunner().invoke(app, ["torrent", str(release)])
    assert result.exit_code == 0 and "members.pack" in result.stdout, result.output
    # As `packager seed` restarted: the member index's torrent too is re-made with the new tracker (in the
    # workspace's torrents/; the published copy stays as published), with its info-hash unchanged.
    again = torrents_of(release)
    assert [t.key for t in again] == [t.key for t in torrents] and again[-1].is_index
    assert again[-1].torrent == (release / layout.MEMBER_INDEX_TORRENT).resolve() != torrents[-1].torrent
    second = Seeder(ResumeStore(release / layout.RESUME), again, test_settings())
    second.start()
    try:
        assert second.report.resumed == len(torrents)
        for handle in second.handles().values():
            assert [a["url"] for a in handle.trackers()] == ["http://127.0.0.1:6970/announce"]
    finally:
        second.close()
    published = (release / layout.PUBLISHED / layout.MEMBER_INDEX_TORRENT).read_bytes()
    assert b"6969" in published and b"6970" not in published


def test_missing_and_short_shards_are_reported_and_not_added(release):
    torrents = torrents_of(release)
    gone, short = torrents[0], torrents[1]
    gone.data.unlink()
    with open(short.data, "r+b") as f:
        f.truncate(short.length - 1)
    resume = ResumeStore(release / layout.RESUME)
    seeder = Seeder(resume, torrents, test_settings(), state=open_state(release))
    try:
        seeder.start()
        reasons = {p.name: p.reason for p in seeder.report.not_added}
        assert set(reasons) == {gone.name, short.name}
        assert "missing" in reasons[gone.name]
        assert f"too short: {short.length - 1} instead of {short.length} bytes" in reasons[short.name]
        assert seeder.added == len(torrents) - 2
    finally:
        seeder.close()
        rows = {r.info_hash: r for r in seeder.state.seed_status()}
        seeder.state.close()
    assert rows[gone.key].state == "not added" and "missing" in rows[gone.key].error
    assert rows[torrents[2].key].state == "seeding"


def test_disk_io_is_pread_not_mmap(make_workspace, archive, seed_thread, leecher, tmp_path):
    # Above libtorrent's mmap_file_size_cutoff (40 blocks of 16 KiB), which the mmap back end would map.
    ws = make_release(make_workspace, archive, big=3 * 2**20)
    run = seed_thread(ws)
    t = max(torrents_of(ws), key=lambda t: t.length)
    handle = leecher.fetch(t.torrent, tmp_path / "down", run.port)
    assert wait_until(lambda: leecher.done(handle)), handle.status().state
    assert sha256_of(tmp_path / "down" / t.data.name) == sha256_of(t.data)
    maps = Path("/proc/self/maps").read_text()
    # The leecher (default back end) maps its own copy; the seeder read the shard without mapping it.
    assert str(t.data) not in maps


def test_a_truncated_shard_faults_alone_and_the_others_keep_seeding(release, seed_thread, leecher, tmp_path):
    run = seed_thread(release)
    victim, other = torrents_of(release)[:2]
    assert wait_until(lambda: run.all_seeding(len(torrents_of(release))))
    with open(victim.data, "r+b") as f:
        f.truncate(0)
    bad = leecher.fetch(victim.torrent, tmp_path / "bad", run.port)
    assert wait_until(lambda: any(isinstance(e, TorrentFault) and e.name == victim.name for e in run.events))
    fault = next(e for e in run.events if isinstance(e, TorrentFault))
    assert "too short" in fault.reason or "end of file" in fault.reason, fault.reason

    def victim_in_error() -> bool:
        view = next(t for t in run.latest().torrents if t.name == victim.name)
        return view.state == "error" and view.error is not None

    assert wait_until(victim_in_error)
    good = leecher.fetch(other.torrent, tmp_path / "good", run.port)
    assert wait_until(lambda: leecher.done(good)), good.status().state
    assert sha256_of(tmp_path / "good" / other.data.name) == sha256_of(other.data)
    assert not bad.status().is_seeding
    assert run.thread.is_alive() and run.error is None
    seen = len(run.snapshots)
    assert wait_until(lambda: len(run.snapshots) > seen + 1, 5), "the loop stopped producing snapshots"
    run.close()
    with open_state(release) as state:
        rows = {r.info_hash: r for r in state.seed_status()}
    assert rows[victim.key].error and rows[other.key].uploaded >= other.length


def test_status_port_serves_the_snapshot_as_json(release, seed_thread, tmp_path):
    run = seed_thread(release, status_port=0)
    url = run.latest().status_url
    assert url and url.startswith("http://127.0.0.1:")
    count = len(torrents_of(release))
    assert wait_until(lambda: run.all_seeding(count))
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = json.loads(reply.read())
    assert body["torrents_total"] == count and body["rechecked"] == 0
    assert {t["name"] for t in body["torrents"]} == {t.name for t in torrents_of(release)}
    with urllib.request.urlopen(url + "summary", timeout=5) as reply:
        summary = json.loads(reply.read())
    assert summary["states"] == {"seeding": count} and "torrents" not in summary
    port = int(url.rsplit(":", 1)[1].strip("/"))
    # Another workspace (one seeder per workspace) asking for the same status port.
    other = shutil.copytree(release, tmp_path / "other", ignore=shutil.ignore_patterns(layout.RESUME))
    with Workspace.open(other) as w, pytest.raises(EnvironmentProblem, match="cannot serve") as e:
        seed(w, settings=test_settings(), duration=0.1, status_port=port)
    assert e.value.exit_code == 3


def test_a_listen_port_in_use_is_an_environment_error(release):
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = SeedSettings(listen=f"{LOOPBACK}:{port}", dht=False, libtorrent=TEST_LT)
        with Workspace.open(release) as w, pytest.raises(ListenError) as e:
            seed(w, settings=settings, duration=0.1)
    assert e.value.exit_code == 3 and str(port) in e.value.message


def test_resume_store_writes_atomically(tmp_path):
    store = ResumeStore(tmp_path / "seed")
    store.save_many({"aa": b"one", "bb": b"two"})
    store.save_many({"aa": b"three"})
    assert store.load("aa") == b"three" and store.load("bb") == b"two" and store.load("cc") is None
    assert sorted(p.name for p in (tmp_path / "seed").iterdir()) == ["aa.fastresume", "bb.fastresume"]


# --- the command line ---------------------------------------------------------------------------------------


def test_seed_cli_runs_bounded_and_reports_json(release):
    result = CliRunner().invoke(
        app, ["seed", str(release), "--listen", f"{LOOPBACK}:0", "--no-dht", "--duration", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["torrents"] == len(torrents_of(release)) and report["not_added"] == []
    result = CliRunner().invoke(app, ["seed", str(release), "--phase", "nope", "--duration", "1"])
    assert result.exit_code == 2 and "'nope' is not published" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_cli_seeder(ws: Path, port: int) -> subprocess.Popen:
    command = helpers.seed_command(ws, f"{LOOPBACK}:0", port, TEST_LT, lsd=True)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigterm_saves_resume_data_and_a_restart_rehashes_nothing(release):
    count = len(torrents_of(release))
    procs: list[subprocess.Popen] = []
    try:
        for run in (1, 2):
            port = free_port()
            t0 = time.monotonic()
            proc = start_cli_seeder(release, port)
            procs.append(proc)
            seen: list[dict] = []

            def all_seeding(port=port, seen=seen) -> bool:
                body = read_status(port)
                if body:
                    seen.append(body)
                return bool(body) and body["states"].get("seeding") == count

            assert wait_until(all_seeding, 30, step=0.1), (seen[-1:], proc.poll())
            elapsed = time.monotonic() - t0
            if run == 2:
                assert seen[-1]["rechecked"] == 0
                assert all(not set(body["states"]) & {"checking", "queued for check"} for body in seen)
                assert elapsed < 15, f"restart took {elapsed:.1f} s"
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, output
            assert f"resume data saved for {count}" in output
            if run == 2:
                assert f"({count} from resume data, 0 in seed mode)" in output
            assert len(list((release / layout.RESUME).glob("*.fastresume"))) == count
            assert not list((release / layout.RESUME).glob(".*.tmp"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# --- push: errors that need no client -----------------------------------------------------------------------


def test_client_urls():
    q = parse_client_url("qbittorrent+http://admin:p%40ss@127.0.0.1:8080")
    assert (q.kind, q.protocol, q.host, q.port, q.username, q.password) == (
        "qbittorrent",
        "http",
        "127.0.0.1",
        8080,
        "admin",
        "p@ss",
    )
    assert "p@ss" not in q.display
    t = parse_client_url("transmission+https://seedbox.example")
    assert (t.kind, t.protocol, t.port, t.path) == ("transmission", "https", 9091, "/transmission/rpc")
    for bad in ("http://127.0.0.1:8080", "deluge+http://h:1", "qbittorrent+http://"):
        with pytest.raises(UsageError):
            parse_client_url(bad)


@pytest.mark.parametrize("scheme", ["qbittorrent+http", "transmission+http"])
def test_push_to_an_unreachable_client_is_an_environment_error(release, scheme):
    with pytest.raises(ClientError) as e:
        push(torrents_of(release), f"{scheme}://127.0.0.1:{free_port()}", "/srv/data")
    assert e.value.exit_code == 3
    result = CliRunner().invoke(
        app,
        ["push", str(release), "--client", f"{scheme}://127.0.0.1:{free_port()}", "--data-path", "/srv/data"],
    )
    assert result.exit_code == 3 and "error:" in result.output


def test_a_second_seed_on_the_same_workspace_is_refused(release):
    """Two seeders would share the resume files and the ports; build and publish still run meanwhile."""
    port = free_port()
    first = start_cli_seeder(release, port)
    try:
        assert wait_until(lambda: read_status(port) is not None, 30, step=0.1), first.poll()
        second = CliRunner().invoke(app, ["seed", str(release), "--listen", f"{LOOPBACK}:0", "--no-dht"])
        assert second.exit_code == 3, second.output
        assert "another packager seed is running in this workspace" in second.output
        assert run_build(release).failed == []  # the workspace itself is not locked by the seeder
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
    with Workspace.open(release) as w, w.seed_locked():  # released when the seeder stops
        pass


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_a_duration_that_is_no_number_of_seconds_is_refused(tmp_path, value):
    """--duration -1 or nan stopped the seeder at once, as if it had been asked to."""
    result = CliRunner().invoke(app, ["seed", str(tmp_path), "--duration", value])
    assert result.exit_code == 2 and f"--duration {value}" in result.output, result.output


# --- the status port's client, against a port that is not a seeder's ---------------------------------------


def _serve_once(reply: Callable[[socket.socket], None]) -> int:
    """A port on 127.0.0.1 whose first connection gets `reply` (after the request is read)."""
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(10)

    def run() -> None:
        with listener, contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                reply(conn)

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def _endless(stop: threading.Event) -> Callable[[socket.socket], None]:
    def reply(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[")
        while not stop.is_set():
            conn.sendall(b"[" * 65536)

    return reply


def _trickle(stop: threading.Event) -> Callable[[socket.socket], None]:
    def reply(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        while not stop.wait(0.2):
            conn.sendall(b" ")

    return reply


def _nested(stop: threading.Event) -> Callable[[socket.socket], None]:
    body = b"[" * 200_000 + b"]" * 200_000

    def reply(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return reply


@pytest.mark.parametrize("hostile", [_endless, _trickle, _nested])
def test_read_status_is_bounded_against_a_port_that_is_not_a_seeder(hostile):
    """read_status (monitoring scripts, the tests) read the whole reply, however long it took or however
    much came: a port that streamed for ever held it for ever and grew its memory without end."""
    stop = threading.Event()
    port = _serve_once(hostile(stop))
    try:
        started = time.monotonic()
        assert read_status(port, timeout=2, max_bytes=4 * 2**20) is None
        assert time.monotonic() - started < 10
    finally:
        stop.set()
