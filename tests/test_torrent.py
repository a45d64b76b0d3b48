"""packager.torrent against libtorrent's own create_torrent, torf, and the documented piece-size rule."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path

import libtorrent as lt
import pytest
import torf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packager import __version__
from packager import torrent as T
from packager.errors import PieceSizeError, TorrentError, UsageError
from packager.hashing import ShardHasher, ShardHashes
from packager.torrent import (
    PIECE_SIZE_MAX,
    PIECE_SIZE_MIN,
    TorrentSpec,
    build_metainfo,
    identity,
    info_bytes,
    magnet_link,
    parse_piece_size,
    piece_size_for,
    piece_size_table,
    read_torrent,
    write_torrent,
)
from tests.helpers import info_section, libtorrent_torrent

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40
BLOCK = 16 * KiB
NAME = "music-audio-t1-00001.tar.zst"


# --- piece size rule ------------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 4 * TiB), min_size=2, max_size=20))
def test_piece_size_is_a_monotonic_power_of_two_within_bounds(sizes):
    pieces = [piece_size_for(s) for s in sorted(sizes)]
    assert pieces == sorted(pieces)
    for piece in pieces:
        assert PIECE_SIZE_MIN <= piece <= PIECE_SIZE_MAX
        assert piece & (piece - 1) == 0


@given(st.integers(64 * MiB, 1 * TiB))
def test_piece_count_lands_in_the_documented_band(size):
    piece = piece_size_for(size)
    count = -(-size // piece)
    if size <= 64 * MiB:
        assert piece == PIECE_SIZE_MIN and count <= 4096
    elif size <= 256 * GiB:
        assert 2049 <= count <= 4096
        assert -(-size // (piece // 2)) > 4096  # the smallest power of two that fits
    else:
        assert piece == PIECE_SIZE_MAX and 4096 < count <= 16384


@pytest.mark.parametrize(
    ("size", "piece"),
    [
        (0, 16 * KiB),
        (1, 16 * KiB),
        (64 * MiB, 16 * KiB),
        (64 * MiB + 1, 32 * KiB),
        (1 * GiB, 256 * KiB),
        (1 * GiB + 1, 512 * KiB),
        (50 * 10**9, 16 * MiB),
        (256 * GiB, 64 * MiB),
        (1 * TiB, 64 * MiB),
    ],
)
def test_piece_size_rule_boundaries(size, piece):
    assert piece_size_for(size) == piece


def test_piece_size_table_follows_the_rule():
    table = piece_size_table()
    assert [size for size, _, _ in table] == sorted(size for size, _, _ in table)
    for size, piece, count in table:
        assert piece == piece_size_for(size)
        assert count == -(-size // piece)
    assert (1 * GiB, 256 * KiB, 4096) in table
    assert piece_size_table([100]) == [(100, 16 * KiB, 1)]


def test_piece_size_for_rejects_negative():
    with pytest.raises(ValueError):
        piece_size_for(-1)


@pytest.mark.parametrize(
    ("text", "value"),
    [("4MiB", 4 * MiB), ("16KiB", 16 * KiB), ("16kib", 16 * KiB), (" 2 MiB ", 2 * MiB), ("64MiB", 64 * MiB),
     ("1048576", MiB), (1048576, MiB), ("32768B", 32 * KiB)],
)  # fmt: skip
def test_parse_piece_size(text, value):
    assert parse_piece_size(text) == value


@pytest.mark.parametrize(
    ("text", "size"),
    [("3MiB", 3 * MiB), ("8KiB", 8 * KiB), ("128MiB", 128 * MiB), ("4MB", 4 * 10**6), (0, 0), (1000, 1000)],
)
def test_parse_piece_size_refuses_impossible_sizes(text, size):
    with pytest.raises(PieceSizeError) as caught:
        parse_piece_size(text)
    assert caught.value.size == size
    assert (caught.value.minimum, caught.value.maximum) == (PIECE_SIZE_MIN, PIECE_SIZE_MAX)
    assert str(size) in str(caught.value)


@pytest.mark.parametrize("text", ["", "abc", "4 XB", "-16KiB", "1.5MiB", True])
def test_parse_piece_size_refuses_non_sizes(text):
    with pytest.raises(UsageError, match="not a number of bytes"):
        parse_piece_size(text)


# --- helpers: the same file through ShardHasher and through libtorrent --------------------------------


def hash_file(path: Path, piece_size: int, v2: bool = True, chunk: int = 100_003) -> ShardHashes:
    hasher = ShardHasher(piece_size, v2=v2)
    with path.open("rb") as f:
        while data := f.read(chunk):
            hasher.update(data)
    return hasher.finish()


def write_random(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(hashlib.shake_256(f"{seed}:{size}".encode()).digest(size) if size else b"")
    return path


@pytest.fixture
def shard_file(tmp_path: Path) -> Path:
    return write_random(tmp_path / NAME, 5 * BLOCK + 123)


def spec_for(path: Path, fmt: str = "v1", piece_size: int = BLOCK, **kwargs) -> TorrentSpec:
    return TorrentSpec(path.name, hash_file(path, piece_size), fmt, **kwargs)


# --- byte-identical to libtorrent -----------------------------------------------------------------------


def boundary_sizes(piece: int) -> st.SearchStrategy[int]:
    edges = [1, BLOCK - 1, BLOCK, BLOCK + 1, piece - 1, piece, piece + 1, 2 * piece, 3 * piece - 1,
             3 * piece + BLOCK, 7 * piece + 1]  # fmt: skip
    return st.one_of(st.sampled_from([e for e in edges if e > 0]), st.integers(1, 9 * piece))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), fmt=st.sampled_from(T.FORMATS), piece=st.sampled_from([BLOCK, 2 * BLOCK, 4 * BLOCK]))
def test_info_dict_is_byte_identical_to_libtorrent(data, fmt, piece):
    size = data.draw(boundary_sizes(piece), label="size")
    chunk = data.draw(st.sampled_from([1000, BLOCK, piece + 7, 1 << 20]), label="chunk")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random(Path(tmp) / NAME, size, seed=piece)
        reference = libtorrent_torrent(path, piece, fmt)
        spec = TorrentSpec(NAME, hash_file(path, piece, chunk=chunk), fmt)
        ours = build_metainfo(spec)
        assert info_bytes(spec) == info_section(reference)
        assert info_section(ours) == info_section(reference)
        assert lt.bdecode(ours).get(b"piece layers") == lt.bdecode(reference).get(b"piece layers")
        hashes = lt.torrent_info(reference).info_hashes()
        ident = identity(spec)
        assert ident.info_hash_v1 == (str(hashes.v1) if hashes.has_v1() else None)
        assert ident.info_hash_v2 == (str(hashes.v2) if hashes.has_v2() else None)
        torrent = Path(tmp) / "x.torrent"
        write_torrent(torrent, ours)
        loaded = lt.torrent_info(str(torrent))  # libtorrent loads every torrent we write
        assert loaded.info_hashes() == hashes
        assert loaded.num_pieces() == -(-size // piece)


@pytest.mark.parametrize("fmt", T.FORMATS)
def test_top_level_mirrors_libtorrent(fmt, shard_file):
    extra = {
        "trackers": (("http://a.example/announce", "udp://b.example:6969/announce"),
                     ("https://c.example/announce",)),
        "web_seeds": ("https://w.example/files/",),
        "private": True,
        "created_by": "someone",
        "comment": "a comment",
    }  # fmt: skip
    ours = lt.bdecode(build_metainfo(spec_for(shard_file, fmt, **extra)))
    reference = lt.bdecode(libtorrent_torrent(shard_file, BLOCK, fmt, **extra))
    assert ours == reference


@pytest.mark.parametrize(
    ("trackers", "web_seeds"),
    [((("http://a/announce",),), ()), ((("http://a/announce", "http://b/announce"),), ()),
     ((("http://a/announce",), ("http://b/announce",)), ("http://w/1", "http://w/2"))],
)  # fmt: skip
def test_announce_list_and_url_list_shapes_mirror_libtorrent(trackers, web_seeds, shard_file):
    extra = {"trackers": trackers, "web_seeds": web_seeds, "created_by": f"packager {__version__}"}
    ours = lt.bdecode(build_metainfo(spec_for(shard_file, **extra)))
    assert ours == lt.bdecode(libtorrent_torrent(shard_file, BLOCK, "v1", **extra))


@pytest.mark.parametrize("fmt", T.FORMATS)
def test_trackers_and_web_seeds_do_not_change_the_info_hash(fmt, shard_file):
    hashes = hash_file(shard_file, BLOCK)
    bare = TorrentSpec(NAME, hashes, fmt)
    dressed = TorrentSpec(NAME, hashes, fmt, trackers=(("udp://t.example:1/announce",),),
                          web_seeds=("https://w.example/",), comment="c", creation_date=1_700_000_000,
                          created_by="x")  # fmt: skip
    assert identity(bare).info_hash_v1 == identity(dressed).info_hash_v1
    assert identity(bare).info_hash_v2 == identity(dressed).info_hash_v2
    assert info_bytes(bare) == info_bytes(dressed)


@pytest.mark.parametrize("fmt", T.FORMATS)
def test_private_and_source_are_in_the_info_dict(fmt, shard_file):
    hashes = hash_file(shard_file, BLOCK)
    public = identity(TorrentSpec(NAME, hashes, fmt))
    private = identity(TorrentSpec(NAME, hashes, fmt, private=True))
    sourced = TorrentSpec(NAME, hashes, fmt, source="RELEASE")
    assert len({public, private, identity(sourced)}) == 3
    assert lt.bdecode(info_bytes(sourced))[b"source"] == b"RELEASE"


def test_no_creation_date_unless_set(shard_file, tmp_path):
    hashes = hash_file(shard_file, BLOCK)
    assert b"creation date" not in lt.bdecode(build_metainfo(TorrentSpec(NAME, hashes)))
    dated = build_metainfo(TorrentSpec(NAME, hashes, creation_date=1_735_689_600))
    assert lt.bdecode(dated)[b"creation date"] == 1_735_689_600
    write_torrent(tmp_path / "d.torrent", dated)
    assert read_torrent(tmp_path / "d.torrent").creation_date == 1_735_689_600


def test_build_is_deterministic(shard_file):
    hashes = hash_file(shard_file, BLOCK)
    first, second = (build_metainfo(TorrentSpec(NAME, hashes, "hybrid")) for _ in range(2))
    assert first == second


@pytest.mark.parametrize("fmt", ["v1", "hybrid"])
def test_torf_reads_the_same_info_hash(fmt, shard_file, tmp_path):
    spec = spec_for(shard_file, fmt, trackers=(("http://t.example/announce",),))
    write_torrent(tmp_path / "t.torrent", build_metainfo(spec))
    read = torf.Torrent.read(tmp_path / "t.torrent")
    assert read.infohash == identity(spec).info_hash_v1
    assert (read.name, read.size, read.piece_size) == (NAME, spec.hashes.length, BLOCK)


# Golden values: any change to the bytes of a torrent for fixed content is a change to every published swarm.
# Computed with libtorrent 2.1.1's create_torrent, not with packager.
GOLDEN = {
    "v1": ("ed0b66f92ead7723a0a836da54c356805867ae5e", None),
    "hybrid": ("2cd10a746617a2e4e3bac16302d9269259a3348b",
               "27374def58ef1067d2569c7a5abb667c8eef0b25d5d70181295ca5c1db159d2d"),
    "v2": (None, "f361792284c09218ba9dd968ced4febe22faf3b00187c58a70ec012ef8a20eb6"),
}  # fmt: skip


@pytest.mark.parametrize("fmt", T.FORMATS)
def test_golden_info_hashes(fmt, tmp_path):
    path = write_random(tmp_path / NAME, 3 * BLOCK + 5, seed=7)
    ident = identity(TorrentSpec(NAME, hash_file(path, BLOCK), fmt))
    assert (ident.info_hash_v1, ident.info_hash_v2) == GOLDEN[fmt]


# --- identity and magnets -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", T.FORMATS)
def test_magnet_parses_back_in_libtorrent(fmt, shard_file):
    trackers = (("http://a.example/announce?key=1&x=2",), ("udp://b.example:6969",))
    seeds = ("https://w.example/some%20dir/",)
    spec = spec_for(shard_file, fmt, trackers=trackers, web_seeds=seeds)
    ident = identity(spec)
    parsed = lt.parse_magnet_uri(ident.magnet)
    assert parsed.name == NAME
    assert (str(parsed.info_hashes.v1) if parsed.info_hashes.has_v1() else None) == ident.info_hash_v1
    assert (str(parsed.info_hashes.v2) if parsed.info_hashes.has_v2() else None) == ident.info_hash_v2
    assert list(parsed.trackers) == [url for tier in trackers for url in tier]
    assert list(parsed.url_seeds) == list(seeds)
    assert identity(build_metainfo(spec)) == ident


def test_magnet_escapes_the_name():
    magnet = magnet_link("a b&c=d?é.tar.zst", "ab" * 20)
    assert magnet == "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=a%20b%26c%3Dd%3F%C3%A9.tar.zst"
    assert lt.parse_magnet_uri(magnet).name == "a b&c=d?é.tar.zst"
    with pytest.raises(TorrentError):
        magnet_link("x")


def test_v2_truncated_hash(shard_file):
    ident = identity(spec_for(shard_file, "hybrid"))
    assert ident.info_hash_v2_truncated == ident.info_hash_v2[:40]
    assert identity(spec_for(shard_file, "v1")).info_hash_v2_truncated is None


# --- files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", T.FORMATS)
def test_read_torrent_reports_what_was_built(fmt, tmp_path):
    path = write_random(tmp_path / NAME, 4 * BLOCK + 1)
    spec = TorrentSpec(NAME, hash_file(path, BLOCK), fmt,
                       trackers=(("http://a.example/announce", "http://b.example/announce"),
                                 ("udp://c.example:1/announce",)),
                       web_seeds=("https://w.example/x/", "https://v.example/y/"), private=True,
                       source="SRC", creation_date=1_735_689_600, comment="hello")  # fmt: skip
    metainfo = build_metainfo(spec)
    write_torrent(tmp_path / "t.torrent", metainfo)
    info = read_torrent(tmp_path / "t.torrent")
    ident = identity(spec)
    assert (info.name, info.size, info.piece_size, info.piece_count) == (NAME, 4 * BLOCK + 1, BLOCK, 5)
    assert info.files == ((NAME, 4 * BLOCK + 1),)
    assert (info.info_hash_v1, info.info_hash_v2, info.magnet) == (ident.info_hash_v1, ident.info_hash_v2,
                                                                   ident.magnet)  # fmt: skip
    assert info.trackers == spec.trackers
    assert info.web_seeds == spec.web_seeds
    assert (info.private, info.source, info.created_by) == (True, "SRC", f"packager {__version__}")
    assert (info.creation_date, info.comment, info.format) == (1_735_689_600, "hello", fmt)
    assert info.metainfo_size == len(metainfo)


def test_write_torrent_is_atomic_and_readable(tmp_path, shard_file):
    target = tmp_path / "x.torrent"
    target.write_bytes(b"old")
    metainfo = build_metainfo(spec_for(shard_file))
    old_umask = os.umask(0o022)
    try:
        write_torrent(target, metainfo)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == metainfo
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # published files: readable by a web server
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([NAME, "x.torrent"])


def test_write_torrent_failure_is_a_torrent_error(tmp_path):
    with pytest.raises(TorrentError, match="cannot write") as caught:
        write_torrent(tmp_path / "missing" / "x.torrent", b"d4:infodee")
    assert caught.value.path == tmp_path / "missing" / "x.torrent"


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"d4:infod4:name1:ae", b"i42e", b"d8:announce3:abce", b"\xff" * 100],
)
def test_read_torrent_refuses_garbage(content, tmp_path):
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(content)
    with pytest.raises(TorrentError) as caught:
        read_torrent(bad)
    assert caught.value.path == bad
    assert str(bad) in str(caught.value)


def test_read_torrent_refuses_truncated_and_missing_and_oversized(tmp_path, shard_file):
    whole = build_metainfo(spec_for(shard_file, "hybrid"))
    cut = tmp_path / "cut.torrent"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TorrentError, match="not a valid .torrent"):
        read_torrent(cut)
    with pytest.raises(TorrentError, match="cannot read"):
        read_torrent(tmp_path / "nope.torrent")
    with pytest.raises(TorrentError, match="cannot read"):
        read_torrent(tmp_path)
    huge = tmp_path / "huge.torrent"
    with huge.open("wb") as f:
        f.truncate(T.METAINFO_MAX_BYTES + 1)
    with pytest.raises(TorrentError, match="limit"):
        read_torrent(huge)


def test_build_refuses_a_metainfo_libtorrent_would_not_load(shard_file, monkeypatch):
    monkeypatch.setattr(T, "METAINFO_MAX_BYTES", 100)
    with pytest.raises(TorrentError, match="larger pieces"):
        build_metainfo(spec_for(shard_file))


# --- validation -----------------------------------------------------------------------------------------


@pytest.fixture
def hashes(shard_file) -> ShardHashes:
    return hash_file(shard_file, BLOCK)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"name": ""}, "''"),
        ({"name": "dir/file.tar.zst"}, "dir/file.tar.zst"),
        ({"name": "..\\x"}, "..\\\\x"),
        ({"name": ".."}, "'..'"),
        ({"format": "v3"}, "'v3'"),
        ({"trackers": (("ftp://t.example/announce",),)}, "ftp://t.example/announce"),
        ({"trackers": (("http:///announce",),)}, "http:///announce"),
        ({"trackers": ((),)}, "empty tracker tier"),
        ({"web_seeds": ("udp://w.example/",)}, "udp://w.example/"),
        ({"web_seeds": ("https://w.example/a b/",)}, "escape spaces"),
        ({"source": ""}, "source ''"),
        ({"creation_date": 0}, "creation date 0"),
    ],
)
def test_spec_refuses_bad_values(kwargs, shown, hashes):
    args = {"name": NAME, "hashes": hashes, **kwargs}
    with pytest.raises(TorrentError) as caught:
        TorrentSpec(**args)
    assert shown in str(caught.value)


def test_spec_accepts_plain_lists_from_config(hashes):
    trackers = [["http://a/announce"], "http://b/announce"]
    spec = TorrentSpec(NAME, hashes, trackers=trackers, web_seeds=["http://w/"])
    assert spec.trackers == (("http://a/announce",), ("http://b/announce",))
    assert spec.web_seeds == ("http://w/",)


def test_spec_checks_the_hashes(hashes):
    with pytest.raises(PieceSizeError):
        TorrentSpec(NAME, ShardHashes(hashes.length, hashes.sha256, 3 * BLOCK, hashes.v1_pieces))
    with pytest.raises(TorrentError, match="v1 pieces"):
        TorrentSpec(NAME, ShardHashes(hashes.length, hashes.sha256, BLOCK, hashes.v1_pieces[:-20]))
    with pytest.raises(TorrentError, match="not positive"):
        TorrentSpec(NAME, ShardHashes(0, hashes.sha256, BLOCK, b""))
    v1_only = ShardHashes(hashes.length, hashes.sha256, BLOCK, hashes.v1_pieces)
    assert TorrentSpec(NAME, v1_only, "v1")
    for fmt in ("hybrid", "v2"):
        with pytest.raises(TorrentError, match="v2=True"):
            TorrentSpec(NAME, v1_only, fmt)
    short_layer = ShardHashes(hashes.length, hashes.sha256, BLOCK, hashes.v1_pieces, hashes.v2_root,
                              hashes.v2_piece_layer[:-32])  # fmt: skip
    with pytest.raises(TorrentError, match="piece layer"):
        TorrentSpec(NAME, short_layer, "hybrid")


# --- piece hashes for a checker -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", T.FORMATS)
@pytest.mark.parametrize("size", [BLOCK // 2, 4 * BLOCK, 4 * BLOCK + 1])
def test_read_piece_hashes_gives_back_what_was_hashed(fmt, size, tmp_path):
    path = write_random(tmp_path / NAME, size)
    hashes = hash_file(path, 2 * BLOCK)
    metainfo = build_metainfo(TorrentSpec(NAME, hashes, fmt))
    got = T.read_piece_hashes(metainfo, "t.torrent", NAME)
    ident = identity(metainfo)
    assert (got.length, got.piece_size, got.count) == (size, 2 * BLOCK, -(-size // (2 * BLOCK)))
    assert (got.info_hash_v1, got.info_hash_v2) == (ident.info_hash_v1, ident.info_hash_v2)
    if fmt == "v2":  # v1 hashes are used whenever the torrent has them
        assert got.v1 is None and (got.v2_root, got.v2_layer) == (hashes.v2_root, hashes.v2_piece_layer)
        assert got.kind == "SHA-256 merkle (v2)"
    else:
        assert got.v1 == hashes.v1_pieces and got.kind == "SHA-1 (v1)"


def test_read_piece_hashes_refuses_another_file_or_a_missing_piece_layer(tmp_path, shard_file):
    metainfo = build_metainfo(spec_for(shard_file, "v2"))
    with pytest.raises(TorrentError, match="single file other.tar.zst"):
        T.read_piece_hashes(metainfo, "t.torrent", "other.tar.zst")
    meta = lt.bdecode(metainfo)
    # A refusal either way, never a traceback: libtorrent refuses some (a layer that is not a string) itself.
    for layers in ({}, 7, [b"x"], {next(iter(meta[b"piece layers"])): 7}):
        with pytest.raises(TorrentError, match="piece layer"):
            T.read_piece_hashes(lt.bencode(meta | {b"piece layers": layers}), "t.torrent", NAME)
    with pytest.raises(TorrentError, match="not a valid .torrent"):
        T.read_piece_hashes(metainfo[:-10], "t.torrent", NAME)


def libtorrent_piece_hashes(metainfo: bytes) -> T.PieceHashes:
    """What libtorrent reads in the same .torrent: the reference for our own reader."""
    ti = lt.torrent_info(metainfo)
    hashes, layout = ti.info_hashes(), ti.layout()
    v1 = str(hashes.v1) if hashes.has_v1() else None
    v2 = str(hashes.v2) if hashes.has_v2() else None
    length = layout.file_size(0)
    if v1:
        pieces = b"".join(ti.hash_for_piece(i) for i in range(ti.num_pieces()))
        return T.PieceHashes(length, ti.piece_length(), pieces, info_hash_v1=v1, info_hash_v2=v2)
    root = layout.root(0).to_bytes()
    layer = lt.bdecode(metainfo)[b"piece layers"].get(root, b"")
    return T.PieceHashes(length, ti.piece_length(), None, root, layer, info_hash_v2=v2)


_URLS = st.lists(st.sampled_from(["http://a.example/announce", "udp://b.example:6969", "https://c.example/a"]),
                 min_size=1, max_size=3, unique=True)  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    fmt=st.sampled_from(T.FORMATS),
    piece=st.sampled_from([BLOCK, 2 * BLOCK, 4 * BLOCK]),
    trackers=st.lists(_URLS, max_size=3),
    web_seeds=st.lists(
        st.sampled_from(["https://w.example/f/", "http://v.example/"]), max_size=2, unique=True
    ),
    private=st.booleans(),
    source=st.none() | st.text("ABCxyz-", min_size=1, max_size=8),
    comment=st.none() | st.text(max_size=20),
)
def test_read_piece_hashes_agrees_with_libtorrent(
    data, fmt, piece, trackers, web_seeds, private, source, comment
):
    """Our bounded reader (what verify uses, without libtorrent) and libtorrent read the same piece hashes,
    sizes and info-hashes from every kind of .torrent the tool makes, and from libtorrent's own."""
    size = data.draw(boundary_sizes(piece), label="size")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random(Path(tmp) / NAME, size, seed=piece)
        hashes = hash_file(path, piece)
        spec = TorrentSpec(NAME, hashes, fmt, trackers=trackers, web_seeds=web_seeds, private=private,
                           source=source, comment=comment or None)  # fmt: skip
        ours = build_metainfo(spec)
        for metainfo in (libtorrent_torrent(path, piece, fmt), ours):
            got = T.read_piece_hashes(metainfo, "t.torrent", NAME)
            assert got == libtorrent_piece_hashes(metainfo)
        ident = identity(spec)
        assert (got.length, got.piece_size, got.info_hash_v1, got.info_hash_v2) == (
            size,
            piece,
            ident.info_hash_v1,
            ident.info_hash_v2,
        )


