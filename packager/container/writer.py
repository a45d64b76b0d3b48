"""The shard writer: members in plan order as a tar stream cut into independent zstd frames, then the
member manifest and the seek table, in one pass over the input bytes (see the package docstring).

One shard is written by a pipeline of threads that hand each other pooled buffers (pipeline.py), never
copies of the bytes:

    calling thread: asks for each file's bytes (O_DIRECT where possible), READ_CHUNK at a time, two reads in
        flight on two reading threads (from one file or the next), and hands them on in order
        input buffers  ─┬─▶ compress ─▶ output buffers
                        └─▶ digest (each member's xxh3-128 and SHA-256)
        output buffers ─┬─▶ write (pwritev, O_DIRECT where possible)
                        └─▶ one thread per sink (the shard's SHA-256, the v1 pieces' SHA-1, the v2 tree)

Every heavy step (read, zstd through its cffi binding, hashlib, xxhash, pwritev) releases the GIL, so the
threads share the cores: the profile of 1 GB of incompressible members on this 2-core machine, per thread
in CPU seconds, was main 0.59 (reading), compress 0.49, digest 0.65, SHA-256 0.59, SHA-1 0.56, write 0.05;
with the disk and the cores both busy to the end (the figures come back with `profile=`). The previous
writer, four threads over small queues of fresh bytes objects, spent 3.5 s of CPU for the same gigabyte
(1.3 s on its calling thread: compressobj's copies under the GIL, allocation and hand-offs) where this one
spends 2.9 s, and waited 0.45 s on its hashing queue.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import math
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from packager.errors import ShardBuildError
from packager.fsutil import read_rest, set_direct
from packager.hashing import MemberDigest

from .format import (
    DEFAULT_FRAME_SIZE,
    MAX_FRAME_SIZE,
    RESERVED_MANIFEST_NAME,
    RESERVED_PREFIX,
    TAR_BLOCK,
    USTAR_MTIME_MAX,
    MemberRecord,
    manifest_line,
    tar_header,
    unsafe_name_reason,
)
from .pipeline import PAGE, WAKE, Buffer, BufferPool, Failure, Stage
from .resume import Checkpoints, Resume, WriterCheckpoint, members_key_update
from .stages import BEGIN, END, Compress, Marks, MemberDigests, Output, feed_sink, release

READ_CHUNK = 8 * 2**20  # bytes per read of an input file
# Reads of input files in flight at once (from one file or the next ones), each on a reading thread. Measured
# here reading 2 GB cold with O_DIRECT: 8 MiB reads one at a time 570 MB/s, two at a time 1076 MB/s, four
# 852 MB/s; one at a time, the writer read 1 GB in 2.6 s of its 3.1 s (the disk waited between requests).
READS_IN_FLIGHT = 2
OUT_CHUNK = 2**20  # bytes per output buffer (a multiple of the page size, for O_DIRECT); pwritev batches them
_IN_BUFFERS = 8  # > READS_IN_FLIGHT + 1 (the reads waiting to be handed on), or the reader could starve
_OUT_BUFFERS = 24
PREFETCH_BYTES = 8 * 2**20
DROP_BEHIND_BYTES = 2**20
DIRECT_READS = True  # O_DIRECT where the file system takes it (see _ShardPipeline._read, stages.Output)
DIRECT_WRITES = True


@dataclass(frozen=True)
class MemberSource:
    """One catalog file to store: where it is on disk and what the manifest says about it."""

    id: str
    path: str
    kind: str
    popularity: float
    size: int
    source: Path
    mtime: int


@dataclass(frozen=True)
class ShardWritten:
    records: list[MemberRecord]
    frames: int  # zstd frames holding data, not counting the seek table
    compressed_size: int  # every byte written, seek table included: the size of the shard file
    uncompressed_size: int  # the tar stream, end-of-archive blocks included


class ResumeMismatch(ValueError):
    """The members or settings given do not match the checkpoint being resumed; rebuild from 0."""


class _Source:
    """One member's file, open while its reads are in flight: `direct` says whether they use O_DIRECT."""

    __slots__ = ("m", "f", "fd", "direct", "cached", "fail")

    def __init__(self, m: MemberSource, f: io.FileIO, direct: bool, cached: bool, fail: Callable):
        self.m, self.f, self.fd, self.direct, self.cached, self.fail = m, f, f.fileno(), direct, cached, fail


