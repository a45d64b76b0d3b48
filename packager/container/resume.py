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

Those checks leave the inside of older frames unread, and a changed byte there (an edit while the build
was down, a restore from an older backup) would give a shard recorded with hashes its bytes do not have:
the hashes resumed are those of the bytes the writer meant. Two ways to know the kept prefix is those bytes:

- **The seal** (``<name>.tar.zst.part.seal``, PartSeal): after every write to the `.part` (and after a
  restart's truncation), the writer records the `.part`'s fstat identity (device, inode, size, mtime and
  ctime in ns) in a fixed-size sidecar, rewritten in place with one pwrite (magic, version, fields,
  SHA-256). On restart, before anything writes the `.part`, a whole seal equal to its fstat says that
  nothing has written, truncated, chmod'ed, renamed or replaced it since its writer's last write: the ctime
  changes with every one of those and cannot be set back from user space. The prefix is then not read
  again. No fsync: after a killed process the page cache keeps the seal; after a power cut it may be stale
  (then it mismatches) or torn (its SHA-256 fails), and the full check below runs.
- **The write in flight.** A write stamps the `.part`'s mtime and ctime as it starts, and with O_DIRECT
  the writer spends much of a build inside one: a kill then lands mid-write more often than not (in
  bench.py resume, most of the time), and a seal recorded only after each write would never match. So
  just before each write the seal is rewritten too, with the identity so far, the clocks (coarse and
  fine) and the bytes about to be written; the seal then also vouches for a `.part` that only that write
  can have changed: the same inode, its size within that write, mtime equal to ctime, stamped between the
  coarse clock and FLIGHT_NS (10 ms) after the fine one. An edit in those 10 ms after the write began,
  after a kill, is the one change that would pass unseen.
- **The full check** (PrefixCheck), whenever the seal is missing, damaged, not a regular file, of another
  inode or any field differs (or `build --check-kept` asks): the whole kept prefix is read once more, in
  order, while the tail is written, and hashed in pieces against the SHA-1 the checkpoint recorded for
  every finished piece and for the unfinished one. Every kept byte is then the one the checkpoint's
  hashers saw, which makes its running SHA-256 and member digests those of the prefix too. If a piece
  differs, the writer stops and the shard is rebuilt from byte 0. SHA-1 rather than a second SHA-256: it
  is the hash the torrent publishes, it names the piece that differs, and it is the cheaper of the two here
  (0.48 s against 0.55 s per GiB on one core). Until that check has passed the writer does not seal: a
  restart killed while checking leaves no seal, so the next restart checks again rather than trusting
  bytes nobody has read.

What the seal guards against: accidents while the build is down (an edit, a truncation, a copy or a
restore put in its place, another process writing to it). Not against a forger with write access, who
can forge the checkpoint too (its trailer is an unkeyed SHA-256); nor against bit rot, which is no more
covered than in an uninterrupted build's shard (never read back either): `packager verify` covers both. It
trusts the file system's ctime: a file system that keeps timestamps in whole milliseconds or coarser (FAT,
exFAT, HFS+, ext3's small inodes; a ctime whose nanoseconds are a whole number of milliseconds, which
happens by chance once in 10^6 elsewhere) is not trusted, and the prefix is read again. Kernels before
6.13 stamp times from a clock that ticks every 1-10 ms, so a write in the same tick as the writer's last
one, not changing the size, would pass unseen: a window of one tick after a kill, while nothing else
should be writing the `.part` at all. (Since 6.13, multigrain timestamps: a change after an fstat, which
the writer always makes, gets a ctime of its own, fine-grained if the coarse clock has not moved on; two
writes 1 us apart get different ctimes here, on ext4 and tmpfs, kernel 6.18.) Stepping the system clock
back could, in principle, give a later change the same ctime to the nanosecond.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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
    order of the sinks), where the finished checkpoint goes (once the bytes before it are durable), and
    the seal to update after every write."""

    save: Callable[[WriterCheckpoint], None]
    snapshots: Sequence[Callable[[], bytes]]
    every_bytes: int = CHECKPOINT_EVERY_BYTES
    every_seconds: float = CHECKPOINT_EVERY_SECONDS
    seal: PartSeal | None = None


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


# --- the seal: the .part's identity as its writer left it ------------------------------------------------

# magic, version; the .part's st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns; then, while a write is in
# flight, the clock as it started (coarse and fine, ns) and the bytes it writes (end 0: none); its SHA-256.
_SEAL = struct.Struct("<8sIQQQqqqqQQ")
_SEAL_MAGIC = b"pkgseal\n"
_SEAL_VERSION = 1
SEAL_BYTES = _SEAL.size + 32
_COARSE_NS = 10**6  # a ctime in whole milliseconds: a file system too coarse to tell two writes apart
# A write stamps the .part's mtime and ctime once, as it starts, from the kernel's coarse clock (a tick
# behind, 4 ms here) or a fine one: measured here, 0 to 4.6 ms after CLOCK_REALTIME_COARSE and at most
# 8 us after CLOCK_REALTIME read just before it. FLIGHT_NS bounds that, with room for a busy machine.
FLIGHT_NS = 10_000_000
_CLOCK_REALTIME_COARSE = 5  # <linux/time.h>; Python's time module does not name it

UNCHANGED = "unchanged since the build stopped"
UNCHANGED_BUT_LAST_WRITE = "unchanged since the build stopped, but for the write it stopped in"


class SealVerdict(NamedTuple):
    """Whether a seal vouches for the `.part` as its writer left it (`intact`), and why, as words that follow
    "the kept bytes" in the build's resume line."""

    intact: bool
    why: str


