"""The shard container: a POSIX tar stream cut into independent zstd frames, with a zstd seek table.

Layout of a shard, in the order of its bytes::

    frame 0 ..            one member per run of frames: tar header + content + padding to 512
    ...                   (a member longer than frame_size continues in further frames)
    frame k .. n-1        the member manifest `.packager/manifest.jsonl` + the two end-of-archive blocks
    skippable frame       the seek table (zstd seekable format 0.1.0), checksum flag set

Every frame is a complete zstd frame with its content size and checksum, so `zstd -d` and `tar --zstd` read
the shard as an ordinary .tar.zst (they skip the skippable frame), while a reader that knows the seek table
decompresses only the frames it needs. Frames are cut on 512-byte tar block boundaries and hold at most
frame_size uncompressed bytes; a new frame starts at every member's header.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import operator
import os
import queue
import stat
import struct
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import xxhash
import zstandard

from packager.errors import ContainerError, MemberNotFound, ShardBuildError, ShardDamaged, UnsafeMemberName
from packager.hashing import MemberDigest, MemberHasher

RESERVED_MANIFEST_NAME = ".packager/manifest.jsonl"
RESERVED_PREFIX = ".packager"  # no catalog path may start with this component

DEFAULT_FRAME_SIZE = 16 * 2**20
# The reference seekable implementation (zstd/contrib/seekable_format) refuses frames that decompress to
# more than ZSTD_SEEKABLE_MAX_FRAME_DECOMPRESSED_SIZE = 1 GiB, and the seek table stores sizes in 32 bits.
MAX_FRAME_SIZE = 2**30
TAR_BLOCK = 512
# 1 MiB reads measured at least as fast as 4 MiB here (the worker threads get work sooner), and keep the
# data in flight in the three worker queues (depth 8 each) near 24 MiB.
READ_CHUNK = 2**20
_QUEUE_DEPTH = 8
# Above this the ustar mtime field overflows and tarfile adds a pax header; the manifest must not have one,
# so that its frame starts with a plain header that the reader recognises.
_USTAR_MTIME_MAX = 8**11 - 1

SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
_SEEK_CHECKSUM_FLAG = 0x80
_SEEK_RESERVED_BITS = 0x7C
_SKIPPABLE_HEADER = struct.Struct("<II")  # magic, frame size
_SEEK_ENTRY = struct.Struct("<III")  # compressed size, decompressed size, XXH64 low 32 bits
_SEEK_ENTRY_NO_CHECKSUM = struct.Struct("<II")
_SEEK_FOOTER = struct.Struct("<IBI")  # number of frames, descriptor, seekable magic

_MANIFEST_KEYS = (
    "id",
    "path",
    "kind",
    "popularity",
    "size",
    "xxh3_128",
    "sha256",
    "offset",
    "first_frame",
    "last_frame",
)
_MANIFEST_GETTER = operator.itemgetter(*_MANIFEST_KEYS)
# Exact types, so that JSON true/false (Python bool, an int subclass) is refused where a number belongs.
_MANIFEST_TYPES = ((str,), (str,), (str,), (int, float), (int,), (str,), (str,), (int,), (int,), (int,))


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
class MemberRecord:
    """One manifest line: a member's identity, hashes and where its content lies in the shard."""

    id: str
    path: str
    kind: str
    popularity: float
    size: int
    xxh3_128: str
    sha256: str
    offset: int  # of the content in the uncompressed tar stream
    first_frame: int  # inclusive frame range holding the content (the header's frame for an empty member)
    last_frame: int


@dataclass(frozen=True)
class ShardWritten:
    records: list[MemberRecord]
    frames: int  # zstd frames holding data, not counting the seek table
    compressed_size: int  # every byte written, seek table included: the size of the shard file
    uncompressed_size: int  # the tar stream, end-of-archive blocks included


@dataclass(frozen=True)
class Frame:
    index: int
    compressed_offset: int
    compressed_size: int
    decompressed_offset: int
    decompressed_size: int
    checksum: int | None  # low 32 bits of XXH64 of the decompressed data, if the seek table has them


# --- names ------------------------------------------------------------------------------------------------


