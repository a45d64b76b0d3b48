"""Where damage lies: bad pieces to the members they hold, damaged frames to members and to pieces.

Pure functions of a shard's Layout and of what the read passes found, with no file and no wording, so that
localisation is tested on a layout made up in a test (findings.py words what these return).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from packager.container.format import RESERVED_MANIFEST_NAME
from packager.container.scan import FramesFrom, Layout

from .frames import Members, TarWalk
from .report import MemberDamage, ranges


@dataclass(frozen=True)
class PieceOwners:
    """What the bad pieces of a shard hold."""

    members: list[tuple[str | None, str | None]]  # (id, path) in shard order; the manifest as (None, name)
    tail: bool  # they reach past the last frame, into the seek table


@dataclass(frozen=True)
class Located:
    """A damaged member, or the member manifest itself, and the file offset of its first frame."""

    damage: MemberDamage
    offset: int
    manifest: bool = False


@dataclass(frozen=True)
class LostRun:
    """Frames where a member's tar header belongs but none can be read: some member is damaged there."""

    frames: tuple[int, int]
    pieces: tuple[int, int] | None
    offset: int
    holds_manifest: bool  # the last run of a whole shard: the manifest's own frames
    reason: str


@dataclass(frozen=True)
class MemberLevel:
    """What the member level found, located."""

    checked: int  # members checked, the manifest not counted
    damaged: list[Located]  # in shard order
    named_from_headers: bool = False  # the manifest is unreadable: members named by path, without ids
    lost: list[LostRun] = field(default_factory=list)
    lost_after: int | None = None  # a frame scan can read nothing after this byte


def piece_span(frames: Sequence, piece_size: int | None, first: int, last: int) -> tuple[int, int] | None:
    """The pieces holding the file bytes of frames `first`..`last`; None without a piece size."""
    if piece_size is None:
        return None
    start = frames[first].compressed_offset
    end = frames[last].compressed_offset + frames[last].compressed_size
    return start // piece_size, (max(end, start + 1) - 1) // piece_size


def members_in_pieces(
    layout: Layout, bad: Sequence[int], piece_size: int, spans: Sequence[tuple[int, int]] | None = None
) -> PieceOwners:
    """The members whose frames overlap the bad pieces, by the manifest (none if it is unreadable), or by
    the file bytes the member index gives each member (`spans`), which also reach past a cut."""
    names: dict[int, tuple[str | None, str | None]] = {}
    tail = False
    records = layout.records
    for a, b in ranges(bad):
        start, end = a * piece_size, (b + 1) * piece_size
        for j, (offset, size) in enumerate(spans or ()):
            if offset < end and offset + size > start:
                names[j] = (records[j].id, records[j].path)
        for f in layout.frames_in(start, end) if records is not None else ():
            owner = layout.owner(f)
            if owner < len(records):
                names[owner] = (records[owner].id, records[owner].path)
            else:
                names[len(records)] = (None, RESERVED_MANIFEST_NAME)
        tail = tail or end > layout.frames_end
    return PieceOwners([names[k] for k in sorted(names)], tail)


def manifest_members(
    layout: Layout, sink: Members, piece_size: int | None, spans: Sequence[tuple[int, int]] | None = None
) -> MemberLevel:
    """The members the manifest (or the member index: `spans`, their file bytes) lists that failed their
    checks, each with its frames and pieces."""
    frames = layout.stream_frames
    damaged = []
    for j, reason in sink.damaged:
        if j < 0:
            manifest = MemberDamage(None, RESERVED_MANIFEST_NAME, (0, 0), None, reason)
            damaged.append(Located(manifest, 0, manifest=True))
            continue
        rec = layout.records[j]
        first = layout.last_frames[j - 1] + 1 if j else 0
        span = (first, rec.last_frame)
        if spans is not None:
            offset, size = spans[j]
            pieces = (
                None
                if piece_size is None
                else (offset // piece_size, (offset + max(size, 1) - 1) // piece_size)
            )
        else:
            offset, pieces = frames[first].compressed_offset, piece_span(frames, piece_size, *span)
        damage = MemberDamage(rec.id, rec.path, span, pieces, reason)
        damaged.append(Located(damage, offset))
    return MemberLevel(len(layout.records), damaged)


def walked_members(layout: Layout, walk: TarWalk, piece_size: int | None, size: int) -> MemberLevel:
    """The members named from their tar headers that are damaged, the runs of frames whose header is lost,
    and where a frame scan stopped short of the end of the `size`-byte file."""
    frames = layout.stream_frames
    known_end = frames[-1].decompressed_offset + frames[-1].decompressed_size if frames else 0
    cut = bool(walk.members) and not walk.in_lost and walk.run_end > known_end
    damaged = []
    for k, m in enumerate(walk.members):
        bad = m.bad
        if bad is None and cut and k == len(walk.members) - 1:
            bad = f"its bytes after frame {m.last_frame} are missing"
        if bad is None:
            continue
        span = (m.first_frame, m.last_frame)
        damage = MemberDamage(None, m.path, span, piece_span(frames, piece_size, *span), bad)
        offset = frames[m.first_frame].compressed_offset
        damaged.append(Located(damage, offset, manifest=m.path == RESERVED_MANIFEST_NAME))
    whole = layout.how == FramesFrom.SEEK_TABLE and layout.partial is None
    lost = []
    for run in walk.lost:
        after = any(m.first_frame > run.last_frame for m in walk.members)
        last = run.last_frame == len(frames) - 1 and not after
        span = (run.first_frame, run.last_frame)
        offset = frames[run.first_frame].compressed_offset
        lost.append(LostRun(span, piece_span(frames, piece_size, *span), offset, last and whole, run.bad))
    scan_stopped = layout.how == FramesFrom.FRAME_SCAN and (
        layout.partial is not None or layout.frames_end < size
    )
    return MemberLevel(
        checked=sum(1 for m in walk.members if m.path != RESERVED_MANIFEST_NAME),
        damaged=damaged,
        named_from_headers=True,
        lost=lost,
        lost_after=layout.frames_end if scan_stopped else None,
    )
