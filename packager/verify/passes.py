"""One sequential read of a file handed to several consumers (each on its own thread), and the consumers
of the raw bytes: the file's SHA-256 and its pieces (SHA-1 for v1, the merkle root of 16 KiB blocks for v2).
The pieces of one file, checked alone, are split across threads instead: pieces are independent."""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from packager.hashing import V2_BLOCK_SIZE, merkle_root

if TYPE_CHECKING:
    from packager.torrent import PieceHashes

# 4 MiB reads: as fast as larger ones from disk and page cache here, and with QUEUE_DEPTH chunks in flight
# per consumer a file's read buffers stay under ~24 MiB.
READ_CHUNK = 4 * 2**20
QUEUE_DEPTH = 4
# The piece check's threads take SPAN bytes of pieces at a time: a thread that is done early takes more,
# and at the end the other waits at most one span (here 15 ms).
SPAN = 32 * 2**20

T = TypeVar("T")
R = TypeVar("R")


def map_on_threads(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """[fn(item) for item in items] on `workers` threads (this one among them), each taking the next item
    when it is done with one; once one raises, the others take no new item, and the first exception is
    raised here after every thread stopped. (concurrent.futures' pool does the same, but importing it loads
    logging: 4 ms of `verify --pieces`' start-up.)"""
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    claim = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        while not errors:
            with lock:
                i = next(claim, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as e:  # re-raised below, in the calling thread
                errors.append(e)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(workers, len(items)) - 1)]
    for t in threads:
        t.start()
    try:
        work()
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results


class Consumer(Protocol):
    def update(self, offset: int, data: bytes | memoryview) -> None: ...  # data is not kept past the call

    def finish(self, size: int) -> None: ...


class Sha256:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def update(self, offset: int, data: bytes) -> None:
        self.hash.update(data)

    def finish(self, size: int) -> None:
        pass


@dataclass(frozen=True)
class PieceResult:
    hashes: PieceHashes
    bad: list[int]  # sorted piece indexes that fail, those cut off by the end of the file included
    absent_from: int | None  # first piece with bytes past the end of the file