class _Chunk:
    """One read in flight: `want` bytes of `source` at `pos` into `buf`."""

    __slots__ = ("source", "buf", "pos", "want", "future")

    def __init__(self, source: _Source, buf: Buffer, pos: int, want: int, future: Future):
        self.source, self.buf, self.pos, self.want, self.future = source, buf, pos, want, future


class _ShardPipeline:
    """The threads of one shard and the buffers between them; see the module docstring."""

    def __init__(
        self,
        out: BinaryIO,
        level: int,
        limit: int,
        sinks: Sequence[Callable[[memoryview], None]],
        profile: dict | None,
        checkpoints: Checkpoints | None,
        resume: Resume | None,
    ):
        self.limit = limit
        self.failure = Failure()
        self.profile = profile
        stats = None if profile is None else profile.setdefault("threads", {})
        self._main_stats: dict[str, float] | None = None if stats is None else stats.setdefault("main", {})
        compress_stats = None if stats is None else stats.setdefault("compress", {})
        self.in_pool = BufferPool(_IN_BUFFERS, max(READ_CHUNK, 1), self._main_stats, "input")
        self.out_pool = BufferPool(_OUT_BUFFERS, OUT_CHUNK, compress_stats, "output")
        cp = resume.checkpoint if resume else None
        self.digests_list: list[MemberDigest] = list(cp.digests) if cp else []
        self.marks = Marks(checkpoints, self.digests_list, self.failure) if checkpoints else None
        self.output = Output(out, DIRECT_WRITES, self.marks, checkpoints.seal if checkpoints else None)
        if not self.output.has_fd:
            self.marks = self.output._marks = None  # checkpoints need a file to fsync
        if resume is not None and (not self.output.has_fd or self.output.base):
            raise ValueError("a shard is resumed into its .part, open at its first byte")
        self._stages: list[Stage] = []
        self._outputs: list[Stage] = []

        def stage(name: str, handle: Callable[[Any], None], batch: int = 1) -> Stage:
            s = Stage(name, handle, self.failure, release, stats, batch=batch)
            self._stages.append(s)
            return s

        snapshots = checkpoints.snapshots if checkpoints else [None] * len(sinks)
        for i, (sink, snap) in enumerate(zip(sinks, snapshots, strict=True)):
            self._outputs.append(stage(f"sink{i}", functools.partial(feed_sink, sink, snap, i, self.marks)))
        self._outputs.append(stage("write", self.output.write, batch=_OUT_BUFFERS))
        self.digest_stage = stage("digest", MemberDigests(self.digests_list, self.marks).handle)
        self.member_keys: list[bytes] = []
        head = resume.head if resume else b""
        self._compress = Compress(
            level, limit, self.out_pool, self._emit, self.marks, self.member_keys, cp, head
        )
        self.compress_stage = stage("compress", self._compress.handle)
        # The reads in flight and, after them in order, the hand-overs that follow them (a member's padding,
        # its END): the calling thread hands each read on once it is done, in order, so that the stages see
        # the stream in order whatever the order the reads finish in.
        self._pending: deque[_Chunk | tuple[Callable[..., None], tuple]] = deque()
        self._reads_pending = 0
        self._open: list[_Source] = []
        self._readers = ThreadPoolExecutor(READS_IN_FLIGHT, thread_name_prefix="shard-read")
        self.reads_direct = False  # whether the last member was read with O_DIRECT
        # Whether the source's file system refused O_DIRECT: only then are the next member's first pages
        # asked for ahead (see _prefetch); a direct read never looks in the page cache.
        self.direct_refused = not DIRECT_READS
        self.on_progress: Callable[[int], None] | None = None
        self._reported = self._content_submitted = 0
        self.position = 0  # bytes of tar stream submitted (or, resuming, accounted for)
        self.frames = 0  # frames the submitted runs make
        self._offset = cp.offset - len(head) if cp else 0  # where the next buffer handed over starts

    def _emit(self, buf: Buffer) -> None:  # on the compressing thread
        buf.offset = self._offset
        self._offset += buf.fill
        buf.share(len(self._outputs))
        for s in self._outputs:
            s.put(buf)

    def begin_run(
        self, total: int, member: int = -1, header: int = 0, done: int = 0, submit: bool = True
    ) -> int:
        """Account for (and unless resuming past it, submit) a run of `total` bytes starting at a frame
        boundary, `done` of them already written; the index of its first frame."""
        first = self.frames
        self.frames += -(-total // self.limit)
        self.position += total
        if submit:
            self._later(self.compress_stage.put, ("run", total, member, header, done))
        return first

    def member(
        self,
        index: int,
        m: MemberSource,
        shard_name: str,
        resume: Resume | None = None,
    ):
        """Submit one member; it with its content offset and frame range. Its digest comes later.

        Resuming, a member wholly before the checkpoint is only accounted for, and the one in progress
        continues where its bytes in the .part end."""
        header = tar_header(m.path, m.size, m.mtime)
        padding = -m.size % TAR_BLOCK
        total = len(header) + m.size + padding
        offset = self.position + len(header)
        cp = resume.checkpoint if resume else None
        if cp is not None and index < cp.member:
            first = self.begin_run(total, submit=False)
            self.report(m.size)
            return (m, offset, *_content_frames(first, len(header), m.size, self.limit))
        done = cp.run_done if cp is not None and index == cp.member else 0
        if cp is not None and index == cp.member:
            self._check_resume_point(cp, header, total, resume)
        first = self.begin_run(total, index, len(header), done)
        if not done:
            self._later(self.compress_stage.put, header)
            self._later(self.digest_stage.put, BEGIN)
        else:
            self._later(self.digest_stage.put, ("begin", resume.member_hasher))
        skip = max(0, done - len(header))
        self._read(m, shard_name, skip)
        if padding:
            self._later(self.compress_stage.put, bytes(padding))
        self._later(self.digest_stage.put, END)
        return (m, offset, *_content_frames(first, len(header), m.size, self.limit))

    def _check_resume_point(self, cp: WriterCheckpoint, header: bytes, total: int, resume: Resume) -> None:
        key = self.member_keys[cp.member if cp.run_done else cp.member - 1]
        if key != cp.members_key:
            raise ResumeMismatch("the members before the checkpoint are not the ones written")
        if self.position + cp.run_done != cp.position or self.frames + cp.run_done // self.limit != len(
            cp.entries
        ):
            raise ResumeMismatch("the checkpoint's frames do not match the members' sizes")
        if cp.run_done and (resume.member_header != header or cp.run_done >= total):
            raise ResumeMismatch("the member in progress is not the one in the .part")

    def _read(self, m: MemberSource, shard_name: str, start: int = 0) -> None:
        """Ask for the file's bytes from `start` on, READ_CHUNK at a time, on the reading threads; each read
        is handed on in order as it is done (_hand_on), and the file checked to be exactly `m.size` bytes.

        With O_DIRECT where the file system takes it: measured reading this corpus cold, 1 GB through the
        page cache cost 0.36-0.59 s of CPU (copying, filling and dropping the cache), directly 0.11 s, at the
        same speed; the archive is read once, so its pages in the cache would only push out others.
        """
        fail = functools.partial(_member_error, m, shard_name)
        f = _open_source(m, shard_name)
        try:
            fd = f.fileno()
            cached = _in_page_cache(fd, start, self.in_pool)
            direct = READ_CHUNK % PAGE == 0 and start % PAGE == 0 and DIRECT_READS and not cached
            if direct and not set_direct(fd, True):
                direct, self.direct_refused = False, True
        except BaseException:
            f.close()
            raise
        self.reads_direct = direct
        source = _Source(m, f, direct, cached, fail)
        self._open.append(source)
        if start:
            self.report(start)
        pos, size = start, m.size
        while pos < size:
            buf = self.in_pool.get(self.tick)
            want = min(READ_CHUNK, size - pos, buf.capacity)
            # Whole pages at page offsets for O_DIRECT; the file's end makes the last read short.
            view = buf.view[: -(-want // PAGE) * PAGE] if direct else buf.view[:want]
            try:
                future = self._readers.submit(os.preadv, source.fd, [view], pos)
            except BaseException:
                buf.share(0)
                raise
            self._pending.append(_Chunk(source, buf, pos, want, future))
            self._reads_pending += 1
            pos += want
            self._hand_on(READS_IN_FLIGHT)
        self._later(self._close_source, source)

    def _later(self, action: Callable[..., None], *args) -> None:
        """`action(*args)` once every read asked for before it has been handed on."""
        if self._pending:
            self._pending.append((action, args))
        else:
            action(*args)

    def _hand_on(self, keep: int) -> None:
        """Hand on the reads done, and what follows them, in order, until at most `keep` reads are pending
        (waiting for the oldest if need be, reporting progress meanwhile)."""
        pending = self._pending
        while pending:
            head = pending[0]
            if type(head) is tuple:
                pending.popleft()
                head[0](*head[1])
                continue
            if self._reads_pending <= keep and not head.future.done():
                return
            pending.popleft()
            self._reads_pending -= 1
            self._deliver(head)

    def _deliver(self, chunk: _Chunk) -> None:
        source, buf, pos, want = chunk.source, chunk.buf, chunk.pos, chunk.want
        size, fail, stats = source.m.size, source.fail, self._main_stats
        t = time.perf_counter() if stats is not None else 0.0
        try:
            while True:
                try:
                    n = chunk.future.result(WAKE)
                    break
                except TimeoutError:
                    self.tick()
            if stats is not None:
                stats["reading"] = stats.get("reading", 0.0) + time.perf_counter() - t
            if n > want and pos + want == size:
                raise fail(f"expected {size} bytes, found more (the file grew while it was read)")
            n = min(n, want)
            if not n:
                raise fail(f"expected {size} bytes, found {pos} (it shrank while it was read)")
            if n < want:  # short, mid-file: the rest of this read again, unaligned, and no more O_DIRECT
                source.direct = False
                n = read_rest(source.fd, buf.view, pos, n, want)
                if n < want:
                    raise fail(f"expected {size} bytes, found {pos + n} (it shrank while it was read)")
        except OSError as exc:
            buf.share(0)
            raise fail(f"unreadable: {exc.strerror}") from None
        except BaseException:
            buf.share(0)
            raise
        buf.fill = n
        self._content_submitted += n
        buf.share(2)
        self.compress_stage.put(buf)
        self.digest_stage.put(buf)
        self.failure.check()
        self.tick()

    def _close_source(self, source: _Source) -> None:
        """After a file's last read: check it did not grow, and close it."""
        fd, size = source.fd, source.m.size
        self._open.remove(source)
        try:
            if source.direct:
                set_direct(fd, False)
            if os.pread(fd, 1, size):
                raise source.fail(f"expected {size} bytes, found more (the file grew while it was read)")
            if not source.direct and not source.cached and size >= DROP_BEHIND_BYTES:
                # The archive is read once: its pages would only push others out of the page cache (pages
                # that were cached before are someone else's, and stay).
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise source.fail(f"unreadable: {exc.strerror}") from None
        finally:
            source.f.close()

    def _abandon_reads(self) -> None:
        """After a failure: wait for the reads in flight (their buffers and descriptors are still in use),
        then free them and close the files."""
        while self._pending:
            head = self._pending.popleft()
            if type(head) is not tuple:
                head.future.exception()  # waits; the first failure is the one reported
                head.buf.share(0)
        self._reads_pending = 0
        for source in self._open:
            source.f.close()
        self._open.clear()
        self._readers.shutdown(wait=True)

    def report(self, n: int) -> None:
        """Input bytes done without compressing them (a resumed shard's prefix)."""
        if self.on_progress is not None and n:
            self.on_progress(n)

    def tick(self) -> None:
        """Report the members' bytes compressed since the last tick, in this (the calling) thread: progress
        follows the work done, not the reads, which run ahead by the input buffers."""
        done = self._compress.content_done
        if done > self._reported:
            n, self._reported = done - self._reported, done
            self.report(n)

    def digests(self) -> list[MemberDigest]:
        self._hand_on(0)
        self.compress_stage_idle()
        self.digest_stage.close(self.tick)
        self.failure.check()
        return self.digests_list

    def compress_stage_idle(self) -> None:
        """Wait (ticking) until the compressing stage has taken every member's bytes."""
        while self._compress.content_done < self._content_submitted and self.failure.error is None:
            time.sleep(WAKE / 4)
            self.tick()
        self.tick()

    def write(self, data: bytes) -> None:
        self.compress_stage.put(data)

    def finish(self) -> tuple[int, list[tuple[int, int, int]]]:
        """Wait for every byte to be written; (shard size, frame entries)."""
        length: list[int] = []
        self.compress_stage.put(("finish", length))
        self.compress_stage.close(self.tick)
        self.tick()
        self.close()
        self.failure.check()
        self.output.close(length[0])
        return length[0], self._compress.entries

    def close(self) -> None:
        # Producers first: the compressing stage may wait for a buffer that only the output stages free.
        try:
            self._abandon_reads()
            for s in [self.compress_stage, self.digest_stage, *self._outputs]:
                s.close()
        finally:
            self.in_pool.close()
            self.out_pool.close()
            if self.profile is not None:
                self.profile["O_DIRECT"] = self.output.used_direct
                self.profile["zero_copy_zstd"] = self._compress.zero_copy


def _in_page_cache(fd: int, offset: int, pool: BufferPool) -> bool:
    """Whether the file's page at `offset` is cached (a file just written, a second build): then the page
    cache is faster than the disk O_DIRECT would go to. RWF_NOWAIT reads only what is cached."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return False
    buf = pool.get()
    try:
        return os.preadv(fd, [buf.view[:PAGE]], offset, nowait) > 0
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: the file system cannot tell
        return False
    finally:
        buf.share(0)


def _member_error(m: MemberSource, shard_name: str, reason: str) -> ShardBuildError:
    return ShardBuildError(shard_name, f"member {m.id}: {reason}", str(m.source))


def _check_member(m: MemberSource, shard_name: str) -> None:
    fail = functools.partial(_member_error, m, shard_name)
    reason = unsafe_name_reason(m.path)
    if reason is not None:
        raise fail(f"path {m.path!r} is unsafe: {reason}")
    if m.path.split("/", 1)[0] == RESERVED_PREFIX:
        raise fail(f"path {m.path!r} is reserved for packager's own files")
    try:
        m.path.encode("utf-8")
        m.id.encode("utf-8")
    except UnicodeEncodeError:
        # The manifest is UTF-8 JSON, which cannot carry undecodable file-name bytes.
        raise fail(f"path {m.path!r} or id is not valid UTF-8") from None
    if m.size < 0:
        raise fail(f"negative size {m.size}")
    if not math.isfinite(float(m.popularity)):
        raise fail(f"popularity {m.popularity} is not a finite number")


def _open_source(m: MemberSource, shard_name: str) -> io.FileIO:
    fail = functools.partial(_member_error, m, shard_name)
    try:
        # O_NOFOLLOW: a symlink swapped in after the catalog was checked is refused, not followed.
        # O_NONBLOCK: a FIFO there is refused below, not waited on for a writer (no effect on a regular file).
        fd = os.open(m.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise fail("vanished: the file no longer exists") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise fail("is a symlink; shards store regular files only") from None
        raise fail(f"unreadable: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail("is not a regular file")
        if st.st_size != m.size:
            raise fail(f"expected {m.size} bytes, found {st.st_size} (changed since it was catalogued)")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def write_shard(
    out: BinaryIO,
    members: Iterable[MemberSource],
    *,
    level: int,
    frame_size: int = DEFAULT_FRAME_SIZE,
    manifest_mtime: int,
    sinks: Sequence[Callable[[memoryview], None]] = (),
    on_progress: Callable[[int], None] | None = None,
    shard_name: str = "",
    profile: dict | None = None,
    checkpoints: Checkpoints | None = None,
    resume: Resume | None = None,
) -> ShardWritten:
    """Write `members`, in order, as one seekable .tar.zst shard to `out`; see the module docstring.

    Every byte written to `out` is also passed, in order, to each sink (the parts of a ShardHasher, say), so
    the caller hashes the shard without reading it back. Each sink runs on a thread of its own and sees the
    bytes in order, one call at a time, as read-only views of buffers that are reused once it returns (so
    a sink must not keep them). `on_progress(n)` runs in the calling thread and reports input bytes
    compressed, at least every 0.1 s while there is work in flight (so a callback can stop the build by
    raising). Raises ShardBuildError when an input file is missing, unreadable, a symlink, or not `size`
    bytes; the partial output is then the caller's to discard. Output is byte-identical for identical
    input. With `profile` (a dict), per-thread CPU, busy and waiting times are added to it.

    With `checkpoints`, the writer's state is handed to `checkpoints.save` every so often (resume.py);
    with `resume` (a checkpoint checked against the .part that `out` is, open at byte 0), writing continues
    from that checkpoint, given the same members and the sinks restored to it, and the bytes come out as
    an uninterrupted run would have written them; ResumeMismatch if the members do not match it.
    """
    limit = frame_size - frame_size % TAR_BLOCK
    if not TAR_BLOCK <= limit <= MAX_FRAME_SIZE:
        raise ValueError(f"frame size {frame_size} is outside {TAR_BLOCK}..{MAX_FRAME_SIZE} bytes")
    if not 0 <= manifest_mtime <= USTAR_MTIME_MAX:
        raise ValueError(f"manifest mtime {manifest_mtime} does not fit a ustar header")
    pipe = _ShardPipeline(out, level, limit, sinks, profile, checkpoints, resume)
    pipe.on_progress = on_progress
    cpu0 = time.thread_time()
    try:
        placed = []
        ids: set[str] = set()
        paths: set[str] = set()
        key = hashlib.sha256()
        for index, (m, following) in enumerate(_with_next(members)):
            if following is not None and PREFETCH_BYTES and pipe.direct_refused:
                _prefetch(following)
            _check_member(m, shard_name)
            if m.id in ids or m.path in paths:
                # find() and tar extraction could then reach only one of them.
                what = f"id {m.id!r}" if m.id in ids else f"path {m.path!r}"
                raise ShardBuildError(shard_name, f"member {m.id}: duplicate {what}", str(m.source))
            ids.add(m.id)
            paths.add(m.path)
            members_key_update(key, (m.id, m.path, m.kind, _json_float(m.popularity), m.size, m.mtime))
            pipe.member_keys.append(key.digest())
            placed.append(pipe.member(index, m, shard_name, resume))
        if resume is not None and len(placed) < resume.checkpoint.member + bool(resume.checkpoint.run_done):
            raise ResumeMismatch("fewer members than the checkpoint has written")
        digests = pipe.digests()
        records = [_record(m, d, *where) for (m, *where), d in zip(placed, digests, strict=True)]
        _write_manifest(pipe, records, manifest_mtime)
        length, entries = pipe.finish()
    except BaseException as exc:
        pipe.failure.set(exc)
        pipe.close()
        raise
    finally:
        if profile is not None:
            profile["threads"]["main"]["cpu"] = time.thread_time() - cpu0
    return ShardWritten(
        records=records, frames=len(entries), compressed_size=length, uncompressed_size=pipe.position
    )


def _json_float(value: float) -> float | str:
    number = float(value)
    return number if math.isfinite(number) else repr(number)


def _with_next(items: Iterable[MemberSource]) -> Iterator[tuple[MemberSource, MemberSource | None]]:
    it = iter(items)
    current = next(it, None)
    while current is not None:
        following = next(it, None)
        yield current, following
        current = following


def _prefetch(m: MemberSource) -> None:
    """Ask the kernel to start reading the next member while this one is compressed and hashed: with cold
    caches, waiting for each file's first read cost 0.6 s of a 3.1 s build of 1 GB (bench.py build).

    Only where O_DIRECT is refused. Asked before every member, it filled the page cache with the next
    file's first 8 MB, so the cache probe found every other file cached and read it through the cache
    (copying it, and leaving its pages there), and the fadvise itself blocked the reading thread for as
    long as the disk took to queue it (0.7 s of a 1 GB build in py-spy's samples)."""
    try:
        fd = os.open(m.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return  # reported properly when the member itself is opened
    try:
        os.posix_fadvise(fd, 0, min(m.size, PREFETCH_BYTES), os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _content_frames(first: int, header: int, size: int, limit: int) -> tuple[int, int]:
    if not size:
        return (first + (header - 1) // limit,) * 2
    return first + header // limit, first + (header + size - 1) // limit


def _record(m: MemberSource, d: MemberDigest, offset: int, first: int, last: int) -> MemberRecord:
    return MemberRecord(m.id, m.path, m.kind, m.popularity, m.size, d.xxh3_128, d.sha256, offset, first, last)


def _write_manifest(pipe: _ShardPipeline, records: list[MemberRecord], mtime: int) -> None:
    body = b"".join(manifest_line(rec) for rec in records)
    header = tar_header(RESERVED_MANIFEST_NAME, len(body), mtime)
    padding = -len(body) % TAR_BLOCK
    end_of_archive = bytes(2 * TAR_BLOCK)
    pipe.begin_run(len(header) + len(body) + padding + len(end_of_archive))
    for part in (header, body, bytes(padding), end_of_archive):
        if part:
            pipe.write(part)
