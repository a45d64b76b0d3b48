"""The shard writer's stages: compressing into frames, member digests, writing, and checkpoints between them.

Each class here runs on one stage thread (pipeline.Stage) of one shard; writer.py wires them together.
A checkpoint is a `Mark` that the compressing stage places in an output buffer at a frame boundary; every
output stage records its part when it reaches that byte (a sink its hasher's state, the writer that the
bytes before it are durable), and the last part to arrive completes it (see resume.py).
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from packager.hashing import MemberDigest, MemberHasher

from .compress import FrameCompressor, Space
from .format import encode_seek_table
from .pipeline import PAGE, Buffer, BufferPool, Failure
from .resume import CHECKPOINT_SHARE, Checkpoints, PartSeal, WriterCheckpoint


class Mark:
    """One checkpoint in the making: the writer's own state at the boundary, then each stage's part."""

    __slots__ = ("offset", "position", "member", "run_done", "entries", "members_key", "states", "durable")

    def __init__(self, offset, position, member, run_done, entries, members_key, sinks: int):
        self.offset, self.position, self.member, self.run_done = offset, position, member, run_done
        self.entries, self.members_key = entries, members_key
        self.states: list[bytes | None] = [None] * sinks
        self.durable = False


class Marks:
    """Collects the parts of each checkpoint and saves a complete one, newest only, one save at a time."""

    def __init__(self, checkpoints: Checkpoints, digests: list[MemberDigest], failure: Failure):
        self.checkpoints = checkpoints
        self._digests = digests
        self._failure = failure
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._pending: list[Mark] = []
        self._saved = -1

    def new(self, *args) -> Mark:
        mark = Mark(*args, len(self.checkpoints.snapshots))
        with self._lock:
            self._pending.append(mark)
        return mark

    def sink_state(self, mark: Mark, index: int, state: bytes) -> None:
        mark.states[index] = state
        self._poll()

    def made_durable(self, mark: Mark) -> None:
        mark.durable = True
        self._poll()

    def digests_done(self) -> None:
        self._poll()

    def _poll(self) -> None:
        ready = []
        with self._lock:
            while self._pending and self._complete(self._pending[0]):
                ready.append(self._pending.pop(0))
        if ready:
            self._save(ready[-1])

    def _complete(self, mark: Mark) -> bool:
        return mark.durable and None not in mark.states and len(self._digests) >= mark.member

    def _save(self, mark: Mark) -> None:
        cp = WriterCheckpoint(
            offset=mark.offset,
            position=mark.position,
            member=mark.member,
            run_done=mark.run_done,
            entries=mark.entries,
            digests=tuple(self._digests[: mark.member]),
            members_key=mark.members_key,
            sink_states=tuple(mark.states),
        )
        with self._save_lock:
            if mark.offset <= self._saved:
                return
            try:
                self.checkpoints.save(cp)
            except BaseException as exc:  # a checkpoint that cannot be written: the disk has trouble
                self._failure.set(exc)
                raise
            self._saved = mark.offset


class Compress:
    """The compressing stage: cuts runs of tar bytes into frames of at most `limit` bytes (a run always
    starts a frame), compresses them into output buffers and hands each full buffer to `emit`.

    Items: ("run", total, member index or -1, header length), then the run's bytes (Buffers, released
    here, or bytes); ("finish", list) appends the seek table and puts the shard's size in the list.
    """

    def __init__(
        self,
        level: int,
        limit: int,
        pool: BufferPool,
        emit: Callable[[Buffer], None],
        marks: Marks | None,
        member_keys: list[bytes],
        resume: WriterCheckpoint | None = None,
        head: bytes = b"",
    ):
        self._zstd = FrameCompressor(level)
        self.limit = limit
        self._pool = pool
        self._emit = emit
        self._marks = marks
        self._member_keys = member_keys
        self.entries: list[tuple[int, int, int]] = list(resume.entries) if resume else []
        self.compressed = resume.offset if resume else 0  # bytes of output so far
        self.position = resume.position if resume else 0  # bytes of tar stream consumed
        self.content_done = 0  # bytes of members' content compressed (read by the producer's progress)
        self._run_total = self._run_left = self._frame_left = self._frame_size = 0
        self._run_member = self._run_header = -1
        self._buf = pool.get()
        if head:  # a resumed shard: its first write starts on the page before the checkpoint
            self._buf.view[: len(head)] = head
            self._buf.fill = self._buf.skip = len(head)
        self._space = self._space_of(self._buf)
        self._last_mark = (self.compressed, time.monotonic())

    @property
    def zero_copy(self) -> bool:
        return self._zstd.zero_copy

    @staticmethod
    def _space_of(buf: Buffer) -> Space:
        return (buf.address, buf.view, buf.capacity, buf.fill)

    def _advance(self, fill: int) -> Space:
        self.compressed += fill - self._buf.fill
        self._buf.fill = fill
        if fill == self._buf.capacity:
            self._emit(self._buf)
            self._buf = self._pool.get()
        return self._space_of(self._buf)

    def handle(self, item: Any) -> None:
        if type(item) is Buffer:
            try:
                self._feed(item.data)
                self.content_done += item.fill - item.skip
            finally:
                item.release()
        elif type(item) is tuple:
            if self._run_left or self._frame_left:
                raise RuntimeError("the previous run is unfinished")
            if item[0] == "run":
                _, self._run_total, self._run_member, self._run_header, done = item
                self._run_left = self._run_total - done
            else:
                item[1].append(self.finish())
        else:
            self._feed(item)

    def _feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos, end = 0, view.nbytes
        if end > self._run_left:
            raise RuntimeError(f"{end} bytes written to a run with {self._run_left} left")
        zstd = self._zstd
        while pos < end:
            if not self._frame_left:
                # The pledged size goes into the frame header (Frame_Content_Size), and zstd checks that
                # exactly that many bytes arrive.
                self._frame_size = self._frame_left = min(self.limit, self._run_left)
                zstd.begin(self._frame_size)
            take = min(self._frame_left, end - pos)
            self._space = zstd.compress(view[pos : pos + take], self._space, self._advance)
            pos += take
            self._frame_left -= take
            self._run_left -= take
            self.position += take
            if not self._frame_left:
                self._space = zstd.end(self._space, self._advance)
                # The seek table wants "the least significant 32 bits of the XXH64 digest of the uncompressed
                # data", which is exactly the zstd frame's own Content_Checksum, its last 4 bytes: taking it
                # from there saves a hash pass over every byte (the tests check it against XXH64).
                self.entries.append((zstd.produced, self._frame_size, int.from_bytes(zstd.tail, "little")))
                if self._marks is not None:
                    self._maybe_mark()

    def _maybe_mark(self) -> None:
        if self._run_member < 0:  # the manifest's run: the shard is nearly done
            return
        every = self._marks.checkpoints
        offset, when = self._last_mark
        now = time.monotonic()
        # The interval grows with the shard (a checkpoint holds every frame and member so far, so writing
        # one costs more the further it is): about 130 for a 100 GB shard, each losing at most 1/32 of it.
        interval = max(every.every_bytes, self.compressed // CHECKPOINT_SHARE)
        if self.compressed - offset < interval and now - when < every.every_seconds:
            return
        done = self._run_total - self._run_left
        if not self._run_left:
            member, done = self._run_member + 1, 0
        elif done >= self._run_header:
            member = self._run_member
        else:  # inside a long tar header: no content offset to resume the file at
            return
        mark = self._marks.new(
            self.compressed,
            self.position,
            member,
            done,
            tuple(self.entries),
            self._member_keys[self._run_member],
        )
        self._buf.marks.append((self._buf.fill, mark))
        self._last_mark = (self.compressed, now)

    def finish(self) -> int:
        """Append the seek table, hand over the last buffer; the shard's size in bytes."""
        table = memoryview(encode_seek_table(self.entries))
        pos = 0
        while pos < table.nbytes:
            buf = self._buf
            take = min(buf.capacity - buf.fill, table.nbytes - pos)
            buf.view[buf.fill : buf.fill + take] = table[pos : pos + take]
            pos += take
            self._advance(buf.fill + take)
        if self._buf.fill > self._buf.skip:
            self._emit(self._buf)
        else:
            self._buf.share(0)
        self._buf = None
        return self.compressed


