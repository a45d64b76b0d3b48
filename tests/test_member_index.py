"""The member index on its own: rows from the seek table, what locate reads back, determinism, refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packager import layout
from packager.errors import PublishError, UntrustedManifest, UsageError
from packager.member_index import (
    FolderFiles,
    IndexedTorrent,
    Location,
    MemberIndex,
    MemberIndexWriter,
    bits_for,
    buckets,
    member_rows,
    writer,
)
from packager.member_index import format as index_format
from tests.helpers import torrent_entries, torrent_entry, unique_by_name


def frames_of(sizes: list[int]) -> list[tuple[int, int, int]]:
    """Frames of the given compressed sizes, each 4096 bytes decompressed, as read_frame_spans gives them."""
    frames, offset = [], 0
    for i, size in enumerate(sizes):
        frames.append((offset, size, i * 4096))
        offset += size
    return frames


def record(ident: str, size: int, offset: int, first: int, last: int) -> tuple:
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()
    return (ident, f"audio/{len(ident)}/x.ogg", size, offset, first, last, digest[:32], digest)


def test_pieces_cover_the_member_frames():
    frames = frames_of([100, 16284, 1, 16384, 50])  # frame 1 ends exactly at the end of piece 0
    e = torrent_entry()  # 16 KiB pieces
    t = IndexedTorrent.of_entry(1, e)
    records = [
        record("a", 10, 512, 0, 0),  # inside piece 0
        record("b", 9000, 4608, 1, 1),  # frame 1 ends on the piece boundary: still piece 0 only
        record("c", 0, 8704, 2, 2),  # an empty member: the frame of its header, first byte of piece 1
        record("d", 9000, 12800, 3, 4),  # frames 3-4: bytes 16385..32818, pieces 1-2
    ]
    locs = {r[0]: Location(r[0], t, *r[2:]) for r in member_rows(records, frames, 1)}
    spans = {
        k: (v.frames_offset, v.frames_size, v.frames_tar_offset, v.first_piece, v.last_piece)
        for k, v in locs.items()
    }
    assert spans == {
        "a": (0, 100, 0, 0, 0),
        "b": (100, 16284, 4096, 0, 0),
        "c": (16384, 1, 8192, 1, 1),
        "d": (16385, 16434, 12288, 1, 2),
    }


@pytest.mark.parametrize("first, last", [(-1, 0), (0, -1), (2, 1), (0, 5), (5, 5)])
def test_a_member_outside_the_seek_table_is_refused(first, last):
    # A negative frame would be one from the table's end: a wrong span with nothing said (review F14).
    frames = frames_of([100, 200, 300])
    with pytest.raises(ValueError, match="not among the shard's 3"):
        list(member_rows([record("a", 10, 512, first, last)], frames, 1))


# --- read back what was written ---------------------------------------------------------------------------

ID = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=22)


@st.composite
def indexed_torrents(draw):
    """Torrents, each with member records over a random seek table."""
    torrents = unique_by_name(draw(st.lists(torrent_entries(), min_size=1, max_size=3)))
    ids = iter(draw(st.lists(ID, min_size=len(torrents), max_size=40, unique=True)))
    out = []
    for e in torrents:
        frames = frames_of(draw(st.lists(st.integers(1, 70_000), min_size=1, max_size=8)))
        records = []
        for ident in ids:
            first = draw(st.integers(0, len(frames) - 1))
            last = draw(st.integers(first, len(frames) - 1))
            records.append(record(ident, draw(st.integers(0, 2**40)), first * 4096 + 512, first, last))
            if draw(st.booleans()):
                break
        size = frames[-1][0] + frames[-1][1]
        e = e.__class__(
            **{**e.__dict__, "files": (e.shard.__class__(e.shard.path, size, e.shard.sha256), e.torrent)}
        )
        out.append((e, frames, records))
    return out


def write(folder: Path, torrents, previous: MemberIndex | None = None, start: int = 1):
    with MemberIndexWriter(folder / layout.MEMBER_INDEX_DIR, "r", previous) as w:
        w.add_torrents((n, e, member_rows(r, f, n)) for n, (e, f, r) in enumerate(torrents, start))
        return w.finish()


def expected_locations(torrents) -> dict[str, Location]:
    out = {}
    for n, (e, frames, records) in enumerate(torrents, 1):
        t = IndexedTorrent.of_entry(n, e)
        out.update({row[0]: Location(row[0], t, *row[2:]) for row in member_rows(records, frames, n)})
    return out


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(torrents=indexed_torrents(), part_rows=st.sampled_from([1, 3, 1024]))
def test_locate_reads_back_what_was_written(tmp_path_factory, monkeypatch, torrents, part_rows):
    monkeypatch.setattr(index_format, "PART_ROWS", part_rows)  # small parts: many parts and directories
    folder = tmp_path_factory.mktemp("index")
    written = write(folder, torrents)
    expected = expected_locations(torrents)
    assert written.members == len(expected) and written.parts == 1 << bits_for(len(expected))
    with MemberIndex.open(folder) as index:
        assert index.torrent_names() == [e.name for e, _, _ in torrents]
        found, missing = index.locate([*expected, "not-there"])
    assert found == list(expected.values()) and missing == ["not-there"]


def big_release(members: int, torrents: int = 3) -> list:
    out, ids = [], iter(f"id{i:06d}-{'x' * (i % 7)}" for i in range(members))
    for n in range(torrents):
        frames = frames_of([1000] * (members // torrents))
        records = [record(next(ids), 100, k * 4096 + 512, k, k) for k in range(len(frames))]
        e = torrent_entry(f"r-audio-t1-{n + 1:05d}")
        e = e.__class__(
            **{**e.__dict__, "files": (e.shard.__class__(e.shard.path, 10**9, e.shard.sha256), e.torrent)}
        )
        out.append((e, frames, records))
    return out


def digests(folder: Path) -> dict[str, str]:
    return {
        n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
        for n in (layout.MEMBER_INDEX, layout.MEMBER_INDEX_PACK)
    }


def test_the_bytes_depend_on_the_members_only(tmp_path, monkeypatch):
    """Any order of the rows, a sort split into sub-buckets, or an index extended from the previous one:
    the same files, byte for byte."""
    monkeypatch.setattr(index_format, "PART_ROWS", 16)
    release = big_release(3000)
    write(tmp_path / "a", release)
    shuffled = [(e, f, list(reversed(r))) for e, f, r in release]
    write(tmp_path / "b", shuffled)
    monkeypatch.setattr(writer, "SORT_BYTES", 10_000)  # every bucket split again
    write(tmp_path / "c", release)
    monkeypatch.undo()
    monkeypatch.setattr(index_format, "PART_ROWS", 16)
    write(tmp_path / "first", release[:2])
    with MemberIndex.open(tmp_path / "first") as previous:
        write(tmp_path / "d", release[2:], previous, start=3)
    assert (
        digests(tmp_path / "a")
        == digests(tmp_path / "b")
        == digests(tmp_path / "c")
        == digests(tmp_path / "d")
    )
    root = json.loads((tmp_path / "a" / layout.MEMBER_INDEX).read_text())
    assert root["members"] == 3000 and root["partition"]["bits"] == bits_for(3000) == 8
    assert len(root["directories"]) == 16 and root["torrent_chunks"][0][3:] == [1, 3]


def test_the_bucket_sort_in_worker_processes_gives_the_same_bytes(tmp_path, monkeypatch):
    """From 2^BUCKET_BITS parts on, each bucket is cut into its parts alone, in worker processes: the
    same files as inline, also when a worker splits a bucket again (a part then spans sub-buckets)."""
    monkeypatch.setattr(index_format, "PART_ROWS", 2)
    release = big_release(3000)
    write(tmp_path / "inline", release)
    monkeypatch.setattr(writer, "POOL_MEMBERS", 0)
    monkeypatch.setattr(writer, "WORKERS", 2)
    write(tmp_path / "pool", release)
    monkeypatch.setattr(writer, "SORT_BYTES", 300)  # ~3 members a bucket: every one split
    write(tmp_path / "split", release)
    assert digests(tmp_path / "inline") == digests(tmp_path / "pool") == digests(tmp_path / "split")
    root = json.loads((tmp_path / "pool" / layout.MEMBER_INDEX).read_text())
    assert root["partition"]["bits"] == 11 >= buckets.BUCKET_BITS
    expected = expected_locations(release)
    with MemberIndex.open(tmp_path / "split") as index:
        found, missing = index.locate(expected)
    assert found == list(expected.values()) and not missing


def rows_of_release(job: tuple):
    """add_rows_in_workers' reader for big_release torrents (module level: it runs in workers)."""
    n, frames, records = job
    return member_rows(records, frames, n)


