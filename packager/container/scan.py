"""What a shard file itself can say about its frames and members when it may be damaged: its seek table, or
a walk of zstd frame and block headers when the table is gone, the table checked against the frames, and the
member manifest. The damage scan of `packager verify`; damage is described here, never raised."""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import xxhash
import zstandard

from packager.errors import ContainerError

from .format import (
    HEAD_BYTES,
    MAX_FRAME_SIZE,
    RESERVED_MANIFEST_NAME,
    SKIPPABLE_HEADER,
    SKIPPABLE_MAGIC,
    SKIPPABLE_MASK,
    TAR_BLOCK,
    ZSTD_MAGIC,
    Frame,
    MemberRecord,
    SeekTableError,
    read_seek_table,
    seek_checksum,
    tar_member,
)
from .reader import MAX_WINDOW, FrameError, ShardReader, content_of, stream_frame

# Compressed bytes read at a time, and the decompressor's output chunk (above zstd's 128 KiB block, so
# every call flushes whole blocks), when a frame is decompressed to arbitrate between it and the table.
_READ_CHUNK = 4 * 2**20
_OUT_CHUNK = 2**20
# A zstd frame header is at most 18 bytes: magic 4, descriptor 1, window 1, dictionary id 4, content size 8.
_FRAME_HEADER_MAX = 18


class FramesFrom(StrEnum):
    SEEK_TABLE = "seek table"
    FRAME_SCAN = "frame scan"


@dataclass(frozen=True)
class FrameHeader:
    size: int  # bytes of the header
    content_size: int  # Frame_Content_Size: the frame's decompressed size
    has_checksum: bool  # zstd's own Content_Checksum ends the frame


def frame_header(head: bytes) -> FrameHeader:
    """The header of the zstd frame whose magic starts `head`; ValueError if it cannot be used or claims
    more than MAX_FRAME_SIZE bytes."""
    fhd = head[4]
    fcs_flag, single, has_checksum, dict_flag = fhd >> 6, fhd >> 5 & 1, fhd >> 2 & 1, fhd & 3
    if fhd & 0x08:
        raise ValueError("reserved bit set in the frame header")
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if not fcs_len:
        raise ValueError("the frame does not record its content size")
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    if len(head) < start + fcs_len:
        raise ValueError("the file ends inside a frame header")
    fcs = int.from_bytes(head[start : start + fcs_len], "little") + (256 if fcs_len == 2 else 0)
    if fcs > MAX_FRAME_SIZE:
        # We never write such a frame, and a reader believing it would allocate that much to decompress it.
        raise ValueError(f"the frame claims {fcs} bytes, over {MAX_FRAME_SIZE}")
    return FrameHeader(start + fcs_len, fcs, bool(has_checksum))


@dataclass(frozen=True)
class FrameScan:
    """Frames found by walking headers from byte 0."""

    frames: list[Frame]  # complete frames
    partial: Frame | None  # the last frame, cut short by the end of the file
    stop: int  # where the walk stopped
    why: str


def scan_frames(fd: int, size: int, start: int = 0, decompressed_offset: int = 0) -> FrameScan:
    """Frames found by walking zstd frame and block headers from byte `start` (0, else where a frame of
    the tar stream's byte `decompressed_offset` starts) up to byte `size`: for a shard whose seek table is
    gone (truncated) or damaged, or the frames of one member fetched without the rest of the shard.
    Frames found this way carry no seek-table checksum; zstd's own still applies."""
    frames: list[Frame] = []
    pos, doff = start, decompressed_offset

    def cut(fcs: int) -> FrameScan:
        partial = Frame(len(frames), pos, size - pos, doff, fcs, None)
        return FrameScan(frames, partial, size, "the file ends inside a frame")

    while pos < size:
        head = os.pread(fd, _FRAME_HEADER_MAX, pos)
        magic = int.from_bytes(head[:4], "little") if len(head) >= 4 else None
        if magic is not None and magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC & SKIPPABLE_MASK:
            return FrameScan(frames, None, pos, f"a skippable frame (the seek table) starts at byte {pos}")
        if magic != ZSTD_MAGIC or len(head) < 6:
            return FrameScan(frames, None, pos, f"no zstd frame starts at byte {pos}")
        try:
            header = frame_header(head)
        except ValueError as e:
            return FrameScan(frames, None, pos, f"frame {len(frames)} at byte {pos}: {e}")
        p = pos + header.size
        while True:
            block = os.pread(fd, 3, p)
            if len(block) < 3:
                return cut(header.content_size)
            v = int.from_bytes(block, "little")
            if v >> 1 & 3 == 3:
                why = f"frame {len(frames)} at byte {pos}: reserved block type at byte {p}"
                return FrameScan(frames, None, pos, why)
            p += 3 + (1 if v >> 1 & 3 == 1 else v >> 3)  # an RLE block holds one byte
            if v & 1:
                break
        p += 4 if header.has_checksum else 0
        if p > size:
            return cut(header.content_size)
        frames.append(Frame(len(frames), pos, p - pos, doff, header.content_size, None))
        doff += header.content_size
        pos = p
    return FrameScan(frames, None, pos, "the file ends after the last frame, with no seek table")


