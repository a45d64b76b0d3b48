"""Golden bytes: a tiny fixed catalog whose shard SHA-256 and info-hashes are pinned.

Any change to the container, the manifest, the tar headers, the torrent assembly or the piece-size rule
changes these values. If the change is deliberate, it changes a published format: bump the format version,
say so in the changelog, and update the pins. (The shard bytes also depend on the bundled libzstd.)
"""

import hashlib
import json

import pytest
import zstandard

from packager.build import build
from packager.catalog import IngestOptions, ingest
from packager.plan import plan
from packager.torrent import read_torrent
from packager.workspace import Workspace

ROWS = [
    ("g1", "audio/a b/one.ogg", 70, b"OggS" + bytes(range(256)) * 40),
    ("g2", "audio/two.ogg", 65, b""),
    ("g3", "audio/dür/three.ogg", 61, b"x" * 70_000),
]
PINNED_ZSTD = "1.5.7"
PINNED = {
    "t-audio-t1-00001.tar.zst": "45b903d7d39bc4bee88b106b2ad57cc4b3a50b28267a2d32791e8742e318fe87",
    "info_hash_v1": "6d45d0a523f51766ed71bb83278ec6411faa9623",
}


def make(make_workspace, archive):
    rows = []
    for item_id, path, pop, body in ROWS:
        archive.add(path, body)
        rows.append({"id": item_id, "path": path, "kind": "audio", "popularity": pop, "size": len(body)})
    ws = make_workspace("golden")
    with Workspace.open(ws) as w:
        ingest(w, [archive.jsonl(rows)], IngestOptions())
        plan(w)
        assert not build(w, jobs_count=1).failed
    return ws


def test_golden_shard_and_info_hash(make_workspace, archive):
    ws = make(make_workspace, archive)
    shard = ws / "shards/t-audio-t1-00001.tar.zst"
    info = read_torrent(ws / "torrents/t-audio-t1-00001.tar.zst.torrent")
    got = {shard.name: hashlib.sha256(shard.read_bytes()).hexdigest(), "info_hash_v1": info.info_hash_v1}
    if tuple(int(x) for x in PINNED_ZSTD.split(".")) != zstandard.ZSTD_VERSION:
        # The torrent hashes the shard, so both pins move with libzstd's output.
        pytest.skip(
            f"pins are for libzstd {PINNED_ZSTD}, this is {zstandard.ZSTD_VERSION}: {json.dumps(got)}"
        )
    assert got == PINNED, json.dumps(got)


def test_golden_shard_reads_back_with_its_manifest(make_workspace, archive):
    from packager.container import ShardReader

    ws = make(make_workspace, archive)
    with ShardReader(ws / "shards/t-audio-t1-00001.tar.zst") as reader:
        records = reader.manifest()
        assert [(r.id, r.path, r.size) for r in records] == [(i, p, len(b)) for i, p, _, b in ROWS]
        assert records[0].sha256 == hashlib.sha256(ROWS[0][3]).hexdigest()