def test_rows_read_in_worker_processes_give_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(index_format, "PART_ROWS", 2)
    release = big_release(3000, torrents=5)
    write(tmp_path / "one", release)
    monkeypatch.setattr(writer, "POOL_MEMBERS", 0)
    monkeypatch.setattr(writer, "WORKERS", 2)
    torrents = [(n, e) for n, (e, _, _) in enumerate(release, 1)]
    jobs = [((n, f, r), len(r)) for n, (_, f, r) in enumerate(release, 1)]
    with MemberIndexWriter(tmp_path / "two" / layout.MEMBER_INDEX_DIR, "r") as w:
        w.add_rows_in_workers(torrents, jobs, rows_of_release)
        assert w.finish().members == 3000
    write(tmp_path / "first", release[:2])
    with (
        MemberIndex.open(tmp_path / "first") as previous,
        MemberIndexWriter(tmp_path / "three" / layout.MEMBER_INDEX_DIR, "r", previous) as w,
    ):
        w.add_rows_in_workers(torrents[2:], jobs[2:], rows_of_release)
        w.finish()
    assert digests(tmp_path / "one") == digests(tmp_path / "two") == digests(tmp_path / "three")


def test_a_lookup_reads_one_directory_one_part_and_one_torrent_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(index_format, "PART_ROWS", 16)
    written = write(tmp_path, big_release(3000))
    index = MemberIndex.open(tmp_path)
    (loc,), _ = index.locate(["id001234-xx"])
    assert loc.path == "audio/11/x.ogg"
    # root + directory + part + torrent chunk: a small fraction of the pack
    assert index.bytes_read < written.root_size + 3 * written.pack_size / 64


