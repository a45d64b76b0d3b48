"""The member index's rows of built shards, read from the state in two passes that each read in order.

A member's build record is in member_builds (by shard and position) and its id, path and size are in items
(by rowid); plan order and rowid order are unrelated, so joining them row by row reads the items table at
random. Measured at 10^7 members (a 3 GB state, all in the page cache): 15 µs of CPU a member, two thirds
of it SQLite copying pages from the OS; at 10^8 the items are 20 GB and those would be random disk reads.
Instead, as a sort-merge join with the sort done by partitioning:

1. per shard, members and member_builds are read in their shared key order, with the shard's seek table,
   and each member's record is spilled to the file of its item's rowid range (RANGE_MEMBERS a range);
2. per rowid range, its records are loaded (one range in memory at a time) and the range's items read in
   rowid order (a range scan, or point reads in order when the range holds few members); each record
   with its item is an index row, handed to the index writer.

Each pass runs in member_index.writer.WORKERS processes at scale; the index bytes do not depend on any order.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from operator import methodcaller
from pathlib import Path
from typing import TYPE_CHECKING

import zstandard

from .errors import PublishError
from .member_index import MemberIndexWriter
from .member_index import writer as index_writer
from .member_index.buckets import share_out
from .state import State

if TYPE_CHECKING:
    from .manifest import TorrentEntry

RANGE_MEMBERS = 250_000  # members of one rowid range, on average: ~100 MB of records in memory
MAX_RANGES = 256  # a spill file stays open per range (at 10^8 members, ranges of 400 000)
SPARSE = 8  # a range whose members are under 1/SPARSE of its rowids reads them one by one, in order
BLOCK = 128 * 2**10


def add_built_members(
    writer: MemberIndexWriter,
    state_path: Path,
    torrents: Sequence[tuple[int, TorrentEntry, int, object]],
    frames_of: Callable[[object], Sequence[tuple[int, int, int]]],
) -> None:
    """Add (n, entry, shard_id, shard) torrents, whose members are read from the state at `state_path`
    and whose seek tables are `frames_of(shard)`, as container.read_frame_spans gives them (a module-level
    function: it runs in worker processes)."""
    if not torrents:
        return
    members = sum(entry.items for _, entry, _, _ in torrents)
    with State(state_path, readonly=True) as state:
        top = state.max_item_rowid() + 1
    ranges = max(1, min(members // RANGE_MEMBERS, MAX_RANGES, top))
    width = -(-top // ranges)
    workers = index_writer.WORKERS if members >= index_writer.POOL_MEMBERS else 1
    folders = [writer.scratch(f"by-rowid-{w}") for w in range(workers)]
    shares = share_out(
        [((n, shard_id, shard, entry.items), entry.items) for n, entry, shard_id, shard in torrents],
        workers,
    )
    jobs = [
        (str(state_path), share, frames_of, str(f), width, ranges)
        for f, share in zip(folders, shares, strict=True)
    ]
    if workers == 1:
        list(map(_spill_records, jobs))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_spill_records, jobs))
    weight = members // ranges
    writer.add_rows_in_workers(
        [(n, entry) for n, entry, _, _ in torrents],
        [
            (
                (str(state_path), [str(f / f"{r:05x}") for f in folders], r * width, (r + 1) * width),
                weight,
            )
            for r in range(ranges)
        ],
        _range_rows,
        formatted=True,
    )


def _spill_records(job: tuple) -> None:
    """Pass 1 over a share of the shards: each member's row, as "<item rowid> <torrent n> <the row's JSON
    after the size>", appended to the file of its rowid range in compressed blocks. A shard whose build
    records are not its planned members, each in the shard's frames, is refused (State.index_gaps)."""
    state_path, share, frames_of, folder, width, ranges = job
    buffers: list[list[bytes]] = [[] for _ in range(ranges)]
    sizes = [0] * ranges
    files: list = [None] * ranges
    cctx = zstandard.ZstdCompressor(level=1)

    def flush(r: int) -> None:
        if files[r] is None:
            files[r] = open(Path(folder) / f"{r:05x}", "wb")  # noqa: SIM115 - closed below
        files[r].write(cctx.compress(b"".join(buffers[r])))
        buffers[r], sizes[r] = [], 0

    with State(Path(state_path), readonly=True) as state:
        for n, shard_id, shard, items in share:
            # (compressed offset, compressed size, decompressed offset) of each frame: a member's bytes
            # are those of its frames (format.member_rows).
            frames = frames_of(shard)
            count, got = len(frames), 0
            for rowid, offset, first, last, hashes in state.iter_member_build_parts(shard_id):
                got += 1
                if not 0 <= first <= last < count:
                    _refuse_gaps(state, state_path, shard_id, count)
                start, end = frames[first], frames[last]
                line = b"%d %d %d,%d,%d,%d,%d,%d,%b\n" % (
                    rowid,
                    n,
                    offset,
                    first,
                    last,
                    start[0],
                    end[0] + end[1] - start[0],
                    start[2],
                    hashes,
                )
                r = rowid // width
                buffers[r].append(line)
                sizes[r] += len(line)
                if sizes[r] >= BLOCK:
                    flush(r)
            if got != items:
                _refuse_gaps(state, state_path, shard_id, count, f"{got} of its {items} members have a build")
    for r in range(ranges):
        if buffers[r]:
            flush(r)
        if files[r] is not None:
            files[r].close()


