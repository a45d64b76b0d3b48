"""Localisation without files: bad pieces to members, damaged frames to members and pieces, made-up layouts.

A synthetic shard: member j takes a run of frames of FRAME bytes each (a 512-byte tar header, then zeros),
compressed to CFRAME bytes each; the member manifest takes one last frame. The read passes' sinks are fed
the tar stream as FrameStream would, and told which frames failed.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from packager.container.format import RESERVED_MANIFEST_NAME, TAR_BLOCK, Frame, MemberRecord, tar_header
from packager.container.scan import FramesFrom, Layout
from packager.hashing import MemberHasher
from packager.verify.frames import Members, TarWalk
from packager.verify.localize import manifest_members, members_in_pieces, piece_span, walked_members

FRAME = 4 * TAR_BLOCK
CFRAME = 300


def synthetic(runs: list[int], *, records: bool = True) -> Layout:
    """Member j spans runs[j] frames; one more frame holds the manifest."""
    frames = [Frame(k, k * CFRAME, CFRAME, k * FRAME, FRAME, None) for k in range(sum(runs) + 1)]
    recs, first = [], 0
    for j, n in enumerate(runs):
        size = n * FRAME - TAR_BLOCK
        digest = MemberHasher()
        digest.update(bytes(size))
        d = digest.finish()
        recs.append(
            MemberRecord(
                f"id{j}",
                f"a/{j}.ogg",
                "audio",
                1.0,
                size,
                d.xxh3_128,
                d.sha256,
                first * FRAME + 512,
                first,
                first + n - 1,
            )
        )
        first += n
    layout = Layout(frames, None, len(frames) * CFRAME, FramesFrom.SEEK_TABLE, [], None, set())
    if records:
        layout.records, layout.last_frames = recs, [r.last_frame for r in recs]
    return layout


def run_members(layout: Layout, damaged: set[int], changed: set[int] = frozenset()) -> Members:
    """Feed every frame's bytes (a byte flipped in the `changed` frames), closing the `damaged` ones bad."""
    sink = Members(layout)
    starts = {(r.offset - TAR_BLOCK) // FRAME: r for r in layout.records}
    for f in layout.frames:
        data = bytearray(FRAME)
        if f.index in starts:  # each member's run starts with its tar header
            rec = starts[f.index]
            data[:TAR_BLOCK] = tar_header(rec.path, rec.size, 0)
        if f.index in changed:
            data[-1] = 1
        if f.index not in damaged:
            sink.feed(f.decompressed_offset, bytes(data))
        sink.frame_closed(
            f.index, f.index not in damaged, "does not decompress" if f.index in damaged else ""
        )
    return sink


def owner_of(layout: Layout, frame: int) -> int:
    return next((j for j, r in enumerate(layout.records) if r.last_frame >= frame), len(layout.records))


def test_a_damaged_frame_damages_exactly_its_member_with_its_frames_and_pieces():
    layout = synthetic([1, 3, 2])
    level = manifest_members(layout, run_members(layout, {2}), piece_size=1024)
    assert [(d.damage.id, d.damage.frames, d.damage.reason) for d in level.damaged] == [
        ("id1", (1, 3), "frame 2 does not decompress")
    ]
    # Frames 1-3 are file bytes 300-1199: pieces 0 and 1 of 1 KiB.
    assert level.damaged[0].damage.pieces == (0, 1) and level.damaged[0].offset == CFRAME
    assert level.checked == 3 and not level.named_from_headers


def test_wrong_bytes_in_an_intact_frame_fail_the_member_hashes():
    layout = synthetic([2, 2])
    (found,) = manifest_members(layout, run_members(layout, set(), changed={3}), piece_size=None).damaged
    assert found.damage.id == "id1" and found.damage.reason.startswith("xxh3-128 is ")
    assert found.damage.pieces is None


def test_a_damaged_manifest_frame_is_the_manifest_not_a_member():
    layout = synthetic([1, 1])
    (found,) = manifest_members(layout, run_members(layout, {2}), piece_size=1024).damaged
    assert found.manifest and found.damage.path == RESERVED_MANIFEST_NAME


@given(st.lists(st.integers(1, 4), min_size=1, max_size=8), st.data())
def test_damaged_frames_localise_to_their_owners(runs, data):
    layout = synthetic(runs)
    damaged = data.draw(st.sets(st.integers(0, len(layout.frames) - 1)))
    level = manifest_members(layout, run_members(layout, damaged), piece_size=512)
    owners = {owner_of(layout, f) for f in damaged}
    named = {d.damage.id for d in level.damaged if not d.manifest}
    assert named == {layout.records[j].id for j in owners if j < len(layout.records)}
    assert any(d.manifest for d in level.damaged) == (len(layout.records) in owners)
    for d in level.damaged:
        if not d.manifest:
            first, last = d.damage.frames
            frames = layout.frames[first : last + 1]
            assert all(owner_of(layout, f.index) == owner_of(layout, first) for f in frames)
            start, end = frames[0].compressed_offset, frames[-1].compressed_offset + CFRAME
            assert d.damage.pieces == (start // 512, (end - 1) // 512)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=8), st.data())
def test_bad_pieces_name_every_member_they_overlap(runs, data):
    layout = synthetic(runs)
    piece = data.draw(st.sampled_from([256, 512, 1024, 4096]))
    count = -(-layout.frames_end // piece)  # pieces starting inside the frames (see the test below)
    bad = sorted(data.draw(st.sets(st.integers(0, count - 1), min_size=1)))
    owners = members_in_pieces(layout, bad, piece)
    hit = {
        owner_of(layout, f.index)
        for f in layout.frames
        for p in bad
        if f.compressed_offset < (p + 1) * piece and p * piece < f.compressed_offset + CFRAME
    }
    names = [(r.id, r.path) for r in layout.records] + [(None, RESERVED_MANIFEST_NAME)]
    assert owners.members == [names[j] for j in sorted(hit)]
    assert owners.tail == any((p + 1) * piece > layout.frames_end for p in bad)


def test_a_bad_piece_past_the_frames_is_the_tail():
    layout = synthetic([1])  # frames 0-599, then the seek table
    owners = members_in_pieces(layout, [1], 1024)
    assert owners.tail
    # Known imprecision kept by the refactor: the last frame is named too, though the piece misses it.
    assert owners.members == [(None, RESERVED_MANIFEST_NAME)]


def test_an_unreadable_manifest_names_no_member_in_bad_pieces():
    owners = members_in_pieces(synthetic([2, 2], records=False), [0, 1], 512)
    assert owners.members == [] and not owners.tail


def test_piece_span_of_frames():
    frames = synthetic([1, 1]).frames
    assert piece_span(frames, 256, 0, 0) == (0, 1)  # bytes 0-299
    assert piece_span(frames, 256, 1, 2) == (1, 3)  # bytes 300-899
    assert piece_span(frames, CFRAME, 1, 1) == (1, 1)  # a frame that ends where its piece ends
    assert piece_span(frames, None, 0, 2) is None


# --- members named from their tar headers (the manifest unreadable) ---------------------------------------


def walk(runs: list[int], lost_header: set[int] = frozenset(), damaged: set[int] = frozenset()) -> TarWalk:
    """Feed a TarWalk each frame's head: a tar header where a member's run starts (the manifest last)."""
    layout = synthetic(runs, records=False)
    starts = {sum(runs[:j]): (f"a/{j}.ogg", n * FRAME - TAR_BLOCK) for j, n in enumerate(runs)}
    starts[sum(runs)] = (RESERVED_MANIFEST_NAME, FRAME - TAR_BLOCK)
    sink = TarWalk(layout.stream_frames)
    for f in layout.frames:
        if f.index in starts and f.index not in lost_header:
            name, size = starts[f.index]
            sink.feed(f.decompressed_offset, tar_header(name, size, 0) + bytes(FRAME - TAR_BLOCK))
        elif f.index not in lost_header:
            sink.feed(f.decompressed_offset, bytes(FRAME))
        bad = f.index in damaged or f.index in lost_header
        sink.frame_closed(f.index, not bad, "does not decompress" if bad else "")
    return sink


def test_members_named_from_headers_and_a_lost_header():
    layout = synthetic([2, 1, 2], records=False)
    level = walked_members(layout, walk([2, 1, 2], lost_header={2}, damaged={4}), 1024, layout.frames_end)
    assert level.named_from_headers and level.checked == 2
    assert [(d.damage.path, d.damage.frames) for d in level.damaged] == [("a/2.ogg", (3, 4))]
    (run,) = level.lost
    assert run.frames == (2, 2) and not run.holds_manifest and run.offset == 2 * CFRAME


def test_the_lost_last_run_of_a_whole_shard_holds_the_manifest():
    layout = synthetic([1, 1], records=False)
    level = walked_members(layout, walk([1, 1], lost_header={2}), None, layout.frames_end)
    assert [r.holds_manifest for r in level.lost] == [True] and level.damaged == []
    layout.how = FramesFrom.FRAME_SCAN  # frames found by a scan: the run might be any member's
    level = walked_members(layout, walk([1, 1], lost_header={2}), None, layout.frames_end + 10)
    assert [r.holds_manifest for r in level.lost] == [False] and level.lost_after == layout.frames_end


def test_a_member_cut_short_by_the_last_frame_is_damaged():
    layout = synthetic([1, 3], records=False)
    layout.frames = layout.frames[:2]  # the file ends inside member 1's run
    sink = TarWalk(layout.stream_frames)
    sink.feed(0, tar_header("a/0.ogg", FRAME - TAR_BLOCK, 0) + bytes(FRAME - TAR_BLOCK))
    sink.frame_closed(0, True, "")
    sink.feed(FRAME, tar_header("a/1.ogg", 3 * FRAME - TAR_BLOCK, 0) + bytes(FRAME - TAR_BLOCK))
    sink.frame_closed(1, True, "")
    level = walked_members(layout, sink, None, 2 * CFRAME)
    assert [(d.damage.path, d.damage.reason) for d in level.damaged] == [
        ("a/1.ogg", "its bytes after frame 1 are missing")
    ]
