"""`packager fetch --via http` from Debian's nginx serving a published release with README's configuration:
the same bytes as the archive's, with only the member's frames of its shard sent (counted in nginx's access
log: at most the frames plus one piece, as the issue allows; in fact not one byte more), and a member index
lookup of a few kB."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.member_index import MemberIndex
from tests.helpers import prepare, run_build, sha256_of

from .conftest import cli, served_bytes
from .harness import LOOPBACK

pytestmark = pytest.mark.interop


@pytest.fixture
def served(make_workspace, archive, free_port, nginx, tmp_path):
    port = free_port()
    base = f"http://{LOOPBACK}:{port}/music/"
    ws = make_workspace(audio_shard="4MB")
    config = ws / layout.CONFIG
    config.write_text(
        config.read_text().replace(
            'trackers = [["http://127.0.0.1:6969/announce"]]', f'trackers = []\nweb_seeds = ["{base}shards/"]'
        )
    )
    rows, files = [], {}
    for i in range(12):
        path = f"audio/{i % 3}/track {i}.ogg"
        body = os.urandom(200_000 + 7919 * i)
        archive.add(path, body)
        files[f"t{i}"] = body
        rows.append({"id": f"t{i}", "path": path, "kind": "audio", "popularity": 90 - i, "size": len(body)})
    prepare(ws, archive, rows)
    assert not run_build(ws).failed
    cli("publish", str(ws), "--phase", "audio")
    mirror = tmp_path / "mirror"
    shutil.copytree(ws / layout.PUBLISHED, mirror)
    shutil.copytree(ws / layout.SHARDS, mirror / layout.SHARDS)
    url, access_log = nginx(mirror, port)
    assert url == base
    return base, access_log, mirror, files


def test_fetch_over_http_from_nginx(served, tmp_path):
    base, access_log, mirror, files = served
    with MemberIndex.open(mirror) as index:
        (loc,), _ = index.locate(["t7"])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["fetch", base, "t7", "-o", str(out), "--via", "http", "--json"])
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.stdout)["items"]
    assert (out / loc.path).read_bytes() == files["t7"] and item["sha256"] == sha256_of(out / loc.path)
    shard_bytes = served_bytes(access_log, r"/music/shards/")
    assert shard_bytes <= loc.frames_size + loc.torrent.piece_size  # the bound
    assert shard_bytes == loc.frames_size  # what we do: the frames, nothing else
    assert loc.torrent.shard_size > 10 * loc.frames_size
    index_bytes = served_bytes(access_log, r"/music/members/")
    assert 0 < index_bytes == json.loads(result.stdout)["index_bytes"]
    lines = access_log.read_text().splitlines()
    assert all('" 206 "bytes=' in line for line in lines if "/shards/" in line or "members.pack" in line)
