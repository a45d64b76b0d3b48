"""Streaming hashers, each fed every byte exactly once while a shard is written.

Memory stays O(pieces) whatever the file size: the hashers keep at most one partial 16 KiB block and the
leaf hashes of one piece, plus the per-piece digests that the .torrent needs anyway. The bulk hashing goes
through hashlib, which releases the GIL for buffers over 2 KiB, so the writer can run these on a second
core while the first one compresses.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    import ctypes

V2_BLOCK_SIZE = 16 * 1024  # BEP 52: merkle leaves are 16 KiB blocks

_ZERO_LEAF = bytes(32)  # BEP 52: leaf hashes beyond the end of the file are set to zero


def truncated_v2(info_hash_v2: str | None) -> str | None:
    """BEP 52: trackers, the DHT and the handshake carry a v2 info-hash truncated to 20 bytes (40 hex)."""
    return info_hash_v2[:40] if info_hash_v2 else None


def swarm_hashes(info_hash_v1: str | None, info_hash_v2: str | None) -> tuple[str, ...]:
    """The 40-hex info-hashes a torrent's swarm is known by: the v1 one, and the truncated v2 one."""
    return tuple(h for h in (info_hash_v1, truncated_v2(info_hash_v2)) if h)


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
    v2_piece_layer: bytes | None = (
        None  # concatenated 32-byte piece-layer hashes; b"" if length <= piece_size
    )


class MemberHasher:
    """xxh3-128 and SHA-256 of one member's content."""

    def __init__(self) -> None:
        self._size = 0
        self._xxh3 = xxhash.xxh3_128()
        self._sha256 = hashlib.sha256()

    def update(self, data: bytes | memoryview) -> None:
        self._size += len(data) if isinstance(data, bytes) else data.nbytes
        self._xxh3.update(data)
        self._sha256.update(data)

    def finish(self) -> MemberDigest:
        return MemberDigest(self._size, self._xxh3.hexdigest(), self._sha256.hexdigest())


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def merkle_root(layer: list[bytes], width: int, pad: bytes = _ZERO_LEAF) -> bytes:
    """Root of a binary SHA-256 tree whose bottom row is `layer` padded with `pad` to `width` entries.

    `width` is a power of two >= len(layer). The padding is never materialised: a missing right sibling at
    each level is the root of an all-`pad` subtree, which is hashed up alongside, so a file of 3 pieces in a
    2^20-wide tree costs 20 extra hashes, not 2^20.
    """
    if width & (width - 1) or width < len(layer) or width < 1:
        raise ValueError(f"width {width} is not a power of two covering {len(layer)} hashes")
    row = list(layer)
    while width > 1:
        if len(row) % 2:
            row.append(pad)
        row = [_sha256(row[i] + row[i + 1]) for i in range(0, len(row), 2)]
        pad = _sha256(pad + pad)
        width //= 2
    return row[0] if row else pad


class FileDigest:
    """SHA-256 of every byte of the shard, and its length; its state can be saved and restored.

    hashlib's objects cannot be serialised, so a build could not resume a shard's SHA-256 midway. OpenSSL's
    low-level SHA256_CTX (libcrypto, the library hashlib itself uses) is a plain struct of integers: eight
    state words, the bit count, one pending 64-byte block and its fill, no pointers. Driven through ctypes
    it runs the same code at the same speed as hashlib (1 GiB in 4 MiB calls: 0.65 s against 0.74 s here,
    the GIL released in both), and its bytes are the state. Where libcrypto is missing, hashlib is used and
    `state()` is None: a shard then restarts from its first byte.
    """

    def __init__(self, state: bytes | None = None, length: int = 0) -> None:
        self.length = length
        self._ctx = _OpenSSLSha256.new(state, length) if _OpenSSLSha256.available() else None
        if self._ctx is None:
            if state is not None:
                raise ValueError("cannot restore a SHA-256 state without libcrypto")
            self._sha256 = hashlib.sha256()

    def update(self, view: memoryview) -> None:
        self.length += view.nbytes
        if self._ctx is not None:
            self._ctx.update(view)
        else:
            self._sha256.update(view)

    def digest(self) -> bytes:
        return self._ctx.digest() if self._ctx is not None else self._sha256.digest()

    def state(self) -> bytes | None:
        """The state after `length` bytes, for FileDigest(state, length) in another process."""
        return self._ctx.state() if self._ctx is not None else None


