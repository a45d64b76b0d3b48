"""The release-wide member index: item id -> torrent, path, hashes, shard bytes, frames and pieces.

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

The writer streams: rows are spilled to 2^BUCKET_BITS bucket files by hash prefix (compressed), each
bucket is sorted alone (split again when it would not fit SORT_BYTES), so memory stays flat whatever the
member count, and the bytes depend only on the set of members and torrents, never on the order they came
in. At scale both steps use both cores: the torrents' rows are read and spilled by WORKERS processes
(add_rows_in_workers), and the buckets are sorted, cut into parts and compressed by as many, while
this process writes the pack in part order.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import orjson
import xxhash
import zstandard

from . import layout
from .errors import PublishError, UntrustedManifest, UsageError
from .fsutil import fsync_file
from .hashing import ShardHasher, ShardHashes
from .manifest import TorrentEntry, safe_relative

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
# Spill buckets: BUCKET_BITS of the hash per level; a bucket over SORT_BYTES is split by the next bits.
BUCKET_BITS = 8
SORT_BYTES = 128 * 2**20  # 10^8 members spill ~80 MB a bucket: sorted without a split
SPILL_BLOCK = 128 * 2**10
# The bucket sort: from POOL_MEMBERS members on, in WORKERS processes (spawned: publish may have threads).
POOL_MEMBERS = 500_000
WORKERS = min(2, os.cpu_count() or 1)
SPILL_LEVEL = 1  # level -1 is hardly faster (582 vs 439 MB/s) and saves 9 % instead of 42 %
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


def member_rows(records: Iterable[tuple], frames: Sequence, n: int) -> Iterator[tuple]:
    """Index rows of torrent `n` from its members' (id, path, size, offset, first_frame, last_frame,
    xxh3_128, sha256) and the shard's seek table (container.Frame objects): a member's bytes are those of
    its frames, since a frame is the smallest unit that can be decompressed."""
    for ident, path, size, offset, first, last, xxh3_128, sha256 in records:
        start = frames[first].compressed_offset
        end = frames[last].compressed_offset + frames[last].compressed_size
        tar_offset = frames[first].decompressed_offset
        yield (ident, n, path, size, offset, first, last, start, end - start, tar_offset, xxh3_128, sha256)


def _row_line(row: tuple) -> bytes:
    return orjson.dumps(row) + b"\n"


def _id_prefix(ident: str) -> bytes:
    """How a part line holding `ident` starts (orjson writes the id exactly so in _row_line)."""
    return b"\n[" + orjson.dumps(ident) + b","


# ---- files: where the index is read from ----------------------------------------------------------------


class IndexFiles(Protocol):
    """Published files, wherever they are: a folder, a mirror's URL, the swarm. Implementations bound
    what they read and raise a PackagerError naming the file when they cannot."""

    def read_file(self, name: str, limit: int) -> bytes: ...

    def read_range(self, name: str, offset: int, size: int) -> bytes: ...


class FolderFiles:
    """Published files in a local folder (a published/ folder or a mirror's copy)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        return self.folder / name

    def read_file(self, name: str, limit: int) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                if not os.path.isfile(path):
                    raise UsageError(f"{path}: not a regular file")
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise UsageError(
                f"{path}: no member index here",
                hint=f"pass a published folder (with {layout.MEMBER_INDEX}), a workspace or a mirror's URL",
            ) from None
        except OSError as e:
            raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
        if len(data) > limit:
            raise UntrustedManifest(path, f"over {limit:,} bytes")
        return data

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), size, offset)
        except OSError as e:
            raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
        if len(data) != size:
            raise UntrustedManifest(path, f"ends before byte {offset + size:,}: cut short, or not this index")
        return data


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
    from .torrent import TorrentSpec, info_bytes  # libtorrent: only where a torrent is made

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


def _is_count(v: object) -> bool:
    return type(v) is int and 0 <= v < 2**63


def _is_hex(v: object, digits: int) -> bool:
    return isinstance(v, str) and len(v) == digits and set(v) <= _HEX


