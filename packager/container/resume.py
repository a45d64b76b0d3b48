"""Resuming a shard from its last checkpoint: what is saved, how it is stored, and how the `.part` is checked.

While a shard is written, the writer takes a checkpoint at a frame boundary every so often (every 128 MiB
of output, 1/32 of the shard so far once that is more, or 15 s, whichever comes first): the frames so far,
where the tar stream stands (which member, how far into it), the digests of the members already complete,
and each output hasher's state at exactly that byte. The checkpoint is saved (atomically, beside the
`.part`) only after the `.part` is fsynced past that byte, so it never claims bytes a crash could lose.

On restart the saved checkpoint is believed only after checks that cost little next to a rebuild:

- its own SHA-256 trailer, format version, job (shard, level, frame size, piece size, torrent format,
  mtime, zstd and packager versions) and the identity of every member up to that point;
- the `.part` is at least as long, and at every frame boundary it has what the checkpoint says: the zstd
  frame magic, the frame's content size, and its 4-byte content checksum (the seek table's entry);
- the frames of the member in progress (or else the last frame) are decompressed, which checks their
  content against zstd's own checksums, and give that member's xxh3-128 and SHA-256 so far.

Any failure and the shard is rebuilt from byte 0; nothing in a rejected checkpoint is used.

Those checks leave the inside of older frames unread, and a changed byte there (a bad sector, an edit while
the build was down) would give a shard recorded with hashes its bytes do not have: the hashes resumed are
those of the bytes the writer meant. So the whole kept prefix is also read once more, in order, while the
tail is written (PrefixCheck), and hashed in pieces against the SHA-1 the checkpoint recorded for every
finished piece and for the unfinished one: every kept byte is then the one the checkpoint's hashers saw,
which makes its running SHA-256 and member digests those of the prefix too. If a piece differs, the
writer stops and the shard is rebuilt from byte 0. SHA-1 rather than a second SHA-256: it is the hash the
torrent publishes, it names the piece that differs, and it is the cheaper of the two here (0.48 s against
0.55 s per GiB on one core).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zstandard

from packager.fsutil import read_rest, set_direct
from packager.hashing import MemberDigest, MemberHasher

from .format import MAX_FRAME_SIZE, SEEK_ENTRY, ZSTD_MAGIC, tar_member
from .pipeline import PAGE, BufferPool, Failure, Stage

# A checkpoint costs a fsync of the .part and an atomic write of the checkpoint: 0.1 ms and 0.7 ms for a
# 100 KB one on this machine's disk, so every 128 MiB costs nothing a build could measure; past 4 GB the
# interval is 1/32 of the shard so far (CHECKPOINT_SHARE), as a checkpoint grows with the shard: about 130
# of them for a 100 GB shard, a few MB each at the end. (At 1/16, a 4 GB shard killed at 75 % lost 4 % of
# it and its restart took 0.37 of a whole build, median of 3, the target being 0.40.)
CHECKPOINT_EVERY_BYTES = 128 * 2**20
CHECKPOINT_SHARE = 32
CHECKPOINT_EVERY_SECONDS = 15.0
_MAGIC = b"packager-shard-checkpoint 2\n"  # 2: the unfinished piece's SHA-1 among the states
MAX_CHECKPOINT_BYTES = 64 << 20  # far above any real one (a 100 GB shard's is a few MB)
_FRAME_HEADER_MAX = 18  # magic, descriptor, window, dictionary id, content size


class CheckpointRejected(ValueError):
    """Why a saved checkpoint or its `.part` cannot be resumed from; the shard is rebuilt from 0."""


class PrefixMismatch(CheckpointRejected):
    """The kept prefix of a `.part` is not what its checkpoint recorded (found while the tail was written)."""


@dataclass(frozen=True)
class WriterCheckpoint:
    """The writer's state at a frame boundary: `offset` bytes of shard written, `position` of tar stream."""

    offset: int
    position: int
    member: int  # index of the member whose run continues at `offset`, or of the next member to start
    run_done: int  # bytes of that member's run (tar header included) already in frames; 0 at its start
    entries: tuple[tuple[int, int, int], ...]  # (compressed, decompressed, checksum) per frame so far
    digests: tuple[MemberDigest, ...]  # of the members before `member`
    members_key: bytes  # SHA-256 over the identity of every member whose bytes are in the prefix
    sink_states: tuple[bytes, ...]  # each output hasher's state at `offset`, opaque here


