"""The member index's format, encoding and decoding: the partition rule, a member's row, the root.

At 10^8 items the index is about 11 GB, and a user who wants one track must be able to look it up, from a
static HTTP mirror or from the swarm, reading about 100-300 kB of it, every byte of which is authenticated.
So it is published as two files under ``members/`` (layout.MEMBER_INDEX, layout.MEMBER_INDEX_PACK)::

    index.json   the root: format, release, counts, the partition rule, and where each directory and
                 each torrent chunk lies in the pack, with its size and SHA-256
    members.pack zstd chunks one after the other: the parts, then the directories, then the torrent chunks

Members are partitioned by the top ``bits`` bits of xxh3_64(id): part p holds every id whose hash starts
with p, as JSON-array lines sorted by (hash, id), where bits is the least that keeps a part at PART_ROWS
members or fewer on average. The 2^bits parts are listed by 2^ceil(bits/2) directories (offset, size,
SHA-256 and member count of each part). Torrent chunks hold TORRENT_CHUNK torrents' facts each, in release
order. A lookup reads the root, one directory, one part and one torrent chunk, and checks each against the
SHA-256 given by the level above; the root is checked against the signed publication. A whole-file
SHA-256 of the pack (for mirrors) is in the root too.

Why this and not page-sized Range reads into one SQLite file: a page cannot be authenticated on its own
(only the whole 10 GB file has a signed SHA-256), a B-tree lookup costs 4-5 dependent round trips instead
of 3, and SQLite pages compress to nothing. Measured figures: README "The member index".

Every decoder here takes hostile input: a wrong type, a count past the pack, a chunk that decompresses
past CHUNK_MAX_BYTES is an UntrustedManifest naming what is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import orjson
import xxhash
import zstandard

from .. import layout
from ..errors import UntrustedManifest
from ..hashing import ShardHashes
from ..manifest import TorrentEntry, safe_relative
from ..torrent import TorrentSpec, info_bytes

FORMAT = 2  # the root's `format`; 1 was members.sqlite (packager 0.1.0)
PARTITION_HASH = "xxh3_64"
PART_ROWS = 1024  # members per part at most, on average: ~110 kB compressed (README)
TORRENT_CHUNK = 64  # torrents per torrent chunk: ~10 kB compressed
# zstd level of every chunk. Measured on 800-member parts (random ids, hex hashes): level 1 gives 115 B a
# member at 423 MB/s, level 3 124 B at 146 MB/s, level 9 120 B at 44 MB/s: the hashes do not compress.
LEVEL = 1
MAX_BITS = 24
# Hostile-input bounds for a reader: the root of 10^8 members is ~50 kB, a chunk ~100 kB compressed.
ROOT_MAX_BYTES = 16 * 2**20
CHUNK_MAX_BYTES = 64 * 2**20
_HEX = frozenset("0123456789abcdef")


def id_hash(ident: str) -> int:
    """The partition hash of an item id: xxh3_64 of its UTF-8 bytes (surrogates as in the catalog)."""
    return xxhash.xxh3_64_intdigest(ident.encode("utf-8", "surrogatepass"))


def part_of(ident: str, bits: int) -> int:
    return id_hash(ident) >> (64 - bits) if bits else 0


def bits_for(members: int) -> int:
    """The partition bits for `members` items: the least b with members / 2^b <= PART_ROWS."""
    bits = 0
    while members > PART_ROWS << bits and bits < MAX_BITS:
        bits += 1
    return bits


def directory_bits(bits: int) -> int:
    return (bits + 1) // 2


# ---- what a lookup gives --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexedTorrent:
    """A torrent's facts as the index records them, enough to fetch from it and authenticate its .torrent."""

    n: int  # position in release.json's torrents, from 1
    name: str
    phase: str
    tier: str | None
    info_hash_v1: str | None
    info_hash_v2: str | None
    magnet: str
    torrent_file: str  # torrents/<name>.tar.zst.torrent
    torrent_size: int
    torrent_sha256: str
    shard_file: str  # shards/<name>.tar.zst
    shard_size: int
    shard_sha256: str
    piece_size: int

    @classmethod
    def of_entry(cls, n: int, e: TorrentEntry) -> IndexedTorrent:
        return cls(
            n,
            e.name,
            e.phase,
            e.tier,
            e.info_hash_v1,
            e.info_hash_v2,
            e.magnet,
            e.torrent_file,
            e.torrent.size,
            e.torrent.sha256,
            e.shard.path,
            e.shard.size,
            e.shard.sha256,
            e.piece_size,
        )


