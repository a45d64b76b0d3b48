"""The shard format, defined once: zstd and seekable-format constants, the seek table (encode and decode),
the frame checksum rule, tar headers, member names, and the member manifest's lines (write and read).

The writer, the reader and the damage scan all take these from here, so that they cannot drift apart.
"""

from __future__ import annotations

import io
import itertools
import json
import operator
import struct
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

RESERVED_MANIFEST_NAME = ".packager/manifest.jsonl"
RESERVED_PREFIX = ".packager"  # no catalog path may start with this component

DEFAULT_FRAME_SIZE = 16 * 2**20
# The reference seekable implementation (zstd/contrib/seekable_format) refuses frames that decompress to
# more than ZSTD_SEEKABLE_MAX_FRAME_DECOMPRESSED_SIZE = 1 GiB, and the seek table stores sizes in 32 bits.
MAX_FRAME_SIZE = 2**30
TAR_BLOCK = 512
# Above this the ustar mtime field overflows and tarfile adds a pax header; the manifest must not have one,
# so that its frame starts with a plain header that the reader recognises.
USTAR_MTIME_MAX = 8**11 - 1
# A frame's first bytes, enough to hold a member's tar header with its pax records (a long UTF-8 path fits
# many times over): what the damage scan keeps to name a member when the manifest is unreadable.
HEAD_BYTES = 64 * 2**10

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MAGIC = 0x184D2A5E
SKIPPABLE_MASK = 0xFFFFFFF0  # skippable frames use the 16 magics 0x184D2A50-0x184D2A5F
SEEKABLE_MAGIC = 0x8F92EAB1
SEEK_CHECKSUM_FLAG = 0x80
SEEK_RESERVED_BITS = 0x7C
SKIPPABLE_HEADER = struct.Struct("<II")  # magic, frame size
SEEK_ENTRY = struct.Struct("<III")  # compressed size, decompressed size, XXH64 low 32 bits
SEEK_ENTRY_NO_CHECKSUM = struct.Struct("<II")
SEEK_FOOTER = struct.Struct("<IBI")  # number of frames, descriptor, seekable magic


class Frame(NamedTuple):
    """One frame of a shard, as its seek table lists it. A tuple: a seek table of 10^5 frames is read by
    every reader of a shard, and the member index reads every shard's (a frozen dataclass cost 1.1 µs a
    frame to make, a NamedTuple 0.38)."""

    index: int
    compressed_offset: int
    compressed_size: int
    decompressed_offset: int
    decompressed_size: int
    checksum: int | None  # low 32 bits of XXH64 of the decompressed data, if the seek table has them


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


def seek_checksum(xxh64: int) -> int:
    """The seek table's checksum of a frame from the XXH64 of its data: "the least significant 32 bits"."""
    return xxh64 & 0xFFFFFFFF


# --- the seek table ---------------------------------------------------------------------------------------


def encode_seek_table(entries: Sequence[tuple[int, int, int]]) -> bytes:
    """The skippable frame listing (compressed size, decompressed size, checksum) per frame, checksums on."""
    body = b"".join(SEEK_ENTRY.pack(*entry) for entry in entries)
    footer = SEEK_FOOTER.pack(len(entries), SEEK_CHECKSUM_FLAG, SEEKABLE_MAGIC)
    return SKIPPABLE_HEADER.pack(SKIPPABLE_MAGIC, len(body) + len(footer)) + body + footer


class SeekTableError(ValueError):
    """Why the bytes before `end` hold no usable seek table.

    str() says it at a byte position, as a damage report wants; `whole_file` says it of a file that should
    end with one (a reader opening a shard), where the two differ.
    """

    def __init__(self, reason: str, whole_file: str | None = None):
        super().__init__(reason)
        self.whole_file = whole_file or reason