def unsafe_name_reason(name: str) -> str | None:
    """Why `name` must not be written under an output directory, or None if it is a plain relative path."""
    if not name:
        return "the name is empty"
    if "\0" in name:
        return "it contains a NUL byte"
    if name.startswith("/"):
        return "it is an absolute path"
    parts = name.split("/")
    if "" in parts:
        return "it has an empty path component"
    if ".." in parts:
        return "it has a '..' component"
    if "." in parts:
        return "it has a '.' component"
    return None


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    # PAX_FORMAT adds an extended header only when a field does not fit ustar (non-ASCII or >100-byte name,
    # size >= 8 GiB), so ordinary members get one plain 512-byte header.
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _json_number(value: float) -> int | float:
    # An integral popularity is written as an int so the JSON reads "7", not "7.0"; repr-based float
    # formatting is exact and deterministic otherwise.
    number = float(value)
    return int(number) if number.is_integer() else number


def manifest_line(rec: MemberRecord) -> bytes:
    fields = {key: getattr(rec, key) for key in _MANIFEST_KEYS}
    fields["popularity"] = _json_number(rec.popularity)
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False, sort_keys=False)
    return (text + "\n").encode("utf-8")


# --- writer -----------------------------------------------------------------------------------------------


class _Worker:
    """Runs submitted calls on one background thread, in submission order.

    Ordering makes the result independent of thread timing, so the output stays deterministic. hashlib and
    file writes release the GIL, so the main thread's reading and compressing overlap with this work: that
    is how one shard uses two cores. A failure is re-raised in the submitting thread at its next call.
    """

    _STOP = object()

    def __init__(self, name: str):
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            if self._error is None:  # after a failure keep draining, so a submitter never blocks forever
                try:
                    item[0](*item[1:])
                except BaseException as exc:  # handed to the submitting thread
                    self._error = exc

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((fn, *args))

    def close(self) -> None:
        """Wait until every submitted call has run; raise the first failure."""
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()


class _FrameWriter:
    """Compresses runs of tar bytes into frames of at most `limit` bytes; a run always starts a frame."""

    def __init__(self, level: int, limit: int, emit: Callable[[bytes], None]):
        # threads=0: libzstd's worker threads would make the output depend on scheduling.
        self._cctx = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=True, threads=0
        )
        self.limit = limit
        self._emit = emit
        self.entries: list[tuple[int, int, int]] = []  # per frame: compressed, decompressed size, checksum
        self.position = 0  # bytes of tar stream written
        self.compressed = 0
        self._run_left = 0
        self._frame_left = 0
        self._frame_size = 0
        self._frame_compressed = 0
        self._cobj: Any = None
        self._frame_tail = b""

    def begin_run(self, total: int) -> int:
        """Start a run of `total` bytes at a frame boundary; return the index of its first frame."""
        if self._run_left or self._frame_left:
            raise RuntimeError("the previous run is unfinished")
        self._run_left = total
        return len(self.entries)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos, end = 0, view.nbytes
        if end > self._run_left:
            raise RuntimeError(f"{end} bytes written to a run with {self._run_left} left")
        while pos < end:
            if not self._frame_left:
                self._open_frame()
            take = min(self._frame_left, end - pos)
            self._put(self._cobj.compress(view[pos : pos + take]))
            pos += take
            self._frame_left -= take
            self._run_left -= take
            self.position += take
            if not self._frame_left:
                self._close_frame()

    def _open_frame(self) -> None:
        self._frame_size = self._frame_left = min(self.limit, self._run_left)
        # The pledged size goes into the frame header (Frame_Content_Size), and zstd checks that exactly
        # that many bytes arrive.
        self._cobj = self._cctx.compressobj(size=self._frame_size)
        self._frame_compressed = 0
        self._frame_tail = b""

    def _close_frame(self) -> None:
        self._put(self._cobj.flush())
        # The seek table wants "the least significant 32 bits of the XXH64 digest of the uncompressed data",
        # which is exactly the zstd frame's own Content_Checksum, its last 4 bytes: taking it from there
        # saves a hash pass over every byte (the tests check it against XXH64 of the data).
        checksum = int.from_bytes(self._frame_tail, "little")
        self.entries.append((self._frame_compressed, self._frame_size, checksum))
        self._cobj = None

    def _put(self, data: bytes) -> None:
        if data:
            self._frame_tail = (self._frame_tail + data[-4:])[-4:]
            self._frame_compressed += len(data)
            self.compressed += len(data)
            self._emit(data)

    def seek_table(self) -> bytes:
        entries = b"".join(_SEEK_ENTRY.pack(*entry) for entry in self.entries)
        footer = _SEEK_FOOTER.pack(len(self.entries), _SEEK_CHECKSUM_FLAG, SEEKABLE_MAGIC)
        return _SKIPPABLE_HEADER.pack(SKIPPABLE_MAGIC, len(entries) + len(footer)) + entries + footer