def _chunk_ref(raw: object, where: str, what: str, pack_size: int) -> ChunkRef:
    if (
        not isinstance(raw, list)
        or len(raw) < 3
        or not _is_count(raw[0])
        or not _is_count(raw[1])
        or not _is_hex(raw[2], 64)
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
    if not isinstance(pack, dict) or not _is_count(pack.get("size")) or not _is_hex(pack.get("sha256"), 64):
        raise UntrustedManifest(where, "pack is not {file, size, sha256}")
    bits, size = part["bits"], pack["size"]
    dirs, chunks = raw.get("directories"), raw.get("torrent_chunks")
    if not isinstance(dirs, list) or len(dirs) != 1 << directory_bits(bits):
        raise UntrustedManifest(where, f"directories: not a list of {1 << directory_bits(bits)} entries")
    if not isinstance(chunks, list):
        raise UntrustedManifest(where, "torrent_chunks: not a list")
    directories = tuple(_chunk_ref(d, where, f"directories[{i}]", size) for i, d in enumerate(dirs))
    torrent_chunks = []
    for i, c in enumerate(chunks):
        ref = _chunk_ref(c, where, f"torrent_chunks[{i}]", size)
        if len(c) != 5 or not _is_count(c[3]) or not _is_count(c[4]):
            raise UntrustedManifest(where, f"torrent_chunks[{i}] is not [offset, size, sha256, first, count]")
        torrent_chunks.append((ref, c[3], c[4]))
    release, members, torrents = raw.get("release"), raw.get("members"), raw.get("torrents")
    if not isinstance(release, str) or not _is_count(members) or not _is_count(torrents):
        raise UntrustedManifest(where, "release, members or torrents missing or of the wrong type")
    torrent = raw.get("torrent")
    index_torrent = None
    if torrent is not None:
        if (
            not isinstance(torrent, dict)
            or torrent.get("file") != layout.MEMBER_INDEX_TORRENT
            or torrent.get("name") != layout.MEMBER_INDEX_PACK_NAME
            or type(torrent.get("piece_size")) is not int
            or not _is_hex(torrent.get("info_hash_v1"), 40)
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


# ---- reading --------------------------------------------------------------------------------------------


def _decompress(data: bytes, where: str) -> bytes:
    if not data:
        return b""
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=CHUNK_MAX_BYTES)
    except zstandard.ZstdError as e:
        raise UntrustedManifest(
            where, f"not a zstd chunk of at most {CHUNK_MAX_BYTES:,} bytes ({e})"
        ) from None


def _parse_torrent(raw: object, where: str) -> IndexedTorrent:
    keys = IndexedTorrent.__dataclass_fields__
    if not isinstance(raw, dict) or set(raw) != set(keys):
        raise UntrustedManifest(where, f"a torrent is not {{{', '.join(keys)}}}: {raw!r:.120}")
    ok = (
        _is_count(raw["n"])
        and all(isinstance(raw[k], str) for k in ("name", "phase", "magnet"))
        and (raw["tier"] is None or isinstance(raw["tier"], str))
        and (raw["info_hash_v1"] is None or _is_hex(raw["info_hash_v1"], 40))
        and (raw["info_hash_v2"] is None or _is_hex(raw["info_hash_v2"], 64))
        and (raw["info_hash_v1"] or raw["info_hash_v2"])
        and all(_is_count(raw[k]) for k in ("torrent_size", "shard_size"))
        and all(_is_hex(raw[k], 64) for k in ("torrent_sha256", "shard_sha256"))
        and type(raw["piece_size"]) is int
        and 16384 <= raw["piece_size"] <= 2**30
        and raw["piece_size"] & (raw["piece_size"] - 1) == 0
    )
    if not ok:
        raise UntrustedManifest(where, f"torrent {raw.get('name')!r:.60} has a field of the wrong type")
    safe_relative(raw["torrent_file"], where, "torrent_file")
    safe_relative(raw["shard_file"], where, "shard_file")
    return IndexedTorrent(**raw)


def _parse_row(line: bytes, torrent: Callable[[int], IndexedTorrent], where: str) -> Location:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise UntrustedManifest(where, f"a member line is not JSON: {e}") from None
    if (
        not isinstance(row, list)
        or len(row) != _ROW_FIELDS
        or not isinstance(row[0], str)
        or not isinstance(row[2], str)
        or not all(_is_count(v) for v in row[3:10])
        or not _is_count(row[1])
        or not _is_hex(row[10], 32)
        or not _is_hex(row[11], 64)
        or row[8] == 0
        or row[5] > row[6]
    ):
        raise UntrustedManifest(where, f"a member line is not a member record: {line[:120]!r}")
    t = torrent(row[1])
    if row[7] + row[8] > t.shard_size or not row[9] <= row[4]:
        raise UntrustedManifest(where, f"member {row[0]!r:.60} points outside its shard {t.name}")
    return Location(row[0], t, *row[2:])


def published_folder(path: Path) -> Path:
    """The published folder that `path` names: itself, the folder above its members/ folder or
    members/index.json, or a workspace's published/ folder."""
    path = Path(path)
    if path.is_file() and path.name == Path(layout.MEMBER_INDEX).name:
        return path.parent.parent
    if path.is_dir() and path.name == layout.MEMBER_INDEX_DIR and not (path / layout.MEMBER_INDEX).exists():
        return path.parent
    if path.is_dir() and not (path / layout.MEMBER_INDEX).exists() and (path / layout.PUBLISHED).is_dir():
        return path / layout.PUBLISHED
    return path


class MemberIndex:
    """Reads a published member index through `files`, fetching only the chunks a lookup needs, each
    checked against its SHA-256; the root against `root_sha256` when the caller has it from a signed
    publication. Chunks read are kept, so ids sharing a part or a torrent chunk cost one read."""

    def __init__(self, files: IndexFiles, root_sha256: str | None = None, where: str = layout.MEMBER_INDEX):
        self.files, self.where = files, where
        data = files.read_file(layout.MEMBER_INDEX, ROOT_MAX_BYTES)
        self.root_sha256 = hashlib.sha256(data).hexdigest()
        if root_sha256 is not None and self.root_sha256 != root_sha256:
            raise UntrustedManifest(
                where,
                f"SHA-256 {self.root_sha256}, the signed publication says {root_sha256}",
                hint="this member index is not the published one; fetch it again or use another mirror",
            )
        self.root = parse_root(data, where)
        self._chunks: dict[int, bytes] = {}
        self._torrents: dict[int, IndexedTorrent] = {}
        self._dirs: dict[int, list] = {}
        self.bytes_read = len(data)

    @classmethod
    def open(cls, path: Path, root_sha256: str | None = None) -> MemberIndex:
        """The index of a local published folder: the folder, its members/ folder or members/index.json,
        or a workspace (its published/ folder)."""
        folder = published_folder(path)
        return cls(FolderFiles(folder), root_sha256, where=str(folder / layout.MEMBER_INDEX))

    def close(self) -> None:
        self._chunks.clear()

    def __enter__(self) -> MemberIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _chunk(self, ref: ChunkRef, what: str) -> bytes:
        if ref.offset in self._chunks:
            return self._chunks[ref.offset]
        data = self.files.read_range(layout.MEMBER_INDEX_PACK, ref.offset, ref.size) if ref.size else b""
        self.bytes_read += len(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise UntrustedManifest(
                f"{layout.MEMBER_INDEX_PACK}@{ref.offset}",
                f"{what}: SHA-256 {digest}, the index root says {ref.sha256}",
                hint="the pack is damaged or from another publication; fetch it again or use another mirror",
            )
        out = _decompress(data, f"{layout.MEMBER_INDEX_PACK} {what}")
        self._chunks[ref.offset] = out
        return out

    def _part_ref(self, part: int) -> tuple[ChunkRef, int]:
        bits = self.root.bits
        per_dir = 1 << (bits - directory_bits(bits))
        d = part // per_dir
        if d not in self._dirs:
            text = self._chunk(self.root.directories[d], f"directory {d}")
            try:
                entries = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                raise UntrustedManifest(self.where, f"directory {d} is not JSON: {e}") from None
            if not isinstance(entries, list) or len(entries) != per_dir:
                raise UntrustedManifest(self.where, f"directory {d} does not list {per_dir} parts")
            refs = []
            for i, e in enumerate(entries):
                ref = _chunk_ref(e, self.where, f"directory {d} entry {i}", self.root.pack_size)
                if len(e) != 4 or not _is_count(e[3]):
                    raise UntrustedManifest(self.where, f"directory {d} entry {i} has no member count")
                refs.append((ref, e[3]))
            self._dirs[d] = refs
        return self._dirs[d][part % per_dir]

    def torrent(self, n: int) -> IndexedTorrent:
        if n in self._torrents:
            return self._torrents[n]
        for ref, first, count in self.root.torrent_chunks:
            if first <= n < first + count:
                text = self._chunk(ref, f"torrent chunk from {first}")
                try:
                    raw = orjson.loads(text)
                except orjson.JSONDecodeError as e:
                    raise UntrustedManifest(
                        self.where, f"torrent chunk from {first} is not JSON: {e}"
                    ) from None
                if not isinstance(raw, list) or len(raw) != count:
                    raise UntrustedManifest(self.where, f"torrent chunk from {first} does not hold {count}")
                for i, t in enumerate(raw):
                    torrent = _parse_torrent(t, self.where)
                    if torrent.n != first + i:
                        raise UntrustedManifest(
                            self.where, f"torrent chunk from {first}: entry {i} is n={torrent.n}"
                        )
                    self._torrents[torrent.n] = torrent
                return self._torrents[n]
        raise UntrustedManifest(self.where, f"a member names torrent {n}, which the index does not list")

    def torrents(self) -> list[IndexedTorrent]:
        """Every torrent the index lists, in release order (reads every torrent chunk)."""
        return [self.torrent(first + i) for _, first, count in self.root.torrent_chunks for i in range(count)]

    def torrent_names(self) -> list[str]:
        return [t.name for t in self.torrents()]

    def locate(self, ids: Iterable[str]) -> tuple[list[Location], list[str]]:
        """(found locations, ids not in the index), in the order asked."""
        found, missing = [], []
        for ident in ids:
            loc = self._locate_one(ident)
            if loc is None:
                missing.append(ident)
            else:
                found.append(loc)
        return found, missing

    def _locate_one(self, ident: str) -> Location | None:
        part = part_of(ident, self.root.bits)
        ref, count = self._part_ref(part)
        if not count:
            return None
        text = self._chunk(ref, f"part {part}")
        at = (b"\n" + text).find(_id_prefix(ident))  # a line start: the id is the first field
        if at < 0:
            return None
        end = text.find(b"\n", at)
        loc = _parse_row(text[at : end if end >= 0 else None], self.torrent, self.where)
        if loc.id != ident:
            raise UntrustedManifest(
                self.where, f"part {part}: the line found for {ident!r:.60} is another id's"
            )
        return loc

    def members_of(self, torrent_name: str) -> Iterator[Location]:
        """Every member of one torrent, each parsed and checked as locate does: verify's fallback when a
        shard's own manifest is lost. It reads every part (the index is partitioned by id, not torrent)."""
        for line in self.iter_lines():
            loc = _parse_row(line.rstrip(b"\n"), self.torrent, self.where)
            if loc.torrent.name == torrent_name:
                yield loc

    def iter_lines(self) -> Iterator[bytes]:
        """Every member line in index order (a rewrite streams the old index through this)."""
        for part in range(1 << self.root.bits):
            ref, count = self._part_ref(part)
            if count:
                text = self._chunk(ref, f"part {part}")
                del self._chunks[ref.offset]
                lines = text.split(b"\n")[:-1]
                if len(lines) != count:
                    raise UntrustedManifest(self.where, f"part {part} holds {len(lines)} lines, not {count}")
                yield from (line + b"\n" for line in lines)


# ---- writing --------------------------------------------------------------------------------------------


class _Spill:
    """Lines spilled to 2^BUCKET_BITS files by the `shift`-th bits of their hash, in compressed blocks.
    The files stay open until close(): opening one for each block cost 0.1-0.5 ms here."""

    def __init__(self, folder: Path, shift: int):
        self.folder, self.shift = folder, shift
        folder.mkdir(parents=True)
        self._buffers: list[list[bytes]] = [[] for _ in range(1 << BUCKET_BITS)]
        self._sizes = [0] * (1 << BUCKET_BITS)
        self._mask = (1 << BUCKET_BITS) - 1
        self._cctx = zstandard.ZstdCompressor(level=SPILL_LEVEL)
        self._files: list = [None] * (1 << BUCKET_BITS)
        self.bytes = [0] * (1 << BUCKET_BITS)

    @classmethod
    def written(cls, folder: Path, shift: int, sizes: list[int]) -> _Spill:
        """A spill another process wrote into `folder`."""
        spill = cls.__new__(cls)
        spill.folder, spill.shift, spill.bytes = folder, shift, sizes
        return spill

    def path(self, b: int) -> Path:
        return self.folder / f"{b:03x}"

    def add(self, h: int, line: bytes) -> None:
        b = (h >> self.shift) & self._mask
        self._buffers[b].append(line)
        self._sizes[b] += len(line)
        if self._sizes[b] >= SPILL_BLOCK:
            self._flush(b)

    def add_rows(self, rows: Iterable[tuple]) -> int:
        """Spill index rows (as _row_line writes them); how many there were. The loop of 10^8 rows,
        written out for speed."""
        shift, mask, buffers, sizes, flush = self.shift, self._mask, self._buffers, self._sizes, self._flush
        dumps, digest = orjson.dumps, xxhash.xxh3_64_intdigest
        count = 0
        for row in rows:
            h = digest(row[0].encode("utf-8", "surrogatepass"))
            line = b"%016x%b\n" % (h, dumps(row))
            b = (h >> shift) & mask
            buffers[b].append(line)
            sizes[b] += len(line)
            if sizes[b] >= SPILL_BLOCK:
                flush(b)
            count += 1
        return count

    def add_lines(self, lines: Iterable[tuple[str, bytes]]) -> int:
        """Spill (id, its row as _row_line writes it, without the newline) pairs; how many there were."""
        shift, mask, buffers, sizes, flush = self.shift, self._mask, self._buffers, self._sizes, self._flush
        digest = xxhash.xxh3_64_intdigest
        count = 0
        for ident, row in lines:
            h = digest(ident.encode("utf-8", "surrogatepass"))
            line = b"%016x%b\n" % (h, row)
            b = (h >> shift) & mask
            buffers[b].append(line)
            sizes[b] += len(line)
            if sizes[b] >= SPILL_BLOCK:
                flush(b)
            count += 1
        return count

    def _flush(self, b: int) -> None:
        if not self._buffers[b]:
            return
        data = b"".join(self._buffers[b])
        if self._files[b] is None:
            self._files[b] = open(self.path(b), "wb")  # noqa: SIM115 - closed in close()
        self._files[b].write(self._cctx.compress(data))
        self.bytes[b] += len(data)
        self._buffers[b], self._sizes[b] = [], 0

    def discard(self) -> None:
        """Close the files without writing what is buffered."""
        for f in self._files:
            if f is not None:
                f.close()
        self._files = [None] * (1 << BUCKET_BITS)

    def close(self) -> None:
        for b in range(1 << BUCKET_BITS):
            self._flush(b)
            if self._files[b] is not None:
                self._files[b].close()
                self._files[b] = None


def _read_bucket(paths: Sequence[Path]) -> bytes:
    """One bucket's lines, from each spill that has some."""
    out = []
    for path in paths:
        if path.exists():
            with (
                open(path, "rb") as f,
                zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r,
            ):
                out.append(r.read())
    return b"".join(out)


def _sorted_runs(paths: Sequence[Path], size: int, shift: int, sort_bytes: int) -> Iterator[list[bytes]]:
    """The lines of one spilled bucket (its files in `paths`, `size` bytes uncompressed, spilled by the
    `shift`-th bits of the hash), without their newline, in (hash, line) order: as one sorted list, or,
    when it is over `sort_bytes`, as the sorted lists of its sub-buckets by the next bits. The files are
    removed."""
    if size > sort_bytes and shift >= BUCKET_BITS:
        sub = _Spill(paths[0].with_name(paths[0].name + ".split"), shift - BUCKET_BITS)
        for line in _read_bucket(paths).split(b"\n")[:-1]:
            sub.add(int(line[:16], 16), line + b"\n")
        sub.close()
        for path in paths:
            path.unlink(missing_ok=True)
        for b in range(1 << BUCKET_BITS):
            if sub.bytes[b]:
                yield from _sorted_runs([sub.path(b)], sub.bytes[b], sub.shift, sort_bytes)
        shutil.rmtree(sub.folder)
        return
    data = _read_bucket(paths)
    for path in paths:
        path.unlink(missing_ok=True)
    if data:
        lines = data.split(b"\n")
        del data
        lines.pop()
        lines.sort()
        yield lines


def _twice(lines: list[bytes]) -> tuple[bytes, bytes] | None:
    """Two lines of one id in `lines` (sorted by hash, so next to each other), or None."""
    if len({line[:16] for line in lines}) == len(lines):
        return None
    for a, b in zip(lines, lines[1:], strict=False):
        if a[:16] == b[:16] and orjson.loads(a[16:])[0] == orjson.loads(b[16:])[0]:
            return a[16:], b[16:]
    return None


def _part_text(lines: list[bytes]) -> bytes:
    return b"".join([b"%b\n" % line[16:] for line in lines])


def share_out(jobs: Sequence[tuple[object, int]], workers: int) -> list[list[object]]:
    """(job, weight) pairs dealt to `workers` lists of jobs of about equal weight, heaviest first."""
    shares: list[list[object]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for job, weight in sorted(jobs, key=lambda j: -j[1]):
        w = loads.index(min(loads))
        shares[w].append(job)
        loads[w] += weight
    return shares


def _spill_rows(job: tuple) -> tuple[int, list[int]]:
    """A worker of add_rows_in_workers: spill the rows of its share of the jobs into `folder`; (rows
    spilled, bytes per bucket)."""
    folder, shift, rows_of, share, formatted = job
    spill = _Spill(Path(folder), shift)
    add = spill.add_lines if formatted else spill.add_rows
    count = sum(add(rows_of(job)) for job in share)
    spill.close()
    return count, spill.bytes


class _Twice(Exception):
    def __init__(self, a: bytes, b: bytes):
        self.lines = (a, b)


def _cut_parts(runs: Iterable[list[bytes]], bits: int, level: int) -> Iterator[tuple[int, bytes, int]]:
    """(part, compressed chunk, members) of every non-empty part, from sorted runs that follow each other
    in hash order; _Twice if a run holds an id twice (both lines have one hash, so one run)."""
    cctx, shift = zstandard.ZstdCompressor(level=level), 64 - bits
    current, pending = 0, []
    for lines in runs:
        twice = _twice(lines)
        if twice:
            raise _Twice(*twice)
        i = 0
        while i < len(lines):
            part = int(lines[i][:16], 16) >> shift
            last = part + 1 == 1 << bits
            j = len(lines) if last else bisect_left(lines, b"%016x" % ((part + 1) << shift), i)
            if part != current and pending:
                yield current, cctx.compress(_part_text(pending)), len(pending)
                pending = []
            current = part
            pending += lines[i:j]
            i = j
    if pending:
        yield current, cctx.compress(_part_text(pending)), len(pending)


def _bucket_parts(job: tuple) -> tuple[list[tuple[int, bytes, int]], tuple[bytes, bytes] | None]:
    """The parts of one spilled bucket, or the two lines of an id found twice. Run in a worker process, so
    every setting comes in `job`. Only for bits >= BUCKET_BITS, where no part spans two buckets."""
    paths, size, shift, bits, sort_bytes, level = job
    try:
        return list(
            _cut_parts(_sorted_runs([Path(p) for p in paths], size, shift, sort_bytes), bits, level)
        ), None
    except _Twice as e:
        return [], e.lines  # the writer's abort removes what is left


@dataclass(frozen=True)
class IndexWritten:
    members: int
    torrents: int
    parts: int
    pack_size: int
    root_size: int
    root_sha256: str
    pack_sha256: str
    hashes: ShardHashes  # of the pack: what its torrent is made from
    torrent: IndexTorrent


class MemberIndexWriter:
    """Writes a member index into `folder` (its members/ files): the previous index's members and torrents
    (when `previous` is given) plus those added. Nothing is final until finish() returns."""

    def __init__(
        self,
        folder: Path,
        release: str,
        previous: MemberIndex | None = None,
        private: bool = False,
        source: str | None = None,
    ):
        self.folder, self.release = Path(folder), release
        self.private, self.source = private, source  # of the index's torrent: in its info dict
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=".spill-", dir=self.folder))
        self._spill = _Spill(self._tmp / "rows", 64 - BUCKET_BITS)
        self._more_spills: list[_Spill] = []  # those written by add_rows_in_workers
        self._torrents: dict[int, IndexedTorrent] = {}
        self._names: set[str] = set()
        self.members = 0
        if previous is not None:
            for t in previous.torrents():
                self._add_torrent(t)
            for line in previous.iter_lines():
                self._add_line(orjson.loads(line)[0], line)

    def _add_torrent(self, t: IndexedTorrent) -> None:
        if t.n in self._torrents or t.name in self._names:
            raise PublishError(self.folder, f"torrent {t.name} (n={t.n}) is indexed twice")
        self._torrents[t.n] = t
        self._names.add(t.name)

    def _add_line(self, ident: str, line: bytes) -> None:
        h = id_hash(ident)
        self._spill.add(h, b"%016x" % h + line)
        self.members += 1

    def add_torrents(self, torrents: Iterable[tuple[int, TorrentEntry, Iterable[tuple]]]) -> None:
        """Add (n, entry, member_rows(...)) torrents."""
        for n, entry, rows in torrents:
            self._add_torrent(IndexedTorrent.of_entry(n, entry))
            self.members += self._spill.add_rows(rows)

    def scratch(self, name: str) -> Path:
        """A new folder for a caller's temporary files, removed with the writer's."""
        folder = self._tmp / name
        folder.mkdir()
        return folder

    def add_rows_in_workers(
        self,
        torrents: Iterable[tuple[int, TorrentEntry]],
        jobs: Sequence[tuple[object, int]],
        rows_of: Callable[[object], Iterable[tuple]],
        formatted: bool = False,
    ) -> None:
        """Add (n, entry) torrents whose member rows are those of every (job, weight) of `jobs`, each
        `rows_of(job)`: read and spilled by WORKERS processes, the jobs shared out by weight, when the
        weights add up to POOL_MEMBERS or more. `rows_of` is a module-level function and each job
        picklable. With `formatted`, rows_of yields (id, row as _row_line writes it without the newline)
        pairs: a caller that has the row's JSON in parts saves a parse and a dump. The bytes are those
        add_torrents writes."""
        for n, entry in torrents:
            self._add_torrent(IndexedTorrent.of_entry(n, entry))
        workers = WORKERS if sum(w for _, w in jobs) >= POOL_MEMBERS else 1
        if workers == 1:
            add = self._spill.add_lines if formatted else self._spill.add_rows
            for job, _ in jobs:
                self.members += add(rows_of(job))
            return
        base = len(self._more_spills)
        folders = [self._tmp / f"rows-{base + w}" for w in range(workers)]
        shares = share_out(jobs, workers)
        spill_jobs = [
            (str(f), self._spill.shift, rows_of, share, formatted)
            for f, share in zip(folders, shares, strict=True)
        ]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for folder, (count, sizes) in zip(folders, pool.map(_spill_rows, spill_jobs), strict=True):
                self._more_spills.append(_Spill.written(folder, self._spill.shift, sizes))
                self.members += count

    def abort(self) -> None:
        self._spill.discard()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> MemberIndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def finish(self) -> IndexWritten:
        """Sort, cut into parts, write the pack and then the root; the spill folder is removed."""
        self._spill.close()
        bits = bits_for(self.members)
        pack_path = self.folder / layout.MEMBER_INDEX_PACK_NAME
        cctx = zstandard.ZstdCompressor(level=LEVEL)
        # One pass: the pack's SHA-256 and its v1 pieces, for the index's own torrent, as it is written.
        whole = ShardHasher(index_piece_size(self.members))
        parts: list[list] = []
        with open(pack_path, "wb") as pack:

            def append(data: bytes) -> ChunkRef:
                offset = pack.tell()
                pack.write(data)
                whole.update(data)
                return ChunkRef(offset, len(data), hashlib.sha256(data).hexdigest())

            def add_part(data: bytes, count: int) -> None:
                ref = append(data)
                parts.append([ref.offset, ref.size, ref.sha256, count])

            for part, data, count in self._parts(bits):
                while len(parts) < part:
                    add_part(b"", 0)
                add_part(data, count)
            while len(parts) < 1 << bits:
                add_part(b"", 0)
            per_dir = 1 << (bits - directory_bits(bits))
            directories = tuple(
                append(cctx.compress(orjson.dumps(parts[d * per_dir : (d + 1) * per_dir])))
                for d in range(1 << directory_bits(bits))
            )
            ordered = [self._torrents[n] for n in sorted(self._torrents)]
            chunks = []
            for i in range(0, len(ordered), TORRENT_CHUNK):
                group = ordered[i : i + TORRENT_CHUNK]
                ref = append(cctx.compress(orjson.dumps([asdict(t) for t in group])))
                chunks.append((ref, group[0].n, len(group)))
            pack_size = pack.tell()
            pack.flush()
            os.fsync(pack.fileno())
        shutil.rmtree(self._tmp, ignore_errors=True)
        hashes = whole.finish()
        name = layout.MEMBER_INDEX_PACK_NAME
        torrent = IndexTorrent(
            layout.MEMBER_INDEX_TORRENT,
            name,
            hashes.piece_size,
            index_info_hash(hashes, self.private, self.source),
        )
        root = Root(
            self.release,
            self.members,
            len(ordered),
            bits,
            pack_size,
            hashes.sha256.hex(),
            directories,
            tuple(chunks),
            torrent,
        ).to_json()
        root_path = self.folder / Path(layout.MEMBER_INDEX).name
        root_path.write_bytes(root)
        fsync_file(root_path)
        return IndexWritten(
            self.members,
            len(ordered),
            1 << bits,
            pack_size,
            len(root),
            hashlib.sha256(root).hexdigest(),
            hashes.sha256.hex(),
            hashes,
            torrent,
        )

    def _parts(self, bits: int) -> Iterator[tuple[int, bytes, int]]:
        """(part, compressed chunk, members) of every non-empty part, in part order. From 2^BUCKET_BITS
        parts on, a part lies in one bucket and the buckets are sorted and compressed by WORKERS processes
        while this one writes; below, inline."""
        spills, shift = [self._spill, *self._more_spills], self._spill.shift
        if bits >= BUCKET_BITS:
            jobs = [
                (
                    [str(s.path(b)) for s in spills],
                    sum(s.bytes[b] for s in spills),
                    shift,
                    bits,
                    SORT_BYTES,
                    LEVEL,
                )
                for b in range(1 << BUCKET_BITS)
            ]
            if self.members >= POOL_MEMBERS and WORKERS > 1:
                pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
                results = pool.map(_bucket_parts, jobs)
            else:
                pool, results = None, map(_bucket_parts, jobs)
            try:
                for found, twice in results:
                    if twice:
                        self._refuse_twice(*twice)
                    yield from found
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
            return
        runs = (
            lines
            for b in range(1 << BUCKET_BITS)
            for lines in _sorted_runs(
                [s.path(b) for s in spills], sum(s.bytes[b] for s in spills), shift, SORT_BYTES
            )
        )
        try:
            yield from _cut_parts(runs, bits, LEVEL)
        except _Twice as e:
            self._refuse_twice(*e.lines)

    def _refuse_twice(self, a: bytes, b: bytes) -> None:
        first, second = orjson.loads(a), orjson.loads(b)
        names = sorted({self._torrents[first[1]].name, self._torrents[second[1]].name})
        raise PublishError(self.folder, f"item {first[0]!r} is indexed twice, in {' and '.join(names)}")
