"""The monthly refresh at the cost of reading the catalog: fingerprint every line, parse only the new ones.

A JSON Lines row's fingerprint is xxh3_64 of its line (state.line_fingerprint), so a refresh of 10^8 rows
of which 1 % changed need not parse and check 99 % of them. It runs in three steps:

1. **fingerprints**: every line of every catalog is hashed (two processes taking alternate blocks of
   lines, as the parser does) and its (fingerprint, catalog and line) appended to one of PARTS bucket
   files by the top bits of the fingerprint; meanwhile this process reads every item's (fingerprint,
   rowid) from one scan of items_id and buckets them the same way (no index of fingerprints is kept: at
   10^8 rows it would cost 2 GB of state and a sort of its own at every first ingest);
2. **match**: each bucket's lines are matched with its items with hash sets in Arrow's C++ compute (two
   processes, half the buckets each): lines whose fingerprint is stored are their item, unchanged; the
   others' line numbers, and the rowids of the items whose fingerprint no line has (items changed, moved
   to another line format, or absent), are the output;
3. **rows**: catalog/ parses only the selected lines, and ingest.Loader merges them as any re-ingest.

It applies to a re-ingest of JSON Lines catalogs with --trust-sizes, where a row is a function of its line
alone (and of the rules and kinds, which seed the hash). Without --trust-sizes the size is the file's, so
every row is read and its file statted; CSV, Parquet and SQLite rows have no line of their own to hash:
both take the plain path, where catalog/checks.py fingerprints each checked row's content (row_fingerprint).

Any case that needs one row's context beyond its line (a repeated line, an id both on a matched line and
on a parsed one) sends the whole ingest back to the plain path, which parses every row: such a catalog is
refused anyway unless --skip-invalid, and the plain path reports it exactly as before.
"""

from __future__ import annotations

import array
import gc
import itertools
import multiprocessing
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from .ingest import FullPath
from .timing import phase

PART_BITS = 6
PARTS = 1 << PART_BITS
LINE_BITS = 40  # a position is catalog << LINE_BITS | line
_TOP = 1 << 63


@dataclass
class Matched:
    """What the match found."""

    lines: list[array.array]  # per catalog: sorted numbers of the lines to parse
    offsets: list[array.array | None] = field(default_factory=list)  # their byte offsets, if usable
    matched: int = 0  # lines (= items) matched by fingerprint: unchanged
    per_catalog: list[int] = field(default_factory=list)  # of which in each catalog
    unmatched_stored: int = 0  # items whose fingerprint no line has, their rowids in temp.unmatched


def _block_fingerprints(lines: list[bytes], seed: int) -> pa.Array:
    return pa.array(map(xxhash.xxh3_64_intdigest, lines, itertools.repeat(seed)), type=pa.uint64())


def fingerprint_catalogs(
    catalogs: Sequence[Path], seed: int, folder: Path, part: tuple[int, int], block: int, reader: Reader
) -> list[int]:
    """Step 1 in one process: the lines of the blocks b with b % n == k (part = (k, n), blocks numbered
    across the catalogs) appended to folder/<k>-<bucket>.fp, .pos and .off (the line's byte offset) as
    unsigned 64-bit integers. Returns the catalogs (by index) whose offsets cannot be used: compressed,
    or with a line that could not be read (their selected lines are found by number instead)."""
    k, n = part
    files = [
        tuple(open(folder / f"{k}-{b}.{ext}", "wb") for ext in ("fp", "pos", "off"))  # noqa: SIM115
        for b in range(PARTS)
    ]
    number, no_offsets = 0, []
    try:
        for c, catalog in enumerate(catalogs):
            at = 0  # the byte offset of the block in the file
            if reader.compressed(Path(catalog)):
                no_offsets.append(c)
            for first, data in reader.blocks(Path(catalog), block):
                mine = number % n == k
                number += 1
                if type(data) is not bytes:  # a line that cannot be read is parsed, so reported
                    if not no_offsets or no_offsets[-1] != c:
                        no_offsets.append(c)
                    continue
                start, at = at, at + len(data)
                if not mine:
                    continue
                lines = data.split(b"\n")
                if lines[-1] == b"":
                    lines.pop()
                if not lines:
                    continue
                fps = _block_fingerprints(lines, seed)
                base = (c << LINE_BITS) + first
                steps = pc.add(pa.array(map(len, lines), pa.uint64()), pa.scalar(1, pa.uint64()))
                offsets = pc.add(pc.subtract(pc.cumulative_sum(steps), steps), pa.scalar(start, pa.uint64()))
                lines_at = pa.array(range(base, base + len(lines)), type=pa.uint64())
                _append_by_bucket(files, fps, lines_at, offsets)
    finally:
        for group in files:
            for f in group:
                f.close()
    return no_offsets


