"""The shard reader: random access to members through the seek table, reading only the frames asked for.

Frames are decompressed as streams (``stream_frame``): whatever a frame's header or the seek table claims,
a reader holds one compressed chunk and one output chunk at a time, and a frame never yields more bytes than
its seek table entry lists (which may not exceed MAX_FRAME_SIZE). Measured: extracting a 1 GiB member from a
33 KB shard (one frame of zeros) peaked at 2.1 GB RSS when frames were decompressed whole.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import xxhash
import zstandard

from packager.errors import ContainerError, MemberNotFound, ShardDamaged, UnsafeMemberName
from packager.hashing import MemberDigest, MemberHasher

from .format import (
    RESERVED_MANIFEST_NAME,
    TAR_BLOCK,
    Frame,
    ManifestLineError,
    MemberRecord,
    SeekTableError,
    parse_manifest,
    read_seek_table,
    seek_checksum,
    tar_member,
    unsafe_name_reason,
)

# Decompressed bytes handed out at a time, and compressed bytes read at a time: above zstd's 128 KiB block.
OUT_CHUNK = 2**20
IN_CHUNK = 256 * 2**10
# The largest window a frame may ask the decoder to allocate. Our frames hold at most MAX_FRAME_SIZE and zstd
# never needs a window larger than the content; libzstd's own default limit is 128 MiB (windowLog 27).
MAX_WINDOW = 2**27


class FrameError(ValueError):
    """A frame is not what the seek table says: str() says how, of the frame (the caller names it)."""


class _FrameSource:
    """The compressed bytes of one frame, read on demand, at most `size` of them (zstd reads from it)."""

    def __init__(self, read: Callable[[int], bytes], size: int):
        self._read, self.left = read, size
        self._head = b""

    def peek(self, n: int) -> bytes:
        while len(self._head) < n and self.left:
            more = self._read(min(n - len(self._head), self.left))
            if not more:
                break
            self._head += more
            self.left -= len(more)
        return self._head[:n]

    def read(self, n: int = -1) -> bytes:
        n = n if n >= 0 else IN_CHUNK
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        if not self.left:
            return b""
        data = self._read(min(self.left, n))
        self.left -= len(data)
        return data


def stream_frame(
    read: Callable[[int], bytes], frame: Frame, dctx: zstandard.ZstdDecompressor | None = None
) -> Iterator[bytes]:
    """The decompressed bytes of `frame`, in chunks of at most OUT_CHUNK, with bounded memory whatever the
    frame claims; `read(n)` returns the frame's next compressed bytes (a file range, an HTTP body, bytes
    from torrent pieces). FrameError, once the bytes show it, if the frame's header claims another size than
    the seek table or a window over MAX_WINDOW, if it decompresses to more or fewer bytes than the seek
    table lists, fails zstd's own checksum, or does not match the seek table's XXH64 checksum. A caller must
    not trust what it was handed before the generator finished without an error."""
    source = _FrameSource(read, frame.compressed_size)
    head = source.peek(18)  # a zstd frame header is at most 18 bytes
    try:
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError:
        raise FrameError("does not start with a zstd frame header") from None
    if params.content_size not in (frame.decompressed_size, zstandard.CONTENTSIZE_UNKNOWN):
        raise FrameError(
            f"claims {params.content_size} bytes in its header, the seek table {frame.decompressed_size}"
        )
    if params.window_size > MAX_WINDOW:
        raise FrameError(f"asks for a {params.window_size}-byte window, over the {MAX_WINDOW} allowed")
    dctx = dctx or zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    reader = dctx.stream_reader(source, read_size=IN_CHUNK, read_across_frames=False, closefd=False)
    digest = xxhash.xxh64()
    total = 0
    try:
        while chunk := reader.read(min(OUT_CHUNK, frame.decompressed_size - total + 1)):
            total += len(chunk)
            if total > frame.decompressed_size:
                raise FrameError(f"decompresses to more than the {frame.decompressed_size} bytes listed")
            digest.update(chunk)
            yield chunk
    except zstandard.ZstdError as exc:
        raise FrameError(f"is damaged: {exc}") from None
    if total != frame.decompressed_size:
        raise FrameError(f"holds {total} bytes, the seek table says {frame.decompressed_size}")
    if frame.checksum is not None and seek_checksum(digest.intdigest()) != frame.checksum:
        raise FrameError("does not match its seek table checksum")


class ShardReader:
    """Random access to a shard through its seek table; only the frames asked for are read.

    Opening reads the footer and the seek table, unless `frames` are given (the damage scan's, for a shard
    whose table is gone); `manifest()` reads the last frames; a member read or extracted costs the frames
    holding it. Bad input raises ContainerError, damage found while reading a member raises ShardDamaged.
    One reader per thread: the decompression context is not shareable.
    """

    def __init__(self, path: Path | str, frames: list[Frame] | None = None):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        except OSError as exc:
            raise ContainerError(self.path, f"cannot open: {exc.strerror}") from None
        try:
            self.frames: list[Frame] = self._read_seek_table() if frames is None else frames
        except BaseException:
            self._file.close()
            raise
        self._dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
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
        try:
            return read_seek_table(self._pread, os.fstat(self._file.fileno()).st_size)
        except SeekTableError as exc:
            raise ContainerError(self.path, exc.whole_file) from None

    def read_frame(self, index: int) -> bytes:
        """Decompress one whole frame (for the small ones: the manifest's), checked as stream_frame does."""
        return b"".join(self.iter_frame(index))

    def iter_frame(self, index: int) -> Iterator[bytes]:
        """One frame's decompressed bytes in bounded chunks (stream_frame); ContainerError naming the frame
        and its file bytes if it is not what the seek table says (maybe only at its end)."""
        if not 0 <= index < len(self.frames):
            raise ContainerError(self.path, f"no frame {index}; the shard has {len(self.frames)}")
        frame = self.frames[index]
        end = frame.compressed_offset + frame.compressed_size
        where = f"frame {index} (file bytes {frame.compressed_offset}-{end})"
        position = frame.compressed_offset

        def read(n: int) -> bytes:
            nonlocal position
            data = self._pread(n, position)
            if not data:
                raise FrameError("is cut short: the file ends early")
            position += len(data)
            return data

        try:
            yield from stream_frame(read, frame, self._dctx)
        except FrameError as exc:
            raise ContainerError(self.path, f"{where} {exc}") from None

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
            member = tar_member(data)
            name = member.name if member is not None else None
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
        try:
            records = parse_manifest(body)
        except ManifestLineError as exc:
            raise ContainerError(self.path, f"{RESERVED_MANIFEST_NAME} {exc}") from None
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
        """The member's content in bounded chunks, its frames streamed and each checked whole; ShardDamaged
        if one of them is not what the seek table says (the caller discards what it was given)."""
        frames = self.frames[rec.first_frame : rec.last_frame + 1] if rec.size else []
        try:
            yield from content_of(frames, lambda f: self.iter_frame(f.index), rec.offset, rec.size)
        except ContainerError as exc:
            raise ShardDamaged(self.path, rec.path, rec.offset, exc.reason) from None

    def extract(self, keys: Sequence[str], out_dir: Path) -> list[Path]:
        """Write the members named by `keys` (id or path) under `out_dir`, each verified before it appears.

        All keys are resolved and all names checked before anything is written. Each member is written to
        a temporary name beside its target and renamed only once its size, xxh3-128 and SHA-256 match the
        manifest, so a damaged member leaves nothing behind.
        """
        out_dir = Path(out_dir)
        records = [self.find(key) for key in keys]
        for rec in records:
            check_member_name(self.path, rec.path)
        out_dir.mkdir(parents=True, exist_ok=True)
        return [write_member(out_dir, rec, self.iter_member(rec), self.path) for rec in records]


# ---- members, wherever their frames come from (a shard file, torrent pieces, HTTP ranges) ----------------


class MemberFacts(Protocol):
    """What writing a member checks: a MemberRecord, or a member index Location."""

    path: str
    offset: int
    size: int
    xxh3_128: str
    sha256: str


def content_of(
    frames: Sequence[Frame], stream: Callable[[Frame], Iterable[bytes]], offset: int, size: int
) -> Iterator[bytes]:
    """Bytes [offset, offset + size) of the tar stream, from consecutive `frames` covering them, each
    decompressed by `stream(frame)` (bounded chunks, checked whole: iter_frame, stream_frame)."""
    end = offset + size
    for frame in frames:
        pos = frame.decompressed_offset
        for chunk in stream(frame):
            lo, hi = max(offset, pos) - pos, min(end, pos + len(chunk)) - pos
            if lo < hi:
                yield chunk[lo:hi]
            pos += len(chunk)


def check_member_name(source: Path | str, name: str) -> None:
    """UnsafeMemberName if `name` must not be written under an output folder (absolute, '..', ...)."""
    reason = unsafe_name_reason(name)
    if reason is not None:
        raise UnsafeMemberName(source, name, reason)


def write_member(out_dir: Path, rec: MemberFacts, chunks: Iterable[bytes], source: Path | str) -> Path:
    """Write `chunks` as `rec.path` under `out_dir`, through a temporary name beside the target that is
    renamed only once size, xxh3-128 and SHA-256 match `rec` (ShardDamaged naming `source` otherwise, and
    nothing is left). Folders are made one level at a time and none through a symlink, so nothing is ever
    written outside `out_dir`. The name must have passed check_member_name."""
    check_member_name(source, rec.path)
    parts = rec.path.split("/")
    target = out_dir.joinpath(*parts)
    root = out_dir.resolve()
    folder, made = out_dir, []
    try:
        for part in parts[:-1]:  # one level at a time, so a symlink never makes us create folders elsewhere
            folder = folder / part
            if folder.is_symlink() or not folder.resolve().is_relative_to(root):
                raise UnsafeMemberName(source, rec.path, f"a symlink on its path leads out of {out_dir}")
            if not folder.is_dir():
                folder.mkdir()
                made.append(folder)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".part", dir=target.parent)
        try:
            hasher = MemberHasher()
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
            _verify(rec, hasher.finish(), source)
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except BaseException:
        for folder in reversed(made):  # nothing of a refused member stays, not even its empty folders
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return target


def _verify(rec: MemberFacts, got: MemberDigest, source: Path | str) -> None:
    for what, expected, actual in (
        ("size", rec.size, got.size),
        ("xxh3-128", rec.xxh3_128, got.xxh3_128),
        ("SHA-256", rec.sha256, got.sha256),
    ):
        if expected != actual:
            raise ShardDamaged(source, rec.path, rec.offset, f"{what} is {actual}, expected {expected}")
