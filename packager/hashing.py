"""Streaming hashers, each fed every byte exactly once while a shard is written.

INTERFACE FIXED; implementation in progress.
"""

from __future__ import annotations

from dataclasses import dataclass

V2_BLOCK_SIZE = 16 * 1024  # BEP 52: merkle leaves are 16 KiB blocks


@dataclass(frozen=True)
class MemberDigest:
    """Hashes of one member's content (the catalog file's bytes, not the tar header)."""

    size: int
    xxh3_128: str  # lowercase hex, 32 chars
    sha256: str  # lowercase hex, 64 chars


@dataclass(frozen=True)
class ShardHashes:
    """Everything a single-file .torrent and the manifests need, from one pass over the shard bytes."""

    length: int  # bytes in the shard file
    sha256: bytes  # SHA-256 of the whole file, 32 bytes
    piece_size: int
    v1_pieces: bytes  # concatenated 20-byte SHA-1 digests of each piece (the last piece may be short)
    v2_root: bytes | None = None  # BEP 52 "pieces root" (32 bytes), when v2 hashing was asked for
    v2_piece_layer: bytes | None = None  # concatenated 32-byte piece-layer hashes; b"" if length <= piece_size


class MemberHasher:
    """xxh3-128 and SHA-256 of one member's content."""

    def update(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> MemberDigest: ...


class ShardHasher:
    """SHA-1 per v1 piece, SHA-256 of the file, and optionally the BEP 52 merkle tree (16 KiB leaves)."""

    def __init__(self, piece_size: int, v2: bool = False): ...

    def update(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> ShardHashes: ...
