"""Compressed text catalogs (.zst, .gz, .bz2): bounded decompression, and what a damaged stream says."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import zlib
from pathlib import Path

import zstandard

# Compressed text catalogs (big dumps ship so), decompressed as they are read.
COMPRESSED_SUFFIXES = {".zst": "zstd", ".zstd": "zstd", ".gz": "gzip", ".bz2": "bzip2"}
# A compressed catalog may expand to at most this many times its size (real dumps: 4-15x); past it the
# rest is refused as a decompression bomb, so a small file cannot cost unbounded time.
MAX_EXPANSION = 200
MIN_EXPANDED = 2**30  # a small file may always expand to this much


def is_compressed(path: Path) -> bool:
    return catalog_suffix(path)[1] is not None


def catalog_suffix(path: Path) -> tuple[str, str | None]:
    """(the format's suffix, the compression or None): ("".jsonl", "zstd") for catalog.jsonl.zst."""
    path = Path(path)
    suffix = path.suffix.lower()
    compression = COMPRESSED_SUFFIXES.get(suffix)
    if compression is None:
        return suffix, None
    return Path(path.stem).suffix.lower(), compression


def compression_of(path: Path) -> str | None:
    """The compression a file's first bytes announce (zstd, gzip, bzip2), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None  # read_catalog's readers say why
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    return None


class _Decompressed(io.RawIOBase):
    """The bytes of a compressed catalog, as they are decompressed, bounded in total (MAX_EXPANSION); a
    stream that fails (damaged, cut short, a bomb) ends there, and says why in `failure`."""

    def __init__(self, path: Path, compression: str):
        self.raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.compression = compression
        self.limit = max(MIN_EXPANDED, MAX_EXPANSION * os.fstat(self.raw.fileno()).st_size)
        self.total = 0
        self.failure: str | None = None
        self.cut_short: str | None = None
        if compression == "zstd":
            # The stream reader says nothing of a last frame cut short: the headers are walked first.
            self.cut_short = _zstd_cut_short(self.raw.fileno())
            # The default window bound (128 MiB) bounds memory; a frame that needs more is refused.
            self.stream = zstandard.ZstdDecompressor().stream_reader(self.raw, read_across_frames=True)
        elif compression == "gzip":
            self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb")
        else:
            self.stream = bz2.BZ2File(self.raw, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        """Decompressed bytes; at a failure, the end of the stream (what came before it is read as usual),
        with the reason in self.failure."""
        if self.failure is not None:
            return 0
        try:  # read1: one chunk per call, so the bytes before a failure are not lost with it
            data = self.stream.read1(len(buffer))
            n = len(data)
            buffer[:n] = data
        except (zstandard.ZstdError, OSError, EOFError, ValueError, zlib.error) as e:
            self.failure = (
                f"cannot decompress the {self.compression} stream from here on ({e or type(e).__name__}); "
                "the file is damaged or cut short"
            )
            return 0
        if n == 0 and self.cut_short:
            self.failure = f"the zstd stream is cut short ({self.cut_short})"
        if self.total + n > self.limit:
            n = max(0, self.limit - self.total)
            self.failure = (
                f"decompresses to more than {MAX_EXPANSION} times its size: refused as a decompression bomb "
                "(the rest is not read)"
            )
        self.total += n
        return n

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
            self.raw.close()
        super().close()


def _zstd_cut_short(fd: int) -> str | None:
    """Why a zstd file does not end with a whole frame, or None: a walk of its frame and block headers
    (python-zstandard's stream reader ends silently where a cut file ends)."""
    size, pos = os.fstat(fd).st_size, 0
    while pos < size:
        head = os.pread(fd, 14, pos)
        magic = int.from_bytes(head[:4], "little")
        if magic & 0xFFFFFFF0 == 0x184D2A50 and len(head) >= 8:  # a skippable frame
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        if magic != 0xFD2FB528 or len(head) < 6:
            return None  # not zstd from here on: the decompressor says so itself
        fhd = head[4]
        p = pos + 5 + (0 if fhd >> 5 & 1 else 1) + (0, 1, 2, 4)[fhd & 3]
        p += ((1 if fhd >> 5 & 1 else 0), 2, 4, 8)[fhd >> 6]
        while True:
            block = os.pread(fd, 3, p)
            if len(block) < 3:
                return f"the file ends inside the frame at byte {pos}"
            v = int.from_bytes(block, "little")
            p += 3 + (1 if v >> 1 & 3 == 1 else v >> 3)
            if v & 1:
                break
        p += 4 if fhd >> 2 & 1 else 0
        if p > size:
            return f"the file ends inside the frame at byte {pos}"
        pos = p
    return None


def stream_failure(f) -> str | None:
    """Why the stream `f` (from open_catalog_bytes) ended early, or None: a compressed catalog that is
    damaged, cut short or a decompression bomb ends where it fails, and says so here."""
    return getattr(getattr(f, "raw", None), "failure", None)


def open_catalog_bytes(path: Path):
    """A catalog's bytes, decompressed if its name says so (.zst, .gz, .bz2)."""
    compression = catalog_suffix(path)[1]
    if compression is None:
        return open(path, "rb")
    return io.BufferedReader(_Decompressed(path, compression), 2**20)