@dataclass
class Layout:
    """Where a shard's frames and members are, as far as the file itself can say."""

    frames: list[Frame]  # complete frames, in file order
    partial: Frame | None  # a last frame cut short by the end of the file
    frames_end: int  # file offset after the last frame known
    how: FramesFrom
    table_problems: list[str]  # what is wrong with the seek table itself
    trailing_from: int | None  # bytes after the seek table start here
    zstd_checked: set[int]  # frames whose header promises zstd's own content checksum
    records: list[MemberRecord] | None = None
    manifest_problem: str | None = None
    last_frames: list[int] = field(default_factory=list)

    @property
    def stream_frames(self) -> list[Frame]:
        return self.frames + ([self.partial] if self.partial else [])

    def owner(self, frame: int) -> int:
        """Index of the member whose run of frames holds `frame`; len(records) for the manifest's frames."""
        return bisect.bisect_left(self.last_frames, frame)

    def frames_in(self, start: int, end: int) -> range:
        """Indexes of the frames overlapping file bytes [start, end)."""
        offsets = [f.compressed_offset for f in self.stream_frames]
        first = max(bisect.bisect_right(offsets, start) - 1, 0)
        last = bisect.bisect_left(offsets, end) - 1
        return range(first, last + 1) if offsets and last >= first else range(0)


def read_layout(path: Path, size: int, expected_size: int | None) -> Layout:
    """The shard's frames and manifest. The frames come from its seek table, else from one that ends at the
    expected size or before other appended bytes, else from a frame scan; the table is checked against
    the frame headers. Damage is described, never raised; OSError only for an unreadable file."""
    with open(path, "rb") as f:
        fd = f.fileno()
        frames, partial, problems, trailing = _find_frames(fd, size, expected_size)
        how = FramesFrom.FRAME_SCAN if problems and trailing is None else FramesFrom.SEEK_TABLE
        headers = [_read_frame_header(fd, frame) for frame in frames]
        if how == FramesFrom.SEEK_TABLE:
            frames = _arbitrate(fd, frames, headers, problems)
    last = partial or (frames[-1] if frames else None)
    frames_end = last.compressed_offset + last.compressed_size if last else 0
    checked = {i for i, h in enumerate(headers) if h is not None and h.has_checksum}
    layout = Layout(frames, partial, frames_end, how, problems, trailing, checked)
    try:
        # zstd's own checksum guards each frame; the seek table's copy is compared while streaming, where a
        # mismatch can be told apart from damage to the frame.
        unchecked = [frame._replace(checksum=None) for frame in frames]
        with ShardReader(path, unchecked) as reader:
            records = reader.manifest()
        _check_order(records)
        layout.records = records
        layout.last_frames = [r.last_frame for r in records]
    except ContainerError as e:
        layout.manifest_problem = e.reason
    return layout


def _find_frames(fd: int, size: int, expected_size: int | None):
    """(frames, partial frame, seek table problems, trailing_from)."""

    def pread(n: int, offset: int) -> bytes:
        return os.pread(fd, n, offset)

    try:
        return read_seek_table(pread, size), None, [], None
    except SeekTableError as e:
        problem = str(e)
    if expected_size is not None and expected_size < size:
        with contextlib.suppress(SeekTableError):
            return read_seek_table(pread, expected_size), None, [], expected_size
    scan = scan_frames(fd, size)
    if scan.partial is None and scan.stop < size:
        try:  # a whole seek table followed by other bytes: use it if it describes the frames found
            skippable_size = SKIPPABLE_HEADER.unpack(pread(SKIPPABLE_HEADER.size, scan.stop))[1]
            end = scan.stop + SKIPPABLE_HEADER.size + skippable_size
            table = read_seek_table(pread, end)
            if [(t.compressed_offset, t.compressed_size) for t in table] == [
                (s.compressed_offset, s.compressed_size) for s in scan.frames
            ]:
                return table, None, [], end
        except (SeekTableError, struct.error):
            pass
    why = f"unusable ({problem}); frames found by a frame scan, which stopped: {scan.why}"
    return scan.frames, scan.partial, [why], None


def _read_frame_header(fd: int, frame: Frame) -> FrameHeader | None:
    head = os.pread(fd, _FRAME_HEADER_MAX, frame.compressed_offset)
    if len(head) < 6 or int.from_bytes(head[:4], "little") != ZSTD_MAGIC:
        return None
    try:
        return frame_header(head)
    except ValueError:
        return None


