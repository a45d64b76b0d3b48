"""The member level: every frame decompressed on its own as its bytes stream past (so a damaged frame never
hides the frames after it), and the sinks of the decompressed tar stream: the members judged against the
manifest, or named from their tar headers when the manifest is unreadable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import xxhash
import zstandard

from packager.container.format import (
    HEAD_BYTES,
    RESERVED_MANIFEST_NAME,
    TAR_BLOCK,
    Frame,
    TarMember,
    seek_checksum,
    tar_member,
    unsafe_name_reason,
)
from packager.container.scan import Layout
from packager.hashing import MemberHasher

# Output chunk of the per-frame decompressor; above zstd's 128 KiB block so every call flushes whole blocks.
OUT_CHUNK = 2**20
# Compressed bytes handed to the decompressor at a time: what decodes before a damaged block still comes out.
FEED_CHUNK = 128 * 2**10


class Sink(Protocol):
    def feed(self, pos: int, data: bytes) -> None: ...

    def frame_closed(self, index: int, ok: bool, reason: str) -> None: ...


class _TooMuch(Exception):
    pass


class FrameStream:
    """Decompresses every frame on its own as its compressed bytes stream past, checks it against zstd's
    checksum and the seek table's, and hands its output (tar stream bytes) to a sink."""

    def __init__(self, layout: Layout, sink: Sink):
        self.layout, self.frames, self.sink = layout, layout.stream_frames, sink
        self.partial = len(layout.frames) if layout.partial else None
        self.table_bad: list[str] = []  # seek table entries found wrong while their frames check out
        self.dctx = zstandard.ZstdDecompressor()
        self.k = 0
        self.writer = None
        self.error: str | None = None

    def update(self, offset: int, data: bytes) -> None:
        view, pos, end = memoryview(data), offset, offset + len(data)
        while pos < end and self.k < len(self.frames):
            frame = self.frames[self.k]
            start, stop = frame.compressed_offset, frame.compressed_offset + frame.compressed_size
            if pos < start:
                pos = start
                continue
            if self.writer is None:
                self._open()
            upto = min(end, stop)
            if upto > pos and self.error is None:
                try:
                    for at in range(pos - offset, upto - offset, FEED_CHUNK):
                        self.writer.write(view[at : min(at + FEED_CHUNK, upto - offset)])
                except zstandard.ZstdError as e:
                    self.error = f"does not decompress ({e})"
                except _TooMuch:
                    self.error = f"decompresses to more than the {frame.decompressed_size} bytes listed"
            pos = max(pos, upto)
            if pos >= stop:
                cut = "is cut short by the end of the file" if self.k == self.partial else None
                self._close(cut)

    def _open(self) -> None:
        self.out = 0
        self.xxh = xxhash.xxh64()
        self.error = None
        self.writer = self.dctx.stream_writer(
            self, write_size=OUT_CHUNK, write_return_read=True, closefd=False
        )

    def write(self, chunk: bytes) -> int:  # called by the zstd stream writer with each decompressed chunk
        frame = self.frames[self.k]
        if self.out + len(chunk) > frame.decompressed_size:
            raise _TooMuch
        self.xxh.update(chunk)
        self.sink.feed(frame.decompressed_offset + self.out, chunk)
        self.out += len(chunk)
        return len(chunk)

    def _close(self, cut: str | None) -> None:
        frame = self.frames[self.k]
        reason = cut or self.error
        if reason is None and self.out != frame.decompressed_size:
            reason = f"decompresses to {self.out} bytes, {frame.decompressed_size} expected"
        if (
            reason is None
            and frame.checksum is not None
            and seek_checksum(self.xxh.intdigest()) != frame.checksum
        ):
            if self.k in self.layout.zstd_checked:
                # zstd verified the frame's own copy of the same checksum, so the table entry is the bad one.
                self.table_bad.append(
                    f"the checksum listed for frame {self.k} is wrong; the frame checks out"
                )
            else:
                reason = "does not match its seek table checksum"
        self.sink.frame_closed(self.k, reason is None, reason or "")
        self.writer = None
        self.k += 1

    def finish(self, size: int) -> None:
        while self.k < len(self.frames):
            frame = self.frames[self.k]
            if self.writer is None:
                self._open()
            where = "inside" if frame.compressed_offset < size else "before"
            self._close(f"missing: the file ends at byte {size}, {where} this frame")


