"""The member index at 10^6 members, looked up through a local HTTP server as `packager fetch` does: the
bytes transferred stay under the bound README gives (and far under the whole index)."""

from __future__ import annotations

import random
import zlib

import pytest

from packager import layout
from packager.fetch.source import HttpFiles
from packager.manifest import FileEntry, TorrentEntry
from packager.member_index import MemberIndex, MemberIndexWriter
from tests.range_server import RangeServer

MEMBERS = 1_000_000
PER_TORRENT = 20_000  # 100 GB shards of 5 MB tracks
# README "The member index": measured 101-110 kB a lookup at 10^6 members; the bound leaves room for the
# variance of part sizes, and is what the projection to 10^8 (about 180 kB) builds on.
LOOKUP_BOUND = 150_000
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def synthetic(rng: random.Random, sample: list[str]):
    for n in range(1, MEMBERS // PER_TORRENT + 1):
        name = f"music-audio-t1-{n:05d}"
        entry = TorrentEntry(
            name, "audio", "t1", 1, 2, PER_TORRENT, 10**11, "v1", 32 * 2**20, rng.randbytes(20).hex(), None,
            f"magnet:?xt=urn:btih:{'0' * 40}&dn={name}.tar.zst",
            (FileEntry(f"shards/{name}.tar.zst", 10**12, rng.randbytes(32).hex()),
             FileEntry(f"torrents/{name}.tar.zst.torrent", 60_000, rng.randbytes(32).hex())),
            "2026-01-01T00:00:00Z",
        )  # fmt: skip

        def rows(n=n):
            offset = 0
            for k in range(PER_TORRENT):
                ident = "".join(rng.choices(BASE62, k=22))  # random ids, as Spotify's
                if k == 777:
                    sample.append(ident)
                folder = format(zlib.crc32(ident.encode()) & 0xFFFF, "04x")
                size = int(rng.lognormvariate(15.4, 0.5))
                offset += 1024
                digest = rng.randbytes(48).hex()
                yield (ident, n, f"audio/{folder[:2]}/{folder[2:]}/{ident}.ogg", size, offset, k, k,
                       offset - 1024, size + 1400, offset - 1024, digest[:32], digest[32:])  # fmt: skip
                offset += size + 1024

        yield n, entry, rows()


@pytest.mark.slow
def test_a_lookup_among_a_million_members_reads_under_the_bound(tmp_path):
    sample: list[str] = []
    with MemberIndexWriter(tmp_path / layout.MEMBER_INDEX_DIR, "music") as writer:
        writer.add_torrents(synthetic(random.Random(15), sample))
        written = writer.finish()
    assert written.members == MEMBERS and written.parts == 1024
    with RangeServer(tmp_path) as server:
        for ident in sample[::10]:
            before = server.bytes_sent()
            index = MemberIndex(HttpFiles(server.url, timeout=10))
            (loc,), missing = index.locate([ident])
            cost = server.bytes_sent() - before
            assert loc.id == ident and not missing
            assert cost == index.bytes_read < LOOKUP_BOUND, cost
        assert server.bytes_sent() < written.pack_size / 50
        # Every request after the root is one byte range of the pack.
        assert all(rng for path, rng, _ in server.requests if path.endswith("members.pack"))
