"""Writing a member index: rows in, the pack and its root out, nothing final until finish() returns.

The writer streams through buckets.py's external sort. At scale both steps use both cores: the torrents'
rows are read and spilled by WORKERS processes (add_rows_in_workers), and the buckets are sorted, cut into
parts and compressed by as many, while this process writes the pack in part order.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import zstandard

from .. import layout
from ..errors import PublishError
from ..fsutil import fsync_file
from ..hashing import ShardHasher, ShardHashes
from ..manifest import TorrentEntry
from .buckets import BUCKET_BITS, IdTwice, Spill, bucket_parts, cut_parts, share_out, sorted_runs, spill_rows
from .format import (
    LEVEL,
    TORRENT_CHUNK,
    ChunkRef,
    IndexedTorrent,
    IndexTorrent,
    Root,
    bits_for,
    directory_bits,
    id_hash,
    index_info_hash,
    index_piece_size,
)

if TYPE_CHECKING:
    from .reader import MemberIndex

SORT_BYTES = 128 * 2**20  # 10^8 members spill ~80 MB a bucket: sorted without a split
# The bucket sort and the row readers: from POOL_MEMBERS members on, in WORKERS processes (spawned: publish
# may have threads).
POOL_MEMBERS = 500_000
WORKERS = min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class IndexWritten:
    members: int
    torrents: int
    parts: int
    pack_size: int
    root_size: int
    root_sha256: str
    pack_sha256: str
    hashes: ShardHashes  # of the pack: what its torrent is made from
    torrent: IndexTorrent


class MemberIndexWriter:
    """Writes a member index into `folder` (its members/ files): the previous index's members and torrents
    (when `previous` is given) plus those added. Nothing is final until finish() returns."""

    def __init__(
        self,
        folder: Path,
        release: str,
        previous: MemberIndex | None = None,
        private: bool = False,
        source: str | None = None,
    ):
        self.folder, self.release = Path(folder), release
        self.private, self.source = private, source  # of the index's torrent: in its info dict
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=".spill-", dir=self.folder))
        self._spill = Spill(self._tmp / "rows", 64 - BUCKET_BITS)
        self._more_spills: list[Spill] = []  # those written by add_rows_in_workers
        self._torrents: dict[int, IndexedTorrent] = {}
        self._names: set[str] = set()
        self.members = 0
        if previous is not None:
            for t in previous.torrents():
                self._add_torrent(t)
            for line in previous.iter_lines():
                self._add_line(orjson.loads(line)[0], line)

    def _add_torrent(self, t: IndexedTorrent) -> None:
        if t.n in self._torrents or t.name in self._names:
            raise PublishError(self.folder, f"torrent {t.name} (n={t.n}) is indexed twice")
        self._torrents[t.n] = t
        self._names.add(t.name)

    def _add_line(self, ident: str, line: bytes) -> None:
        h = id_hash(ident)
        self._spill.add(h, b"%016x" % h + line)
        self.members += 1

    def add_torrents(self, torrents: Iterable[tuple[int, TorrentEntry, Iterable[tuple]]]) -> None:
        """Add (n, entry, member_rows(...)) torrents."""
        for n, entry, rows in torrents:
            self._add_torrent(IndexedTorrent.of_entry(n, entry))
            self.members += self._spill.add_rows(rows)

    def scratch(self, name: str) -> Path:
        """A new folder for a caller's temporary files, removed with the writer's."""
        folder = self._tmp / name
        folder.mkdir()
        return folder

    def add_rows_in_workers(
        self,
        torrents: Iterable[tuple[int, TorrentEntry]],
        jobs: Sequence[tuple[object, int]],
        rows_of: Callable[[object], Iterable[tuple]],
        formatted: bool = False,
    ) -> None:
        """Add (n, entry) torrents whose member rows are those of every (job, weight) of `jobs`, each
        `rows_of(job)`: read and spilled by WORKERS processes, the jobs shared out by weight, when the
        weights add up to POOL_MEMBERS or more. `rows_of` is a module-level function and each job
        picklable. With `formatted`, rows_of yields (id as UTF-8, row as row_line writes it without the
        newline) pairs: a caller that has the row's JSON in parts saves a parse and a dump. The bytes are
        those add_torrents writes."""
        for n, entry in torrents:
            self._add_torrent(IndexedTorrent.of_entry(n, entry))
        workers = WORKERS if sum(w for _, w in jobs) >= POOL_MEMBERS else 1
        if workers == 1:
            add = self._spill.add_lines if formatted else self._spill.add_rows
            for job, _ in jobs:
                self.members += add(rows_of(job))
            return
        base = len(self._more_spills)
        folders = [self._tmp / f"rows-{base + w}" for w in range(workers)]
        shares = share_out(jobs, workers)
        spill_jobs = [
            (str(f), self._spill.shift, rows_of, share, formatted)
            for f, share in zip(folders, shares, strict=True)
        ]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for folder, (count, sizes) in zip(folders, pool.map(spill_rows, spill_jobs), strict=True):
                self._more_spills.append(Spill.written(folder, self._spill.shift, sizes))
                self.members += count

    def abort(self) -> None:
        self._spill.discard()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> MemberIndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def finish(self) -> IndexWritten:
        """Sort, cut into parts, write the pack and then the root; the spill folder is removed."""
        self._spill.close()
        bits = bits_for(self.members)
        pack_path = self.folder / layout.MEMBER_INDEX_PACK_NAME
        cctx = zstandard.ZstdCompressor(level=LEVEL)
        # One pass: the pack's SHA-256 and its v1 pieces, for the index's own torrent, as it is written.
        whole = ShardHasher(index_piece_size(self.members))
        parts: list[list] = []
        with open(pack_path, "wb") as pack:

            def append(data: bytes) -> ChunkRef:
                offset = pack.tell()
                pack.write(data)
                whole.update(data)
                return ChunkRef(offset, len(data), hashlib.sha256(data).hexdigest())

            def add_part(data: bytes, count: int) -> None:
                ref = append(data)
                parts.append([ref.offset, ref.size, ref.sha256, count])

            for part, data, count in self._parts(bits):
                while len(parts) < part:
                    add_part(b"", 0)
                add_part(data, count)
            while len(parts) < 1 << bits:
                add_part(b"", 0)
            per_dir = 1 << (bits - directory_bits(bits))
            directories = tuple(
                append(cctx.compress(orjson.dumps(parts[d * per_dir : (d + 1) * per_dir])))
                for d in range(1 << directory_bits(bits))
            )
            ordered = [self._torrents[n] for n in sorted(self._torrents)]
            chunks = []
            for i in range(0, len(ordered), TORRENT_CHUNK):
                group = ordered[i : i + TORRENT_CHUNK]
                ref = append(cctx.compress(orjson.dumps([asdict(t) for t in group])))
                chunks.append((ref, group[0].n, len(group)))
            pack_size = pack.tell()
            pack.flush()
            os.fsync(pack.fileno())
        shutil.rmtree(self._tmp, ignore_errors=True)
        hashes = whole.finish()
        name = layout.MEMBER_INDEX_PACK_NAME
        torrent = IndexTorrent(
            layout.MEMBER_INDEX_TORRENT,
            name,
            hashes.piece_size,
            index_info_hash(hashes, self.private, self.source),
        )
        root = Root(
            self.release,
            self.members,
            len(ordered),
            bits,
            pack_size,
            hashes.sha256.hex(),
            directories,
            tuple(chunks),
            torrent,
        ).to_json()
        root_path = self.folder / Path(layout.MEMBER_INDEX).name
        root_path.write_bytes(root)
        fsync_file(root_path)
        return IndexWritten(
            self.members,
            len(ordered),
            1 << bits,
            pack_size,
            len(root),
            hashlib.sha256(root).hexdigest(),
            hashes.sha256.hex(),
            hashes,
            torrent,
        )

    def _parts(self, bits: int) -> Iterator[tuple[int, bytes, int]]:
        """(part, compressed chunk, members) of every non-empty part, in part order. From 2^BUCKET_BITS
        parts on, a part lies in one bucket and the buckets are sorted and compressed by WORKERS processes
        while this one writes; below, inline."""
        spills, shift = [self._spill, *self._more_spills], self._spill.shift
        if bits >= BUCKET_BITS:
            jobs = [
                (
                    [str(s.path(b)) for s in spills],
                    sum(s.bytes[b] for s in spills),
                    shift,
                    bits,
                    SORT_BYTES,
                    LEVEL,
                )
                for b in range(1 << BUCKET_BITS)
            ]
            if self.members >= POOL_MEMBERS and WORKERS > 1:
                pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
                results = pool.map(bucket_parts, jobs)
            else:
                pool, results = None, map(bucket_parts, jobs)
            try:
                for found, twice in results:
                    if twice:
                        self._refuse_twice(*twice)
                    yield from found
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
            return
        runs = (
            lines
            for b in range(1 << BUCKET_BITS)
            for lines in sorted_runs(
                [s.path(b) for s in spills], sum(s.bytes[b] for s in spills), shift, SORT_BYTES
            )
        )
        try:
            yield from cut_parts(runs, bits, LEVEL)
        except IdTwice as e:
            self._refuse_twice(*e.lines)

    def _refuse_twice(self, a: bytes, b: bytes) -> None:
        first, second = orjson.loads(a), orjson.loads(b)
        names = sorted({self._torrents[first[1]].name, self._torrents[second[1]].name})
        raise PublishError(self.folder, f"item {first[0]!r} is indexed twice, in {' and '.join(names)}")