class Members:
    """Checks each member against the manifest from the tar stream bytes: its tar header (a regular file,
    with the manifest's path and size, and a path extract would write), its run of frames (nothing after its
    padding: no member hidden between listed ones), and its size, xxh3-128 and SHA-256.

    A frame belongs to the member whose run it is in (a run of frames starts at every member), so a damaged
    frame damages exactly that member; a member is judged when its last frame closes.
    """

    def __init__(self, layout: Layout):
        self.records = layout.records or []
        self.layout = layout
        self.j = 0  # first member whose content may still be fed
        self.fin = 0  # first member not yet judged
        self.hashers: dict[int, MemberHasher] = {}
        self.bad: dict[int, str] = {}  # member -> why its first damaged frame is
        self.damaged: list[tuple[int, str]] = []  # (member index or -1 for the manifest, reason)
        frames = layout.stream_frames
        # Where each member's run of frames starts in the tar stream: its header is there, up to rec.offset.
        firsts = [0] + [last + 1 for last in layout.last_frames]
        self.run_starts = [frames[f].decompressed_offset if f < len(frames) else None for f in firsts]
        self.heads: dict[int, bytearray] = {}
        self.h = 0  # first member (len(records): the manifest) whose header may still be fed

    def _feed_heads(self, pos: int, data: bytes) -> None:
        end = pos + len(data)
        while self.h < len(self.run_starts):
            start = self.run_starts[self.h]
            if start is None:
                self.h = len(self.run_starts)
                return
            stop = self.records[self.h].offset if self.h < len(self.records) else start + HEAD_BYTES
            stop = min(stop, start + HEAD_BYTES)
            if start >= end:
                return
            lo, hi = max(start, pos), min(stop, end)
            if hi > lo:
                self.heads.setdefault(self.h, bytearray()).extend(data[lo - pos : hi - pos])
            if stop > end:
                return
            self.h += 1

    def feed(self, pos: int, data: bytes) -> None:
        self._feed_heads(pos, data)
        view, end, records = memoryview(data), pos + len(data), self.records
        j = self.j
        while j < len(records) and records[j].offset < end:
            rec = records[j]
            lo, hi = max(pos, rec.offset), min(end, rec.offset + rec.size)
            if hi > lo and j not in self.bad:
                hasher = self.hashers.get(j)
                if hasher is None:
                    hasher = self.hashers[j] = MemberHasher()
                hasher.update(view[lo - pos : hi - pos])
            if rec.offset + rec.size > end:
                break
            j += 1
        self.j = j

    def frame_closed(self, index: int, ok: bool, reason: str) -> None:
        if not ok:
            owner = self.layout.owner(index)
            if owner < len(self.records):
                self.bad.setdefault(owner, f"frame {index} {reason}")
            elif not any(m == -1 for m, _ in self.damaged):
                self.damaged.append((-1, f"frame {index} {reason}"))
        while self.fin < len(self.records) and self.records[self.fin].last_frame <= index:
            self._judge(self.fin)
            self.fin += 1
        if self.fin == len(self.records) and index == len(self.layout.stream_frames) - 1:
            self._judge_manifest_header()

    def _judge(self, j: int) -> None:
        rec = self.records[j]
        hasher = self.hashers.pop(j, None)
        if j in self.bad:
            self.damaged.append((j, self.bad[j]))
            return
        refused = self._header_problem(j)
        if refused is not None:
            self.heads.pop(j, None)
            self.damaged.append((j, refused))
            return
        self.heads.pop(j, None)
        got = (hasher or MemberHasher()).finish()  # no hasher: no byte of it came, an empty member's hashes
        for what, expected, actual in (
            ("size", rec.size, got.size),
            ("xxh3-128", rec.xxh3_128, got.xxh3_128),
            ("SHA-256", rec.sha256, got.sha256),
        ):
            if expected != actual:
                self.damaged.append((j, f"{what} is {actual}, the manifest says {expected}"))
                return

    def lost(self, size: int, spans: list[tuple[int, int]] | None) -> None:
        """Judge the members whose frames never came (past a cut, or beyond where a frame scan stopped)."""
        for j in range(self.fin, len(self.records)):
            if spans is None:
                reason = "its frames cannot be read"
            elif spans[j][0] >= size:
                a, n = spans[j]
                reason = f"lost: the file ends at byte {size}, before its frames (file bytes {a}-{a + n - 1})"
            else:
                a, n = spans[j]
                reason = (
                    f"its frames (file bytes {a}-{a + n - 1}) cannot be found without the seek table "
                    f"(a frame scan stopped at byte {self.layout.frames_end})"
                )
            self.hashers.pop(j, None)
            self.damaged.append((j, reason))
        self.fin = len(self.records)

    def _header_problem(self, j: int) -> str | None:
        """Why member j is refused by its tar header or its run of frames (what extract would refuse, or a
        header the manifest contradicts), or None."""
        rec, start = self.records[j], self.run_starts[j]
        reason = unsafe_name_reason(rec.path)
        if reason is not None:
            return f"extract refuses its path {rec.path!r}: {reason}"
        member = tar_member(bytes(self.heads.get(j, b"")))
        if member is None:
            return "no tar header where its run of frames starts"
        refusal = member.refusal()
        if refusal is not None:
            return refusal
        if member.name != rec.path:
            return f"its tar header names {member.name!r}, the manifest {rec.path!r}"
        if member.size != rec.size:
            return f"its tar header gives {member.size} bytes, the manifest {rec.size}"
        if start is None or start + member.header_size != rec.offset:
            where = f"{start}+{member.header_size}"
            return f"its content starts at tar offset {where}, the manifest says {rec.offset}"
        if rec.last_frame >= len(self.layout.stream_frames):
            return None
        last = self.layout.stream_frames[rec.last_frame]
        run_end = last.decompressed_offset + last.decompressed_size
        padded = rec.offset + rec.size + -rec.size % TAR_BLOCK
        if run_end != padded:
            return (
                f"its frames hold {run_end - padded} bytes after its content and padding (another tar "
                "member the manifest does not list?)"
                if run_end > padded
                else f"its frames end at tar offset {run_end}, before its content and padding end ({padded})"
            )
        return None

    def _judge_manifest_header(self) -> None:
        """The run after the last member must be the manifest's: no member hidden between them."""
        head = self.heads.pop(len(self.records), None)
        member = tar_member(bytes(head or b""))
        if member is not None and member.name != RESERVED_MANIFEST_NAME:
            self.damaged.append((-1, f"a tar member {member.name!r} the manifest does not list precedes it"))