@dataclass(frozen=True)
class Location:
    """Where an item lies: its torrent, its bytes in the shard, the pieces to fetch for it alone, and what
    its content must hash to."""

    id: str
    torrent: IndexedTorrent
    path: str
    size: int
    offset: int  # of the content in the shard's tar stream (uncompressed)
    first_frame: int  # the zstd frames holding the content, inclusive
    last_frame: int
    frames_offset: int  # shard-file bytes [frames_offset, frames_offset + frames_size) hold those frames,
    frames_size: int  # which decompress to the tar stream from frames_tar_offset on
    frames_tar_offset: int
    xxh3_128: str
    sha256: str

    @property
    def first_piece(self) -> int:
        return self.frames_offset // self.torrent.piece_size

    @property
    def last_piece(self) -> int:
        return (self.frames_offset + self.frames_size - 1) // self.torrent.piece_size

    @property
    def pieces(self) -> int:
        return self.last_piece - self.first_piece + 1

    def as_dict(self) -> dict:
        out = asdict(self)
        out["torrent"] = self.torrent.name
        out["torrent_facts"] = asdict(self.torrent)
        out.update(first_piece=self.first_piece, last_piece=self.last_piece, pieces=self.pieces)
        return out


# ---- rows -----------------------------------------------------------------------------------------------

# A part line: [id, torrent n, path, size, offset, first_frame, last_frame, frames_offset, frames_size,
# frames_tar_offset, xxh3_128, sha256]; pieces follow from frames_offset, frames_size and the piece size.
_ROW_FIELDS = 12


def member_rows(records: Iterable[tuple], frames: Sequence[tuple[int, int, int]], n: int) -> Iterator[tuple]:
    """Index rows of torrent `n` from its members' (id, path, size, offset, first_frame, last_frame,
    xxh3_128, sha256) and the shard's frames as (compressed offset, compressed size, decompressed offset),
    as container.read_frame_spans gives them: a member's bytes are those of its frames, since a frame is the
    smallest unit that can be decompressed. A member whose frames are not among the shard's (a negative
    index would silently be a frame from the end) is a ValueError, as index_rows refuses it (its own check,
    inline in the loop of 10^8 members)."""
    count = len(frames)
    for ident, path, size, offset, first, last, xxh3_128, sha256 in records:
        if not 0 <= first <= last < count:
            raise ValueError(f"member {ident!r}: frames {first}..{last} are not among the shard's {count}")
        start, end = frames[first], frames[last]
        tar_offset = start[2]
        span = end[0] + end[1] - start[0]
        yield (ident, n, path, size, offset, first, last, start[0], span, tar_offset, xxh3_128, sha256)


def row_line(row: tuple) -> bytes:
    return orjson.dumps(row) + b"\n"


def id_prefix(ident: str) -> bytes:
    """How a part line holding `ident` starts (orjson writes the id exactly so in row_line)."""
    return b"\n[" + orjson.dumps(ident) + b","


# ---- the root -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkRef:
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class IndexTorrent:
    """The pack's own torrent (layout.MEMBER_INDEX_TORRENT): a single-file v1 torrent of the pack, so the
    swarm serves the index too. Its info-hash is in the root: the root authenticates the torrent's pieces."""

    file: str  # its .torrent, relative to the published folder
    name: str  # the pack's file name: what a client saves
    piece_size: int
    info_hash_v1: str


def index_piece_size(members: int) -> int:
    """The index torrent's pieces: small, since a lookup through the swarm fetches whole pieces (3-4 of
    them); at most 2^16 of them for the pack's expected size (128 bytes a member): 16 KiB up to 5*10^5
    members, 256 KiB at 10^8 (a .torrent of 0.9 MB)."""
    size = 16 * 1024
    while members * 128 > size << 16:
        size *= 2
    return size