@dataclass(frozen=True)
class Checkpoints:
    """How often to checkpoint, each sink's snapshot (called on that sink's thread, at the boundary, in the
    order of the sinks), and where the finished checkpoint goes (once the bytes before it are durable)."""

    save: Callable[[WriterCheckpoint], None]
    snapshots: Sequence[Callable[[], bytes]]
    every_bytes: int = CHECKPOINT_EVERY_BYTES
    every_seconds: float = CHECKPOINT_EVERY_SECONDS


@dataclass(frozen=True)
class Resume:
    """A checked checkpoint and what `check_part` read back: the page-aligned bytes just before `offset`
    (so that O_DIRECT writes can start on a page), and the member in progress, hashed so far."""

    checkpoint: WriterCheckpoint
    head: bytes
    member_hasher: MemberHasher | None
    member_header: bytes | None


# --- the checkpoint file ----------------------------------------------------------------------------------


def members_key_update(h: Any, fields: Sequence[object]) -> None:
    """Fold one member's identity (everything its bytes in the shard depend on) into the running key."""
    h.update(json.dumps(list(fields), ensure_ascii=False).encode() + b"\n")


def encode_checkpoint(job: str, cp: WriterCheckpoint) -> bytes:
    """The checkpoint file: a magic line, one JSON document, and the SHA-256 of both."""
    doc = {
        "job": job,
        "offset": cp.offset,
        "position": cp.position,
        "member": cp.member,
        "run_done": cp.run_done,
        "entries": _b64(b"".join(SEEK_ENTRY.pack(*e) for e in cp.entries)),
        "digests": _b64(b"".join(bytes.fromhex(d.sha256) + bytes.fromhex(d.xxh3_128) for d in cp.digests)),
        "sizes": [d.size for d in cp.digests],
        "members_key": cp.members_key.hex(),
        "sink_states": [_b64(s) for s in cp.sink_states],
    }
    body = _MAGIC + json.dumps(doc, separators=(",", ":")).encode()
    return body + hashlib.sha256(body).digest()


def decode_checkpoint(data: bytes, job: str) -> WriterCheckpoint:
    """The checkpoint in `data` if it is whole and is for `job`; CheckpointRejected otherwise."""
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointRejected(f"more than {MAX_CHECKPOINT_BYTES:,} bytes: too big for a checkpoint")
    body, trailer = data[:-32], data[-32:]
    if not body.startswith(_MAGIC) or hashlib.sha256(body).digest() != trailer:
        raise CheckpointRejected("not a checkpoint, or damaged (its checksum does not match)")
    try:
        doc = json.loads(body[len(_MAGIC) :])
        if not isinstance(doc, dict) or doc.get("job") != job:
            raise CheckpointRejected("written for another build of this shard (settings or versions differ)")
        offset, position, member, run_done = _counts(doc, "offset", "position", "member", "run_done")
        raw_entries = _unb64(doc["entries"])
        raw_digests = _unb64(doc["digests"])
        sizes = doc["sizes"]
        if len(raw_entries) % SEEK_ENTRY.size or len(raw_digests) != 48 * member or len(sizes) != member:
            raise CheckpointRejected("its tables have the wrong lengths")
        if not all(type(s) is int and s >= 0 for s in sizes):
            raise CheckpointRejected("a member size is not a count")
        entries = tuple(SEEK_ENTRY.iter_unpack(raw_entries))
        digests = tuple(
            MemberDigest(
                size, raw_digests[48 * i + 32 : 48 * i + 48].hex(), raw_digests[48 * i : 48 * i + 32].hex()
            )
            for i, size in enumerate(sizes)
        )
        key = bytes.fromhex(doc["members_key"])
        states = tuple(_unb64(s) for s in doc["sink_states"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointRejected):
            raise
        raise CheckpointRejected(f"malformed: {exc}") from None
    if sum(e[0] for e in entries) != offset or sum(e[1] for e in entries) != position:
        raise CheckpointRejected("its frames do not add up to its offsets")
    if any(not 0 < e[1] <= MAX_FRAME_SIZE or e[0] <= 0 for e in entries) or len(key) != 32:
        raise CheckpointRejected("a frame entry or the members key is out of range")
    return WriterCheckpoint(offset, position, member, run_done, entries, digests, key, states)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text, validate=True)