def _seek_table(pread: Callable[[int, int], bytes], end: int) -> tuple[list[int], int, int]:
    """The seek table that ends at byte `end`, checked: (its entries' fields, flat, in file order; fields
    per entry, 3 with checksums or 2; the bytes its frames add up to). Every read must come back whole, so
    a file cut short (or shrinking while read) is a SeekTableError, never a short buffer."""

    def read(size: int, offset: int) -> bytes:
        data = pread(size, offset)
        if len(data) != size:
            raise SeekTableError(
                f"the seek table is cut short: {len(data)} of {size} bytes at byte {offset}",
                "seek table cut short: the file ends early (truncated while read?)",
            )
        return data

    if end < SKIPPABLE_HEADER.size + SEEK_FOOTER.size:
        raise SeekTableError(
            f"{end} bytes are too few to hold a seek table", f"only {end} bytes: too short to be a shard"
        )
    count, descriptor, magic = SEEK_FOOTER.unpack(read(SEEK_FOOTER.size, end - SEEK_FOOTER.size))
    if magic != SEEKABLE_MAGIC:
        raise SeekTableError(
            f"no seek table footer at byte {end - SEEK_FOOTER.size}",
            "no zstd seek table at the end: not a seekable .tar.zst shard, or truncated",
        )
    if descriptor & SEEK_RESERVED_BITS:
        # Seekable format: reserved bits are for breaking changes, "a compliant decoder should ensure they
        # are set to 0".
        raise SeekTableError(f"seek table descriptor {descriptor:#04x} sets reserved bits")
    entry = SEEK_ENTRY if descriptor & SEEK_CHECKSUM_FLAG else SEEK_ENTRY_NO_CHECKSUM
    table = SKIPPABLE_HEADER.size + count * entry.size + SEEK_FOOTER.size
    if table > end:
        raise SeekTableError(
            f"the seek table lists {count} frames, more than {end} bytes can hold",
            f"seek table lists {count} frames, more than the file can hold",
        )
    skip_magic, skip_size = SKIPPABLE_HEADER.unpack(read(SKIPPABLE_HEADER.size, end - table))
    if skip_magic != SKIPPABLE_MAGIC or skip_size != table - SKIPPABLE_HEADER.size:
        raise SeekTableError("the seek table's skippable frame header is damaged")
    body = read(table - SKIPPABLE_HEADER.size - SEEK_FOOTER.size, end - table + SKIPPABLE_HEADER.size)
    width = entry.size // 4
    fields = list(struct.unpack(f"<{count * width}I", body))
    dsizes = fields[1::width]
    if dsizes and max(dsizes) > MAX_FRAME_SIZE:
        index = next(i for i, size in enumerate(dsizes) if size > MAX_FRAME_SIZE)
        raise SeekTableError(f"seek table entry {index} claims {dsizes[index]} bytes, over {MAX_FRAME_SIZE}")
    total = sum(fields[0::width])
    if total != end - table:
        precede = f"the seek table's frames add up to {total} bytes, but {end - table} precede it"
        raise SeekTableError(precede, f"{precede} (truncated, or not written as one shard)")
    return fields, width, total


def read_seek_table(pread: Callable[[int, int], bytes], end: int) -> list[Frame]:
    """The frames listed by the seek table that ends at byte `end`, read through `pread(size, offset)`.

    SeekTableError if there is none or it cannot be right: the frame header is checked before the entries
    are read, so a damaged frame count never makes us read (and hold) gigabytes, and no entry may claim more
    than MAX_FRAME_SIZE bytes, so a hostile table cannot make a reader allocate 4 GiB for one frame.
    """
    fields, width, _ = _seek_table(pread, end)
    csizes, dsizes = fields[0::width], fields[1::width]
    checksums = fields[2::width] if width == 3 else itertools.repeat(None)
    return list(
        map(
            Frame,
            itertools.count(),
            itertools.accumulate(csizes, initial=0),
            csizes,
            itertools.accumulate(dsizes, initial=0),
            dsizes,
            checksums,
        )
    )


def read_frame_spans(pread: Callable[[int, int], bytes], end: int) -> list[tuple[int, int, int]]:
    """(compressed offset, compressed size, decompressed offset) of each frame of the seek table that ends
    at byte `end`, as plain tuples made in one go: what the member index records of a member's frames, for
    every frame of every shard. Checked as read_seek_table checks (SeekTableError)."""
    fields, width, _ = _seek_table(pread, end)
    csizes = fields[0::width]
    # The offsets run one past the last frame (the table's own offset): zip stops at the sizes.
    ends = itertools.accumulate(csizes, initial=0), itertools.accumulate(fields[1::width], initial=0)
    return list(zip(ends[0], csizes, ends[1], strict=False))


