"""packager fetch from a workspace, a mirror's folder and a mirror's URL (a local Range server, honest or
lying): the same bytes, only the member's frames transferred, every hostile reply refused, nothing partial
left; ids the index does not hold, and files that fail authentication, stop it before any download."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.errors import RemoteError, UntrustedManifest, UsageError
from packager.fetch import FetchOptions, Via, fetch
from packager.fetch.work import WORK_PREFIX
from packager.member_index import MemberIndex
from packager.member_index import format as index_format
from packager.publish import publish
from packager.signing import generate_keypair, load_signing_key
from packager.workspace import Workspace
from tests.helpers import prepare, run_build
from tests.range_server import RangeServer


@dataclass
class Release:
    ws: Path
    mirror: Path  # published/ + shards/, as a mirror keeps them
    web_seed: RangeServer  # serves the mirror folder; the torrents' url-list names its shards/
    pubkey: Path
    files: dict[str, bytes]  # id -> content

    def index(self) -> MemberIndex:
        return MemberIndex.open(self.mirror)


def rows(archive, n: int = 16, seed: int = 7) -> tuple[list[dict], dict[str, bytes]]:
    rng = random.Random(seed)
    out, files = [], {}
    for i in range(n):
        body = rng.randbytes(rng.choice([0, 900, 30_000, 70_000, 150_000]))
        path = f"audio/{i % 4}/track {i:02d}.ogg"
        archive.add(path, body)
        ident = f"id{i:02d}"
        files[ident] = body
        out.append({"id": ident, "path": path, "kind": "audio", "popularity": 90 - i, "size": len(body)})
    return out, files


@pytest.fixture
def release(make_workspace, archive, tmp_path, monkeypatch) -> Release:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with RangeServer(mirror) as web_seed:
        ws = make_workspace(audio_shard="1MB")
        key = tmp_path / "keys" / "release.key"
        generate_keypair(key, None)
        config = ws / layout.CONFIG
        config.write_text(
            config.read_text().replace(
                'trackers = [["http://127.0.0.1:6969/announce"]]',
                f'trackers = []\nweb_seeds = ["{web_seed.url}shards/"]',
            )
            + f'\n[publish]\nsigning_key = "{key}"\n'
        )
        monkeypatch.setattr(index_format, "PART_ROWS", 2)  # several parts even for 16 members
        catalog, files = rows(archive)
        prepare(ws, archive, catalog)
        assert not run_build(ws).failed
        with Workspace.open(ws) as w:
            publish(w, "audio", key=lambda: load_signing_key(key))
        shutil.rmtree(mirror)
        shutil.copytree(ws / layout.PUBLISHED, mirror)
        shutil.copytree(ws / layout.SHARDS, mirror / layout.SHARDS)
        yield Release(ws, mirror, web_seed, key.with_suffix(".pub"), files)


def leftovers(folder: Path) -> list[str]:
    """Anything partial: temporary files or the fetch's work folder."""
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith(WORK_PREFIX)]


def test_from_a_workspace_the_local_shard_is_read(release, tmp_path):
    out = tmp_path / "out"
    report = fetch(str(release.ws), ["id03", "id07"], out)
    assert [d.via for d in report.items] == ["local", "local"]
    for d in report.items:
        assert d.file == out / d.location.path and d.file.read_bytes() == release.files[d.location.id]
    assert not leftovers(out) and not release.web_seed.requests


def test_over_http_only_the_members_frames_are_transferred(release, tmp_path):
    out = tmp_path / "out"
    with release.index() as index:
        (loc,), _ = index.locate(["id05"])
    report = fetch(release.web_seed.url, ["id05"], out, FetchOptions(via=Via.HTTP))
    (item,) = report.items
    assert item.via == "http" and item.file.read_bytes() == release.files["id05"]
    assert release.web_seed.bytes_sent(r"/shards/") == loc.frames_size  # not one byte more of the shard
    index_bytes = release.web_seed.bytes_sent(r"/members/")
    pack = (release.mirror / layout.MEMBER_INDEX_PACK).stat().st_size
    assert index_bytes == report.index_bytes  # the root, one directory, one part, one torrent chunk
    assert index_bytes < pack  # one part, one directory, one torrent chunk: not the whole index
    assert not leftovers(out)


