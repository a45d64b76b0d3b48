"""`packager seed` and `packager push` with real programs, on 127.0.0.1 only, every wait bounded:

- opentracker in whitelist mode with `packager tracker-whitelist`'s list; `packager seed` as a process;
  aria2c and transmission-cli download published torrents through the tracker; `packager verify` checks them;
- `packager push` into a qbittorrent-nox (seeding without a recheck) and a transmission-daemon (which
  verifies first, as it always does).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.state import open_state
from tests.helpers import need, sha256_of

from .conftest import QBT_CHECKING, QBT_SEEDING, build_release, index_hash, mirror_of, shards_of, swarm_ports
from .harness import LOOPBACK, aria2c_command, stop, wait_until

pytestmark = pytest.mark.interop

DOWNLOAD_SECONDS = 60


def aria2c_download(torrent: Path, out: Path, port: int, log: Path) -> subprocess.CompletedProcess:
    need("aria2c")
    command = aria2c_command(torrent, out, port, DOWNLOAD_SECONDS, [f"--log={log}", "--log-level=info"])
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
        stop(leecher.process, 10)
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