def encode_seal(st: Any, flight: tuple[int, int, int, int] = (0, 0, 0, 0)) -> bytes:
    """The seal of a `.part` whose fstat is `st`, with the write in flight, if any: (coarse clock, fine
    clock, first byte, end)."""
    fields = _SEAL.pack(
        _SEAL_MAGIC,
        _SEAL_VERSION,
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        *flight,
    )
    return fields + hashlib.sha256(fields).digest()


def seal_verdict(data: bytes | None, st: Any) -> SealVerdict:
    """Whether the seal `data` (None: there is none) says that nothing has touched the `.part` whose fstat
    is `st` since its writer last wrote it: the same identity, or else one that only the write in flight
    when the writer stopped can have given it (its size within that write, its mtime and ctime both
    stamped within FLIGHT_NS of its start)."""
    if not data:  # none, or an empty one (a new writer's, stopped before its first write)
        return SealVerdict(False, "not sealed (the build stopped before its seal, or it is gone)")
    if len(data) != SEAL_BYTES or hashlib.sha256(data[: _SEAL.size]).digest() != data[_SEAL.size :]:
        return SealVerdict(False, "with a damaged seal")
    magic, version, *sealed = _SEAL.unpack(data[: _SEAL.size])
    if magic != _SEAL_MAGIC or version != _SEAL_VERSION:
        return SealVerdict(False, "with a seal of another version")
    identity, (coarse, fine, start, end) = sealed[:5], sealed[5:]
    now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if st.st_ctime_ns % _COARSE_NS == 0:
        return SealVerdict(False, "on a file system whose timestamps are too coarse to tell (whole ms)")
    if tuple(identity[:2]) != now[:2]:
        return SealVerdict(False, "replaced since the build stopped (another file: its inode)")
    if tuple(identity) == now:
        return SealVerdict(True, UNCHANGED)
    size = identity[2]
    if (
        end
        and size - PAGE < start <= size  # an append (or a resumed writer's first page, rewritten as it was)
        and size <= st.st_size <= max(size, end)
        and st.st_mtime_ns == st.st_ctime_ns
        and coarse <= st.st_ctime_ns <= fine + FLIGHT_NS
    ):
        return SealVerdict(True, UNCHANGED_BUT_LAST_WRITE)
    names = ("size", "mtime", "ctime")
    changed = [name for name, a, b in zip(names, identity[2:], now[2:], strict=True) if a != b]
    return SealVerdict(False, f"changed since the build stopped (its {', '.join(changed)})")


def open_part_file(path: Path) -> int:
    """A read-only descriptor of `path` (a .part, its checkpoint or its seal) if it is a regular file: a
    symlink is not followed, a FIFO not waited on; CheckpointRejected saying so otherwise, OSError if it
    cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a symlink, dangling, looping or not
            raise CheckpointRejected(f"{path.name} is not a regular file (a symlink)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointRejected(f"{path.name} is not a regular file")
    return fd


def read_seal(path: Path) -> bytes | None:
    """The seal file's bytes, at most one more than a seal has; None if it is missing, or is not a
    regular file (a symlink is not followed, a FIFO not waited on)."""
    try:
        fd = open_part_file(path)
    except (CheckpointRejected, OSError):
        return None
    try:
        return os.read(fd, SEAL_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _clocks() -> tuple[int, int]:
    try:
        coarse = time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)
    except OSError:
        coarse = time.time_ns() - FLIGHT_NS
    return coarse, time.time_ns()


class PartSeal:
    """The writer's side of the seal at `path`, once `arm()`ed: `before(fd, start, end)` records, just
    before a write of bytes [start, end) to the `.part` open at `fd`, its fstat and the clock; `after(fd)`
    its fstat once written. Each is one fstat and one pwrite in place. A restart that reads the kept prefix
    again arms it only once that check has passed.

    Whatever was at `path` is replaced by a new file (never written through: it could be a link to someone
    else's); if that fails (a directory there, say), there is no seal and every restart reads the kept
    prefix again. A seal that fails to write is emptied, never left half-written."""

    def __init__(self, path: Path, armed: bool):
        self.armed = armed
        self._fd: int | None = None
        with contextlib.suppress(OSError):  # what stays there (a directory) makes O_EXCL refuse below
            os.unlink(path)
        with contextlib.suppress(OSError):
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(path, flags, 0o644)

    def arm(self) -> None:
        self.armed = True

    def before(self, part_fd: int, start: int, end: int) -> None:
        if self._fd is not None and self.armed:
            st = os.fstat(part_fd)
            self._record(st, (*_clocks(), start, end))

    def after(self, part_fd: int) -> None:
        if self._fd is not None and self.armed:
            self._record(os.fstat(part_fd))

    def _record(self, st: os.stat_result, flight: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        try:
            data = encode_seal(st, flight)
            if os.pwrite(self._fd, data, 0) != len(data):
                raise OSError(errno.EIO, "short write")
        except OSError:
            self._give_up()

    def _give_up(self) -> None:
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


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
    "PartSeal",
    "SealVerdict",
    "PrefixCheck",
    "PrefixMismatch",
    "Resume",
    "WriterCheckpoint",
    "check_part",
    "decode_checkpoint",
    "encode_checkpoint",
    "members_key_update",
    "open_part_file",
    "read_seal",
    "rehash_tail",
    "seal_verdict",
]