def index_info_hash(hashes: ShardHashes, private: bool = False, source: str | None = None) -> str:
    """The v1 info-hash of the pack's torrent (torrent.py assembles the info dict)."""
    spec = TorrentSpec(layout.MEMBER_INDEX_PACK_NAME, hashes, private=private, source=source)
    return hashlib.sha1(info_bytes(spec)).hexdigest()


@dataclass(frozen=True)
class Root:
    release: str
    members: int
    torrents: int
    bits: int
    pack_size: int
    pack_sha256: str
    directories: tuple[ChunkRef, ...]
    torrent_chunks: tuple[tuple[ChunkRef, int, int], ...]  # (chunk, first n, count)
    torrent: IndexTorrent | None = None

    def to_json(self) -> bytes:
        """Compact where it is long: one line per directory and per torrent chunk (at 10^8 members 512
        directories: 46 kB; pretty-printed they would take twice that)."""
        head = orjson.dumps(
            {
                "format": FORMAT,
                "release": self.release,
                "members": self.members,
                "torrents": self.torrents,
                "partition": {"hash": PARTITION_HASH, "bits": self.bits, "part_rows": PART_ROWS},
                "pack": {
                    "file": layout.MEMBER_INDEX_PACK,
                    "size": self.pack_size,
                    "sha256": self.pack_sha256,
                },
                **({"torrent": asdict(self.torrent)} if self.torrent else {}),
            }
        )[:-1]
        dirs = ",\n".join(orjson.dumps([c.offset, c.size, c.sha256]).decode() for c in self.directories)
        chunks = ",\n".join(
            orjson.dumps([c.offset, c.size, c.sha256, first, count]).decode()
            for c, first, count in self.torrent_chunks
        )
        return head + f',\n"directories": [\n{dirs}\n],\n"torrent_chunks": [\n{chunks}\n]}}\n'.encode()


def is_count(v: object) -> bool:
    return type(v) is int and 0 <= v < 2**63


def is_hex(v: object, digits: int) -> bool:
    return isinstance(v, str) and len(v) == digits and set(v) <= _HEX


def chunk_ref(raw: object, where: str, what: str, pack_size: int) -> ChunkRef:
    if (
        not isinstance(raw, list)
        or len(raw) < 3
        or not is_count(raw[0])
        or not is_count(raw[1])
        or not is_hex(raw[2], 64)
        or raw[0] + raw[1] > pack_size
        or raw[1] > CHUNK_MAX_BYTES
    ):
        raise UntrustedManifest(where, f"{what} is not [offset, size, sha256] inside the pack: {raw!r:.120}")
    return ChunkRef(raw[0], raw[1], raw[2])