class Pieces:
    """Checks each piece as its bytes go by: SHA-1 (v1), or the merkle root of its 16 KiB blocks (v2)."""

    def __init__(self, hashes: PieceHashes, first: int = 0, stop: int | None = None):
        self.h = hashes
        self.stop = hashes.count if stop is None else stop  # pieces [first, stop), fed from byte first*size
        self.bad: list[int] = []
        self.absent_from: int | None = None  # first piece with bytes past the end of the file
        self.piece = first
        self._new()

    def _new(self) -> None:
        self.filled = 0
        self.sha1 = hashlib.sha1() if self.h.v1 is not None else None
        self.leaves: list[bytes] = []
        self.block = bytearray()

    def _piece_len(self, index: int) -> int:
        return min(self.h.piece_size, self.h.length - index * self.h.piece_size)

    def update(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos, end = offset, min(offset + len(data), self.h.length)
        while pos < end and self.piece < self.stop:
            take = min(self._piece_len(self.piece) - self.filled, end - pos)
            part = view[pos - offset : pos - offset + take]
            if self.sha1 is not None:
                self.sha1.update(part)
            else:
                self._blocks(part)
            self.filled += take
            pos += take
            if self.filled == self._piece_len(self.piece):
                self._close()

    def _blocks(self, part: memoryview) -> None:
        i = 0
        if self.block:
            i = min(V2_BLOCK_SIZE - len(self.block), len(part))
            self.block += part[:i]
            if len(self.block) == V2_BLOCK_SIZE:
                self.leaves.append(hashlib.sha256(self.block).digest())
                self.block.clear()
        while len(part) - i >= V2_BLOCK_SIZE:
            self.leaves.append(hashlib.sha256(part[i : i + V2_BLOCK_SIZE]).digest())
            i += V2_BLOCK_SIZE
        self.block += part[i:]

    def _close(self) -> None:
        h, i = self.h, self.piece
        if self.sha1 is not None:
            good = self.sha1.digest() == h.v1[20 * i : 20 * i + 20]
        else:
            if self.block:
                self.leaves.append(hashlib.sha256(self.block).digest())  # BEP 52: the last block may be short
            if h.length <= h.piece_size:
                good = merkle_root(self.leaves, 1 << max(len(self.leaves) - 1, 0).bit_length()) == h.v2_root
            else:
                good = (
                    merkle_root(self.leaves, h.piece_size // V2_BLOCK_SIZE)
                    == h.v2_layer[32 * i : 32 * i + 32]
                )
        if not good:
            self.bad.append(i)
        self.piece += 1
        self._new()

    def unreadable(self, upto: int) -> None:
        """The bytes from here up to `upto` (the next piece boundary) could not be read: their pieces are
        bad, and the next update starts at `upto`."""
        while self.piece < self.stop and self.piece * self.h.piece_size < upto:
            self.bad.append(self.piece)
            self.piece += 1
        self._new()

    def finish(self, size: int) -> None:
        if self.piece < self.stop:
            self.absent_from = self.piece
            self.bad.extend(range(self.piece, self.stop))

    def result(self) -> PieceResult:
        return PieceResult(self.h, sorted(self.bad), self.absent_from)


def read_pass(
    path: Path, consumers: Sequence[Consumer], on_bytes: Callable[[int], None]
) -> tuple[int, str | None]:
    """Read `path` once from byte 0, handing every chunk in order to each consumer (on its own thread when
    there are several); then call finish(end). Returns (bytes read, read error or None)."""
    threads, queues, errors = [], [], []
    if len(consumers) > 1:
        for consumer in consumers:
            q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
            t = threading.Thread(target=_drain, args=(q, consumer, errors), daemon=True)
            t.start()
            threads.append(t)
            queues.append(q)
    offset, problem = 0, None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while not errors:
                try:
                    data = os.pread(fd, READ_CHUNK, offset)
                except OSError as e:
                    problem = f"read error at byte {offset}: {e.strerror}"
                    break
                if not data:
                    break
                if queues:
                    for q in queues:
                        q.put((offset, data))
                else:
                    consumers[0].update(offset, data)
                offset += len(data)
                on_bytes(len(data))
        finally:
            os.close(fd)
    finally:
        for q in queues:
            q.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for consumer in consumers:
        consumer.finish(offset)
    return offset, problem


def check_pieces(
    path: Path, hashes: PieceHashes, threads: int, on_bytes: Callable[[int], None]
) -> tuple[PieceResult, int, tuple[int, str] | None]:
    """Every piece of `path`, checked by `threads` workers (pieces are independent, unlike a whole-file hash)
    that each take the next span of SPAN bytes as they finish one: split in fixed halves, one slow moment
    of one core (another process, an interrupt) delayed the whole check. Returns (result, bytes read, the
    first read error as (offset, message), or None); a piece that cannot be read is a bad piece, and the
    check goes on at the next piece."""
    per = max(1, SPAN // hashes.piece_size)
    runs = [Pieces(hashes, first, min(first + per, hashes.count)) for first in range(0, hashes.count, per)]
    buffers: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(min(threads, len(runs))):
        buffers.put(_page_aligned(min(READ_CHUNK, max(hashes.length, 1))))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

        def check_run(pieces: Pieces) -> tuple[int, tuple[int, str] | None]:
            buffer = buffers.get()
            try:
                return _read_run(fd, pieces, buffer, on_bytes)
            finally:
                buffers.put(buffer)

        outcome = map_on_threads(check_run, runs, threads)
    finally:
        os.close(fd)
    absent = [pieces.absent_from for pieces in runs if pieces.absent_from is not None]
    merged = PieceResult(hashes, sorted(i for pieces in runs for i in pieces.bad), min(absent, default=None))
    problems = [problem for _, problem in outcome if problem]
    return merged, sum(read for read, _ in outcome), problems[0] if problems else None


def _read_run(
    fd: int, pieces: Pieces, buffer: memoryview, on_bytes: Callable[[int], None]
) -> tuple[int, tuple[int, str] | None]:
    """Feed the bytes of `pieces`' run to it through `buffer` (reused: a fresh bytes object per read cost its
    page faults every time, 0.06 s of system CPU per 2 GB checked), reporting them in READ_CHUNK steps.
    A read error makes the piece it falls in bad (a read that failed across pieces is retried one piece at
    a time, to find which), and the read goes on at the next piece; at the end of the file the pieces left
    are absent. Returns (bytes read, the first read error or None)."""
    size = pieces.h.piece_size
    offset, end = pieces.piece * size, min(pieces.stop * size, pieces.h.length)
    read, unreported, problem = 0, 0, None
    narrow = False  # after a read that failed across pieces: read to the next piece boundary only
    while offset < end:
        boundary = min((offset // size + 1) * size, end)
        want = min(buffer.nbytes, (boundary if narrow else end) - offset)
        try:
            n = os.preadv(fd, [buffer[:want]], offset)
        except OSError as e:
            if not narrow and offset + want > boundary:
                narrow = True  # which piece is it? this one alone, then the next
                continue
            problem = problem or (offset, f"read error at byte {offset}: {e.strerror}")
            pieces.unreadable(boundary)
            offset = boundary
            continue
        narrow = False
        if not n:
            break
        pieces.update(offset, buffer[:n])  # used before the next read: Pieces keeps no view
        offset += n
        read += n
        unreported += n
        if unreported >= READ_CHUNK:
            on_bytes(unreported)
            unreported = 0
    if unreported:
        on_bytes(unreported)
    pieces.finish(offset)
    return read, problem


def _page_aligned(size: int) -> memoryview:
    """A read buffer starting on a page boundary (an anonymous mapping). The kernel copied page-cache pages
    into a bytearray's buffer, 16 bytes past a page boundary where malloc puts a large block, at under half
    the speed (here 0.15 s of system CPU per GiB instead of 0.06 s, in every new process: a command's check
    of 2 GB was 0.1 s slower than the same check in a process whose heap happened to align it)."""
    return memoryview(mmap.mmap(-1, size))


def _drain(q: queue.Queue, consumer: Consumer, errors: list[BaseException]) -> None:
    while (item := q.get()) is not None:
        if not errors:
            try:
                consumer.update(*item)
            except BaseException as e:  # a bug, not damage: re-raised in the reading thread
                errors.append(e)