def test_ids_in_neighbouring_frames_share_one_request(release, tmp_path):
    with release.index() as index:
        found, _ = index.locate([f"id{i:02d}" for i in range(16)])
    by_torrent: dict[str, list] = {}
    for loc in found:
        by_torrent.setdefault(loc.torrent.name, []).append(loc)
    locs = sorted(max(by_torrent.values(), key=len), key=lambda x: x.frames_offset)[:3]
    assert all(
        a.frames_offset + a.frames_size == b.frames_offset for a, b in zip(locs, locs[1:], strict=False)
    )
    report = fetch(
        release.web_seed.url, [loc.id for loc in locs], tmp_path / "out", FetchOptions(via=Via.HTTP)
    )
    assert [d.location.id for d in report.items] == [loc.id for loc in locs]
    shard_requests = [r for r in release.web_seed.requests if "/shards/" in r[0]]
    assert len(shard_requests) == 1 and release.web_seed.bytes_sent("/shards/") == sum(
        x.frames_size for x in locs
    )


@pytest.mark.parametrize(
    "behaviour, reason",
    [
        (RangeServer.FLIP, "sent bytes that are not id06's"),
        (RangeServer.IGNORE_RANGE, "ignores Range requests"),
        (RangeServer.WRONG_RANGE, "sent Content-Range"),
        (RangeServer.ENDLESS, "sent bytes that are not id06's"),  # read up to the range's end, no further
        (RangeServer.TRICKLE, "no complete reply"),
        (RangeServer.HANG, "no complete reply"),
        (RangeServer.REDIRECT_LOOP, "redirects"),
        (RangeServer.NOT_FOUND, "HTTP 404"),
    ],
)
def test_a_hostile_mirror_is_refused_and_the_web_seed_used(release, tmp_path, behaviour, reason):
    notes: list[str] = []
    with RangeServer(release.mirror) as liar:
        liar.behave(r"/shards/", behaviour)
        options = FetchOptions(via=Via.HTTP, http_timeout=2)
        report = fetch(liar.url, ["id06"], tmp_path / "out", options, notes.append)
    (item,) = report.items
    assert item.source.startswith(release.web_seed.url) and item.file.read_bytes() == release.files["id06"]
    assert any(reason in n for n in notes), notes
    assert not leftovers(tmp_path / "out")


def test_when_every_source_lies_nothing_is_written(release, tmp_path):
    out = tmp_path / "out"
    release.web_seed.behave(r"/shards/", RangeServer.FLIP)
    result = CliRunner().invoke(app, ["fetch", release.web_seed.url, "id06", "-o", str(out), "--via", "http"])
    assert result.exit_code == 3 and "no HTTP source delivered id06" in result.output
    assert list(out.rglob("*")) == []


def test_an_unknown_id_exits_2_before_anything_is_downloaded(release, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["fetch", release.web_seed.url, "id01", "no-such-id", "-o", str(out)])
    assert result.exit_code == 2 and "not in the member index: no-such-id" in result.output
    assert not out.exists() and not release.web_seed.bytes_sent("/shards/")


def test_with_the_key_every_file_is_authenticated(release, tmp_path):
    pub = release.pubkey.read_text()
    report = fetch(release.web_seed.url, ["id02"], tmp_path / "out", FetchOptions(pubkey=pub))
    assert report.authenticated and report.authenticated.startswith("publication 1, key ")
    trusted = json.loads(Path(os.environ["PACKAGER_TRUST_FILE"]).read_text())
    assert [t["publication"] for t in trusted["trusted"]] == [1]
    # An index root other than the signed one: refused before any shard byte is fetched.
    root = release.mirror / layout.MEMBER_INDEX
    doc = json.loads(root.read_text())
    doc["members"] += 1
    root.write_text(json.dumps(doc))
    with pytest.raises(UntrustedManifest, match="members/index.json"):
        fetch(release.web_seed.url, ["id02"], tmp_path / "again", FetchOptions(pubkey=pub))
    # Without the key the unsigned statement still disagrees with the root: refused too (but then a mirror
    # could forge both, which is why the key matters).
    with pytest.raises(UntrustedManifest, match="members/index.json"):
        fetch(release.web_seed.url, ["id02"], tmp_path / "unsigned")
    assert release.web_seed.bytes_sent("/shards/") == report.items[0].location.frames_size


def test_a_wrong_key_or_a_missing_signature_is_refused(release, tmp_path):
    other = tmp_path / "other.key"
    generate_keypair(other, None)
    result = CliRunner().invoke(
        app,
        [
            "fetch",
            release.web_seed.url,
            "id02",
            "-o",
            str(tmp_path / "o"),
            "--pubkey",
            str(other.with_suffix(".pub")),
        ],
    )
    assert result.exit_code == 2 and "signed by key" in result.output, result.output
    assert "not by the key given" in result.output
    (release.mirror / layout.signature_name(layout.STATEMENT)).unlink()
    result = CliRunner().invoke(
        app,
        ["fetch", str(release.mirror), "id02", "-o", str(tmp_path / "o"), "--pubkey", str(release.pubkey)],
    )
    assert result.exit_code == 2 and not (tmp_path / "o").exists()