@pytest.mark.parametrize("pool", [False, True])
def test_an_id_indexed_twice_is_refused(tmp_path, monkeypatch, pool):
    e, other = torrent_entry(), torrent_entry("r-audio-t1-00002")
    frames = frames_of([100])
    filler = [record(f"f{i}", 1, 512, 0, 0) for i in range(3000)]
    if pool:  # 2^11 parts, cut in worker processes
        monkeypatch.setattr(index_format, "PART_ROWS", 2)
        monkeypatch.setattr(writer, "POOL_MEMBERS", 0)
        monkeypatch.setattr(writer, "WORKERS", 2)
    with pytest.raises(PublishError, match="'a' is indexed twice, in r-audio-t1-00001 and r-audio-t1-00002"):
        write(
            tmp_path,
            [(e, frames, [record("a", 1, 512, 0, 0), *filler]), (other, frames, [record("a", 1, 512, 0, 0)])],
        )
    assert not list((tmp_path / layout.MEMBER_INDEX_DIR).glob(".spill-*"))  # the spill folder is gone


def test_what_is_not_a_member_index_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no member index here"):
        MemberIndex.open(tmp_path)
    root = tmp_path / layout.MEMBER_INDEX
    root.parent.mkdir()
    root.write_bytes(b"not json at all" * 100)
    with pytest.raises(UntrustedManifest, match="not JSON"):
        MemberIndex.open(tmp_path)
    root.write_text('{"format": 1}')
    with pytest.raises(UntrustedManifest, match="unknown member index format 1"):
        MemberIndex.open(root)


@pytest.fixture
def small_index(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(index_format, "PART_ROWS", 16)
    write(tmp_path / "good", big_release(300))
    return tmp_path / "good"


def edited(small_index: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(small_index, copy)
    edit(copy)
    return copy


def test_a_root_other_than_the_signed_one_is_refused(small_index):
    good = digests(small_index)[layout.MEMBER_INDEX]
    MemberIndex(FolderFiles(small_index), root_sha256=good)
    with pytest.raises(UntrustedManifest, match="the signed publication says"):
        MemberIndex(FolderFiles(small_index), root_sha256="0" * 64)


def test_a_damaged_or_swapped_chunk_is_refused(small_index, tmp_path):
    def flip(folder: Path) -> None:
        pack = folder / layout.MEMBER_INDEX_PACK
        data = bytearray(pack.read_bytes())
        data[len(data) // 3] ^= 1
        pack.write_bytes(bytes(data))

    copy = edited(small_index, tmp_path, flip)
    with pytest.raises(UntrustedManifest, match="the index root says"), MemberIndex.open(copy) as index:
        index.locate([f"id{i:06d}-{'x' * (i % 7)}" for i in range(300)])


def test_a_hostile_root_is_refused_before_anything_is_read(small_index, tmp_path):
    def bad(folder: Path, change) -> Path:
        root = json.loads((folder / layout.MEMBER_INDEX).read_text())
        change(root)
        (folder / layout.MEMBER_INDEX).write_bytes(orjson.dumps(root))
        return folder

    for change, reason in (
        (lambda r: r["partition"].update(bits=40), "partition"),
        (lambda r: r["directories"].pop(), "directories"),
        (lambda r: r["directories"][0].__setitem__(1, 2**40), r"directories\[0\]"),
        (lambda r: r["torrent_chunks"][0].__setitem__(2, "zz"), r"torrent_chunks\[0\]"),
        (lambda r: r.update(members="many"), "wrong type"),
    ):
        shutil.rmtree(tmp_path / "copy", ignore_errors=True)
        copy = edited(small_index, tmp_path, lambda f, c=change: bad(f, c))
        with pytest.raises(UntrustedManifest, match=reason):
            MemberIndex.open(copy)