def _refuse_gaps(state: State, state_path: str, shard_id: int, frames: int, otherwise: str = "") -> None:
    gaps = state.index_gaps(shard_id, frames)
    name = state.shard_name(shard_id)
    raise PublishError(
        name,
        f"its members cannot all be indexed: {'; '.join(gaps) if gaps else otherwise}",
        hint=f"the state ({state_path}) does not match the shard: build it again (packager build)",
    )


def _range_rows(job: tuple) -> Iterator[tuple[bytes, bytes]]:
    """Pass 2 over one rowid range: its members' (id as UTF-8, index row JSON), completed with their
    items' id, path and size. The row is the JSON that orjson writes for the whole row: its parts are that
    JSON (json_quote's, which is orjson's), joined by commas."""
    state_path, paths, lo, hi = job
    lines = _range_records(paths)
    if not lines:
        return
    # "<rowid> <n rest>" -> b"<n rest>" by the rowid's place in the range: in a list when the range is
    # dense (a list index by SQLite's integer rowid cost 0.6 µs a member less than a dict of the rowids'
    # text), else in a dict, whose items are read one by one.
    dense = len(lines) * SPARSE >= hi - lo
    if dense:
        slots: list[bytes | None] = [None] * (hi - lo)
        for key, record in map(methodcaller("split", b" ", 1), lines):
            slots[int(key) - lo] = record
        twice = slots.count(None) > len(slots) - len(lines)
    else:
        records = {int(key) - lo: record for key, record in map(methodcaller("split", b" ", 1), lines)}
        twice = len(records) < len(lines)
    if twice:
        _refuse_twice(state_path, lines)
    found = 0
    with State(Path(state_path), readonly=True) as state:
        if dense:
            for k, ident, id_json, path_size in state.iter_item_parts(lo, hi):
                record = slots[k]
                if record is not None:
                    found += 1
                    n, rest = record.split(b" ", 1)
                    yield ident, b"[%b,%b,%b,%b]" % (id_json, n, path_size, rest)
        else:
            for k in sorted(records):
                item = state.item_parts(lo + k, lo)
                if item is not None:
                    found += 1
                    n, rest = records.pop(k).split(b" ", 1)
                    yield item[1], b"[%b,%b,%b,%b]" % (item[2], n, item[3], rest)
        if found < len(lines):
            if dense:
                present = set(state.item_rowids(lo, hi))
                gone = [lo + k for k, r in enumerate(slots) if r is not None and lo + k not in present]
            else:
                gone = [lo + k for k in records]
            raise PublishError(
                state_path,
                f"{len(lines) - found} built member(s) have no item, e.g. rowid {min(gone)}",
            )


def _range_records(paths: Sequence[str]) -> list[bytes]:
    """The records pass 1 spilled to one rowid range's files (removed once read), without newlines."""
    lines: list[bytes] = []
    for path in map(Path, paths):
        if not path.exists():
            continue
        with (
            path.open("rb") as f,
            zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as z,
        ):
            data = z.read()
        path.unlink()
        lines += data.split(b"\n")
        lines.pop()
        del data
    return lines


def _refuse_twice(state_path: str, lines: list[bytes]) -> None:
    seen: set[bytes] = set()
    for line in lines:
        key = line.split(b" ", 1)[0]
        if key in seen:
            raise PublishError(state_path, f"item rowid {int(key)} is a member of two built shards")
        seen.add(key)
