"""`bench.py index`: the member index at the real shape, and what one lookup costs a downloader.

Writes the index of N synthetic members shaped like the real catalog (random 22-character base62 ids,
hashed folders, random hashes, 20 000 members a torrent as in 100 GB shards of 5 MB tracks) with the
publish writer, then looks up random ids as `packager fetch` does, counting the bytes and the dependent
round trips each lookup reads. Beside it, the alternative: the same rows in one SQLite file (a WITHOUT
ROWID B-tree) read by page-sized Range requests, whose cost is the B-tree depth in pages (from dbstat).
Then both are projected to 10^8 members from the measured bytes per member.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PER_TORRENT = 20_000
TARGET_LOOKUP_BYTES = 10**6  # the bound at 10^8 members
REAL = 10**8
REAL_TORRENTS = 5000  # 300 TB in shards of 50-100 GB, plus metadata and art


def add_index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", type=int, default=1_000_000, help="members to index (1000000)")
    p.add_argument("--lookups", type=int, default=200, help="random ids to look up (200)")
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite comparison")
    p.add_argument("--keep", action="store_true", help="keep the index written")


def _rows(members: int, seed: int = 1):
    """(n, entry, rows) torrents of synthetic members; ids sampled for lookups go to `_rows.sample`."""
    from packager.manifest import FileEntry, TorrentEntry

    rng = random.Random(seed)
    torrents = max(1, -(-members // PER_TORRENT))
    _rows.sample = []
    made = 0
    for n in range(1, torrents + 1):
        count = min(PER_TORRENT, members - made)
        made += count
        name = f"music-audio-t1-{n:05d}"
        entry = TorrentEntry(
            name, "audio", "t1", 1, 2, count, count * 5_000_000, "v1", 32 * 2**20, os.urandom(20).hex(), None,
            f"magnet:?xt=urn:btih:{'0' * 40}&dn={name}.tar.zst&tr=udp%3A%2F%2Ftracker.example.org%3A6969",
            (FileEntry(f"shards/{name}.tar.zst", 10**12, os.urandom(32).hex()),
             FileEntry(f"torrents/{name}.tar.zst.torrent", 60_000, os.urandom(32).hex())),
            "2026-01-01T00:00:00Z",
        )  # fmt: skip

        def rows(n=n, count=count):
            offset = 0
            for k in range(count):
                ident = "".join(rng.choices(BASE62, k=22))
                if rng.random() < 0.001:
                    _rows.sample.append(ident)
                folder = format(zlib.crc32(ident.encode()) & 0xFFFF, "04x")
                size = int(rng.lognormvariate(15.4, 0.5))
                offset += 1024
                digest = rng.randbytes(48).hex()
                yield (ident, n, f"audio/{folder[:2]}/{folder[2:]}/{ident}.ogg", size, offset, k, k,
                       offset - 1100 + k, size + 1400, offset - 1024, digest[:32], digest[32:])  # fmt: skip
                offset += size + (-size % 512)

        yield n, entry, rows()


class CountingFiles:
    """FolderFiles that count what a lookup reads: bytes, and reads (each a dependent round trip)."""

    def __init__(self, folder: Path):
        from packager.member_index import FolderFiles

        self.inner = FolderFiles(folder)
        self.bytes = self.reads = 0

    def read_file(self, name: str, limit: int) -> bytes:
        data = self.inner.read_file(name, limit)
        self.bytes, self.reads = self.bytes + len(data), self.reads + 1
        return data

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        data = self.inner.read_range(name, offset, size)
        self.bytes, self.reads = self.bytes + len(data), self.reads + 1
        return data


def _write(folder: Path, members: int) -> dict:
    from packager import layout
    from packager.member_index import MemberIndexWriter

    shutil.rmtree(folder, ignore_errors=True)
    start, cpu = time.perf_counter(), _cpu()
    with MemberIndexWriter(folder / layout.MEMBER_INDEX_DIR, "bench") as writer:
        writer.add_torrents(_rows(members))
        written = writer.finish()
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": _cpu() - cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "members": written.members,
        "torrents": written.torrents,
        "parts": written.parts,
        "pack_bytes": written.pack_size,
        "root_bytes": written.root_size,
        "sample": list(_rows.sample),
    }


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _lookups(folder: Path, ids: list[str]) -> dict:
    from packager.member_index import MemberIndex

    costs, reads, times = [], [], []
    for ident in ids:
        files = CountingFiles(folder)
        t0 = time.perf_counter()
        index = MemberIndex(files)
        found, _ = index.locate([ident])
        times.append(time.perf_counter() - t0)
        assert found, ident
        costs.append(files.bytes)
        reads.append(files.reads)
    costs.sort()
    times.sort()
    return {
        "bytes_median": costs[len(costs) // 2],
        "bytes_max": costs[-1],
        "reads": max(reads),
        "ms_median": times[len(times) // 2] * 1000,
    }


def _chunk_sizes(folder: Path) -> dict:
    """Measured sizes of one directory, one part and one torrent chunk, for the projection."""
    import orjson

    from packager import layout
    from packager.member_index import MemberIndex

    index = MemberIndex.open(folder)
    root = index.root
    d = root.directories[0]
    entries = orjson.loads(index._chunk(d, "directory 0"))
    return {
        "root_bytes_per_directory": len(root.to_json()) / max(1, len(root.directories)),
        "directory_bytes_per_part": d.size / len(entries),
        "torrent_chunk_bytes_per_torrent": max(c.size / count for c, _, count in root.torrent_chunks),
        "bytes_per_member": (folder / layout.MEMBER_INDEX_PACK).stat().st_size / root.members,
    }


def _sqlite(folder: Path, members: int) -> dict:
    """The same rows in one SQLite file; a lookup by Range requests reads one page per B-tree level."""
    path = folder / "members.sqlite"
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
        "CREATE TABLE torrents (n INTEGER PRIMARY KEY, name TEXT, info_hash TEXT, magnet TEXT,"
        " torrent_file TEXT, torrent_sha256 TEXT, shard_file TEXT, shard_size INTEGER, shard_sha256 TEXT,"
        " piece_size INTEGER);"
        "CREATE TEMP TABLE stage (id TEXT, torrent INTEGER, path TEXT, size INTEGER, offset INTEGER,"
        " first_frame INTEGER, last_frame INTEGER, frames_offset INTEGER, frames_size INTEGER,"
        " frames_tar_offset INTEGER, xxh3_128 TEXT, sha256 TEXT);"
        "CREATE TABLE members (id TEXT PRIMARY KEY, torrent INTEGER, path TEXT, size INTEGER, offset INTEGER,"
        " first_frame INTEGER, last_frame INTEGER, frames_offset INTEGER, frames_size INTEGER,"
        " frames_tar_offset INTEGER, xxh3_128 BLOB, sha256 BLOB) WITHOUT ROWID;"
    )
    start = time.perf_counter()
    db.execute("BEGIN")
    for n, e, rows in _rows(members):
        db.execute(
            "INSERT INTO torrents VALUES (?,?,?,?,?,?,?,?,?,?)",
            (n, e.name, e.info_hash_v1, e.magnet, e.torrent_file, e.torrent.sha256, e.shard.path,
             e.shard.size, e.shard.sha256, e.piece_size),
        )  # fmt: skip
        db.executemany("INSERT INTO stage VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute(
        "INSERT INTO members SELECT id, torrent, path, size, offset, first_frame, last_frame, frames_offset,"
        " frames_size, frames_tar_offset, unhex(xxh3_128), unhex(sha256) FROM stage ORDER BY id"
        if sqlite3.sqlite_version_info >= (3, 41)
        else "INSERT INTO members SELECT * FROM stage ORDER BY id"
    )
    db.execute("COMMIT")
    wall = time.perf_counter() - start
    page = db.execute("PRAGMA page_size").fetchone()[0]
    depth = {
        name: db.execute(
            "SELECT max(length(path) - length(replace(path, '/', ''))) FROM dbstat WHERE name = ?", (name,)
        ).fetchone()[0]  # fmt: skip
        for name in ("members", "torrents")
    }
    leaves, fanout = db.execute(
        "SELECT sum(pagetype = 'leaf'), avg(CASE WHEN pagetype = 'internal' THEN ncell + 1 END) FROM dbstat "
        "WHERE name = 'members'"
    ).fetchone()
    size = path.stat().st_size
    db.close()
    # Page 1 (header and schema), then one page per level of each B-tree (dbstat paths: '/' is the root).
    pages = 1 + depth["members"] + depth["torrents"]
    leaves_1e8 = leaves * REAL / members
    depth_1e8 = 1 + math.ceil(math.log(leaves_1e8) / math.log(fanout)) if fanout else depth["members"]
    return {
        "bytes": size,
        "wall_s": wall,
        "page": page,
        "depth": depth,
        "pages_per_lookup": pages,
        "fanout": fanout,
        "projected_1e8_depth": depth_1e8,
        "projected_1e8_bytes": size * REAL / members,
    }


def bench_index(args) -> dict:
    """The member index written at --members, lookups measured, SQLite beside it, both projected to 10^8."""
    from packager.member_index import bits_for, directory_bits
    from packager.member_index.format import PART_ROWS, TORRENT_CHUNK

    work = Path(args.workdir) / "index"
    work.mkdir(parents=True, exist_ok=True)
    folder = work / f"published-{args.members}"
    print(f"writing the member index of {args.members:,} members ...", flush=True)
    # The write in a child process, so that its peak RSS is its own.
    out = subprocess.run(
        [sys.executable, __file__, "_write", str(folder), str(args.members)], check=True, capture_output=True
    ).stdout
    w = json.loads(out)
    look = _lookups(folder, random.Random(2).sample(w["sample"], min(args.lookups, len(w["sample"]))))
    sizes = _chunk_sizes(folder)
    figures = {"write": {k: v for k, v in w.items() if k != "sample"}, "lookup": look, "sizes": sizes}
    print(f"{'members':<28}{w['members']:>14,}   torrents {w['torrents']:,}, parts {w['parts']:,}")
    print(f"{'write':<28}{w['wall_s']:>12.1f} s   {w['members'] / w['wall_s']:,.0f} members/s, "
          f"CPU {w['cpu_s']:.1f} s, peak RSS {w['peak_rss_mb']:.0f} MB")  # fmt: skip
    print(f"{'pack + root':<28}{w['pack_bytes'] / 1e6:>12.1f} MB   {sizes['bytes_per_member']:.1f} B/member, "
          f"root {w['root_bytes']:,} B")  # fmt: skip
    print(f"{'lookup (partitioned)':<28}{look['bytes_median']:>12,} B   median, max {look['bytes_max']:,}; "
          f"{look['reads']} reads; {look['ms_median']:.2f} ms")  # fmt: skip
    # Projection: the same writer's rule at 10^8 members and REAL_TORRENTS torrents.
    bits = bits_for(REAL)
    parts_per_dir = 1 << (bits - directory_bits(bits))
    part = sizes["bytes_per_member"] * REAL / (1 << bits)
    root = sizes["root_bytes_per_directory"] * (1 << directory_bits(bits)) + 100 * REAL_TORRENTS / 64
    chunk = sizes["torrent_chunk_bytes_per_torrent"] * TORRENT_CHUNK
    projected = root + sizes["directory_bytes_per_part"] * parts_per_dir + part + chunk
    figures["projected_1e8"] = {
        "bits": bits,
        "parts": 1 << bits,
        "part_bytes": part,
        "root_bytes": root,
        "lookup_bytes": projected,
        "pack_bytes": sizes["bytes_per_member"] * REAL,
        "members_per_part": REAL / (1 << bits),
        "part_rows_target": PART_ROWS,
    }
    directory = sizes["directory_bytes_per_part"] * parts_per_dir
    print(f"{'10^8 (projected)':<28}{projected:>12,.0f} B   a lookup (bound {TARGET_LOOKUP_BYTES:,}): "
          f"root {root:,.0f} + directory {directory:,.0f} + part {part:,.0f} + torrent chunk "
          f"{chunk:,.0f}; pack {sizes['bytes_per_member'] * REAL / 1e9:.1f} GB "
          f"in {1 << bits:,} parts")  # fmt: skip
    if not args.no_sqlite:
        s = _sqlite(folder, args.members)
        figures["sqlite"] = s
        print(f"{'SQLite, one file':<28}{s['bytes'] / 1e6:>12.1f} MB   B-tree depth {s['depth']['members']} "
              f"(+{s['depth']['torrents']} torrents, +1 header): {s['pages_per_lookup']} dependent Range "
              f"reads of {s['page']} B = {s['pages_per_lookup'] * s['page']:,} B a lookup, none of them "
              f"authenticated on its own; written in {s['wall_s']:.1f} s")  # fmt: skip
        pages_1e8 = 1 + s["projected_1e8_depth"] + s["depth"]["torrents"]
        print(f"{'SQLite at 10^8 (projected)':<28}{s['projected_1e8_bytes'] / 1e9:>12.1f} GB   depth "
              f"{s['projected_1e8_depth']} (fanout {s['fanout']:.0f}): {pages_1e8} dependent reads, "
              f"{pages_1e8 * s['page']:,} B a lookup")  # fmt: skip
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["_write"]:
        print(json.dumps(_write(Path(sys.argv[2]), int(sys.argv[3]))))
    else:
        p = argparse.ArgumentParser()
        p.add_argument("--workdir", default="bench-data")
        add_index_args(p)
        bench_index(p.parse_args())