def _append_by_bucket(files: list[tuple], fps: pa.Array, *values: pa.Array) -> None:
    """Append fingerprints and their values (uint64 arrays) to the files of their buckets (top bits)."""
    buckets = pc.shift_right(fps, pa.scalar(64 - PART_BITS, pa.uint64()))
    order = pc.sort_indices(buckets)
    columns = [column.take(order) for column in (fps, *values)]
    at = 0
    for entry in sorted(pc.value_counts(buckets.take(order)).to_pylist(), key=lambda e: e["values"]):
        b, count = entry["values"], entry["counts"]
        for f, column in zip(files[b], columns, strict=True):
            f.write(_raw(column.slice(at, count)))
        at += count


def stored_fingerprints(db: sqlite3.Connection, folder: Path) -> None:
    """Every item's (fingerprint, rowid), from one scan of items_id (which holds both, so no index of its
    own is kept for the refresh), appended to folder/s-<bucket>.fp and .row."""
    files = [
        (open(folder / f"s-{b}.fp", "wb"), open(folder / f"s-{b}.row", "wb"))  # noqa: SIM115
        for b in range(PARTS)
    ]
    top = pa.scalar(_TOP, pa.uint64())
    try:
        cursor = db.execute("SELECT fp, rowid FROM items INDEXED BY items_id")
        while chunk := cursor.fetchmany(1 << 16):
            fps, rowids = zip(*chunk, strict=True)
            unsigned = pc.bit_wise_xor(pa.array(fps, pa.int64()).cast(pa.uint64(), safe=False), top)
            _append_by_bucket(files, unsigned, pa.array(rowids, pa.uint64()))
    finally:
        for pair in files:
            for f in pair:
                f.close()


def _raw(values: pa.Array) -> memoryview:
    """The little-endian bytes of a uint64 array (a slice of one)."""
    buf = values.buffers()[1]
    return memoryview(buf)[values.offset * 8 : (values.offset + len(values)) * 8]


def _read_u64(path: Path) -> pa.Array:
    data = path.read_bytes() if path.exists() else b""
    return pa.Array.from_buffers(pa.uint64(), len(data) // 8, [None, pa.py_buffer(data)])


def match_buckets(folder: Path, buckets: Sequence[int], writers: int, out: str) -> dict:
    """Step 2 for some buckets: writes folder/<out>.pos and .off (positions and byte offsets of the lines
    to parse) and <out>.row (rowids of the items whose fingerprint no line has); returns
    {"matched": {catalog: lines}, "repeated": bool}."""
    matched: dict[int, int] = {}
    repeated = False
    with (
        open(folder / f"{out}.pos", "wb") as to_parse,
        open(folder / f"{out}.off", "wb") as offsets,
        open(folder / f"{out}.row", "wb") as unmatched,
    ):
        for b in buckets:
            fps = pa.concat_arrays([_read_u64(folder / f"{k}-{b}.fp") for k in range(writers)])
            pos = pa.concat_arrays([_read_u64(folder / f"{k}-{b}.pos") for k in range(writers)])
            off = pa.concat_arrays([_read_u64(folder / f"{k}-{b}.off") for k in range(writers)])
            stored, rowids = _read_u64(folder / f"s-{b}.fp"), _read_u64(folder / f"s-{b}.row")
            hit = pc.is_in(fps, value_set=stored)
            found = fps.filter(hit)
            if pc.count_distinct(found).as_py() != len(found):
                repeated = True
            for entry in pc.value_counts(pc.shift_right(pos.filter(hit), LINE_BITS)).to_pylist():
                matched[entry["values"]] = matched.get(entry["values"], 0) + entry["counts"]
            to_parse.write(_raw(pos.filter(pc.invert(hit))))
            offsets.write(_raw(off.filter(pc.invert(hit))))
            unmatched.write(_raw(rowids.filter(pc.invert(pc.is_in(stored, value_set=fps)))))
    return {"matched": matched, "repeated": repeated}


def _child(conn, fn, args) -> None:
    gc.disable()  # a line's bytes object per line, none in a cycle: nothing for the collector to find
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # handed to the parent, which raises it
        conn.send(("error", e))
    finally:
        conn.close()


def _start(jobs: list[tuple]) -> list[tuple]:
    """Start (fn, args) jobs each in a process of its own."""
    ctx = multiprocessing.get_context("spawn")
    running = []
    for fn, args in jobs:
        ours, theirs = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child, args=(theirs, fn, args), daemon=True)
        child.start()
        theirs.close()
        running.append((ours, child))
    return running