def parse_root(data: bytes, where: str = layout.MEMBER_INDEX) -> Root:
    """The root of a member index; UntrustedManifest saying what is wrong with it."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise UntrustedManifest(where, f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise UntrustedManifest(where, "not a JSON object")
    if raw.get("format") != FORMAT:
        hint = "made by another packager version; fetch it again, or upgrade packager"
        raise UntrustedManifest(where, f"unknown member index format {raw.get('format')!r:.40}", hint=hint)
    part, pack = raw.get("partition"), raw.get("pack")
    if (
        not isinstance(part, dict)
        or part.get("hash") != PARTITION_HASH
        or type(part.get("bits")) is not int
        or not 0 <= part["bits"] <= MAX_BITS
    ):
        raise UntrustedManifest(where, f"partition is not {{hash: {PARTITION_HASH}, bits: 0-{MAX_BITS}}}")
    if not isinstance(pack, dict) or not is_count(pack.get("size")) or not is_hex(pack.get("sha256"), 64):
        raise UntrustedManifest(where, "pack is not {file, size, sha256}")
    bits, size = part["bits"], pack["size"]
    dirs, chunks = raw.get("directories"), raw.get("torrent_chunks")
    if not isinstance(dirs, list) or len(dirs) != 1 << directory_bits(bits):
        raise UntrustedManifest(where, f"directories: not a list of {1 << directory_bits(bits)} entries")
    if not isinstance(chunks, list):
        raise UntrustedManifest(where, "torrent_chunks: not a list")
    directories = tuple(chunk_ref(d, where, f"directories[{i}]", size) for i, d in enumerate(dirs))
    torrent_chunks = []
    for i, c in enumerate(chunks):
        ref = chunk_ref(c, where, f"torrent_chunks[{i}]", size)
        if len(c) != 5 or not is_count(c[3]) or not is_count(c[4]):
            raise UntrustedManifest(where, f"torrent_chunks[{i}] is not [offset, size, sha256, first, count]")
        torrent_chunks.append((ref, c[3], c[4]))
    release, members, torrents = raw.get("release"), raw.get("members"), raw.get("torrents")
    if not isinstance(release, str) or not is_count(members) or not is_count(torrents):
        raise UntrustedManifest(where, "release, members or torrents missing or of the wrong type")
    torrent = raw.get("torrent")
    index_torrent = None
    if torrent is not None:
        if (
            not isinstance(torrent, dict)
            or torrent.get("file") != layout.MEMBER_INDEX_TORRENT
            or torrent.get("name") != layout.MEMBER_INDEX_PACK_NAME
            or type(torrent.get("piece_size")) is not int
            or not is_hex(torrent.get("info_hash_v1"), 40)
        ):
            raise UntrustedManifest(
                where, f"torrent is not {{file, name, piece_size, info_hash_v1}}: {torrent!r:.120}"
            )
        index_torrent = IndexTorrent(**torrent)
    return Root(
        release,
        members,
        torrents,
        bits,
        size,
        pack["sha256"],
        directories,
        tuple(torrent_chunks),
        index_torrent,
    )


# ---- decoding what a reader fetched ------------------------------------------------------------------


def decompress_chunk(data: bytes, where: str) -> bytes:
    if not data:
        return b""
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=CHUNK_MAX_BYTES)
    except zstandard.ZstdError as e:
        raise UntrustedManifest(
            where, f"not a zstd chunk of at most {CHUNK_MAX_BYTES:,} bytes ({e})"
        ) from None


def parse_torrent(raw: object, where: str) -> IndexedTorrent:
    keys = IndexedTorrent.__dataclass_fields__
    if not isinstance(raw, dict) or set(raw) != set(keys):
        raise UntrustedManifest(where, f"a torrent is not {{{', '.join(keys)}}}: {raw!r:.120}")
    ok = (
        is_count(raw["n"])
        and all(isinstance(raw[k], str) for k in ("name", "phase", "magnet"))
        and (raw["tier"] is None or isinstance(raw["tier"], str))
        and (raw["info_hash_v1"] is None or is_hex(raw["info_hash_v1"], 40))
        and (raw["info_hash_v2"] is None or is_hex(raw["info_hash_v2"], 64))
        and (raw["info_hash_v1"] or raw["info_hash_v2"])
        and all(is_count(raw[k]) for k in ("torrent_size", "shard_size"))
        and all(is_hex(raw[k], 64) for k in ("torrent_sha256", "shard_sha256"))
        and type(raw["piece_size"]) is int
        and 16384 <= raw["piece_size"] <= 2**30
        and raw["piece_size"] & (raw["piece_size"] - 1) == 0
    )
    if not ok:
        raise UntrustedManifest(where, f"torrent {raw.get('name')!r:.60} has a field of the wrong type")
    safe_relative(raw["torrent_file"], where, "torrent_file")
    safe_relative(raw["shard_file"], where, "shard_file")
    return IndexedTorrent(**raw)


def parse_row(line: bytes, torrent: Callable[[int], IndexedTorrent], where: str) -> Location:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise UntrustedManifest(where, f"a member line is not JSON: {e}") from None
    if (
        not isinstance(row, list)
        or len(row) != _ROW_FIELDS
        or not isinstance(row[0], str)
        or not isinstance(row[2], str)
        or not all(is_count(v) for v in row[3:10])
        or not is_count(row[1])
        or not is_hex(row[10], 32)
        or not is_hex(row[11], 64)
        or row[8] == 0
        or row[5] > row[6]
    ):
        raise UntrustedManifest(where, f"a member line is not a member record: {line[:120]!r}")
    t = torrent(row[1])
    if row[7] + row[8] > t.shard_size or not row[9] <= row[4]:
        raise UntrustedManifest(where, f"member {row[0]!r:.60} points outside its shard {t.name}")
    return Location(row[0], t, *row[2:])