# --- tar headers and member names -------------------------------------------------------------------------


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """The deterministic header of one member: mode 0644, uid/gid 0, no user or group names."""
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


# What a tar header's type flag makes a member; we write only regular files, and refuse any other kind
# (a symlink or hardlink extracted by tar can point a later member's write anywhere).
_TAR_KINDS = {
    tarfile.REGTYPE: "regular file",
    tarfile.AREGTYPE: "regular file",
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.DIRTYPE: "directory",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
}
REGULAR = "regular file"


@dataclass(frozen=True)
class TarMember:
    name: str
    header_size: int  # the header's bytes, pax records included: where the content starts
    size: int
    kind: str = REGULAR  # REGULAR, "symbolic link", "hard link", "directory", ... (_TAR_KINDS)
    linkname: str = ""  # the target of a link

    def refusal(self) -> str | None:
        """Why `packager extract` (and verify) refuses this member, or None for a plain regular file."""
        if self.kind != REGULAR:
            target = f" to {self.linkname!r}" if self.linkname else ""
            return f"its tar header makes it a {self.kind}{target}, not a regular file"
        reason = unsafe_name_reason(self.name)
        return f"its tar header names {self.name!r}: {reason}" if reason else None


def tar_member(head: bytes) -> TarMember | None:
    """The member whose tar header (pax records followed) starts `head`, or None if no header is there."""
    if len(head) < TAR_BLOCK or not any(head[:TAR_BLOCK]):
        return None
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r:") as tar:
            info = tar.next()
    except (tarfile.TarError, EOFError):
        return None
    if info is None:
        return None
    kind = _TAR_KINDS.get(info.type, f"member of tar type {info.type!r}")
    return TarMember(info.name, info.offset_data, info.size, kind, info.linkname)


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


# --- the member manifest ----------------------------------------------------------------------------------

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


class ManifestLineError(ValueError):
    """Line `number` (from 1) of the member manifest is not a member record."""

    def __init__(self, number: int, reason: str):
        super().__init__(f"line {number}: {reason}")
        self.number, self.reason = number, reason


def parse_manifest(body: bytes) -> list[MemberRecord]:
    """The records of a member manifest's text (newline-terminated JSON lines); ManifestLineError naming the
    first bad line. Keys this version does not know are ignored, so a later writer may add fields."""
    lines = body.split(b"\n")[:-1]  # JSON escapes "\n" inside strings; no other byte ends a line
    # One json.loads over all lines is ~4x faster than one per line (a 100k-member manifest parses in a
    # fraction of a second); only when that fails, or a line held more than one value, are the lines parsed
    # one by one to name the bad one.
    try:
        rows = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        rows = None
    if rows is None or len(rows) != len(lines):
        rows = [_json_line(number, line) for number, line in enumerate(lines, 1)]
    return [_record_from(number, fields) for number, fields in enumerate(rows, 1)]


def _json_line(number: int, line: bytes) -> object:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise ManifestLineError(number, f"not JSON: {exc}") from None


def _record_from(number: int, fields: object) -> MemberRecord:
    if not isinstance(fields, dict):
        raise ManifestLineError(number, "not a JSON object")
    try:
        values = _MANIFEST_GETTER(fields)
    except KeyError:
        missing = [key for key in _MANIFEST_KEYS if key not in fields]
        raise ManifestLineError(number, f"missing {', '.join(missing)}") from None
    wrong = [k for k, v, t in zip(_MANIFEST_KEYS, values, _MANIFEST_TYPES, strict=True) if type(v) not in t]
    if wrong:
        raise ManifestLineError(number, f"wrong type for {', '.join(wrong)}")
    if type(values[3]) is not float:  # an integral popularity is written as a JSON int
        values = (*values[:3], float(values[3]), *values[4:])
    return MemberRecord(*values)