def test_a_damaged_index_part_or_torrent_is_refused(release, tmp_path):
    pack = release.mirror / layout.MEMBER_INDEX_PACK
    data = bytearray(pack.read_bytes())
    original = bytes(data)
    for at in range(0, len(data), 97):
        data[at] ^= 1  # every chunk damaged
    pack.write_bytes(bytes(data))
    with pytest.raises(UntrustedManifest, match="the index root says"):
        fetch(release.web_seed.url, ["id04"], tmp_path / "out", FetchOptions(via=Via.HTTP))
    pack.write_bytes(original)
    for torrent in (release.mirror / layout.TORRENTS).glob("*.tar.zst.torrent"):
        torrent.write_bytes(torrent.read_bytes() + b" ")
    # The mirror's own shards/ needs no .torrent; a web seed does, and the swarm too.
    with pytest.raises(UntrustedManifest, match="the member index says"):
        fetch(str(release.mirror), ["id04"], tmp_path / "out", FetchOptions(via=Via.BITTORRENT))


def test_a_torrents_json_is_a_source(release, tmp_path):
    report = fetch(release.web_seed.url + layout.TORRENTS_JSON, ["id09"], tmp_path / "out")
    assert report.items[0].file.read_bytes() == release.files["id09"]
    local = fetch(str(release.mirror / layout.TORRENTS_JSON), ["id09"], tmp_path / "local")
    assert local.items[0].via == "local"


def test_json_report_and_sources_that_are_not_releases(release, tmp_path):
    result = CliRunner().invoke(
        app, ["fetch", release.web_seed.url, "id10", "id10", "-o", str(tmp_path / "o"), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (item,) = doc["items"]  # an id asked twice is fetched once
    assert item["id"] == "id10" and item["via"] == "http" and item["bytes_fetched"] > 0
    assert hashlib.sha256(Path(item["file"]).read_bytes()).hexdigest() == item["sha256"]
    assert doc["index_bytes"] > 0 and doc["torrents"][0]["bytes_fetched"] >= item["bytes_fetched"]
    for source, code in ((tmp_path / "nowhere", 2), (tmp_path, 2), ("http://127.0.0.1:9/", 3)):
        result = CliRunner().invoke(app, ["fetch", str(source), "id10", "-o", str(tmp_path / "x")])
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["fetch", release.web_seed.url, "id10", "--via", "ftp"])
    assert result.exit_code == 2 and "--via" in result.output


def test_a_killed_fetchs_leftovers_are_removed(release, tmp_path):
    out = tmp_path / "out"
    (out / f"{WORK_PREFIX}dead").mkdir(parents=True)
    (out / f"{WORK_PREFIX}dead" / "1.spool").write_bytes(b"x" * 100)
    fetch(str(release.ws), ["id01"], out)
    assert not leftovers(out)


def test_errors_are_raised_not_printed(release, tmp_path):
    with pytest.raises(UsageError, match="no published release here"):
        fetch(str(tmp_path), ["id01"], tmp_path / "o")
    with pytest.raises(RemoteError):
        fetch("http://127.0.0.1:9/music/", ["id01"], tmp_path / "o", FetchOptions(http_timeout=2))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, value):
    """--timeout nan compared False with every deadline: the fetch waited for the swarm forever."""
    result = CliRunner().invoke(
        app, ["fetch", str(tmp_path), "id01", "-o", str(tmp_path / "o"), "--timeout", value]
    )
    assert result.exit_code == 2 and f"--timeout {value}" in result.output, result.output


def test_a_swarm_fetch_that_cannot_listen_says_so_at_once(release, tmp_path):
    """--listen with no usable interface: no connection can be made, and fetch waited its whole --timeout
    to say that no peer sent the pieces (try later, more seeders), the wrong advice."""
    from packager.errors import ListenError
    from packager.fetch.bittorrent import SwarmSettings

    swarm = SwarmSettings(listen="nonsense", dht=False, timeout=60)
    started = time.monotonic()
    with pytest.raises(ListenError, match="cannot listen on nonsense"):
        fetch(str(release.mirror), ["id04"], tmp_path / "out", FetchOptions(via=Via.BITTORRENT, swarm=swarm))
    assert time.monotonic() - started < 20
    assert not leftovers(tmp_path / "out")


def test_a_source_url_with_a_broken_ipv6_host_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["fetch", "http://[::1:80/", "id01", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a valid URL" in result.output, result.output