class _OpenSSLSha256:
    SIZE = 112  # sizeof(SHA256_CTX): unsigned int h[8], Nl, Nh, data[16], num, md_len
    _lib = None
    _checked: bool | None = None
    _ctypes = None  # the module, loaded by _load

    def __init__(self, raw: ctypes.Array) -> None:
        self._raw = raw

    @classmethod
    def available(cls) -> bool:
        if cls._checked is None:
            cls._checked = cls._load()
        return cls._checked

    @classmethod
    def _load(cls) -> bool:
        # ctypes costs 2 ms to import, and only a build (its resumable SHA-256) needs it: `verify --pieces`
        # and the other commands that hash with hashlib do without it.
        import ctypes

        cls._ctypes = ctypes
        for name in ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.dylib"):
            try:
                lib = ctypes.CDLL(name)
                init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
            except (OSError, AttributeError):
                continue
            init.argtypes = [ctypes.c_void_p]
            update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            cls._lib = lib
            try:  # the struct layout is assumed, so it is checked: save midway, restore, finish
                data = bytes(range(256)) * 3
                first = cls.new(None, 0)
                first.update(memoryview(data[:100]))
                second = cls.new(first.state(), 100)
                second.update(memoryview(data[100:]))
                if second.digest() == hashlib.sha256(data).digest():
                    return True
            except ValueError:
                pass
        cls._lib = None
        return False

    @classmethod
    def new(cls, state: bytes | None, length: int) -> _OpenSSLSha256:
        ctypes = cls._ctypes
        raw = ctypes.create_string_buffer(cls.SIZE)
        if state is None:
            cls._lib.SHA256_Init(raw)
        else:
            _check_sha256_state(state, length)
            ctypes.memmove(raw, state, cls.SIZE)
        return cls(raw)

    def update(self, view: memoryview) -> None:
        n = view.nbytes
        if not n:
            return
        if not view.readonly:
            self._lib.SHA256_Update(self._raw, (self._ctypes.c_char * n).from_buffer(view), n)
        elif type(view.obj) is bytes and len(view.obj) == n:
            self._lib.SHA256_Update(self._raw, view.obj, n)
        else:  # a slice of read-only memory (not the writer's buffers): copied a bounded piece at a time
            for pos in range(0, n, 2**16):
                piece = bytes(view[pos : pos + 2**16])
                self._lib.SHA256_Update(self._raw, piece, len(piece))

    def digest(self) -> bytes:
        ctypes = self._ctypes
        copy = ctypes.create_string_buffer(self._raw.raw, self.SIZE)
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, copy)
        return out.raw

    def state(self) -> bytes:
        return self._raw.raw


def _check_sha256_state(state: bytes, length: int) -> None:
    """Refuse a saved SHA256_CTX that does not describe `length` bytes hashed: its fill indexes the pending
    block inside OpenSSL, so a hostile one could make it write out of bounds."""
    if len(state) != _OpenSSLSha256.SIZE:
        raise ValueError(f"a SHA-256 state is {_OpenSSLSha256.SIZE} bytes, not {len(state)}")
    nl, nh = struct.unpack_from("=II", state, 32)
    num, md_len = struct.unpack_from("=II", state, 104)
    bits = length * 8
    if (nl, nh, num, md_len) != (bits & 0xFFFFFFFF, bits >> 32, length % 64, 32):
        raise ValueError(f"the SHA-256 state does not describe {length} bytes")


class V1Pieces:
    """SHA-1 of every `piece_size` bytes (BEP 3 "pieces"); the last piece may be short."""

    def __init__(self, piece_size: int) -> None:
        self.piece_size = piece_size
        self._piece = hashlib.sha1()
        self._piece_left = piece_size
        self.digests = bytearray()

    def update(self, view: memoryview) -> None:
        pos, end = 0, view.nbytes
        while pos < end:
            take = min(self._piece_left, end - pos)
            self._piece.update(view[pos : pos + take])
            pos += take
            self._piece_left -= take
            if not self._piece_left:
                self.digests += self._piece.digest()
                self._piece = hashlib.sha1()
                self._piece_left = self.piece_size

    def finish(self) -> bytes:
        if self._piece_left != self.piece_size:
            self.digests += self._piece.digest()
            self._piece_left = self.piece_size
        return bytes(self.digests)

    def partial(self) -> bytes:
        """The SHA-1 of the unfinished piece's bytes so far (of no bytes, between pieces)."""
        return self._piece.copy().digest()


class PieceMismatch(ValueError):
    """Bytes that are not the ones a piece's recorded SHA-1 describes."""

    def __init__(self, index: int, start: int, end: int):
        self.index, self.start, self.end = index, start, end
        super().__init__(f"piece {index} (bytes {start:,}-{end - 1:,}) differs from its recorded SHA-1")


