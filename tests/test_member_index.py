"""The member index on its own: piece ranges from the seek table, what locate reads back, refusals."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packager.container import Frame
from packager.errors import PublishError, UsageError
from packager.member_index import Location, MemberIndex, member_rows
from tests.helpers import torrent_entries, torrent_entry


def frames_of(sizes: list[int]) -> list[Frame]:
    """Frames of the given compressed sizes, each 4096 bytes decompressed."""
    frames, offset = [], 0
    for i, size in enumerate(sizes):
        frames.append(Frame(i, offset, size, i * 4096, 4096, None))
        offset += size
    return frames


def test_piece_range_covers_the_member_frames():
    frames = frames_of([100, 16284, 1, 16384, 50])  # frame 1 ends exactly at the end of piece 0
    locations = [
        ("a", 10, 512, 0, 0),  # inside piece 0
        ("b", 9000, 4608, 1, 1),  # frame 1 ends on the piece boundary: still piece 0 only
        ("c", 0, 8704, 2, 2),  # an empty member: the frame of its header, first byte of piece 1
        ("d", 9000, 12800, 3, 4),  # frames 3-4: bytes 16385..32818, pieces 1-2
    ]
    rows = {r[0]: r for r in member_rows(locations, frames, 16384)}
    # (id, offset, size, first_frame, last_frame, frames_offset, frames_size, frames_tar_offset, pieces)
    assert rows["a"] == ("a", 512, 10, 0, 0, 0, 100, 0, 0, 0)
    assert rows["b"][5:] == (100, 16284, 4096, 0, 0)
    assert rows["c"][5:] == (16384, 1, 8192, 1, 1)
    assert rows["d"][5:] == (16385, 16434, 12288, 1, 2)


# --- read back what was written ---------------------------------------------------------------------------

ID = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=22)


@st.composite
def indexed_torrents(draw):
    """Torrents, each with members (id, size, offset, first_frame, last_frame) over a random seek table."""
    torrents = list({e.name: e for e in draw(st.lists(torrent_entries(), min_size=1, max_size=3))}.values())
    ids = iter(draw(st.lists(ID, min_size=sum(1 for _ in torrents), max_size=30, unique=True)))
    out = []
    for e in torrents:
        frames = frames_of(draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=8)))
        members = []
        for ident in ids:
            first = draw(st.integers(0, len(frames) - 1))
            last = draw(st.integers(first, len(frames) - 1))
            members.append((ident, draw(st.integers(0, 2**40)), first * 4096 + 512, first, last))
            if draw(st.booleans()):
                break
        out.append((e, frames, members))
    return out


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(indexed_torrents())
def test_locate_reads_back_what_add_torrents_wrote(tmp_path_factory, torrents):
    path = tmp_path_factory.mktemp("index") / "members.sqlite"
    index = MemberIndex.create(path, "r")
    index.add_torrents((n, e, member_rows(m, f, e.piece_size)) for n, (e, f, m) in enumerate(torrents, 1))
    index.close()
    expected = {}
    for e, frames, members in torrents:
        for row in member_rows(members, frames, e.piece_size):
            facts = (e.name, e.phase, e.tier, e.info_hash_v1, e.info_hash_v2, e.magnet, e.torrent_file)
            expected[row[0]] = Location(row[0], *facts, e.shard.path, e.shard.size, e.piece_size, *row[1:])
    with MemberIndex.open(path.parent) as index:
        assert index.torrent_names() == [e.name for e, _, _ in torrents]
        found, missing = index.locate([*expected, "not-there"])
    assert found == list(expected.values()) and missing == ["not-there"]


def test_an_id_indexed_twice_is_refused_and_nothing_is_added(tmp_path):
    e, other = torrent_entry(), torrent_entry("r-audio-t1-00002")
    index = MemberIndex.create(tmp_path / "m.sqlite", "r")
    frames = frames_of([100])
    index.add_torrents([(1, e, member_rows([("a", 1, 512, 0, 0)], frames, e.piece_size))])
    with pytest.raises(PublishError, match="'a' is already indexed"):
        index.add_torrents([(2, other, member_rows([("a", 1, 512, 0, 0)], frames, e.piece_size))])
    assert index.torrent_names() == [e.name]
    index.close()


def test_what_is_not_a_member_index_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no member index here"):
        MemberIndex.open(tmp_path)
    (tmp_path / "members.sqlite").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(UsageError, match="not a packager member index"):
        MemberIndex.open(tmp_path / "members.sqlite")