class Output:
    """Where the shard's bytes go: the file's descriptor through pwritev, O_DIRECT where the file system
    takes it, else `out.write` (a file object without a descriptor, as in tests).

    O_DIRECT: measured here, 1 GiB written through the page cache and fsynced took 1.34-3.4 s and 0.74-2.8 s
    of system CPU (the page cache of this VM is dear); with O_DIRECT, 0.8-1.0 s and 0.1 s. A shard is written
    once and read by other programs later, so caching its pages only evicts more useful ones; and on two
    cores the CPU saved is the build's.
    """

    base = 0
    used_direct = False

    def __init__(self, out: BinaryIO, direct: bool, marks: Marks | None, seal: PartSeal | None = None):
        self._out = out
        self._fd: int | None = None
        self._flags: int | None = None
        self._marks = marks
        self._seal = seal
        try:
            fd = out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return
        out.flush()
        self._fd = fd
        self.base = os.lseek(fd, 0, os.SEEK_CUR)
        if self.base % PAGE == 0 and direct:
            self._direct(True)

    @property
    def has_fd(self) -> bool:
        return self._fd is not None

    def _direct(self, on: bool) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        if on:
            try:
                fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            except OSError:  # a file system without direct I/O (tmpfs, some FUSE): the page cache it is
                return
            self._flags = flags
            self.used_direct = True
        elif self._flags is not None:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags)
            self._flags = None

    def write(self, bufs: list[Buffer]) -> None:
        """Write buffers that follow each other in the file. Several at once go out in one pwritev: with
        O_DIRECT each buffer is one request to the disk, and a lone 4 MiB request at a time left the disk
        idle between them (1 GB took the writer 1.8 s, with reads going on; in one call, 1.0 s)."""
        try:
            if self._fd is None:
                for buf in bufs:
                    self._out.write(buf.data)
                return
            # A partial last block cannot go through O_DIRECT; it is the file's last write.
            if self._flags is not None and bufs[-1].fill % PAGE:
                self._direct(False)
            views = [buf.view[: buf.fill] for buf in bufs]
            offset, left = self.base + bufs[0].offset, sum(buf.fill for buf in bufs)
            if self._seal is not None:
                self._seal.before(self._fd, offset, offset + left)
            while left:
                try:
                    n = os.pwritev(self._fd, views, offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL or self._flags is None:
                        raise
                    self._direct(False)  # the file system took the flag but refuses the writes
                    continue
                offset, left = offset + n, left - n
                views = _after(views, n)
            if self._seal is not None:
                self._seal.after(self._fd)
            marked = [mark for buf in bufs for _, mark in buf.marks]
            if marked:
                os.fsync(self._fd)  # a checkpoint may only claim bytes a crash cannot take back
                for mark in marked:
                    self._marks.made_durable(mark)
        finally:
            for buf in bufs:
                buf.release()

    def close(self, length: int) -> None:
        if self._fd is not None:
            self._direct(False)
            os.lseek(self._fd, self.base + length, os.SEEK_SET)


def _after(views: list[memoryview], n: int) -> list[memoryview]:
    """What is left of `views` after their first `n` bytes were written."""
    while n and n >= views[0].nbytes:
        n -= views[0].nbytes
        views = views[1:]
    return [views[0][n:], *views[1:]] if n else views


BEGIN, END = "begin", "end"


class MemberDigests:
    """The member-hashing stage: xxh3-128 and SHA-256 of each member's content, in member order.

    Items: BEGIN (or ("begin", a MemberHasher already fed the start of a resumed member)), its content
    Buffers (released here), END."""

    def __init__(self, digests: list[MemberDigest], marks: Marks | None) -> None:
        self.digests = digests
        self._marks = marks
        self._hasher: MemberHasher | None = None

    def handle(self, item: Any) -> None:
        if type(item) is Buffer:
            try:
                self._hasher.update(item.data)
            finally:
                item.release()
        elif item is BEGIN:
            self._hasher = MemberHasher()
        elif type(item) is tuple:
            self._hasher = item[1]
        else:
            self.digests.append(self._hasher.finish())
            if self._marks is not None:
                self._marks.digests_done()


def feed_sink(
    sink: Callable[[memoryview], None],
    snapshot: Callable[[], bytes] | None,
    index: int,
    marks: Marks | None,
    buf: Buffer,
) -> None:
    """A sink's stage: the buffer's new bytes, cut at each checkpoint to take the sink's state there."""
    try:
        if not buf.marks:
            sink(buf.data)
            return
        pos = buf.skip
        for at, mark in buf.marks:
            if at > pos:
                sink(buf.view[pos:at])
                pos = at
            marks.sink_state(mark, index, snapshot())
        if buf.fill > pos:
            sink(buf.view[pos : buf.fill])
    finally:
        buf.release()


def release(item: Any) -> None:
    if type(item) is Buffer:
        item.release()