def _counts(doc: dict, *keys: str) -> list[int]:
    values = [doc[key] for key in keys]
    for key, value in zip(keys, values, strict=True):
        if type(value) is not int or value < 0:
            raise CheckpointRejected(f"{key} is not a count")
    return values


# --- the .part against its checkpoint ---------------------------------------------------------------------


def check_part(fd: int, cp: WriterCheckpoint, limit: int, page: int = 4096) -> Resume:
    """Check the `.part` open at `fd` against `cp`, written with frames of `limit` bytes (see the module
    docstring); what resuming needs."""
    size = os.fstat(fd).st_size
    if size < cp.offset:
        raise CheckpointRejected(f"the .part has {size} bytes, fewer than the {cp.offset} checkpointed")
    starts = []
    offset = 0
    for csize, _, _ in cp.entries:  # every boundary's page asked for at once: the disk reads them in parallel
        os.posix_fadvise(fd, max(0, offset - 4), 4 + _FRAME_HEADER_MAX, os.POSIX_FADV_WILLNEED)
        offset += csize
    offset = 0
    for index, (csize, dsize, checksum) in enumerate(cp.entries):
        _check_boundary(fd, index, offset, csize, dsize, checksum)
        starts.append(offset)
        offset += csize
    hasher, header = None, None
    if cp.entries:
        # The member in progress (its frames from its first), else the last frame: decompressed in full.
        first = len(cp.entries) - 1
        if cp.run_done:
            if cp.run_done % limit:
                raise CheckpointRejected("the member in progress does not end on a frame boundary")
            first = len(cp.entries) - cp.run_done // limit
            if first < 0:
                raise CheckpointRejected("the member in progress starts before the first frame")
        hasher, header = _rehash(fd, cp, starts, first)
    head_start = cp.offset - cp.offset % page
    head = os.pread(fd, cp.offset - head_start, head_start)
    return Resume(cp, head, hasher if cp.run_done else None, header if cp.run_done else None)


def _check_boundary(fd: int, index: int, offset: int, csize: int, dsize: int, checksum: int) -> None:
    if csize < 4 + 4:
        raise CheckpointRejected(f"frame {index}: {csize} bytes cannot be a zstd frame with a checksum")
    tail = os.pread(fd, 4, offset + csize - 4)
    head = os.pread(fd, min(_FRAME_HEADER_MAX, csize), offset)
    if len(tail) != 4 or int.from_bytes(tail, "little") != checksum:
        raise CheckpointRejected(f"frame {index} (byte {offset}): its checksum is not the checkpoint's")
    if head[:4] != ZSTD_MAGIC.to_bytes(4, "little"):
        raise CheckpointRejected(f"frame {index} (byte {offset}): no zstd frame starts there")
    try:
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError:
        raise CheckpointRejected(f"frame {index} (byte {offset}): its header is damaged") from None
    if params.content_size != dsize or not params.has_checksum:
        raise CheckpointRejected(f"frame {index} (byte {offset}): not the {dsize}-byte frame checkpointed")


def _rehash(fd: int, cp: WriterCheckpoint, starts: list[int], first: int) -> tuple[MemberHasher, bytes]:
    """Decompress frames `first`.. of the prefix (zstd checks each against its checksum); the member in
    progress's content hashed so far, and its tar header."""
    dctx = zstandard.ZstdDecompressor()
    hasher, header, skip = MemberHasher(), b"", 0
    for index in range(first, len(cp.entries)):
        csize, dsize, _ = cp.entries[index]
        frame = os.pread(fd, csize, starts[index])
        try:
            data = dctx.decompress(frame, max_output_size=dsize)
        except zstandard.ZstdError as exc:
            raise CheckpointRejected(f"frame {index} (byte {starts[index]}): {exc}") from None
        if len(data) != dsize:
            raise CheckpointRejected(f"frame {index} (byte {starts[index]}): {len(data)} bytes, not {dsize}")
        view = memoryview(data)
        if index == first and cp.run_done:
            member = tar_member(data)
            if member is None or member.header_size > cp.run_done:
                raise CheckpointRejected(f"frame {index}: the member in progress has no tar header there")
            header, skip = bytes(view[: member.header_size]), member.header_size
        hasher.update(view[skip:])
        skip = 0
    return hasher, header