def _check_member(m: MemberSource, shard_name: str) -> None:
    def fail(reason: str) -> ShardBuildError:
        return ShardBuildError(shard_name, f"member {m.id}: {reason}", str(m.source))

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
    def fail(reason: str) -> ShardBuildError:
        return ShardBuildError(shard_name, f"member {m.id}: {reason}", str(m.source))

    try:
        # O_NOFOLLOW: a symlink swapped in after the catalog was checked is refused, not followed.
        fd = os.open(m.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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


def _read_source(
    m: MemberSource, shard_name: str, on_progress: Callable[[int], None] | None
) -> Iterator[bytes]:
    """The file's bytes in chunks, exactly `m.size` of them, or ShardBuildError."""

    def fail(reason: str) -> ShardBuildError:
        return ShardBuildError(shard_name, f"member {m.id}: {reason}", str(m.source))

    with _open_source(m, shard_name) as f:
        left = m.size
        try:
            while left:
                chunk = f.read(min(READ_CHUNK, left))
                if not chunk:
                    found = m.size - left
                    raise fail(f"expected {m.size} bytes, found {found} (the file shrank while it was read)")
                left -= len(chunk)
                yield chunk
                if on_progress is not None:
                    on_progress(len(chunk))
            if f.read(1):
                raise fail(f"expected {m.size} bytes, found more (the file grew while it was read)")
        except OSError as exc:
            raise fail(f"unreadable: {exc.strerror}") from None


def write_shard(
    out: BinaryIO,
    members: Iterable[MemberSource],
    *,
    level: int,
    frame_size: int = DEFAULT_FRAME_SIZE,
    manifest_mtime: int,
    sinks: Sequence[Callable[[memoryview | bytes], None]] = (),
    on_progress: Callable[[int], None] | None = None,
    shard_name: str = "",
) -> ShardWritten:
    """Write `members`, in order, as one seekable .tar.zst shard to `out`; see the module docstring.

    Every byte written to `out` is also passed, in order, to each sink (a ShardHasher's update, say), so
    the caller hashes the shard without reading it back. `out.write` runs on one background thread and
    the sinks on another (each sink sees the bytes in order, never two calls at once), so that hashing
    overlaps reading and compressing; `on_progress(n)` runs in the calling thread and reports input bytes
    consumed. Raises ShardBuildError when an input file is missing, unreadable, a symlink, or not `size`
    bytes; the partial output is then the caller's to discard. Output is byte-identical for identical
    input.
    """
    limit = frame_size - frame_size % TAR_BLOCK
    if not TAR_BLOCK <= limit <= MAX_FRAME_SIZE:
        raise ValueError(f"frame size {frame_size} is outside {TAR_BLOCK}..{MAX_FRAME_SIZE} bytes")
    if not 0 <= manifest_mtime <= _USTAR_MTIME_MAX:
        raise ValueError(f"manifest mtime {manifest_mtime} does not fit a ustar header")

    def feed_sinks(data: bytes) -> None:
        for sink in sinks:
            sink(data)

    # Per byte of incompressible input the three SHA passes the design asks for cost ~1.7 ns of CPU and
    # zstd ~0.35 ns; in four stages (read+compress here, member digests, write, output hashes) the
    # writer used ~1.75 of this machine's 2 cores and reached ~730 MB/s into /dev/null.
    with contextlib.ExitStack() as stack:
        workers = {name: _Worker(f"shard-{name}") for name in ("write", "sinks", "digests")}
        for worker in workers.values():
            stack.callback(worker.stop)

        def emit(data: bytes) -> None:
            workers["write"].submit(out.write, data)
            if sinks:
                workers["sinks"].submit(feed_sinks, data)

        frames = _FrameWriter(level, limit, emit)
        digests: list[MemberDigest] = []
        placed = []
        ids: set[str] = set()
        paths: set[str] = set()
        for m, following in _with_next(members):
            if following is not None and PREFETCH_BYTES:
                _prefetch(following)
            _check_member(m, shard_name)
            if m.id in ids or m.path in paths:
                # find() and tar extraction could then reach only one of them.
                what = f"id {m.id!r}" if m.id in ids else f"path {m.path!r}"
                raise ShardBuildError(shard_name, f"member {m.id}: duplicate {what}", str(m.source))
            ids.add(m.id)
            paths.add(m.path)
            placed.append(_write_member(frames, workers["digests"], digests, m, shard_name, on_progress))
        workers["digests"].close()
        records = [_record(m, d, *where) for (m, *where), d in zip(placed, digests, strict=True)]
        _write_manifest(frames, records, manifest_mtime)
        seek_table = frames.seek_table()
        emit(seek_table)
        workers["write"].close()
        workers["sinks"].close()
    return ShardWritten(
        records=records,
        frames=len(frames.entries),
        compressed_size=frames.compressed + len(seek_table),
        uncompressed_size=frames.position,
    )


def _with_next(items: Iterable[MemberSource]) -> Iterator[tuple[MemberSource, MemberSource | None]]:
    it = iter(items)
    current = next(it, None)
    while current is not None:
        following = next(it, None)
        yield current, following
        current = following


PREFETCH_BYTES = 8 * 2**20


def _prefetch(m: MemberSource) -> None:
    """Ask the kernel to start reading the next member while this one is compressed and hashed: with cold
    caches, waiting for each file's first read cost 0.6 s of a 3.1 s build of 1 GB (bench.py build)."""
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


def _write_member(
    frames: _FrameWriter,
    digest_thread: _Worker,
    digests: list[MemberDigest],
    m: MemberSource,
    shard_name: str,
    on_progress: Callable[[int], None] | None,
) -> tuple[MemberSource, int, int, int]:
    """Write one member; return it with its content offset and frame range. Its digest lands in `digests`."""
    header = _tar_header(m.path, m.size, m.mtime)
    padding = -m.size % TAR_BLOCK
    first = frames.begin_run(len(header) + m.size + padding)
    offset = frames.position + len(header)
    frames.write(header)
    hasher = MemberHasher()
    for chunk in _read_source(m, shard_name, on_progress):
        digest_thread.submit(hasher.update, chunk)
        frames.write(chunk)
    frames.write(bytes(padding))
    digest_thread.submit(lambda: digests.append(hasher.finish()))
    return (m, offset, *_content_frames(first, len(header), m.size, frames.limit))


def _record(m: MemberSource, d: MemberDigest, offset: int, first: int, last: int) -> MemberRecord:
    return MemberRecord(m.id, m.path, m.kind, m.popularity, m.size, d.xxh3_128, d.sha256, offset, first, last)


def _write_manifest(frames: _FrameWriter, records: list[MemberRecord], mtime: int) -> None:
    body = b"".join(manifest_line(rec) for rec in records)
    header = _tar_header(RESERVED_MANIFEST_NAME, len(body), mtime)
    padding = -len(body) % TAR_BLOCK
    end_of_archive = bytes(2 * TAR_BLOCK)
    frames.begin_run(len(header) + len(body) + padding + len(end_of_archive))
    for part in (header, body, bytes(padding), end_of_archive):
        frames.write(part)


# --- reader -----------------------------------------------------------------------------------------------


class ShardReader:
    """Random access to a shard through its seek table; only the frames asked for are read.

    Opening reads the footer and the seek table; `manifest()` reads the last frames; a member read or
    extracted costs the frames holding it. Bad input raises ContainerError, damage found while reading a
    member raises ShardDamaged. One reader per thread: the decompression context is not shareable.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        except OSError as exc:
            raise ContainerError(self.path, f"cannot open: {exc.strerror}") from None
        try:
            self.frames: list[Frame] = self._read_seek_table()
        except BaseException:
            self._file.close()
            raise
        self._dctx = zstandard.ZstdDecompressor()
        self._manifest: list[MemberRecord] | None = None
        self._by_id: dict[str, MemberRecord] = {}
        self._by_path: dict[str, MemberRecord] = {}

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _pread(self, size: int, offset: int) -> bytes:
        try:
            return os.pread(self._file.fileno(), size, offset)
        except OSError as exc:
            raise ContainerError(self.path, f"read error at byte {offset}: {exc.strerror}") from None

    def _read_seek_table(self) -> list[Frame]:
        size = os.fstat(self._file.fileno()).st_size
        if size < _SKIPPABLE_HEADER.size + _SEEK_FOOTER.size:
            raise ContainerError(self.path, f"only {size} bytes: too short to be a shard")
        count, descriptor, magic = _SEEK_FOOTER.unpack(
            self._pread(_SEEK_FOOTER.size, size - _SEEK_FOOTER.size)
        )
        if magic != SEEKABLE_MAGIC:
            raise ContainerError(
                self.path, "no zstd seek table at the end: not a seekable .tar.zst shard, or truncated"
            )
        if descriptor & _SEEK_RESERVED_BITS:
            # Seekable format: reserved bits are for breaking changes, "a compliant decoder should ensure
            # they are set to 0".
            raise ContainerError(self.path, f"seek table descriptor {descriptor:#04x} sets reserved bits")
        entry = _SEEK_ENTRY if descriptor & _SEEK_CHECKSUM_FLAG else _SEEK_ENTRY_NO_CHECKSUM
        table_size = _SKIPPABLE_HEADER.size + count * entry.size + _SEEK_FOOTER.size
        if table_size > size:
            raise ContainerError(self.path, f"seek table lists {count} frames, more than the file can hold")
        table = self._pread(table_size, size - table_size)
        skip_magic, skip_size = _SKIPPABLE_HEADER.unpack_from(table)
        if skip_magic != SKIPPABLE_MAGIC or skip_size != table_size - _SKIPPABLE_HEADER.size:
            raise ContainerError(self.path, "the seek table's skippable frame header is damaged")
        frames: list[Frame] = []
        coffset = doffset = 0
        body = table[_SKIPPABLE_HEADER.size : -_SEEK_FOOTER.size]
        for index, fields in enumerate(entry.iter_unpack(body)):
            if fields[1] > MAX_FRAME_SIZE:
                # We never write such a frame; believing the entry would let a hostile table make a
                # reader allocate up to 4 GiB for one frame.
                raise ContainerError(
                    self.path, f"seek table entry {index} claims {fields[1]} bytes, over {MAX_FRAME_SIZE}"
                )
            checksum = fields[2] if len(fields) == 3 else None
            frames.append(Frame(index, coffset, fields[0], doffset, fields[1], checksum))
            coffset += fields[0]
            doffset += fields[1]
        if coffset != size - table_size:
            raise ContainerError(
                self.path,
                f"the seek table's frames add up to {coffset} bytes, but {size - table_size} precede it "
                "(truncated, or not written as one shard)",
            )
        return frames

    def read_frame(self, index: int) -> bytes:
        """Decompress one frame, checked against zstd's frame checksum and the seek table's."""
        if not 0 <= index < len(self.frames):
            raise ContainerError(self.path, f"no frame {index}; the shard has {len(self.frames)}")
        frame = self.frames[index]
        data = self._pread(frame.compressed_size, frame.compressed_offset)
        where = f"frame {index} (file bytes {frame.compressed_offset}-{frame.compressed_offset + len(data)})"
        if len(data) != frame.compressed_size:
            raise ContainerError(self.path, f"{where}: the file ends early")
        try:
            out = self._dctx.decompress(data, max_output_size=frame.decompressed_size, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise ContainerError(self.path, f"{where} is damaged: {exc}") from None
        if len(out) != frame.decompressed_size:
            raise ContainerError(
                self.path, f"{where} holds {len(out)} bytes, the seek table says {frame.decompressed_size}"
            )
        if frame.checksum is not None and xxhash.xxh64_intdigest(out) & 0xFFFFFFFF != frame.checksum:
            raise ContainerError(self.path, f"{where} does not match its seek table checksum")
        return out

    # -- manifest --

    def manifest(self) -> list[MemberRecord]:
        """The member manifest, read from the last frames only (walking back to the manifest's header)."""
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    def _read_manifest(self) -> list[MemberRecord]:
        parts: list[bytes] = []
        for index in range(len(self.frames) - 1, -1, -1):
            data = self.read_frame(index)
            parts.append(data)
            name = _first_member_name(data)
            if name == RESERVED_MANIFEST_NAME:
                break
            if name is not None:
                # The manifest is the last member, and JSON text cannot look like a tar header (a header
                # has NUL bytes, which JSON escapes), so a header here means there is no manifest.
                raise ContainerError(self.path, f"the last member is {name!r}, not {RESERVED_MANIFEST_NAME}")
        else:
            raise ContainerError(self.path, f"no {RESERVED_MANIFEST_NAME}: not a packager shard")
        body = self._manifest_body(b"".join(reversed(parts)))
        if body and not body.endswith(b"\n"):
            raise ContainerError(self.path, f"{RESERVED_MANIFEST_NAME} does not end with a newline")
        lines = body.split(b"\n")[:-1]  # JSON escapes "\n" inside strings; no other byte ends a line
        records = self._parse_records(lines)
        self._check_records(records, first_manifest_frame=index)
        return records

    def _manifest_body(self, tail: bytes) -> bytes:
        try:
            with tarfile.open(fileobj=io.BytesIO(tail), mode="r:") as tar:
                info = tar.next()
                if info is None or info.name != RESERVED_MANIFEST_NAME or not info.isreg():
                    raise ContainerError(self.path, f"{RESERVED_MANIFEST_NAME} is not a regular file")
                body = tar.extractfile(info).read()  # type: ignore[union-attr]
                end = info.offset_data + info.size + -info.size % TAR_BLOCK
        except tarfile.TarError as exc:
            raise ContainerError(self.path, f"{RESERVED_MANIFEST_NAME} is damaged: {exc}") from None
        rest = tail[end:]
        if len(body) != info.size or len(rest) < 2 * TAR_BLOCK or rest.count(0) != len(rest):
            raise ContainerError(
                self.path, f"{RESERVED_MANIFEST_NAME} is not followed by the end-of-archive blocks"
            )
        return body

    def _parse_records(self, lines: list[bytes]) -> list[MemberRecord]:
        # One json.loads over all lines is ~4x faster than one per line (a 100k-member manifest parses in
        # a fraction of a second); only when that fails, or a line held more than one value, are the lines
        # parsed one by one to name the bad one.
        try:
            rows = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            rows = None
        if rows is None or len(rows) != len(lines):
            rows = [self._parse_json_line(number, line) for number, line in enumerate(lines, 1)]
        return [self._record_from(number, fields) for number, fields in enumerate(rows, 1)]

    def _fail_line(self, number: int, reason: str) -> ContainerError:
        return ContainerError(self.path, f"{RESERVED_MANIFEST_NAME} line {number}: {reason}")

    def _parse_json_line(self, number: int, line: bytes) -> object:
        try:
            return json.loads(line)
        except ValueError as exc:
            raise self._fail_line(number, f"not JSON: {exc}") from None

    def _record_from(self, number: int, fields: object) -> MemberRecord:
        if not isinstance(fields, dict):
            raise self._fail_line(number, "not a JSON object")
        try:
            # Keys this version does not know are ignored, so a later writer may add fields.
            values = _MANIFEST_GETTER(fields)
        except KeyError:
            missing = [key for key in _MANIFEST_KEYS if key not in fields]
            raise self._fail_line(number, f"missing {', '.join(missing)}") from None
        wrong = [
            k for k, v, t in zip(_MANIFEST_KEYS, values, _MANIFEST_TYPES, strict=True) if type(v) not in t
        ]
        if wrong:
            raise self._fail_line(number, f"wrong type for {', '.join(wrong)}")
        if type(values[3]) is not float:  # an integral popularity is written as a JSON int
            values = (*values[:3], float(values[3]), *values[4:])
        return MemberRecord(*values)

    def _check_records(self, records: list[MemberRecord], first_manifest_frame: int) -> None:
        """Refuse a manifest whose ranges point outside its frames, so iter_member can trust them."""
        frames = self.frames
        for rec in records:
            ok = 0 <= rec.first_frame <= rec.last_frame < first_manifest_frame and rec.size >= 0
            if ok and rec.size:
                start, end = frames[rec.first_frame], frames[rec.last_frame]
                ok = (
                    start.decompressed_offset
                    <= rec.offset
                    < start.decompressed_offset + start.decompressed_size
                    and end.decompressed_offset
                    < rec.offset + rec.size
                    <= end.decompressed_offset + end.decompressed_size
                )
            if not ok:
                raise ContainerError(
                    self.path,
                    f"{RESERVED_MANIFEST_NAME}: member {rec.id!r} points outside the shard's frames "
                    f"(offset {rec.offset}, size {rec.size}, frames {rec.first_frame}-{rec.last_frame})",
                )

    def find(self, key: str) -> MemberRecord:
        """The member whose id is `key`, else the one whose path is `key`."""
        if not self._by_id:
            records = self.manifest()
            self._by_id = {rec.id: rec for rec in records}
            self._by_path = {rec.path: rec for rec in records}
        found = self._by_id.get(key) or self._by_path.get(key)
        if found is None:
            raise MemberNotFound(self.path, key)
        return found

    # -- members --

    def iter_member(self, rec: MemberRecord) -> Iterator[bytes]:
        """The member's content, frame by frame; ShardDamaged if one of its frames is unreadable."""
        end = rec.offset + rec.size
        for index in range(rec.first_frame, rec.last_frame + 1) if rec.size else ():
            frame = self.frames[index]
            try:
                data = self.read_frame(index)
            except ContainerError as exc:
                raise ShardDamaged(self.path, rec.path, rec.offset, exc.reason) from None
            lo = max(rec.offset, frame.decompressed_offset) - frame.decompressed_offset
            hi = min(end, frame.decompressed_offset + frame.decompressed_size) - frame.decompressed_offset
            yield data[lo:hi]

    def extract(self, keys: Sequence[str], out_dir: Path) -> list[Path]:
        """Write the members named by `keys` (id or path) under `out_dir`, each verified before it appears.

        All keys are resolved and all names checked before anything is written. Each member is written to
        a temporary name beside its target and renamed only once its size, xxh3-128 and SHA-256 match the
        manifest, so a damaged member leaves nothing behind.
        """
        out_dir = Path(out_dir)
        records = [self.find(key) for key in keys]
        for rec in records:
            reason = unsafe_name_reason(rec.path)
            if reason is not None:
                raise UnsafeMemberName(self.path, rec.path, reason)
        out_dir.mkdir(parents=True, exist_ok=True)
        return [self._extract_one(rec, out_dir) for rec in records]

    def _extract_one(self, rec: MemberRecord, out_dir: Path) -> Path:
        parts = rec.path.split("/")
        target = out_dir.joinpath(*parts)
        root = out_dir.resolve()
        folder = out_dir
        for part in parts[:-1]:  # one level at a time, so a symlink never makes us create folders elsewhere
            folder = folder / part
            if folder.is_symlink() or not folder.resolve().is_relative_to(root):
                raise UnsafeMemberName(self.path, rec.path, f"a symlink on its path leads out of {out_dir}")
            folder.mkdir(exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".part", dir=target.parent)
        try:
            hasher = MemberHasher()
            with os.fdopen(fd, "wb") as f:
                for chunk in self.iter_member(rec):
                    hasher.update(chunk)
                    f.write(chunk)
            self._verify(rec, hasher.finish())
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return target

    def _verify(self, rec: MemberRecord, got: MemberDigest) -> None:
        for what, expected, actual in (
            ("size", rec.size, got.size),
            ("xxh3-128", rec.xxh3_128, got.xxh3_128),
            ("SHA-256", rec.sha256, got.sha256),
        ):
            if expected != actual:
                raise ShardDamaged(
                    self.path, rec.path, rec.offset, f"{what} is {actual}, expected {expected}"
                )


def _first_member_name(data: bytes) -> str | None:
    """The name in the tar header at the start of `data` (pax headers followed), or None if there is none."""
    if len(data) < TAR_BLOCK or not any(data[:TAR_BLOCK]):
        return None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            info = tar.next()
    except tarfile.TarError:
        return None
    return info.name if info is not None else None