def _results(running: list[tuple]) -> list:
    """The results of started jobs, or the first error one raised."""
    results, error = [], None
    try:
        for ours, _ in running:
            try:
                kind, value = ours.recv()
            except EOFError:
                kind, value = "error", RuntimeError("a refresh process stopped unexpectedly")
            if kind == "error" and error is None:
                error = value
            results.append(value)
    finally:
        _stop(running)
    if error is not None:
        raise error
    return results


def _stop(running: list[tuple]) -> None:
    for ours, child in running:
        ours.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()


@dataclass(frozen=True)
class Reader:
    """How catalog/ reads a JSON Lines catalog (passed in: this module imports nothing of catalog/'s):
    blocks(path, size) gives (first line number, bytes of whole lines, or None / a reason for what cannot
    be read), and compressed(path) says whether its byte offsets are not the file's."""

    blocks: Callable[[Path, int], Iterator[tuple[int, bytes | str | None]]]
    compressed: Callable[[Path], bool]


def match_catalogs(
    db: sqlite3.Connection,
    state_path: Path,
    catalogs: Sequence[Path],
    seed: int,
    processes: int,
    block: int,
    reader: Reader,
) -> Matched:
    """Steps 1 and 2: the lines to parse, the count of lines matched, and temp.unmatched (n) holding the
    rowids of the items whose fingerprint no line has. Raises FullPath for a catalog with a repeated line."""
    folder = Path(tempfile.mkdtemp(prefix=".refresh-", dir=Path(state_path).parent))
    try:
        with phase("refresh: fingerprint every line and item"):
            if processes > 1:
                jobs = [
                    (fingerprint_catalogs, (catalogs, seed, folder, (k, processes), block, reader))
                    for k in range(processes)
                ]
                running = _start(jobs)
                try:  # the items' side here, while the children hash the lines
                    stored_fingerprints(db, folder)
                except BaseException:
                    _stop(running)
                    raise
                no_offsets = set(itertools.chain.from_iterable(_results(running)))
            else:
                no_offsets = set(fingerprint_catalogs(catalogs, seed, folder, (0, 1), block, reader))
                stored_fingerprints(db, folder)
        with phase("refresh: match with stored fingerprints"):
            if processes > 1:
                halves = [list(range(k, PARTS, processes)) for k in range(processes)]
                results = _results(
                    _start([(match_buckets, (folder, h, processes, f"out{k}")) for k, h in enumerate(halves)])
                )
            else:
                results = [match_buckets(folder, range(PARTS), 1, "out0")]
        if any(r["repeated"] for r in results):
            raise FullPath("a line is repeated")
        with phase("refresh: lines to parse, unmatched items"):
            return _gathered(db, folder, results, len(catalogs), no_offsets)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _gathered(
    db: sqlite3.Connection, folder: Path, results: list[dict], catalogs: int, no_offsets: set[int]
) -> Matched:
    found = Matched(lines=[], per_catalog=[0] * catalogs)
    for r in results:
        for c, count in r["matched"].items():
            found.per_catalog[c] += count
    found.matched = sum(found.per_catalog)
    positions = pa.concat_arrays([_read_u64(folder / f"out{k}.pos") for k in range(len(results))])
    offsets = pa.concat_arrays([_read_u64(folder / f"out{k}.off") for k in range(len(results))])
    order = pc.sort_indices(positions)
    positions, offsets = positions.take(order), offsets.take(order)
    catalog_of = pc.shift_right(positions, pa.scalar(LINE_BITS, pa.uint64()))
    mask = pa.scalar((1 << LINE_BITS) - 1, pa.uint64())
    for c in range(catalogs):
        mine = pc.equal(catalog_of, c)
        found.lines.append(array.array("q", pc.bit_wise_and(positions.filter(mine), mask).to_pylist()))
        found.offsets.append(None if c in no_offsets else array.array("q", offsets.filter(mine).to_pylist()))
    db.execute("DROP TABLE IF EXISTS temp.unmatched")
    db.execute("CREATE TEMP TABLE unmatched (n INTEGER PRIMARY KEY)")
    for k in range(len(results)):
        rowids = _read_u64(folder / f"out{k}.row").sort()
        db.executemany("INSERT INTO temp.unmatched VALUES (?)", zip(rowids.to_pylist()))
    found.unmatched_stored = db.execute("SELECT COUNT(*) FROM temp.unmatched").fetchone()[0]
    return found


def clean_leftovers(workspace: Path) -> None:
    """Bucket folders of a refresh that was killed. Call inside the ingest's write transaction: no other
    refresh can be running then."""
    for stale in Path(workspace).glob(".refresh-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