def rehash_tail(fd: int, start: int, end: int, sinks: Sequence[Callable[[memoryview], None]]) -> None:
    """Feed the `.part`'s bytes [start, end) to `sinks` (the partial piece that piece hashers redo)."""
    pos = start
    while pos < end:
        data = os.pread(fd, min(16 * 2**20, end - pos), pos)
        if not data:
            raise CheckpointRejected(f"the .part ends at byte {pos}, before {end}")
        for sink in sinks:
            sink(memoryview(data))
        pos += len(data)


# --- the kept prefix read again, beside the writer -------------------------------------------------------

PREFIX_READ = 8 * 2**20  # bytes per read of the prefix (O_DIRECT: one request to the disk each)
PREFIX_READS_IN_FLIGHT = 2  # the disk reads two requests at once about twice as fast as one (writer.py)
_PREFIX_BUFFERS = PREFIX_READS_IN_FLIGHT + 3  # the reads, one waiting to be hashed, one being hashed


class PrefixCheck:
    """Read the first `end` bytes of the `.part` open at `fd` (its own descriptor, closed here) once, in
    order, feeding them to `update` then calling `finish()`: on reading threads and a hashing thread, so
    that the check runs beside the writer. `failure()` says, without waiting, why it failed (None while
    it has not); `wait()` waits for the end and says the same."""

    def __init__(self, fd: int, end: int, update: Callable[[memoryview], None], finish: Callable[[], None]):
        self._fd, self._end = fd, end
        self._finish = finish
        self._stop = threading.Event()
        self._failure = Failure()
        self._pool = BufferPool(_PREFIX_BUFFERS, PREFIX_READ)
        self._hashing = Stage("prefix-check", lambda buf: _fed(update, buf), self._failure, _release)
        self._thread = threading.Thread(target=self._read, name="shard-prefix-read", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fd, end = self._fd, self._end
        readers = ThreadPoolExecutor(PREFIX_READS_IN_FLIGHT, thread_name_prefix="shard-prefix-read")
        pending: deque = deque()
        try:
            direct = set_direct(fd)  # a read-once stream: nothing for the page cache to keep
            asked = done = 0
            while done < end and not self._stop.is_set() and self._failure.error is None:
                while asked < end and len(pending) < PREFIX_READS_IN_FLIGHT:
                    buf = self._pool.get()
                    want = min(PREFIX_READ, end - asked)
                    # O_DIRECT reads whole pages; the last one may reach past `end`, into the tail.
                    view = buf.view[: -(-want // PAGE) * PAGE if direct else want]
                    pending.append((readers.submit(os.preadv, fd, [view], asked), buf, asked, want))
                    asked += want
                future, buf, pos, want = pending.popleft()
                try:
                    n = future.result()
                    if n < want:  # short: the rest read again, unaligned
                        direct, n = False, read_rest(fd, buf.view, pos, n, want)
                except BaseException:
                    buf.share(0)
                    raise
                if n < want:
                    buf.share(0)
                    raise CheckpointRejected(f"the .part ends at byte {pos + n:,}, before {end:,}")
                buf.fill = min(n, want)
                done += buf.fill
                buf.share(1)
                self._hashing.put(buf)
            self._hashing.close()
            if done == end and self._failure.error is None and not self._stop.is_set():
                self._finish()
        except BaseException as exc:  # noqa: BLE001 - reported through failure()
            self._failure.set(exc)
        finally:
            for future, buf, _, _ in pending:
                future.exception()  # the read may still be filling the buffer
                buf.share(0)
            readers.shutdown(wait=True)
            self._hashing.close()
            os.close(fd)
            self._pool.close()

    def failure(self) -> str | None:
        error = self._failure.error
        if error is None:
            return None
        if isinstance(error, CheckpointRejected):
            return str(error)
        if isinstance(error, OSError):
            return f"the .part could not be read again: {error.strerror or error}"
        return f"the .part is not what its checkpoint recorded: {error}"

    def wait(self) -> str | None:
        self._thread.join()
        return self.failure()

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


def _fed(update: Callable[[memoryview], None], buf) -> None:
    try:
        update(buf.data)
    finally:
        buf.release()


def _release(buf) -> None:
    buf.release()


__all__ = [
    "CHECKPOINT_EVERY_BYTES",
    "CheckpointRejected",
    "Checkpoints",
    "PrefixCheck",
    "PrefixMismatch",
    "Resume",
    "WriterCheckpoint",
    "check_part",
    "decode_checkpoint",
    "encode_checkpoint",
    "members_key_update",
    "rehash_tail",
]
