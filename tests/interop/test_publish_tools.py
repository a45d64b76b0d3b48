"""The published folder read by stock tools: sha256sum, minisign, headless Chromium, opentracker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from packager import layout
from packager.signing import generate_keypair, load_signing_key
from packager.torrent import identity
from tests.helpers import catalog, do_publish, prepare, run_build

pytestmark = pytest.mark.interop


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian: see scripts/dev.sh)")
    return path


@pytest.fixture
def signed(workspace, archive, tmp_path) -> tuple[Path, Path]:
    """A workspace with two phases published and signed; (published folder, public key file)."""
    prepare(workspace, archive, catalog(archive))
    assert not run_build(workspace).failed
    pair = generate_keypair(tmp_path / "keys" / "release.key", None)
    for phase in ("metadata", "audio"):
        do_publish(workspace, phase, key=lambda: load_signing_key(pair.secret))
    return workspace / layout.PUBLISHED, pair.public


def mirror(published: Path, dest: Path, shards: list[Path]) -> Path:
    """A downloader's folder as the README describes it: the published files plus shards/."""
    shutil.copytree(published, dest)
    (dest / "shards").mkdir()
    for shard in shards:
        shutil.copy(shard, dest / "shards" / shard.name)
    return dest


def test_sha256sum_checks_a_mirror_and_catches_a_flipped_byte(signed, tmp_path):
    published, _ = signed
    sha256sum = tool("sha256sum")
    shards = sorted((published.parent / "shards").glob("*.tar.zst"))
    folder = mirror(published, tmp_path / "mirror", shards)
    ok = subprocess.run([sha256sum, "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # and the member index's three files: its root, its pack and the pack's own torrent
    assert ok.stdout.count(": OK") == 2 * len(shards) + 3
    assert "torrents/members.torrent: OK" in ok.stdout
    # A partial mirror checks what it has.
    (folder / "shards" / shards[0].name).unlink()
    assert subprocess.run([sha256sum, "-c", "SHA256SUMS"], cwd=folder, capture_output=True).returncode == 1
    part = subprocess.run(
        [sha256sum, "-c", "--ignore-missing", "SHA256SUMS"], cwd=folder, capture_output=True
    )
    assert part.returncode == 0
    victim = folder / "shards" / shards[-1].name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    bad = subprocess.run([sha256sum, "-c", "--ignore-missing", "SHA256SUMS"], cwd=folder, capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode == 1 and f"shards/{victim.name}: FAILED" in bad.stdout


def test_minisign_verifies_our_signatures_and_rejects_a_tampered_file(signed, tmp_path):
    published, public = signed
    minisign = tool("minisign")
    for name in ("publication.json", "SHA256SUMS", "release.json", "publications/000001.json"):
        r = subprocess.run(
            [minisign, "-Vm", name, "-p", str(public)], cwd=published, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Signature and comment signature verified" in r.stdout + r.stderr
        assert f"file:{name.rsplit('/', 1)[-1].replace('000001', 'publication')}" in r.stdout + r.stderr
        tampered = tmp_path / name.rsplit("/", 1)[-1]
        tampered.write_bytes((published / name).read_bytes().replace(b"0", b"1", 1))
        shutil.copy(published / f"{name}.minisig", tmp_path / f"{tampered.name}.minisig")
        r = subprocess.run(
            [minisign, "-Vm", str(tampered), "-p", str(public)], capture_output=True, text=True
        )
        assert r.returncode != 0 and "verification failed" in (r.stdout + r.stderr).lower()


class _Dom(HTMLParser):
    """Torrent names (div.name inside li.torrent) and magnet hrefs (a.magnet) of the rendered DOM."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []
        self.magnets: list[str] = []
        self._in_name = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._in_name = tag == "div" and a.get("class") == "name"
        if tag == "a" and a.get("class") == "magnet":
            self.magnets.append(a["href"])

    def handle_data(self, data):
        if self._in_name:
            self.names.append(data)
            self._in_name = False


def test_chromium_renders_every_torrent_with_its_magnet(signed):
    published, _ = signed
    chromium = tool("chromium")
    release = json.loads((published / "release.json").read_text())
    with tempfile.TemporaryDirectory(prefix="packager-chromium-") as profile:
        r = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", (published / "index.html").as_uri()],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=profile),
        )  # fmt: skip
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    dom = _Dom()
    dom.feed(r.stdout)
    assert dom.names == [t["name"] for t in release["torrents"]]
    # The member index's own torrent first (seeding it keeps lookups working), then every shard's.
    index = identity((published / layout.MEMBER_INDEX_TORRENT).read_bytes()).magnet
    assert dom.magnets == [index] + [t["magnet"] for t in release["torrents"]]


def test_opentracker_serves_exactly_the_whitelisted_hashes(signed, opentracker):
    published, _ = signed
    hashes = (published / "whitelist.txt").read_text().split()
    release = json.loads((published / "release.json").read_text())
    index = json.loads((published / "members" / "index.json").read_text())["torrent"]["info_hash_v1"]
    # Every shard's torrent, then the member index's own: its swarm must be open too.
    assert hashes == [t["info_hash_v1"] for t in release["torrents"]] + [index]
    tracker = opentracker(hashes)
    assert b"8:interval" in tracker.announce(hashes[-1], port=6881)
    assert b"8:interval" in tracker.announce(hashes[0], port=6881)
    assert b"not authorized" in tracker.announce("f" * 40, port=6881)