@dataclass
class Walked:
    path: str
    first_frame: int
    last_frame: int
    bad: str | None = None


class TarWalk:
    """Names the members from their tar headers when the manifest cannot be read (a truncated shard): a run
    of frames starts at every member, so each frame either starts with a header or continues a member.
    Frames where a header belongs but none can be read (damaged before its first block decoded) form lost
    runs: some member is damaged there, but its name went with its header."""

    def __init__(self, frames: list[Frame]):
        self.frames = frames
        self.head = bytearray()
        self.members: list[Walked] = []
        self.run_end = 0  # tar stream offset where the current member's run ends
        self.lost: list[Walked] = []  # runs of frames with no readable header (no path; `bad` says why)
        self.in_lost = False

    def feed(self, pos: int, data: bytes) -> None:
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]

    def frame_closed(self, index: int, ok: bool, reason: str) -> None:
        frame = self.frames[index]
        if frame.decompressed_offset >= self.run_end or self.in_lost:
            member = tar_member(bytes(self.head))
            if member is not None:
                self.members.append(Walked(member.name, index, index, _refused(member)))
                size = member.size
                self.run_end = frame.decompressed_offset + member.header_size + size + -size % TAR_BLOCK
                self.in_lost = False
            elif self.in_lost:
                self.lost[-1].last_frame = index
            else:
                self.lost.append(Walked("", index, index, f"frame {index} {reason or 'holds no tar header'}"))
                self.in_lost = True
        if self.members and not self.in_lost:
            current = self.members[-1]
            current.last_frame = index
            if not ok and current.bad is None:
                current.bad = f"frame {index} {reason}"
        self.head.clear()


def _refused(member: TarMember) -> str | None:
    if member.name == RESERVED_MANIFEST_NAME:
        return None
    refusal = member.refusal()
    return f"extract refuses it: {refusal}" if refusal else None
