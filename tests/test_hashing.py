"""The streaming hashers against libtorrent hashing the same file itself, and against hashlib/xxhash."""

from __future__ import annotations

import hashlib
import random
import tempfile
import tracemalloc
from pathlib import Path

import libtorrent as lt
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packager.hashing import V2_BLOCK_SIZE, MemberHasher, ShardHasher, merkle_root

BLOCK = V2_BLOCK_SIZE
PIECE_SIZES = (16 * 1024, 32 * 1024)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def boundary_sizes(piece: int) -> list[int]:
    """The sizes where an off-by-one in block or piece handling would show."""
    return [
        1,
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
        piece - 1,
        piece,
        piece + 1,
        2 * piece,
        3 * piece + BLOCK - 1,
        4 * piece + 1,
        7 * piece + BLOCK + 3,
        17 * piece,
    ]


@st.composite
def file_cases(draw: st.DrawFn) -> tuple[int, bytes, list[int]]:
    """(piece size, content, chunk sizes to feed it in)."""
    piece = draw(st.sampled_from(PIECE_SIZES))
    size = draw(st.one_of(st.sampled_from(boundary_sizes(piece)), st.integers(1, 20 * piece)))
    content = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    cuts = draw(st.lists(st.integers(0, size), max_size=12))
    return piece, content, sorted(cuts)


def feed(hasher: ShardHasher | MemberHasher, content: bytes, cuts: list[int]) -> None:
    view = memoryview(content)
    bounds = [0, *cuts, len(content)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        hasher.update(view[start:end])


def libtorrent_metainfo(content: bytes, piece: int, flags: int) -> tuple[dict, bytes]:
    """libtorrent's own metainfo for `content` as a single file, hashed by reading the file from disk."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.tar.zst"
        path.write_bytes(content)
        ct = lt.create_torrent(lt.list_files(str(path)), piece, flags)
        lt.set_piece_hashes(ct, tmp)
        return ct.generate(), b"shard.tar.zst"


@FAST
@given(file_cases())
def test_v1_pieces_and_file_sha256_match_libtorrent(case: tuple[int, bytes, list[int]]) -> None:
    piece, content, cuts = case
    hasher = ShardHasher(piece)
    feed(hasher, content, cuts)
    got = hasher.finish()
    meta, _ = libtorrent_metainfo(content, piece, lt.create_torrent.v1_only)
    assert got.v1_pieces == meta[b"info"][b"pieces"]
    assert got.length == len(content)
    assert got.sha256 == hashlib.sha256(content).digest()
    assert got.piece_size == piece
    assert got.v2_root is None and got.v2_piece_layer is None


@FAST
@given(file_cases())
def test_hybrid_v1_and_v2_match_libtorrent(case: tuple[int, bytes, list[int]]) -> None:
    piece, content, cuts = case
    hasher = ShardHasher(piece, v2=True)
    feed(hasher, content, cuts)
    got = hasher.finish()
    meta, name = libtorrent_metainfo(content, piece, 0)
    info = meta[b"info"]
    root = info[b"file tree"][name][b""][b"pieces root"]
    assert got.v1_pieces == info[b"pieces"]
    assert got.v2_root == root
    # BEP 52: the piece layer is omitted for a file of one piece or less.
    assert got.v2_piece_layer == meta.get(b"piece layers", {}).get(root, b"")
    assert (got.v2_piece_layer == b"") == (len(content) <= piece)


@pytest.mark.parametrize("size", [BLOCK + 1, 32 * 1024, 5 * 32 * 1024 + 7])
def test_v2_only_matches_libtorrent(size: int) -> None:
    content = random.Random(size).randbytes(size)
    hasher = ShardHasher(32 * 1024, v2=True)
    hasher.update(content)
    got = hasher.finish()
    meta, name = libtorrent_metainfo(content, 32 * 1024, lt.create_torrent.v2_only)
    root = meta[b"info"][b"file tree"][name][b""][b"pieces root"]
    assert got.v2_root == root
    assert got.v2_piece_layer == meta.get(b"piece layers", {}).get(root, b"")


@settings(max_examples=100, deadline=None)
@given(file_cases(), st.booleans())
def test_chunking_does_not_change_the_hashes(case: tuple[int, bytes, list[int]], v2: bool) -> None:
    piece, content, cuts = case
    whole, chunked = ShardHasher(piece, v2=v2), ShardHasher(piece, v2=v2)
    whole.update(content)
    feed(chunked, content, cuts)
    assert chunked.finish() == whole.finish()


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=100_000), st.lists(st.integers(0, 100_000), max_size=8))
def test_member_hasher_matches_hashlib_and_xxhash(content: bytes, cuts: list[int]) -> None:
    hasher = MemberHasher()
    feed(hasher, content, sorted(c for c in cuts if c <= len(content)))
    got = hasher.finish()
    assert got.size == len(content)
    assert got.sha256 == hashlib.sha256(content).hexdigest()
    assert got.xxh3_128 == xxhash.xxh3_128_hexdigest(content)
    assert len(got.xxh3_128) == 32 and len(got.sha256) == 64


def test_empty_file() -> None:
    got = ShardHasher(16 * 1024, v2=True).finish()
    assert (got.length, got.v1_pieces, got.sha256) == (0, b"", hashlib.sha256().digest())
    # BEP 52: an empty file has no pieces root.
    assert got.v2_root == b"" and got.v2_piece_layer == b""


@pytest.mark.parametrize("piece", [0, 1000, 8 * 1024, 48 * 1024])
def test_piece_size_must_be_a_power_of_two_of_at_least_one_block(piece: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        ShardHasher(piece)


def test_no_update_after_finish() -> None:
    hasher = ShardHasher(16 * 1024)
    hasher.update(b"x")
    first = hasher.finish()
    assert hasher.finish() is first
    with pytest.raises(RuntimeError):
        hasher.update(b"y")


def test_merkle_root_pads_with_zero_subtrees() -> None:
    a, b, c = (hashlib.sha256(bytes([i])).digest() for i in range(3))
    zero = bytes(32)

    def h(x: bytes, y: bytes) -> bytes:
        return hashlib.sha256(x + y).digest()

    assert merkle_root([a], 1) == a
    assert merkle_root([a, b, c], 4) == h(h(a, b), h(c, zero))
    assert merkle_root([a], 4) == h(h(a, zero), h(zero, zero))
    assert merkle_root([], 2) == h(zero, zero)
    with pytest.raises(ValueError):
        merkle_root([a, b, c], 3)


def test_memory_stays_bounded_by_the_piece_count() -> None:
    """64 MiB through a v2 hasher holds per-piece hashes and one piece of leaves, never the data."""
    chunk = bytes(range(256)) * 4096  # 1 MiB, fed 64 times
    hasher = ShardHasher(4 * 2**20, v2=True)
    tracemalloc.start()
    try:
        for _ in range(64):
            hasher.update(chunk)
        hasher.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