def _arbitrate(
    fd: int, frames: list[Frame], headers: list[FrameHeader | None], problems: list[str]
) -> list[Frame]:
    """Where the seek table and a frame header disagree on the frame's size, decompress that frame: if it
    checks out, the table entry is the damaged one and the frame's own size and checksum replace it."""
    fixed, doffset = [], 0
    for frame, header in zip(frames, headers, strict=True):
        if header is not None and header.content_size != frame.decompressed_size and header.has_checksum:
            checked = _decompressed_size_and_checksum(fd, frame, header.content_size)
            if checked is not None:
                problems.append(
                    f"the entry for frame {frame.index} lists {frame.decompressed_size} bytes; "
                    f"the frame holds {checked[0]} and checks out"
                )
                frame = frame._replace(decompressed_size=checked[0], checksum=checked[1])
        fixed.append(frame._replace(decompressed_offset=doffset))
        doffset += frame.decompressed_size
    return fixed


class _Stop(Exception):
    """Raised by a stream-writer sink to stop the decompression: it has what it wants, or too much came."""


class _Count:
    def __init__(self, limit: int):
        self.n, self.limit, self.xxh = 0, limit, xxhash.xxh64()

    def write(self, chunk: bytes) -> int:
        self.n += len(chunk)
        if self.n > self.limit:
            raise _Stop
        self.xxh.update(chunk)
        return len(chunk)


def _decompressed_size_and_checksum(fd: int, frame: Frame, expected: int) -> tuple[int, int] | None:
    """(size, seek-table checksum) of a frame that decompresses cleanly to `expected` bytes, else None;
    streamed, so memory stays bounded whatever the header claims."""
    sink = _Count(expected)
    writer = zstandard.ZstdDecompressor().stream_writer(sink, write_size=_OUT_CHUNK, closefd=False)
    end = frame.compressed_offset + frame.compressed_size
    try:
        for at in range(frame.compressed_offset, end, _READ_CHUNK):
            writer.write(os.pread(fd, min(_READ_CHUNK, end - at), at))
    except (zstandard.ZstdError, _Stop):
        return None
    return (sink.n, seek_checksum(sink.xxh.intdigest())) if sink.n == expected else None


def _check_order(records: list[MemberRecord]) -> None:
    for before, after in zip(records, records[1:], strict=False):
        if after.offset < before.offset + before.size or after.last_frame < before.last_frame:
            raise ContainerError(
                "", f"{RESERVED_MANIFEST_NAME}: member {after.id!r} overlaps the one before it"
            )


class _Head:
    """A stream-writer sink that keeps the first HEAD_BYTES and then stops the decompression."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk[: HEAD_BYTES - len(self.data)]
        if len(self.data) >= HEAD_BYTES:
            raise _Stop
        return len(chunk)


def starts_with_tar_header(path: Path, layout: Layout) -> bool:
    """Whether the file's first frame decompresses to a tar header, as a shard's does."""
    if not layout.stream_frames:
        return False
    frame = layout.stream_frames[0]
    head = _Head()
    writer = zstandard.ZstdDecompressor().stream_writer(head, write_size=HEAD_BYTES, closefd=False)
    with contextlib.suppress(OSError, zstandard.ZstdError, _Stop), open(path, "rb") as f:
        writer.write(os.pread(f.fileno(), min(frame.compressed_size, 2**20), frame.compressed_offset))
    return tar_member(bytes(head.data)) is not None


def content_from_frames(
    fd: int, start: int, end: int, tar_offset: int, offset: int, size: int, source: Path | str
) -> Iterator[bytes]:
    """Bytes [offset, offset + size) of a shard's tar stream from file bytes [start, end) of `fd`, which
    must be whole zstd frames decompressing to the tar stream from `tar_offset` on: a member's frames as
    the member index gives them, fetched without the rest of the shard (and so without its seek table).
    The frames are found by their headers (scan_frames) and streamed with bounded memory (stream_frame);
    ContainerError naming `source` as soon as the bytes are not such frames. The caller checks the
    member's hashes (write_member) before trusting anything it was handed."""
    found = scan_frames(fd, end, start, tar_offset)
    if found.partial is not None or found.stop != end or not found.frames:
        raise ContainerError(source, f"file bytes {start}-{end} are not whole zstd frames: {found.why}")
    last = found.frames[-1]
    # A member's frames hold its run exactly: its headers, its content, the padding to a tar block (the
    # writer starts a frame at every run). Checked on the frame headers, before anything is decompressed.
    run_end = offset + size + -size % TAR_BLOCK
    if not tar_offset <= offset or last.decompressed_offset + last.decompressed_size != run_end:
        raise ContainerError(
            source, f"file bytes {start}-{end} are not the frames of tar bytes {offset}-{offset + size}"
        )
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)

    def stream(frame: Frame) -> Iterator[bytes]:
        position = frame.compressed_offset

        def read(n: int) -> bytes:
            nonlocal position
            data = os.pread(fd, n, position)
            position += len(data)
            return data

        try:
            yield from stream_frame(read, frame, dctx)
        except FrameError as exc:
            at = frame.compressed_offset
            raise ContainerError(
                source, f"the frame at file bytes {at}-{at + frame.compressed_size} {exc}"
            ) from None

    yield from content_of(found.frames, stream, offset, size)
