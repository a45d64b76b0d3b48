"""Single-file .torrent metainfo for one shard, assembled from hashes recorded while the shard was written.

The info dict is byte-identical to what libtorrent 2.1's ``create_torrent`` + ``set_piece_hashes`` make
for the same file, piece size and format (``v1_only``, hybrid, ``v2_only``; no ``attr``/``mtime``), so the
info-hash of a shard can be reproduced with stock tools. The file itself is never re-read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from . import __version__
from .bencode import BencodeError, bdecode_dict, bencode
from .errors import PieceSizeError, TorrentError, UsageError
from .fsutil import write_atomic
from .hashing import V2_BLOCK_SIZE, ShardHashes
from .units import FORMATS, PIECE_SIZE_MAX, PIECE_SIZE_MIN  # defined once; config checks them at load

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40

# The automatic rule's ceiling on the piece count. 4096 v1 pieces make an 80 KB `pieces` string, 5 of the
# 16 KiB blocks a magnet user fetches over ut_metadata (BEP 9); the piece layer of a hybrid adds 128 KB but
# travels outside the info dict. Fewer, larger pieces would make fetching one track cost more.
TARGET_MAX_PIECES = 4096

# libtorrent's load_torrent_limits defaults: a bigger .torrent or more pieces and it refuses to load the file.
METAINFO_MAX_BYTES = 10_000_000
PIECES_MAX = 0x200000

TRACKER_SCHEMES = ("http", "https", "udp")
# libtorrent fetches BEP 19 web seeds over HTTP(S) only.
WEB_SEED_SCHEMES = ("http", "https")

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": KiB, "MIB": MiB, "GIB": GiB}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")


# --- piece size -----------------------------------------------------------------------------------------


def piece_size_for(total_size: int) -> int:
    """The smallest power of two cutting `total_size` bytes into at most 4096 pieces, within 16 KiB-64 MiB.

    Hence for 64 MiB < size <= 256 GiB the count is between 2049 and 4096; at or below 64 MiB the pieces are
    16 KiB (at most 4096 of them); above 256 GiB they are 64 MiB and the count grows (16384 at 1 TiB).
    A pure function of the number, since the shard is hashed while it is written, before its size is known
    exactly: callers pass the planned size.
    """
    if total_size < 0:
        raise ValueError(f"negative torrent size: {total_size}")
    needed = -(-total_size // TARGET_MAX_PIECES)
    size = 1 << max(needed - 1, 0).bit_length()
    return min(max(size, PIECE_SIZE_MIN), PIECE_SIZE_MAX)


def piece_count(total_size: int, piece_size: int) -> int:
    return -(-total_size // piece_size)


TABLE_SIZES = (
    1 * MiB,
    64 * MiB,
    100 * 10**6,
    1 * GiB,
    4 * GiB,
    25 * 10**9,
    50 * 10**9,
    100 * 10**9,
    256 * GiB,
    1 * TiB,
)


def piece_size_table(sizes: Iterable[int] = TABLE_SIZES) -> list[tuple[int, int, int]]:
    """(torrent size, piece size, piece count) under the automatic rule, for the README and `piece-size`."""
    rows = []
    for size in sizes:
        piece = piece_size_for(size)
        rows.append((size, piece, piece_count(size, piece)))
    return rows


def check_piece_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"piece size must be an int, not {type(size).__name__}")
    if size < PIECE_SIZE_MIN or size > PIECE_SIZE_MAX or size & (size - 1):
        raise PieceSizeError(size, PIECE_SIZE_MIN, PIECE_SIZE_MAX)
    return size


def parse_piece_size(value: str | int) -> int:
    """'4MiB' -> 4194304, '16KiB' -> 16384, 1048576 -> 1048576.

    KB/MB/GB are decimal and so never a power of two: '4MB' is refused rather than silently read as 4 MiB.
    PieceSizeError for a number that is not an allowed piece size; UsageError for text that is not a size.
    """
    if isinstance(value, bool):
        raise UsageError(f"piece size {value!r} is not a number of bytes", hint="e.g. 16KiB, 1MiB, 16MiB")
    if isinstance(value, int):
        return check_piece_size(value)
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise UsageError(f"piece size {value!r} is not a number of bytes", hint="e.g. 16KiB, 1MiB, 16MiB")
    return check_piece_size(int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


# --- the spec and its validation ------------------------------------------------------------------------


def _check_url(name: str, what: str, url: str, schemes: tuple[str, ...]) -> None:
    allowed = ", ".join(f"{s}://" for s in schemes)
    if not isinstance(url, str) or any(c.isspace() or not c.isprintable() for c in url):
        # RFC 3986 has no raw spaces; libtorrent would percent-encode them on load, changing the URL.
        raise TorrentError(name, f"{what} {url!r} is not a URL starting with {allowed}; escape spaces as %20")
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise TorrentError(name, f"{what} {url!r} is not a URL starting with {allowed}")


def _check_name(name: str) -> None:
    # BEP 3 `name` is a file name, not a path; clients differ in how they sanitise separators and dot names.
    if not isinstance(name, str) or not name:
        raise TorrentError("<unnamed torrent>", f"torrent name {name!r} is empty or not a string")
    bad = next((c for c in ("/", "\\", "\x00") if c in name), None)
    if bad is not None or name in (".", ".."):
        raise TorrentError(name, f"torrent name {name!r} must be a plain file name (found {bad or name!r})")


def _check_hashes(name: str, fmt: str, h: ShardHashes) -> None:
    check_piece_size(h.piece_size)
    if h.length <= 0:
        raise TorrentError(name, f"file length {h.length} is not positive; an empty shard has no pieces")
    count = piece_count(h.length, h.piece_size)
    if count > PIECES_MAX:
        raise TorrentError(name, f"{count} pieces, over libtorrent's {PIECES_MAX}; use larger pieces")
    if fmt != "v2" and len(h.v1_pieces) != 20 * count:
        raise TorrentError(name, f"v1 pieces are {len(h.v1_pieces)} bytes, expected 20 x {count} pieces")
    if fmt == "v1":
        return
    if h.v2_root is None or len(h.v2_root) != 32:
        raise TorrentError(name, f"format {fmt!r} needs the v2 pieces root; hash the shard with v2=True")
    layer = h.v2_piece_layer or b""
    # BEP 52: a file no larger than one piece has no piece layer; its pieces root covers it.
    expected = 32 * count if h.length > h.piece_size else 0
    if len(layer) != expected:
        raise TorrentError(name, f"v2 piece layer is {len(layer)} bytes, expected {expected}")


def _as_tiers(trackers: Iterable[Iterable[str]]) -> tuple[tuple[str, ...], ...]:
    if isinstance(trackers, str):
        return ((trackers,),)
    return tuple((tier,) if isinstance(tier, str) else tuple(tier) for tier in trackers)


@dataclass(frozen=True)
class TorrentSpec:
    """Everything that goes into one shard's .torrent. Validated on construction."""

    name: str  # the shard file name, e.g. "music-audio-t1-00001.tar.zst"
    hashes: ShardHashes
    format: str = "v1"  # "v1" | "hybrid" | "v2"
    trackers: tuple[tuple[str, ...], ...] = ()  # BEP 12 tiers
    web_seeds: tuple[str, ...] = ()  # BEP 19 url-list
    private: bool = False
    source: str | None = None
    created_by: str = f"packager {__version__}"
    # Left out unless given, so the .torrent file (not just the info-hash) depends only on the content.
    creation_date: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.format not in FORMATS:
            raise TorrentError(self.name, f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        _check_hashes(self.name, self.format, self.hashes)
        object.__setattr__(self, "trackers", _as_tiers(self.trackers))
        seeds = (self.web_seeds,) if isinstance(self.web_seeds, str) else tuple(self.web_seeds)
        object.__setattr__(self, "web_seeds", seeds)
        for tier in self.trackers:
            if not tier:
                raise TorrentError(self.name, "empty tracker tier")
            for url in tier:
                _check_url(self.name, "tracker", url, TRACKER_SCHEMES)
        for url in self.web_seeds:
            _check_url(self.name, "web seed", url, WEB_SEED_SCHEMES)
        if self.source is not None and (not isinstance(self.source, str) or not self.source):
            raise TorrentError(self.name, f"source {self.source!r} must be a non-empty string")
        date = self.creation_date
        if date is not None and (isinstance(date, bool) or not isinstance(date, int) or date <= 0):
            # libtorrent reads a creation date of 0 as "none", so 0 could not round-trip.
            raise TorrentError(self.name, f"creation date {date!r} must be positive Unix seconds")


def web_seed_url(base: str, file_name: str) -> str:
    """The url-list entry of a single-file torrent served under the folder URL `base`.

    BEP 19: for a single-file torrent, a URL ending in `/` names a folder to which the client appends the
    torrent's name, and any other URL names the file itself. release.toml's `web_seeds` are folders that
    serve every shard, so each torrent gets its own file's URL: no client has to apply the slash rule, and
    the URL `packager show` prints is one that curl fetches.
    """
    return f"{base.rstrip('/')}/{quote(file_name)}"


# --- assembly -------------------------------------------------------------------------------------------


def _info_dict(spec: TorrentSpec) -> dict[bytes, object]:
    h, name = spec.hashes, spec.name.encode()
    info: dict[bytes, object] = {b"name": name, b"piece length": h.piece_size}
    if spec.format != "v2":
        info[b"length"] = h.length
        info[b"pieces"] = h.v1_pieces
    if spec.format != "v1":
        info[b"meta version"] = 2
        info[b"file tree"] = {name: {b"": {b"length": h.length, b"pieces root": h.v2_root}}}
    if spec.private:
        info[b"private"] = 1  # BEP 27
    if spec.source is not None:
        # Not written by libtorrent; private trackers use it to give cross-seeded copies distinct info-hashes.
        info[b"source"] = spec.source.encode()
    return info


def _top_level(spec: TorrentSpec, info: dict[bytes, object]) -> dict[bytes, object]:
    meta: dict[bytes, object] = {b"info": info}
    urls = [url for tier in spec.trackers for url in tier]
    if urls:
        meta[b"announce"] = urls[0].encode()
    # Like libtorrent: BEP 12's announce-list only when there is more than one tracker.
    if len(urls) > 1:
        meta[b"announce-list"] = [[url.encode() for url in tier] for tier in spec.trackers]
    # Like libtorrent: BEP 19 allows a single string or a list; one seed is written as a string.
    if len(spec.web_seeds) == 1:
        meta[b"url-list"] = spec.web_seeds[0].encode()
    elif spec.web_seeds:
        meta[b"url-list"] = [url.encode() for url in spec.web_seeds]
    if spec.created_by:
        meta[b"created by"] = spec.created_by.encode()
    if spec.creation_date is not None:
        meta[b"creation date"] = spec.creation_date
    if spec.comment:
        meta[b"comment"] = spec.comment.encode()
    if spec.format != "v1":
        h = spec.hashes
        # BEP 52: only files larger than one piece have a layer; libtorrent writes the empty dict regardless.
        meta[b"piece layers"] = {h.v2_root: h.v2_piece_layer} if h.length > h.piece_size else {}
    return meta


def info_bytes(spec: TorrentSpec) -> bytes:
    """The bencoded info dict: what the info-hashes are computed over."""
    return bencode(_info_dict(spec))


def build_metainfo(spec: TorrentSpec) -> bytes:
    """The bencoded .torrent for `spec`."""
    data = bencode(_top_level(spec, _info_dict(spec)))
    if len(data) > METAINFO_MAX_BYTES:
        raise TorrentError(
            spec.name,
            f".torrent would be {len(data)} bytes, over libtorrent's {METAINFO_MAX_BYTES}; use larger pieces",
        )
    return data


# --- identity and magnets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorrentIdentity:
    info_hash_v1: str | None  # SHA-1 of the info dict, 40 hex; None for a v2-only torrent
    info_hash_v2: str | None  # SHA-256 of the info dict, 64 hex; None for a v1 torrent
    magnet: str

    @property
    def info_hash_v2_truncated(self) -> str | None:
        """BEP 52: trackers, DHT and the handshake carry the v2 info-hash truncated to 20 bytes."""
        return self.info_hash_v2[:40] if self.info_hash_v2 else None


def magnet_link(
    name: str | None,
    info_hash_v1: str | None = None,
    info_hash_v2: str | None = None,
    trackers: Sequence[str] = (),
    web_seeds: Sequence[str] = (),
) -> str:
    """BEP 9 magnet: btih for v1, btmh (multihash 0x12 = sha2-256, 0x20 bytes) for v2 (BEP 52), dn, tr, ws."""
    if not info_hash_v1 and not info_hash_v2:
        raise TorrentError(name or "<magnet>", "a magnet link needs a v1 or v2 info-hash")
    parts = []
    if info_hash_v1:
        parts.append(f"xt=urn:btih:{info_hash_v1}")
    if info_hash_v2:
        parts.append(f"xt=urn:btmh:1220{info_hash_v2}")
    if name:
        parts.append(f"dn={quote(name, safe='')}")
    parts += [f"tr={quote(url, safe='')}" for url in trackers]
    parts += [f"ws={quote(url, safe='')}" for url in web_seeds]
    return "magnet:?" + "&".join(parts)


def _identity_of_spec(spec: TorrentSpec) -> TorrentIdentity:
    data = info_bytes(spec)
    v1 = hashlib.sha1(data).hexdigest() if spec.format != "v2" else None
    v2 = hashlib.sha256(data).hexdigest() if spec.format != "v1" else None
    urls = [url for tier in spec.trackers for url in tier]
    return TorrentIdentity(v1, v2, magnet_link(spec.name, v1, v2, urls, spec.web_seeds))


def identity(spec_or_metainfo: TorrentSpec | bytes) -> TorrentIdentity:
    """Info-hashes and magnet of a spec (computed here) or of .torrent bytes (read through libtorrent)."""
    if isinstance(spec_or_metainfo, TorrentSpec):
        return _identity_of_spec(spec_or_metainfo)
    info = _parse(Path("<metainfo>"), bytes(spec_or_metainfo))
    return TorrentIdentity(info.info_hash_v1, info.info_hash_v2, info.magnet)


# --- files ----------------------------------------------------------------------------------------------


def write_torrent(path: Path, metainfo: bytes) -> None:
    """Write atomically: a reader sees the old file or the complete new one, also after a crash."""
    try:
        write_atomic(Path(path), metainfo)
    except OSError as e:
        raise TorrentError(path, f"cannot write: {e.strerror or e}") from e


@dataclass(frozen=True)
class TorrentInfo:
    name: str
    size: int
    piece_size: int
    piece_count: int
    files: tuple[tuple[str, int], ...]  # (path inside the torrent, size); pad files left out
    info_hash_v1: str | None
    info_hash_v2: str | None
    trackers: tuple[tuple[str, ...], ...]
    web_seeds: tuple[str, ...]
    private: bool
    source: str | None
    created_by: str | None
    creation_date: int | None
    comment: str | None
    magnet: str
    format: str  # "v1" | "hybrid" | "v2"
    metainfo_size: int = field(default=0)


def read_torrent(path: Path) -> TorrentInfo:
    """Load a .torrent through libtorrent. TorrentError (with libtorrent's reason) if it cannot."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > METAINFO_MAX_BYTES:
            raise TorrentError(path, f"{size} bytes, over libtorrent's {METAINFO_MAX_BYTES}-byte limit")
        data = path.read_bytes()
    except OSError as e:
        raise TorrentError(path, f"cannot read: {e.strerror or e}") from e
    return _parse(path, data)


def _tiers_from(urls: Sequence[str], tiers: Sequence[int]) -> tuple[tuple[str, ...], ...]:
    grouped: dict[int, list[str]] = {}
    for url, tier in zip(urls, tiers, strict=False):
        grouped.setdefault(tier, []).append(url)
    return tuple(tuple(grouped[t]) for t in sorted(grouped))


def _load(path: Path | str, data: bytes):
    """libtorrent's (add_torrent_params, torrent_info) of .torrent bytes; TorrentError if it refuses them."""
    import libtorrent as lt  # 0.3 s from a cold cache: only where a .torrent is read

    if len(data) > METAINFO_MAX_BYTES:
        raise TorrentError(path, f"{len(data)} bytes, over libtorrent's {METAINFO_MAX_BYTES}-byte limit")
    try:
        params = lt.load_torrent_buffer(data)
    except RuntimeError as e:
        raise TorrentError(path, f"not a valid .torrent: {e}") from e
    ti = params.ti
    if ti is None or not ti.is_valid():
        raise TorrentError(path, "not a valid .torrent: libtorrent found no info dict")
    return params, ti


def _info_hashes(ti) -> tuple[str | None, str | None]:
    hashes = ti.info_hashes()
    return (str(hashes.v1) if hashes.has_v1() else None, str(hashes.v2) if hashes.has_v2() else None)


def _files(ti) -> tuple[tuple[str, int], ...]:
    import libtorrent as lt  # as in _load, which made `ti`

    layout = ti.layout()
    return tuple(
        (layout.file_path(i), layout.file_size(i))
        for i in range(layout.num_files())
        if not layout.file_flags(i) & lt.file_storage.flag_pad_file
    )


def _parse(path: Path, data: bytes) -> TorrentInfo:
    params, ti = _load(path, data)
    v1, v2 = _info_hashes(ti)
    fmt = "hybrid" if v1 and v2 else ("v1" if v1 else "v2")
    files = _files(ti)
    import libtorrent as lt  # as in _load, which made `ti`

    raw_info = lt.bdecode(ti.info_section())
    source = raw_info.get(b"source") if isinstance(raw_info, dict) else None
    trackers = _tiers_from(list(params.trackers), list(params.tracker_tiers))
    web_seeds = tuple(params.url_seeds)
    flat = [url for tier in trackers for url in tier]
    return TorrentInfo(
        name=ti.name(),
        # A v2 layout pads every file to a piece boundary (BEP 52), so total_size() would count the pad.
        size=sum(size for _, size in files),
        piece_size=ti.piece_length(),
        piece_count=ti.num_pieces(),
        files=files,
        info_hash_v1=v1,
        info_hash_v2=v2,
        trackers=trackers,
        web_seeds=web_seeds,
        private=bool(ti.priv()),
        source=source.decode("utf-8", "replace") if isinstance(source, bytes) else None,
        # Since libtorrent 2.1 these live in the add_torrent_params, not in its torrent_info.
        created_by=params.created_by or None,
        creation_date=params.creation_date or None,
        comment=params.comment or None,
        magnet=magnet_link(ti.name(), v1, v2, flat, web_seeds),
        format=fmt,
        metainfo_size=len(data),
    )


# --- piece hashes, for a checker ------------------------------------------------------------------------


@dataclass(frozen=True)
class PieceHashes:
    """What a single-file .torrent says each piece of its file hashes to; as trusted as the .torrent."""

    length: int
    piece_size: int
    v1: bytes | None  # 20 bytes a piece
    v2_root: bytes | None = None
    v2_layer: bytes | None = None  # 32 bytes a piece; b"" when the file is one piece or less
    info_hash_v1: str | None = None
    info_hash_v2: str | None = None

    @property
    def count(self) -> int:
        return piece_count(self.length, self.piece_size)

    @property
    def kind(self) -> str:
        return "SHA-1 (v1)" if self.v1 is not None else "SHA-256 merkle (v2)"


# Bounds of a .torrent read without libtorrent, as its load_torrent_limits has them: nesting (max_decode_depth
# 100) and piece length (it refuses over 256 MiB). Its token limit (2,000,000) is far above what one file's
# torrent holds (a few dozen values, and one per tracker and web seed); ours keeps a hostile one cheap.
METAINFO_MAX_DEPTH = 100
METAINFO_MAX_ITEMS = 100_000
PIECE_LENGTH_LIMIT = 256 * MiB


def read_piece_hashes(data: bytes, where: Path | str, name: str) -> PieceHashes:
    """The piece hashes in the .torrent `data` of the single file `name`: its v1 SHA-1s when it has them
    (v1, hybrid), else its BEP 52 piece layer; the info-hashes over the info dict's bytes as they are in
    `data`. TorrentError if it describes anything else, or is malformed.

    Read with our bounded decoder, not libtorrent: importing libtorrent was the largest part of a
    `verify --pieces` start-up, for a dict lookup (tests/test_torrent.py checks both agree)."""
    if len(data) > METAINFO_MAX_BYTES:
        raise TorrentError(where, f"{len(data)} bytes, over libtorrent's {METAINFO_MAX_BYTES}-byte limit")
    try:
        meta, raw = bdecode_dict(data, b"info", max_depth=METAINFO_MAX_DEPTH, max_items=METAINFO_MAX_ITEMS)
    except BencodeError as e:
        raise TorrentError(where, f"not a valid .torrent: {e}") from None
    info = meta.get(b"info")
    if not isinstance(info, dict) or raw is None:
        raise TorrentError(where, "not a valid .torrent: no info dict")
    piece_size = info.get(b"piece length")
    if type(piece_size) is not int or not 0 < piece_size <= PIECE_LENGTH_LIMIT:
        raise TorrentError(where, f"not a valid .torrent: piece length {piece_size!r}")
    if info.get(b"name") != name.encode():
        raise TorrentError(where, f"does not describe the single file {name}")
    version = info.get(b"meta version", 1)
    if version not in (1, 2):
        raise TorrentError(where, f"not a valid .torrent: meta version {version!r}")
    v2_length, root = _v2_file(info, name, where) if version == 2 else (None, None)
    has_v1 = b"pieces" in info
    if has_v1:
        length, pieces = info.get(b"length"), info[b"pieces"]
        if b"files" in info or type(length) is not int:
            raise TorrentError(where, f"does not describe the single file {name}")
        if v2_length is not None and v2_length != length:
            raise TorrentError(where, f"its v1 and v2 parts give {name} two sizes: {length}, {v2_length}")
    elif v2_length is None:
        raise TorrentError(where, "not a valid .torrent: neither v1 pieces nor a v2 file tree")
    else:
        length = v2_length
    if length <= 0:
        raise TorrentError(where, f"not a valid .torrent: file size {length}")
    count = piece_count(length, piece_size)
    v1 = hashlib.sha1(raw).hexdigest() if has_v1 else None
    v2 = hashlib.sha256(raw).hexdigest() if version == 2 else None
    if has_v1:
        if not isinstance(pieces, bytes) or len(pieces) != 20 * count or count > PIECES_MAX:
            raise TorrentError(where, f"not a valid .torrent: {count} pieces, but not {count} SHA-1 hashes")
        return PieceHashes(length, piece_size, pieces, info_hash_v1=v1, info_hash_v2=v2)
    # BEP 52: the layer is in the metainfo's `piece layers`, outside the info dict, under the pieces root;
    # a file of one piece or less has none (its root covers it).
    layer = _get(meta.get(b"piece layers"), root)
    if length <= piece_size and layer is None:
        layer = b""
    expected = 32 * count if length > piece_size else 0
    if not isinstance(layer, bytes) or len(layer) != expected:
        raise TorrentError(where, "the v2 pieces root or piece layer is missing or the wrong size")
    return PieceHashes(length, piece_size, None, root, layer, info_hash_v2=v2)


def _v2_file(info: dict, name: str, where: Path | str) -> tuple[int, bytes]:
    """(size, pieces root) of the one file of a v2 info dict's `file tree` (BEP 52: {name: {"": {...}}})."""
    tree = info.get(b"file tree")
    if not isinstance(tree, dict):
        raise TorrentError(where, "not a valid .torrent: meta version 2 without a file tree")
    piece_size = info[b"piece length"]
    if piece_size < V2_BLOCK_SIZE or piece_size & (piece_size - 1):
        raise TorrentError(where, f"not a valid v2 .torrent: piece length {piece_size} (BEP 52)")
    if list(tree) != [name.encode()] or not isinstance(tree[name.encode()], dict):
        raise TorrentError(where, f"does not describe the single file {name}")
    entry = _get(tree[name.encode()], b"")
    length, root = _get(entry, b"length"), _get(entry, b"pieces root")
    if type(length) is not int or not isinstance(root, bytes) or len(root) != 32:
        raise TorrentError(where, "the v2 pieces root or piece layer is missing or the wrong size")
    return length, root


def _get(node: object, key: object) -> object:
    return node.get(key) if isinstance(node, dict) else None