class PieceCheck:
    """A file's first `length` bytes hashed in pieces, each compared as it completes with the SHA-1 recorded
    for it (`digests`: 20 bytes per whole piece, then the SHA-1 of the bytes of the last, unfinished one):
    what a resumed build checks the bytes it keeps against. PieceMismatch names the first piece that
    differs."""

    def __init__(self, piece_size: int, length: int, digests: bytes) -> None:
        whole = length // piece_size
        if len(digests) != 20 * (whole + 1):
            raise ValueError(f"{len(digests)} bytes of SHA-1 cannot describe {length} bytes in pieces")
        self.length = length
        self._pieces = V1Pieces(piece_size)
        self._expected = digests
        self._fed = 0
        self._checked = 0  # bytes of `digests` compared so far

    def update(self, view: memoryview) -> None:
        if self._fed + view.nbytes > self.length:
            raise ValueError(f"more than the {self.length} bytes to check")
        self._fed += view.nbytes
        self._pieces.update(view)
        done = self._pieces.digests
        if len(done) > self._checked:
            self._compare(done, len(done))

    def finish(self) -> None:
        """Compare the unfinished piece too, once every byte has come; PieceMismatch or ValueError."""
        if self._fed != self.length:
            raise ValueError(f"{self._fed} bytes checked, not {self.length}")
        self._compare(self._pieces.digests + self._pieces.partial(), len(self._expected))

    def _compare(self, got: bytes | bytearray, end: int) -> None:
        start = self._checked
        if memoryview(got)[start:end] != memoryview(self._expected)[start:end]:
            index = next(i for i in range(start, end, 20) if got[i : i + 20] != self._expected[i : i + 20])
            first = index // 20 * self._pieces.piece_size
            raise PieceMismatch(index // 20, first, min(first + self._pieces.piece_size, self.length))
        self._checked = end


class V2Tree:
    """BEP 52's merkle tree of 16 KiB blocks, kept as the piece layer plus the current piece's leaves."""

    def __init__(self, piece_size: int) -> None:
        self.piece_size = piece_size
        self.length = 0
        self._leaves_per_piece = piece_size // V2_BLOCK_SIZE
        self._block = bytearray()  # the unfinished 16 KiB block, never longer than one block
        self._leaves: list[bytes] = []  # leaf hashes of the current piece only
        self._piece_layer = bytearray()

    def update(self, view: memoryview) -> None:
        pos, end = 0, view.nbytes
        self.length += end
        if self._block:
            pos = min(V2_BLOCK_SIZE - len(self._block), end)
            self._block += view[:pos]
            if len(self._block) < V2_BLOCK_SIZE:
                return
            self._add_leaf(_sha256(self._block))
            self._block.clear()
        whole_end = pos + (end - pos) // V2_BLOCK_SIZE * V2_BLOCK_SIZE
        for start in range(pos, whole_end, V2_BLOCK_SIZE):
            self._add_leaf(_sha256(view[start : start + V2_BLOCK_SIZE]))
        self._block += view[whole_end:]

    def _add_leaf(self, leaf: bytes) -> None:
        self._leaves.append(leaf)
        if len(self._leaves) == self._leaves_per_piece:
            self._piece_layer += merkle_root(self._leaves, self._leaves_per_piece)
            self._leaves.clear()

    def finish(self) -> tuple[bytes, bytes]:
        """(pieces root, piece layer) as BEP 52 defines them for a file of `length` bytes."""
        if self._block:
            # BEP 52: "The last block may be shorter than 16KiB", hashed as it is, not zero-filled.
            self._leaves.append(_sha256(self._block))
            self._block.clear()
        if not self.length:
            # BEP 52 gives an empty file no "pieces root"; the caller cannot make a v2 torrent of it.
            return b"", b""
        if self.length <= self.piece_size:
            # A file of one piece or less has a tree only as wide as its own blocks need (libtorrent and
            # BEP 52 agree); padding it to a whole piece would give a different root.
            if self._piece_layer:
                return bytes(self._piece_layer), b""
            return merkle_root(self._leaves, _next_power_of_two(len(self._leaves))), b""
        if self._leaves:
            self._piece_layer += merkle_root(self._leaves, self._leaves_per_piece)
            self._leaves.clear()
        layer = bytes(self._piece_layer)
        hashes = [layer[i : i + 32] for i in range(0, len(layer), 32)]
        # Pieces past the end of the file are whole subtrees of zero leaves: their root pads the piece layer.
        pad = merkle_root([], self._leaves_per_piece)
        return merkle_root(hashes, _next_power_of_two(len(hashes)), pad), layer


class ShardHasher:
    """SHA-1 per v1 piece, SHA-256 of the file, and optionally the BEP 52 merkle tree (16 KiB leaves).

    The three are independent: `sinks` gives their update methods, which the shard writer runs on a thread
    each (so they use a core each where the work allows), while `update` feeds all of them in turn.
    """

    def __init__(self, piece_size: int, v2: bool = False):
        # BEP 52 makes a piece a whole subtree of 16 KiB leaves; v1 alone would accept any size, but no
        # client we target makes non-power-of-two pieces, so one rule for both.
        if piece_size < V2_BLOCK_SIZE or piece_size & (piece_size - 1):
            raise ValueError(f"piece size {piece_size} is not a power of two >= {V2_BLOCK_SIZE}")
        self.piece_size = piece_size
        self.v2 = v2
        self.file = FileDigest()
        self.pieces = V1Pieces(piece_size)
        self.tree = V2Tree(piece_size) if v2 else None
        self._finished: ShardHashes | None = None

    @property
    def sinks(self) -> tuple[Callable[[memoryview], None], ...]:
        parts = (self.file, self.pieces) + ((self.tree,) if self.tree is not None else ())
        return tuple(self._guarded(part.update) for part in parts)

    def _guarded(self, update: Callable[[memoryview], None]) -> Callable[[memoryview], None]:
        def sink(view: memoryview) -> None:
            if self._finished is not None:
                raise RuntimeError("ShardHasher.update() after finish()")
            update(view)

        return sink

    @property
    def resumable(self) -> bool:
        """Whether `snapshots` can save this hasher's state (it needs libcrypto's SHA256_CTX)."""
        return self.file.state() is not None

    @property
    def snapshots(self) -> tuple[Callable[[], bytes], ...]:
        """One per sink, in the same order: that part's state, taken on the sink's own thread when it has
        been fed exactly the bytes before a checkpoint. The piece hashers give their finished pieces (the
        v1 one then the SHA-1 of the unfinished piece so far, which PieceCheck compares); `resumed` has the
        unfinished piece's bytes fed again."""
        parts: list[Callable[[], bytes]] = [
            lambda: self.file.state() or b"",
            lambda: bytes(self.pieces.digests) + self.pieces.partial(),
        ]
        if self.tree is not None:
            parts.append(lambda: bytes(self.tree._piece_layer))
        return tuple(parts)

    @classmethod
    def resumed(cls, piece_size: int, v2: bool, length: int, states: tuple[bytes, ...]) -> ShardHasher:
        """A hasher as `snapshots` left it after `length` bytes, except the unfinished piece: feed the bytes
        from `piece_start(length)` to `length` to `piece_sinks` before anything else. ValueError if the
        states cannot be that."""
        hasher = cls(piece_size, v2)
        done = length // piece_size
        if len(states) != 2 + v2 or len(states[1]) != 20 * (done + 1) or (v2 and len(states[2]) != 32 * done):
            raise ValueError(f"the hasher states do not describe {length} bytes in pieces of {piece_size}")
        hasher.file = FileDigest(states[0], length)
        hasher.pieces.digests = bytearray(states[1][:-20])
        if v2:
            hasher.tree._piece_layer = bytearray(states[2])
            hasher.tree.length = done * piece_size
        return hasher

    @staticmethod
    def prefix_check(piece_size: int, length: int, states: tuple[bytes, ...]) -> PieceCheck:
        """What the first `length` bytes must hash to, piece by piece, by the states `snapshots` gave."""
        if len(states) < 2:
            raise ValueError("no piece hashes among the hasher states")
        return PieceCheck(piece_size, length, states[1])

    def piece_start(self, length: int) -> int:
        return length - length % self.piece_size

    @property
    def piece_sinks(self) -> tuple[Callable[[memoryview], None], ...]:
        return (self.pieces.update,) + ((self.tree.update,) if self.tree is not None else ())

    def update(self, data: bytes | memoryview) -> None:
        if self._finished is not None:
            raise RuntimeError("ShardHasher.update() after finish()")
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        self.file.update(view)
        self.pieces.update(view)
        if self.tree is not None:
            self.tree.update(view)

    def finish(self) -> ShardHashes:
        """The hashes of everything fed so far; idempotent, and no update() is accepted afterwards."""
        if self._finished is None:
            root, layer = self.tree.finish() if self.tree is not None else (None, None)
            self._finished = ShardHashes(
                length=self.file.length,
                sha256=self.file.digest(),
                piece_size=self.piece_size,
                v1_pieces=self.pieces.finish(),
                v2_root=root,
                v2_piece_layer=layer,
            )
        return self._finished