def test_read_piece_hashes_hashes_the_info_dict_as_written():
    """The info-hash is over the info dict's bytes in the file: a .torrent whose keys are not in canonical
    order has the info-hash libtorrent gives it, not that of its re-encoding."""
    info = b"d6:lengthi5e4:name1:x6:pieces20:" + b"p" * 20 + b"12:piece lengthi16384ee"
    shuffled = b"d4:name1:x6:lengthi5e12:piece lengthi16384e6:pieces20:" + b"p" * 20 + b"e"
    for raw in (info, shuffled):
        metainfo = b"d4:info" + raw + b"e"
        got = T.read_piece_hashes(metainfo, "t.torrent", "x")
        assert (
            got.info_hash_v1
            == hashlib.sha1(raw).hexdigest()
            == libtorrent_piece_hashes(metainfo).info_hash_v1
        )
    assert T.read_piece_hashes(b"d4:info" + shuffled + b"e", "t", "x").v1 == b"p" * 20


_GOOD_INFO = {b"name": b"x", b"length": 5, b"piece length": BLOCK, b"pieces": b"p" * 20}


@pytest.mark.parametrize(
    ("metainfo", "why"),
    [
        (b"d4:info" + b"l" * 1_000_000 + b"e" * 1_000_001, "nested deeper than 100"),  # a million deep
        (b"d4:infod4:listl" + b"i1e" * 200_000 + b"eee", "too many values"),
        (b"d4:info9999999999:", "a string of 9999999999 bytes at 7 runs past the end"),
        (lt.bencode({b"info": _GOOD_INFO | {b"length": 10**15}}), "pieces, but not"),  # claims a petabyte
        (lt.bencode({b"info": _GOOD_INFO | {b"length": -1}}), "file size -1"),
        (lt.bencode({b"info": _GOOD_INFO | {b"piece length": 0}}), "piece length 0"),
        (lt.bencode({b"info": _GOOD_INFO | {b"piece length": 2**40}}), "piece length"),
        (lt.bencode({b"info": _GOOD_INFO | {b"pieces": b"p" * 19}}), "pieces, but not"),
        (lt.bencode({b"info": _GOOD_INFO | {b"meta version": 3}}), "meta version 3"),
        (lt.bencode({b"info": _GOOD_INFO | {b"meta version": 2}}), "without a file tree"),
        (lt.bencode({b"info": _GOOD_INFO | {b"files": [{b"length": 5, b"path": [b"x"]}]}}), "single file x"),
        (lt.bencode({b"info": {k: v for k, v in _GOOD_INFO.items() if k != b"pieces"}}), "neither v1"),
        (lt.bencode({b"info": b"x"}), "no info dict"),
        (lt.bencode({b"announce": b"x"}), "no info dict"),
        (lt.bencode([b"info"]), "not a bencoded dictionary"),
        (b"d4:info" + lt.bencode(_GOOD_INFO) + b"4:info" + lt.bencode(_GOOD_INFO) + b"e", "appears twice"),
        (lt.bencode({b"info": _GOOD_INFO}) + b"x", "1 bytes after the value"),
        (b"d4:info" + b"0:" * 6_000_000, "over libtorrent's 10000000-byte limit"),
    ],
)
def test_read_piece_hashes_refuses_hostile_torrents(metainfo, why):
    """Each a clear TorrentError (verify's UntrustedManifest, exit 2), in bounded time, never a traceback."""
    assert T.read_piece_hashes(lt.bencode({b"info": _GOOD_INFO}), "t", "x").count == 1  # the base is good
    with pytest.raises(TorrentError, match=re.escape(why)):
        T.read_piece_hashes(metainfo, "t.torrent", "x")


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://w.example/music/shards/", "https://w.example/music/shards/m-audio-00001.tar.zst"),
        ("https://w.example/music/shards", "https://w.example/music/shards/m-audio-00001.tar.zst"),
        ("http://w.example", "http://w.example/m-audio-00001.tar.zst"),
    ],
)
def test_web_seed_url_names_the_file_under_the_folder(base, url):
    # BEP 19, single file: a URL without a trailing slash names the file itself, so a folder URL given
    # without one must still become the file's URL, not be fetched as the file.
    assert T.web_seed_url(base, "m-audio-00001.tar.zst") == url
