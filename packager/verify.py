"""Verify a downloaded release (all of it or part): file, piece and member level, with precise reports.

Trust order, highest first:

1. ``release.json`` and ``SHA256SUMS``: size and SHA-256 of every shard and .torrent; authenticated by their
   minisign signatures when a public key is given (without one they are only as good as the mirror);
2. each shard's .torrent, itself checked against those SHA-256s before it is used: v1 SHA-1 piece hashes,
   or the BEP 52 piece layer for a v2-only torrent;
3. the shard's own member manifest (size, xxh3-128, SHA-256 of each member) and seek table (XXH64 of each
   frame), which prove that a shard is consistent, not that it is the one published.

Levels: **file** (presence, size, SHA-256); **piece** (``pieces=True``, and automatically for a file whose
size or SHA-256 is wrong: the pieces to fetch again); **member** (``deep=True``: every frame decompressed on
its own as the bytes stream past, so a damaged frame never hides the frames after it; damaged members named
by id and path). With an authenticated .torrent, checking every piece covers every byte, so the whole-file
SHA-256 is then computed only for a file with a bad piece (to recognise a swapped file).

Each level reads each byte once; the levels asked for share one sequential read of a file, each on its own
thread, and files are checked in parallel; the pieces of one file, checked alone, are split across threads.
Memory per file is a few read chunks plus one decompressed chunk whatever the shard size, plus the member
manifest (one record per member).

The library never prints: progress goes to an ``on_event`` callback, the result is a VerifyReport.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import xxhash
import zstandard

from .container.format import HEAD_BYTES, RESERVED_MANIFEST_NAME, TAR_BLOCK, Frame, seek_checksum, tar_member
from .container.scan import FramesFrom, Layout, read_layout, starts_with_tar_header
from .errors import UntrustedManifest, UsageError
from .hashing import V2_BLOCK_SIZE, MemberHasher, merkle_root

RELEASE_JSON = "release.json"
SHA256SUMS = "SHA256SUMS"
SIGNATURE_SUFFIX = ".minisig"
SHARDS_DIR = "shards"
TORRENTS_DIR = "torrents"
SHARD_SUFFIX = ".tar.zst"
TORRENT_SUFFIX = ".torrent"
PUBLISHED_DIR = "published"  # publish.PUBLISHED_DIR: where a workspace keeps its manifests and torrents

# 4 MiB reads: as fast as larger ones from disk and page cache here, and with QUEUE_DEPTH chunks in flight
# per consumer a file's read buffers stay under ~24 MiB.
READ_CHUNK = 4 * 2**20
QUEUE_DEPTH = 4
# Output chunk of the per-frame decompressor; above zstd's 128 KiB block so every call flushes whole blocks.
OUT_CHUNK = 2**20
# Compressed bytes handed to the decompressor at a time: what decodes before a damaged block still comes out.
FEED_CHUNK = 128 * 2**10
_HEX64 = re.compile(r"[0-9a-f]{64}")
_EMPTY_XXH3 = xxhash.xxh3_128(b"").hexdigest()
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _unfinished_names(name: str) -> tuple[str, ...]:
    """Names clients give a file while they download it: Transmission .part, qBittorrent .!qB (an option),
    uTorrent .!ut. (aria2 and libtorrent keep the real name: an unfinished file there shows as damaged.)"""
    return (f"{name}.part", f"{name}.!qB", f"{name}.!ut")


# Severities of a finding; the exit code follows from the worst one present.
DAMAGE, MISSING, BAD_INPUT, NOTE = "damage", "missing", "bad input", "note"


# --- options, events, results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyOptions:
    pieces: bool = False  # check every piece, not only those of files whose SHA-256 is wrong
    deep: bool = False  # decompress every frame and check every member
    jobs: int = 0  # files checked at once; 0: one per core
    pubkey: str | None = None  # minisign public key file, or its base64 line


@dataclass(frozen=True)
class PassStarted:
    """A read of `total` bytes of `path` begins, for the levels named."""

    path: str
    levels: tuple[str, ...]
    total: int


@dataclass(frozen=True)
class BytesRead:
    path: str
    n: int


@dataclass(frozen=True)
class FileChecked:
    result: FileResult


Event = PassStarted | BytesRead | FileChecked


@dataclass(frozen=True)
class Finding:
    """One thing found, located as precisely as the evidence allows; `message` is what a user reads."""

    file: str
    level: str  # "release", "file", "piece", "member"
    severity: str  # DAMAGE, MISSING, BAD_INPUT or NOTE
    message: str
    pieces: tuple[int, int] | None = None  # inclusive range of piece indexes
    frames: tuple[int, int] | None = None  # inclusive range of zstd frames
    member_id: str | None = None
    member_path: str | None = None
    offset: int | None = None  # byte offset in the file

    def as_dict(self) -> dict:
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class MemberDamage:
    id: str | None  # None when the manifest is unreadable and the member was named from its tar header
    path: str | None
    frames: tuple[int, int]
    pieces: tuple[int, int] | None
    reason: str

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "frames": list(self.frames),
            "pieces": list(self.pieces) if self.pieces else None,
            "reason": self.reason,
        }


@dataclass
class FileResult:
    """Everything found about one file of the release."""

    path: str  # relative to the release folder, or as given
    kind: str  # "shard" or "torrent"
    status: str = "ok"  # "ok", "damaged", "missing", "not a shard", "unlisted"
    size: int | None = None
    expected_size: int | None = None
    sha256: str | None = None
    expected_sha256: str | None = None
    levels: list[str] = field(default_factory=list)  # checks that ran: "size", "sha256", "pieces", "members"
    piece_size: int | None = None
    pieces: int | None = None  # pieces in the torrent, when pieces were checked
    bad_pieces: list[int] = field(default_factory=list)
    members: int | None = None  # members checked, with --deep
    damaged_members: list[MemberDamage] = field(default_factory=list)
    members_in_bad_pieces: list[tuple[str | None, str | None]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    bytes_read: int = 0

    def add(self, level: str, severity: str, message: str, **where) -> None:
        self.findings.append(Finding(self.path, level, severity, message, **where))
        if severity == DAMAGE and self.status in ("ok", "unlisted"):
            self.status = "damaged"

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "kind": self.kind,
            "status": self.status,
            "size": self.size,
            "expected_size": self.expected_size,
            "sha256": self.sha256,
            "expected_sha256": self.expected_sha256,
            "levels": self.levels,
            "piece_size": self.piece_size,
            "pieces": self.pieces,
            "bad_pieces": self.bad_pieces,
            "members": self.members,
            "damaged_members": [m.as_dict() for m in self.damaged_members],
            "members_in_bad_pieces": [{"id": i, "path": p} for i, p in self.members_in_bad_pieces],
            "findings": [f.as_dict() for f in self.findings],
            "bytes_read": self.bytes_read,
        }


@dataclass
class VerifyReport:
    files: list[FileResult]
    findings: list[Finding]  # about the release as a whole: sources used, authentication
    sources: list[str]
    authenticated: bool

    def all_findings(self) -> list[Finding]:
        return self.findings + [f for r in self.files for f in r.findings]

    def count(self, status: str) -> int:
        return sum(1 for r in self.files if r.status == status)

    def exit_code(self, partial: bool = False) -> int:
        """2 bad input, 1 damage (or a missing file unless `partial`), 0 all good."""
        severities = {f.severity for f in self.all_findings()}
        if BAD_INPUT in severities:
            return 2
        if DAMAGE in severities or (MISSING in severities and not partial):
            return 1
        return 0

    def as_dict(self, partial: bool = False) -> dict:
        return {
            "exit_code": self.exit_code(partial),
            "authenticated": self.authenticated,
            "sources": self.sources,
            "summary": {
                status: self.count(status)
                for status in ("ok", "damaged", "missing", "not a shard", "unlisted")
            }
            | {"files": len(self.files), "bytes_read": sum(r.bytes_read for r in self.files)},
            "files": [r.as_dict() for r in self.files],
            "findings": [f.as_dict() for f in self.all_findings()],
        }


def _pieces_text(span: tuple[int, int]) -> str:
    return f"piece {span[0]}" if span[0] == span[1] else f"pieces {span[0]}-{span[1]}"


def ranges(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[list[int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [(a, b) for a, b in out]


def format_ranges(indexes: Iterable[int]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges(indexes))


# --- references: release.json, SHA256SUMS, signatures -----------------------------------------------------


@dataclass(frozen=True)
class ShardRef:
    """What the release says about one shard and its .torrent; None where no manifest says."""

    name: str
    path: str  # relative to the release folder: shards/<name>.tar.zst
    size: int | None = None
    sha256: str | None = None
    torrent_path: str | None = None
    torrent_size: int | None = None
    torrent_sha256: str | None = None
    info_hash_v1: str | None = None
    info_hash_v2: str | None = None
    obsolete: bool = False


@dataclass(frozen=True)
class References:
    root: Path | None  # the folder verify was pointed at, or found above the files
    shards: dict[str, ShardRef]  # by relative shard path
    sources: tuple[str, ...]
    authenticated: bool
    bases: tuple[Path, ...] = ()  # folders the manifests' relative paths are looked up under, in order

    def places(self, rel: str) -> list[Path]:
        return [base / rel for base in self.bases]


def is_release_root(folder: Path) -> bool:
    return any((folder / name).exists() for name in (RELEASE_JSON, SHA256SUMS, TORRENTS_DIR)) or any(
        (folder / PUBLISHED_DIR / name).exists() for name in (RELEASE_JSON, SHA256SUMS)
    )


def manifest_folder(root: Path) -> tuple[Path, tuple[Path, ...]]:
    """Where the manifests of the release at `root` are, and the folders their relative paths resolve
    under: a mirror holds everything in one folder; a workspace keeps them in published/ (torrents there
    too) and the shards in its own shards/."""
    manifests = (RELEASE_JSON, SHA256SUMS)
    here = any((root / name).exists() for name in manifests)
    if not here and any((root / PUBLISHED_DIR / name).exists() for name in manifests):
        return root / PUBLISHED_DIR, (root / PUBLISHED_DIR, root)
    if root.name == PUBLISHED_DIR and (root.parent / SHARDS_DIR).is_dir():
        return root, (root, root.parent)
    return root, (root,)


def find_release_root(start: Path) -> Path | None:
    """`start` or the nearest folder above it (two levels at most) that holds release.json, SHA256SUMS or
    torrents/: a shard sits in the release folder or in its shards/ folder."""
    folder = start.resolve()
    for candidate in (folder, folder.parent, folder.parent.parent):
        if is_release_root(candidate):
            return candidate
    return None


def _safe_relative(text: object, where: Path, what: str) -> str:
    if not isinstance(text, str) or not text or text.startswith("/") or "\\" in text or "\0" in text:
        raise UntrustedManifest(where, f"{what} {text!r} is not a relative path")
    if any(part in ("", ".", "..") for part in text.split("/")):
        raise UntrustedManifest(where, f"{what} {text!r} is not a plain relative path")
    return text


def parse_sha256sums(data: bytes, where: Path) -> dict[str, str]:
    """coreutils `sha256sum` lines -> {path: hex}. UntrustedManifest naming the line if one is malformed."""
    sums: dict[str, str] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UntrustedManifest(where, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        escaped = line.startswith("\\")  # coreutils escapes names holding a backslash or a newline
        digest, sep, name = line[escaped:].partition(" ")
        if not sep or name[:1] not in (" ", "*") or not _HEX64.fullmatch(digest.lower()):
            raise UntrustedManifest(where, f"line {number} is not `<sha256 hex>  <path>`: {line[:80]!r}")
        name = name[1:]
        if escaped:
            name = name.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
        path = _safe_relative(name, where, f"line {number}: path")
        if path in sums and sums[path] != digest.lower():
            raise UntrustedManifest(where, f"line {number}: {path} is listed twice with different hashes")
        sums[path] = digest.lower()
    return sums


def _field(entry: dict, key: str, kind: type | tuple[type, ...], where: Path, n: int, optional=False):
    value = entry.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UntrustedManifest(
            where, f"torrents[{n}].{key} is {value!r}, expected {getattr(kind, '__name__', kind)}"
        )
    return value


def parse_release_json(data: bytes, where: Path) -> list[ShardRef]:
    """The shards release.json lists, with their .torrent files, sizes and SHA-256s."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise UntrustedManifest(where, f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("torrents"), list):
        raise UntrustedManifest(where, "no `torrents` list: not a packager release.json")
    if doc.get("format") != 1:
        raise UntrustedManifest(
            where, f"format {doc.get('format')!r} is not one this packager reads (1)", hint="update packager"
        )
    refs = []
    for n, entry in enumerate(doc["torrents"]):
        if not isinstance(entry, dict):
            raise UntrustedManifest(where, f"torrents[{n}] is not an object")
        name = _field(entry, "name", str, where, n)
        files = _field(entry, "files", list, where, n)
        by_kind: dict[str, tuple[str, int, str]] = {}
        for f in files:
            if not isinstance(f, dict):
                raise UntrustedManifest(where, f"torrents[{n}].files holds {f!r}, not an object")
            path = _safe_relative(f.get("path"), where, f"torrents[{n}].files path")
            size, digest = f.get("size"), f.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise UntrustedManifest(where, f"torrents[{n}]: {path}: size {size!r} is not a byte count")
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise UntrustedManifest(where, f"torrents[{n}]: {path}: sha256 {digest!r} is not 64 hex")
            by_kind["torrent" if path.endswith(TORRENT_SUFFIX) else "shard"] = (path, size, digest)
        if "shard" not in by_kind:
            raise UntrustedManifest(where, f"torrents[{n}] ({name}) lists no shard file")
        shard, torrent = by_kind["shard"], by_kind.get("torrent")
        refs.append(
            ShardRef(
                name=name,
                path=shard[0],
                size=shard[1],
                sha256=shard[2],
                torrent_path=torrent[0] if torrent else _field(entry, "torrent_file", str, where, n, True),
                torrent_size=torrent[1] if torrent else None,
                torrent_sha256=torrent[2] if torrent else None,
                info_hash_v1=_field(entry, "info_hash_v1", str, where, n, True),
                info_hash_v2=_field(entry, "info_hash_v2", str, where, n, True),
                obsolete=bool(entry.get("obsolete", False)),
            )
        )
    return refs


def _refs_from_sums(sums: dict[str, str]) -> list[ShardRef]:
    refs = []
    for path, digest in sums.items():
        if path.endswith(SHARD_SUFFIX):
            base = path.rsplit("/", 1)[-1]
            torrent = f"{TORRENTS_DIR}/{base}{TORRENT_SUFFIX}"
            refs.append(
                ShardRef(base[: -len(SHARD_SUFFIX)], path, None, digest, torrent, None, sums.get(torrent))
            )
    return refs


def _refs_from_torrents(root: Path) -> list[ShardRef]:
    """Without manifests, the torrents/ folder says which shards exist (and nothing authenticates it)."""
    refs = []
    for p in sorted((root / TORRENTS_DIR).glob(f"*{SHARD_SUFFIX}{TORRENT_SUFFIX}")):
        base = p.name[: -len(TORRENT_SUFFIX)]
        refs.append(
            ShardRef(
                base[: -len(SHARD_SUFFIX)], f"{SHARDS_DIR}/{base}", torrent_path=f"{TORRENTS_DIR}/{p.name}"
            )
        )
    return refs


def _public_key(pubkey: str) -> str:
    """The key text: a .pub file's content, or the base64 line given as it is."""
    path = Path(pubkey)
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{pubkey}: cannot read the public key: {e}") from None
    if not re.fullmatch(r"[A-Za-z0-9+/]{40,}={0,2}", pubkey.strip()):
        raise UsageError(f"{pubkey}: no such public key file", hint="pass the .pub file or its base64 line")
    return pubkey.strip()


def _authenticate(path: Path, data: bytes, pubkey: str) -> str:
    """The trusted comment of `path`'s minisign signature; UntrustedManifest if it is missing or wrong."""
    import minisign

    from .manifest import verify_signature

    sig_path = path.with_name(path.name + SIGNATURE_SUFFIX)
    hint = (
        f"fetch {path.name} and {sig_path.name} again from the publisher; "
        "trust nothing in this folder until they verify"
    )
    try:
        signature = sig_path.read_bytes()
    except FileNotFoundError:
        raise UntrustedManifest(
            sig_path, f"missing, so {path.name} cannot be authenticated", hint=hint
        ) from None
    try:
        return verify_signature(pubkey, data, signature)
    except minisign.VerifyError as e:
        raise UntrustedManifest(
            path, f"does not match its signature {sig_path.name} ({e})", hint=hint
        ) from None
    except (minisign.Error, ValueError, IndexError) as e:
        raise UntrustedManifest(
            sig_path,
            f"not a minisign signature, or the key is not a minisign public key ({e})",
            hint="pass the publisher's public key file (.pub) or its base64 line",
        ) from None


def load_references(root: Path | None, pubkey: str | None) -> References:
    """The release's manifests at `root`, authenticated when `pubkey` is given, merged, cross-checked."""
    if root is None:
        if pubkey:
            raise UntrustedManifest(
                ".",
                "no release.json or SHA256SUMS found next to or above the files",
                hint="verify the release folder, or drop --pubkey",
            )
        return References(None, {}, (), False)
    root, bases = manifest_folder(root)
    found: dict[str, bytes] = {}
    for name in (RELEASE_JSON, SHA256SUMS):
        try:
            found[name] = (root / name).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise UntrustedManifest(root / name, f"cannot read: {e.strerror}") from None
    sources = []
    if pubkey:
        if not found:
            raise UntrustedManifest(
                root,
                "no release.json or SHA256SUMS here to authenticate",
                hint="point verify at the release folder that holds them",
            )
        key = _public_key(pubkey)
        for name, data in found.items():
            comment = _authenticate(root / name, data, key)
            sources.append(f"{name} (signature good: {comment})")
    else:
        sources += [f"{name} (unauthenticated)" for name in found]
    sums = parse_sha256sums(found[SHA256SUMS], root / SHA256SUMS) if SHA256SUMS in found else None
    if RELEASE_JSON in found:
        refs = parse_release_json(found[RELEASE_JSON], root / RELEASE_JSON)
        if sums is not None:
            _cross_check(refs, sums, root)
    elif sums is not None:
        refs = _refs_from_sums(sums)
    else:
        refs = _refs_from_torrents(root)
        if refs:
            sources.append(f"{TORRENTS_DIR}/*.torrent (unauthenticated)")
    return References(root, {r.path: r for r in refs}, tuple(sources), bool(pubkey), bases)


def _cross_check(refs: list[ShardRef], sums: dict[str, str], root: Path) -> None:
    for ref in refs:
        for path, digest in ((ref.path, ref.sha256), (ref.torrent_path, ref.torrent_sha256)):
            if path and digest and path in sums and sums[path] != digest:
                raise UntrustedManifest(
                    root / SHA256SUMS,
                    f"{path}: {sums[path]} here, but {digest} in release.json",
                    hint="the two manifests come from different publications; fetch both again",
                )


# --- torrents ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PieceHashes:
    """The piece hashes of a single-file torrent, as trusted as the .torrent they came from."""

    source: str  # the .torrent, relative to the release folder
    length: int
    piece_size: int
    v1: bytes | None  # 20 bytes a piece
    v2_root: bytes | None = None
    v2_layer: bytes | None = None  # 32 bytes a piece; b"" when the file is one piece or less
    info_hash_v1: str | None = None
    info_hash_v2: str | None = None

    @property
    def count(self) -> int:
        return -(-self.length // self.piece_size)

    @property
    def kind(self) -> str:
        return "SHA-1 (v1)" if self.v1 is not None else "SHA-256 merkle (v2)"


def parse_torrent(data: bytes, source: str, shard_name: str) -> PieceHashes:
    """Piece hashes of a packager shard's .torrent (one file); UntrustedManifest if it is not one."""
    import libtorrent as lt

    try:
        params = lt.load_torrent_buffer(data)
    except RuntimeError as e:
        raise UntrustedManifest(source, f"not a valid .torrent: {e}") from None
    ti = params.ti
    if ti is None or not ti.is_valid():
        raise UntrustedManifest(source, "not a valid .torrent: no info dict")
    files = ti.layout()
    real = [i for i in range(files.num_files()) if not files.file_flags(i) & lt.file_storage.flag_pad_file]
    if len(real) != 1 or files.file_path(real[0]) != shard_name:
        raise UntrustedManifest(source, f"does not describe the single file {shard_name}")
    length, piece_size = files.file_size(real[0]), ti.piece_length()
    hashes = ti.info_hashes()
    ids = {
        "info_hash_v1": str(hashes.v1) if hashes.has_v1() else None,
        "info_hash_v2": str(hashes.v2) if hashes.has_v2() else None,
    }
    if hashes.has_v1():
        v1 = b"".join(ti.hash_for_piece(i) for i in range(-(-length // piece_size)))
        return PieceHashes(source, length, piece_size, v1, **ids)
    # libtorrent keeps the piece layers to itself; they are in the metainfo's `piece layers` (BEP 52).
    meta = lt.bdecode(data)
    info = meta.get(b"info", {}) if isinstance(meta, dict) else {}
    tree = info.get(b"file tree", {}).get(shard_name.encode(), {}).get(b"", {})
    root = tree.get(b"pieces root")
    layer = meta.get(b"piece layers", {}).get(root, b"") if root else b""
    if (
        not isinstance(root, bytes)
        or len(root) != 32
        or len(layer) != (32 * -(-length // piece_size) if length > piece_size else 0)
    ):
        raise UntrustedManifest(source, "the v2 pieces root or piece layer is missing or the wrong size")
    return PieceHashes(source, length, piece_size, None, root, layer, **ids)


# --- consumers of one sequential read ---------------------------------------------------------------------


class _Consumer(Protocol):
    def update(self, offset: int, data: bytes) -> None: ...

    def finish(self, size: int) -> None: ...


class _Sha256:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def update(self, offset: int, data: bytes) -> None:
        self.hash.update(data)

    def finish(self, size: int) -> None:
        pass


@dataclass(frozen=True)
class PieceResult:
    hashes: PieceHashes
    bad: list[int]  # sorted piece indexes that fail, those cut off by the end of the file included
    absent_from: int | None  # first piece with bytes past the end of the file


class _Pieces:
    """Checks each piece as its bytes go by: SHA-1 (v1), or the merkle root of its 16 KiB blocks (v2)."""

    def __init__(self, hashes: PieceHashes, first: int = 0, stop: int | None = None):
        self.h = hashes
        self.stop = hashes.count if stop is None else stop  # pieces [first, stop), fed from byte first*size
        self.bad: list[int] = []
        self.absent_from: int | None = None  # first piece with bytes past the end of the file
        self.piece = first
        self._new()

    def _new(self) -> None:
        self.filled = 0
        self.sha1 = hashlib.sha1() if self.h.v1 is not None else None
        self.leaves: list[bytes] = []
        self.block = bytearray()

    def _piece_len(self, index: int) -> int:
        return min(self.h.piece_size, self.h.length - index * self.h.piece_size)

    def update(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        pos, end = offset, min(offset + len(data), self.h.length)
        while pos < end and self.piece < self.stop:
            take = min(self._piece_len(self.piece) - self.filled, end - pos)
            part = view[pos - offset : pos - offset + take]
            if self.sha1 is not None:
                self.sha1.update(part)
            else:
                self._blocks(part)
            self.filled += take
            pos += take
            if self.filled == self._piece_len(self.piece):
                self._close()

    def _blocks(self, part: memoryview) -> None:
        i = 0
        if self.block:
            i = min(V2_BLOCK_SIZE - len(self.block), len(part))
            self.block += part[:i]
            if len(self.block) == V2_BLOCK_SIZE:
                self.leaves.append(hashlib.sha256(self.block).digest())
                self.block.clear()
        while len(part) - i >= V2_BLOCK_SIZE:
            self.leaves.append(hashlib.sha256(part[i : i + V2_BLOCK_SIZE]).digest())
            i += V2_BLOCK_SIZE
        self.block += part[i:]

    def _close(self) -> None:
        h, i = self.h, self.piece
        if self.sha1 is not None:
            good = self.sha1.digest() == h.v1[20 * i : 20 * i + 20]
        else:
            if self.block:
                self.leaves.append(hashlib.sha256(self.block).digest())  # BEP 52: the last block may be short
            if h.length <= h.piece_size:
                good = merkle_root(self.leaves, 1 << max(len(self.leaves) - 1, 0).bit_length()) == h.v2_root
            else:
                good = (
                    merkle_root(self.leaves, h.piece_size // V2_BLOCK_SIZE)
                    == h.v2_layer[32 * i : 32 * i + 32]
                )
        if not good:
            self.bad.append(i)
        self.piece += 1
        self._new()

    def finish(self, size: int) -> None:
        if self.piece < self.stop:
            self.absent_from = self.piece
            self.bad.extend(range(self.piece, self.stop))

    def result(self) -> PieceResult:
        return PieceResult(self.h, sorted(self.bad), self.absent_from)


class _Sink(Protocol):
    def feed(self, pos: int, data: bytes) -> None: ...

    def frame_closed(self, index: int, ok: bool, reason: str) -> None: ...


class _TooMuch(Exception):
    pass


class _FrameStream:
    """Decompresses every frame on its own as its compressed bytes stream past, checks it against zstd's
    checksum and the seek table's, and hands its output (tar stream bytes) to a sink."""

    def __init__(self, layout: Layout, sink: _Sink):
        self.layout, self.frames, self.sink = layout, layout.stream_frames, sink
        self.partial = len(layout.frames) if layout.partial else None
        self.table_bad: list[str] = []  # seek table entries found wrong while their frames check out
        self.dctx = zstandard.ZstdDecompressor()
        self.k = 0
        self.writer = None
        self.error: str | None = None

    def update(self, offset: int, data: bytes) -> None:
        view, pos, end = memoryview(data), offset, offset + len(data)
        while pos < end and self.k < len(self.frames):
            frame = self.frames[self.k]
            start, stop = frame.compressed_offset, frame.compressed_offset + frame.compressed_size
            if pos < start:
                pos = start
                continue
            if self.writer is None:
                self._open()
            upto = min(end, stop)
            if upto > pos and self.error is None:
                try:
                    for at in range(pos - offset, upto - offset, FEED_CHUNK):
                        self.writer.write(view[at : min(at + FEED_CHUNK, upto - offset)])
                except zstandard.ZstdError as e:
                    self.error = f"does not decompress ({e})"
                except _TooMuch:
                    self.error = f"decompresses to more than the {frame.decompressed_size} bytes listed"
            pos = max(pos, upto)
            if pos >= stop:
                cut = "is cut short by the end of the file" if self.k == self.partial else None
                self._close(cut)

    def _open(self) -> None:
        self.out = 0
        self.xxh = xxhash.xxh64()
        self.error = None
        self.writer = self.dctx.stream_writer(
            self, write_size=OUT_CHUNK, write_return_read=True, closefd=False
        )

    def write(self, chunk: bytes) -> int:  # called by the zstd stream writer with each decompressed chunk
        frame = self.frames[self.k]
        if self.out + len(chunk) > frame.decompressed_size:
            raise _TooMuch
        self.xxh.update(chunk)
        self.sink.feed(frame.decompressed_offset + self.out, chunk)
        self.out += len(chunk)
        return len(chunk)

    def _close(self, cut: str | None) -> None:
        frame = self.frames[self.k]
        reason = cut or self.error
        if reason is None and self.out != frame.decompressed_size:
            reason = f"decompresses to {self.out} bytes, {frame.decompressed_size} expected"
        if (
            reason is None
            and frame.checksum is not None
            and seek_checksum(self.xxh.intdigest()) != frame.checksum
        ):
            if self.k in self.layout.zstd_checked:
                # zstd verified the frame's own copy of the same checksum, so the table entry is the bad one.
                self.table_bad.append(
                    f"the checksum listed for frame {self.k} is wrong; the frame checks out"
                )
            else:
                reason = "does not match its seek table checksum"
        self.sink.frame_closed(self.k, reason is None, reason or "")
        self.writer = None
        self.k += 1

    def finish(self, size: int) -> None:
        while self.k < len(self.frames):
            frame = self.frames[self.k]
            if self.writer is None:
                self._open()
            where = "inside" if frame.compressed_offset < size else "before"
            self._close(f"missing: the file ends at byte {size}, {where} this frame")


class _Members:
    """Checks each member's size, xxh3-128 and SHA-256 against the manifest, from the tar stream bytes.

    A frame belongs to the member whose run it is in (a run of frames starts at every member), so a damaged
    frame damages exactly that member; a member is judged when its last frame closes.
    """

    def __init__(self, layout: Layout):
        self.records = layout.records or []
        self.layout = layout
        self.j = 0  # first member whose content may still be fed
        self.fin = 0  # first member not yet judged
        self.hashers: dict[int, MemberHasher] = {}
        self.bad: dict[int, str] = {}  # member -> why its first damaged frame is
        self.damaged: list[tuple[int, str]] = []  # (member index or -1 for the manifest, reason)

    def feed(self, pos: int, data: bytes) -> None:
        view, end, records = memoryview(data), pos + len(data), self.records
        j = self.j
        while j < len(records) and records[j].offset < end:
            rec = records[j]
            lo, hi = max(pos, rec.offset), min(end, rec.offset + rec.size)
            if hi > lo and j not in self.bad:
                hasher = self.hashers.get(j)
                if hasher is None:
                    hasher = self.hashers[j] = MemberHasher()
                hasher.update(view[lo - pos : hi - pos])
            if rec.offset + rec.size > end:
                break
            j += 1
        self.j = j

    def frame_closed(self, index: int, ok: bool, reason: str) -> None:
        if not ok:
            owner = self.layout.owner(index)
            if owner < len(self.records):
                self.bad.setdefault(owner, f"frame {index} {reason}")
            elif not any(m == -1 for m, _ in self.damaged):
                self.damaged.append((-1, f"frame {index} {reason}"))
        while self.fin < len(self.records) and self.records[self.fin].last_frame <= index:
            self._judge(self.fin)
            self.fin += 1

    def _judge(self, j: int) -> None:
        rec = self.records[j]
        hasher = self.hashers.pop(j, None)
        if j in self.bad:
            self.damaged.append((j, self.bad[j]))
            return
        got = hasher.finish() if hasher else None
        size, xxh3, sha = (got.size, got.xxh3_128, got.sha256) if got else (0, _EMPTY_XXH3, _EMPTY_SHA256)
        for what, expected, actual in (
            ("size", rec.size, size),
            ("xxh3-128", rec.xxh3_128, xxh3),
            ("SHA-256", rec.sha256, sha),
        ):
            if expected != actual:
                self.damaged.append((j, f"{what} is {actual}, the manifest says {expected}"))
                return


@dataclass
class _Walked:
    path: str
    first_frame: int
    last_frame: int
    bad: str | None = None


class _TarWalk:
    """Names the members from their tar headers when the manifest cannot be read (a truncated shard): a run
    of frames starts at every member, so each frame either starts with a header or continues a member.
    Frames where a header belongs but none can be read (damaged before its first block decoded) form lost
    runs: some member is damaged there, but its name went with its header."""

    def __init__(self, frames: list[Frame]):
        self.frames = frames
        self.head = bytearray()
        self.members: list[_Walked] = []
        self.run_end = 0  # tar stream offset where the current member's run ends
        self.lost: list[_Walked] = []  # runs of frames with no readable header (no path; `bad` says why)
        self.in_lost = False

    def feed(self, pos: int, data: bytes) -> None:
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]

    def frame_closed(self, index: int, ok: bool, reason: str) -> None:
        frame = self.frames[index]
        if frame.decompressed_offset >= self.run_end or self.in_lost:
            member = tar_member(bytes(self.head))
            if member is not None:
                self.members.append(_Walked(member.name, index, index))
                size = member.size
                self.run_end = frame.decompressed_offset + member.header_size + size + -size % TAR_BLOCK
                self.in_lost = False
            elif self.in_lost:
                self.lost[-1].last_frame = index
            else:
                self.lost.append(
                    _Walked("", index, index, f"frame {index} {reason or 'holds no tar header'}")
                )
                self.in_lost = True
        if self.members and not self.in_lost:
            current = self.members[-1]
            current.last_frame = index
            if not ok and current.bad is None:
                current.bad = f"frame {index} {reason}"
        self.head.clear()


# --- one sequential read, many consumers ------------------------------------------------------------------


def _read_pass(
    path: Path, consumers: Sequence[_Consumer], on_bytes: Callable[[int], None]
) -> tuple[int, str | None]:
    """Read `path` once from byte 0, handing every chunk in order to each consumer (on its own thread when
    there are several); then call finish(end). Returns (bytes read, read error or None)."""
    threads, queues, errors = [], [], []
    if len(consumers) > 1:
        for consumer in consumers:
            q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
            t = threading.Thread(target=_drain, args=(q, consumer, errors), daemon=True)
            t.start()
            threads.append(t)
            queues.append(q)
    offset, problem = 0, None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while not errors:
                try:
                    data = os.pread(fd, READ_CHUNK, offset)
                except OSError as e:
                    problem = f"read error at byte {offset}: {e.strerror}"
                    break
                if not data:
                    break
                if queues:
                    for q in queues:
                        q.put((offset, data))
                else:
                    consumers[0].update(offset, data)
                offset += len(data)
                on_bytes(len(data))
        finally:
            os.close(fd)
    finally:
        for q in queues:
            q.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for consumer in consumers:
        consumer.finish(offset)
    return offset, problem


def check_pieces(
    path: Path, hashes: PieceHashes, threads: int, on_bytes: Callable[[int], None]
) -> tuple[PieceResult, int, str | None]:
    """Every piece of `path`, checked by `threads` workers each reading its own run of pieces (pieces are
    independent, unlike a whole-file hash): (result, bytes read, first read error or None)."""
    per = max(1, -(-hashes.count // max(1, threads)))
    runs = [_Pieces(hashes, first, min(first + per, hashes.count)) for first in range(0, hashes.count, per)]
    outcome: list[tuple[int, str | None]] = [(0, None)] * len(runs)

    def work(i: int) -> None:
        pieces = runs[i]
        start = pieces.piece * hashes.piece_size
        end = min(pieces.stop * hashes.piece_size, hashes.length)
        read, problem = _read_range(path, start, end, pieces, on_bytes)
        pieces.finish(start + read)
        outcome[i] = (read, problem)

    if len(runs) == 1:
        work(0)
    else:
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(work, range(len(runs))))
    absent = [pieces.absent_from for pieces in runs if pieces.absent_from is not None]
    merged = PieceResult(hashes, sorted(i for pieces in runs for i in pieces.bad), min(absent, default=None))
    problems = [problem for _, problem in outcome if problem]
    return merged, sum(read for read, _ in outcome), problems[0] if problems else None


def _read_range(
    path: Path, start: int, end: int, consumer: _Consumer, on_bytes: Callable[[int], None]
) -> tuple[int, str | None]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_SEQUENTIAL)
        offset = start
        while offset < end:
            try:
                data = os.pread(fd, min(READ_CHUNK, end - offset), offset)
            except OSError as e:
                return offset - start, f"read error at byte {offset}: {e.strerror}"
            if not data:
                break
            consumer.update(offset, data)
            offset += len(data)
            on_bytes(len(data))
        return offset - start, None
    finally:
        os.close(fd)


def _drain(q: queue.Queue, consumer: _Consumer, errors: list[BaseException]) -> None:
    while (item := q.get()) is not None:
        if not errors:
            try:
                consumer.update(*item)
            except BaseException as e:  # a bug, not damage: re-raised in the reading thread
                errors.append(e)


# --- checking one shard -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MemberCheck:
    """The member level of one shard: its layout, the stream that decompresses it, and the sink that judges
    members (against the manifest, or by their tar headers when the manifest is unreadable)."""

    layout: Layout
    sink: _Members | _TarWalk
    stream: _FrameStream


@dataclass(frozen=True)
class _Target:
    rel: str  # relative to the release folder, or as given
    path: Path
    ref: ShardRef | None
    refs: References
    in_scope_torrent: bool  # report the .torrent's own check as a file of its own


class _ShardCheck:
    """Checks one shard file at the levels asked, reading it once per level (levels asked together share a
    read), and localizes what it finds to pieces and members."""

    def __init__(
        self, target: _Target, options: VerifyOptions, emit: Callable[[Event], None], threads: int = 1
    ):
        self.t, self.options, self.emit, self.threads = target, options, emit, threads
        self.torrent_trusted = False  # its own SHA-256 matched the release's manifests
        self.result = FileResult(target.rel, "shard")
        self.torrent_result: FileResult | None = None
        self.hashes: PieceHashes | None = None
        self.layout: Layout | None = None

    def run(self) -> list[FileResult]:
        results = self._run()
        for result in results:
            self.emit(FileChecked(result))
        return results

    def _run(self) -> list[FileResult]:
        ref, r = self.t.ref, self.result
        if ref is not None:
            r.expected_size, r.expected_sha256 = ref.size, ref.sha256
            self.hashes = self._load_torrent()
        elif self.t.refs.root is not None:
            r.status = "unlisted"
            r.add(
                "file", NOTE, "not listed in the release's manifests; checked against its own manifest only"
            )
        try:
            st = os.stat(self.t.path)
        except FileNotFoundError:
            r.status = "missing"
            obsolete = ref is not None and ref.obsolete
            unfinished = [
                p.name for p in map(self.t.path.with_name, _unfinished_names(self.t.path.name)) if p.exists()
            ]
            r.add(
                "file",
                NOTE if obsolete else MISSING,
                "not downloaded"
                + (" (obsolete torrent)" if obsolete else "")
                + (f"; an unfinished download is there as {unfinished[0]}" if unfinished else ""),
            )
            return self._results()
        except OSError as e:
            r.add("file", DAMAGE, f"cannot stat: {e.strerror}")
            return self._results()
        if not stat.S_ISREG(st.st_mode):
            r.status = "not a shard"
            r.add("file", BAD_INPUT, "not a regular file")
            return self._results()
        r.size = st.st_size
        if self.hashes is not None and r.expected_size is None:
            r.expected_size = self.hashes.length
        self._check_size()
        if r.expected_sha256 is None and self.hashes is None:
            self._check_alone()
        else:
            self._check_with_references()
        return self._results()

    def _results(self) -> list[FileResult]:
        return [r for r in (self.result, self.torrent_result) if r is not None]

    # -- references --

    def _load_torrent(self) -> PieceHashes | None:
        ref = self.t.ref
        if ref is None or ref.torrent_path is None:
            return None
        tr = FileResult(
            ref.torrent_path, "torrent", expected_size=ref.torrent_size, expected_sha256=ref.torrent_sha256
        )
        if self.t.in_scope_torrent:
            self.torrent_result = tr
        places = self.t.refs.places(ref.torrent_path) + [
            self.t.path.with_name(self.t.path.name + TORRENT_SUFFIX)
        ]
        path = next((p for p in places if p.exists()), places[0])
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            tr.status = "missing"
            tr.add("file", MISSING if self.t.in_scope_torrent else NOTE, "not downloaded")
            self.result.add("piece", NOTE, f"{ref.torrent_path} is missing: pieces cannot be checked")
            return None
        except OSError as e:
            tr.add("file", DAMAGE, f"cannot read: {e.strerror}")
            return None
        tr.size, tr.sha256, tr.levels = len(data), hashlib.sha256(data).hexdigest(), ["size", "sha256"]
        if tr.expected_size is not None and tr.size != tr.expected_size:
            tr.add("file", DAMAGE, f"{tr.size} bytes, expected {tr.expected_size}")
        if tr.expected_sha256 is not None and tr.sha256 != tr.expected_sha256:
            tr.add("file", DAMAGE, f"SHA-256 is {tr.sha256}, expected {tr.expected_sha256}")
        if tr.status != "ok":
            self.result.add("piece", NOTE, f"{ref.torrent_path} is damaged: pieces cannot be checked")
            if not self.t.in_scope_torrent:
                self.result.findings.extend(tr.findings)
                self.result.status = "damaged"
            return None
        hashes = parse_torrent(data, ref.torrent_path, ref.path.rsplit("/", 1)[-1])
        self.torrent_trusted = tr.expected_sha256 is not None
        described = (hashes.length, hashes.info_hash_v1, hashes.info_hash_v2)
        listed = (ref.size, ref.info_hash_v1, ref.info_hash_v2)
        if any(
            want is not None and str(want).lower() != str(got)
            for want, got in zip(listed, described, strict=True)
        ):
            raise UntrustedManifest(
                ref.torrent_path,
                f"describes {described} (bytes, info-hash v1, v2), release.json lists {listed}",
                hint="release.json contradicts its own .torrent: fetch the release's files again",
            )
        return hashes

    # -- levels --

    def _check_size(self) -> None:
        r = self.result
        if r.expected_size is None:
            return
        r.levels.append("size")
        if r.size < r.expected_size:
            r.add(
                "file",
                DAMAGE,
                f"truncated: {r.size} bytes, expected {r.expected_size} "
                f"({r.expected_size - r.size} missing from byte {r.size})",
                offset=r.size,
            )
        elif r.size > r.expected_size:
            r.add(
                "file",
                DAMAGE,
                f"{r.size - r.expected_size} bytes of trailing data after byte {r.expected_size}; "
                f"truncating the file to {r.expected_size} bytes may repair it",
                offset=r.expected_size,
            )

    def _check_with_references(self) -> None:
        r, o = self.result, self.options
        use_pieces = self.hashes is not None and (o.pieces or r.expected_sha256 is None)
        # An authenticated .torrent's pieces cover every byte, so with them the whole-file SHA-256 would
        # only repeat the check (and double the CPU); it is computed when a piece fails, to tell a swapped
        # file from a damaged one.
        sha = None
        if r.expected_sha256 is not None and not (use_pieces and self.torrent_trusted):
            sha = _Sha256()
        pieces: PieceResult | None = None
        members = self._member_check() if o.deep else None
        if use_pieces and sha is None and members is None:
            pieces = self._check_pieces()  # alone, the pieces are checked in parallel
        else:
            piece_reader = _Pieces(self.hashes) if use_pieces else None
            self._pass([c for c in (sha, piece_reader, members and members.stream) if c is not None])
            pieces = piece_reader.result() if piece_reader else None
        if sha is not None:
            self._report_sha256(sha)
        if r.status != "ok" and pieces is None and self.hashes is not None:
            pieces = self._check_pieces()
        if pieces is not None and pieces.bad and sha is None and r.expected_sha256 is not None:
            sha = _Sha256()
            self._pass([sha])
            self._report_sha256(sha)
        if r.status != "ok" and pieces is None and members is None:
            r.add(
                "member", NOTE, "no .torrent to localize the damage by pieces: checking every member instead"
            )
            members = self._member_check()
            self._pass([members.stream])
        if pieces is not None:
            self._report_pieces(pieces)
        if members is not None:
            self._report_members(members)

    def _report_sha256(self, sha: _Sha256) -> None:
        r = self.result
        r.sha256 = sha.hash.hexdigest()
        r.levels.append("sha256")
        if r.sha256 != r.expected_sha256:
            r.add("file", DAMAGE, f"SHA-256 is {r.sha256}, expected {r.expected_sha256}")

    def _check_pieces(self) -> PieceResult:
        self.emit(PassStarted(self.t.rel, ("pieces",), min(self.result.size, self.hashes.length)))
        pieces, read, problem = check_pieces(
            self.t.path, self.hashes, self.threads, lambda n: self.emit(BytesRead(self.t.rel, n))
        )
        self.result.bytes_read += read
        if problem is not None:
            self.result.add("file", DAMAGE, problem, offset=read)
        return pieces

    def _check_alone(self) -> None:
        """No release manifest and no .torrent: only the shard's own manifest and seek table can speak."""
        r = self.result
        layout = self._layout()
        if layout.records is None and not starts_with_tar_header(self.t.path, layout):
            r.status = "not a shard"
            why = layout.table_problems[0] if layout.table_problems else layout.manifest_problem
            r.add("file", BAD_INPUT, f"not a packager shard: {why}")
            return
        if r.status == "ok":
            r.add(
                "file",
                NOTE,
                "no release.json, SHA256SUMS or .torrent found: checked against the shard's own "
                "manifest and seek table only, which proves it consistent, not authentic",
            )
        members = self._member_check()
        self._pass([members.stream])
        self._report_members(members)

    # -- reading --

    def _layout(self) -> Layout:
        if self.layout is None:
            self.layout = read_layout(self.t.path, self.result.size, self.result.expected_size)
        return self.layout

    def _member_check(self) -> _MemberCheck:
        layout = self._layout()
        sink = _Members(layout) if layout.records is not None else _TarWalk(layout.stream_frames)
        return _MemberCheck(layout, sink, _FrameStream(layout, sink))

    def _pass(self, consumers: list[_Consumer]) -> None:
        levels = tuple(
            {_Sha256: "sha256", _Pieces: "pieces", _FrameStream: "members"}[type(c)] for c in consumers
        )
        self.emit(PassStarted(self.t.rel, levels, self.result.size))
        read, problem = _read_pass(self.t.path, consumers, lambda n: self.emit(BytesRead(self.t.rel, n)))
        self.result.bytes_read += read
        if problem is not None:
            self.result.add("file", DAMAGE, problem, offset=read)

    # -- reporting --

    def _report_pieces(self, pieces: PieceResult) -> None:
        r, h = self.result, pieces.hashes
        r.levels.append("pieces")
        r.pieces, r.piece_size, r.bad_pieces = h.count, h.piece_size, pieces.bad
        if not pieces.bad:
            if r.status == "ok":
                return
            r.add("piece", NOTE, f"all {h.count} pieces ({h.kind}) are good")
            return
        absent = set(range(pieces.absent_from, h.count)) if pieces.absent_from is not None else set()
        for a, b in ranges(set(pieces.bad) - absent):
            r.add(
                "piece",
                DAMAGE,
                f"piece{'s' if a != b else ''} {a if a == b else f'{a}-{b}'} of {h.count} "
                f"fail{'s' if a == b else ''} the {h.kind} check: fetch again",
                pieces=(a, b),
                offset=a * h.piece_size,
            )
        for a, b in ranges(absent):
            r.add(
                "piece",
                DAMAGE,
                f"piece{'s' if a != b else ''} {a if a == b else f'{a}-{b}'} of {h.count} "
                "cut off by the end of the file: fetch again",
                pieces=(a, b),
                offset=a * h.piece_size,
            )
        self._members_in_pieces(pieces.bad, h.piece_size)

    def _members_in_pieces(self, bad: list[int], piece_size: int) -> None:
        r = self.result
        layout = self._layout()
        names: dict[int, tuple[str | None, str | None]] = {}
        tail = False
        for a, b in ranges(bad):
            start, end = a * piece_size, (b + 1) * piece_size
            for f in layout.frames_in(start, end):
                owner = layout.owner(f) if layout.records is not None else None
                if owner is not None and owner < len(layout.records):
                    rec = layout.records[owner]
                    names[owner] = (rec.id, rec.path)
                elif owner is not None:
                    names[len(layout.records)] = (None, RESERVED_MANIFEST_NAME)
            tail = tail or end > layout.frames_end
        r.members_in_bad_pieces = [names[k] for k in sorted(names)]
        if layout.records is None and not self.options.deep:
            r.add(
                "member",
                NOTE,
                f"the member manifest is unreadable ({layout.manifest_problem}): "
                "run with --deep to name the members in the bad pieces from their tar headers",
            )
        elif names:
            shown = ", ".join(f"{i or '-'} ({p})" for i, p in r.members_in_bad_pieces[:5])
            more = len(names) - 5
            r.add(
                "member",
                NOTE,
                f"the bad pieces hold {len(names)} member(s): {shown}"
                + (f" and {more} more" if more > 0 else ""),
            )
        if tail:
            r.add("member", NOTE, "the bad pieces include the seek table at the end of the file")

    def _report_members(self, members: _MemberCheck) -> None:
        r, layout, sink, stream = self.result, members.layout, members.sink, members.stream
        r.levels.append("members")
        for problem in layout.table_problems + stream.table_bad:
            r.add("member", DAMAGE, f"seek table: {problem}", offset=layout.frames_end)
        trailing = layout.trailing_from
        if trailing is not None and trailing != r.expected_size:
            r.add(
                "member",
                DAMAGE,
                f"{r.size - trailing} bytes of trailing data after the seek table, from byte "
                f"{trailing}; truncating the file to {trailing} bytes may repair it",
                offset=trailing,
            )
        piece_size = r.piece_size or (self.hashes.piece_size if self.hashes else None)
        frames = layout.stream_frames

        def pieces_of(first: int, last: int) -> tuple[int, int] | None:
            if piece_size is None:
                return None
            start = frames[first].compressed_offset
            end = frames[last].compressed_offset + frames[last].compressed_size
            return start // piece_size, (max(end, start + 1) - 1) // piece_size

        if isinstance(sink, _Members):
            self._report_manifest_members(layout, sink, pieces_of)
        else:
            self._report_walked_members(layout, sink, pieces_of)

    def _report_manifest_members(self, layout: Layout, sink: _Members, pieces_of) -> None:
        r = self.result
        r.members = len(layout.records)
        for j, reason in sink.damaged:
            if j < 0:
                r.add(
                    "member",
                    DAMAGE,
                    f"the member manifest {RESERVED_MANIFEST_NAME}: {reason}",
                    member_path=RESERVED_MANIFEST_NAME,
                )
                continue
            rec = layout.records[j]
            first = layout.last_frames[j - 1] + 1 if j else 0
            damage = MemberDamage(
                rec.id, rec.path, (first, rec.last_frame), pieces_of(first, rec.last_frame), reason
            )
            r.damaged_members.append(damage)
            where = f" ({_pieces_text(damage.pieces)})" if damage.pieces else ""
            r.add(
                "member",
                DAMAGE,
                f"member {rec.id} ({rec.path}){where}: {reason}",
                frames=damage.frames,
                pieces=damage.pieces,
                member_id=rec.id,
                member_path=rec.path,
                offset=layout.stream_frames[first].compressed_offset,
            )

    def _report_walked_members(self, layout: Layout, walk: _TarWalk, pieces_of) -> None:
        r = self.result
        r.add(
            "member",
            DAMAGE,
            f"the member manifest is unreadable ({layout.manifest_problem}): members are named "
            "from their tar headers, without ids, and checked by their frame checksums only",
        )
        r.members = sum(1 for m in walk.members if m.path != RESERVED_MANIFEST_NAME)
        frames = layout.stream_frames
        known_end = frames[-1].decompressed_offset + frames[-1].decompressed_size if frames else 0
        if walk.members and not walk.in_lost and walk.run_end > known_end and walk.members[-1].bad is None:
            walk.members[-1].bad = f"its bytes after frame {walk.members[-1].last_frame} are missing"
        for m in walk.members:
            if m.bad is None:
                continue
            if m.path == RESERVED_MANIFEST_NAME:
                r.add("member", DAMAGE, f"the member manifest: {m.bad}", member_path=m.path)
                continue
            damage = MemberDamage(
                None, m.path, (m.first_frame, m.last_frame), pieces_of(m.first_frame, m.last_frame), m.bad
            )
            r.damaged_members.append(damage)
            r.add(
                "member",
                DAMAGE,
                f"member ({m.path}): {m.bad}",
                frames=damage.frames,
                pieces=damage.pieces,
                member_path=m.path,
                offset=layout.stream_frames[m.first_frame].compressed_offset,
            )
        for run in walk.lost:
            start = layout.stream_frames[run.first_frame].compressed_offset
            last = run.last_frame == len(frames) - 1 and not any(
                m.first_frame > run.last_frame for m in walk.members
            )
            whole = layout.how == FramesFrom.SEEK_TABLE and layout.partial is None
            what = "the last run of frames, which holds the member manifest" if last and whole else "a member"
            r.add(
                "member",
                DAMAGE,
                f"frames {run.first_frame}-{run.last_frame} (from byte {start}): {what} whose tar header "
                f"cannot be read, so not even its path is known: {run.bad}",
                frames=(run.first_frame, run.last_frame),
                pieces=pieces_of(run.first_frame, run.last_frame),
                offset=start,
            )
        if layout.how == FramesFrom.FRAME_SCAN and (layout.partial is not None or layout.frames_end < r.size):
            r.add(
                "member",
                DAMAGE,
                f"nothing after byte {layout.frames_end} can be read without the seek table: "
                "any later members, the member manifest and the seek table are lost",
                offset=layout.frames_end,
            )


# --- the whole check --------------------------------------------------------------------------------------


def _shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SHARD_SUFFIX}") if p.is_file())


def _targets_for(paths: Sequence[Path]) -> dict[Path | None, tuple[bool, list[Path], list[Path]]]:
    """Group the paths by release folder: root -> (whole release?, folders, files)."""
    groups: dict[Path | None, tuple[bool, list[Path], list[Path]]] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UsageError(
                f"{path}: no such file or folder", hint="give downloaded shards, or their folder"
            )
        whole = path.is_dir() and is_release_root(path)
        root = path.resolve() if whole else find_release_root(path if path.is_dir() else path.parent)
        entry = groups.setdefault(root, (False, [], []))
        if whole:
            groups[root] = (True, entry[1], entry[2])
        elif path.is_dir():
            entry[1].append(path.resolve())
        else:
            entry[2].append(path.resolve())
    return groups


def _plan(refs: References, whole: bool, folders: list[Path], files: list[Path]) -> list[_Target]:
    """What to check: with a folder, every shard the release lists (found under its listed path, beside the
    manifests, or in the folder; else missing) plus unlisted shard files there; with files, just them."""
    targets: dict[Path, _Target] = {}
    by_name = {Path(rel).name: ref for rel, ref in refs.shards.items()}

    def rel_of(path: Path) -> str:
        base = next((b for b in refs.bases if path.is_relative_to(b)), None)
        return str(path.relative_to(base)) if base else str(path)

    def add(path: Path, ref: ShardRef | None) -> None:
        if path not in targets:
            targets[path] = _Target(ref.path if ref else rel_of(path), path, ref, refs, whole)

    if whole or folders:
        for ref in refs.shards.values():
            name = Path(ref.path).name
            places = (
                refs.places(ref.path) + [base / name for base in refs.bases] + [f / name for f in folders]
            )
            add(next((p for p in places if p.exists()), places[0]), ref)
    scanned = [d for base in refs.bases for d in (base, base / SHARDS_DIR)] if whole else []
    for path in (p for folder in scanned + folders for p in _shard_files(folder)):
        if not any(t.path == path for t in targets.values()):
            add(path, by_name.get(path.name) if whole or folders else None)
    for path in files:
        listed = refs.shards.get(rel_of(path))
        add(path, listed or by_name.get(path.name))
    return sorted(targets.values(), key=lambda t: t.rel)


def verify(
    paths: Sequence[Path | str],
    options: VerifyOptions = VerifyOptions(),
    on_event: Callable[[Event], None] | None = None,
) -> VerifyReport:
    """Check downloaded shards (files, folders of them, or a whole release folder); see the module docstring.

    Raises UsageError for a path that does not exist and UntrustedManifest when a manifest fails or lacks
    its signature (with a public key), does not parse, or contradicts another one. Everything found in the
    files themselves is reported, never raised.
    """
    emit = on_event or (lambda event: None)
    lock = threading.Lock()

    def emit_locked(event: Event) -> None:
        with lock:
            emit(event)

    files: list[FileResult] = []
    findings: list[Finding] = []
    sources: list[str] = []
    authenticated = bool(options.pubkey)
    jobs = options.jobs or os.cpu_count() or 1
    for root, (whole, folders, given) in _targets_for([Path(p) for p in paths]).items():
        refs = load_references(root, options.pubkey)
        sources += [f"{root}/{s}" if root else s for s in refs.sources]
        where = str(root) if root else "the shards given"
        if refs.shards and not options.pubkey:
            findings.append(
                Finding(
                    where,
                    "release",
                    NOTE,
                    "the manifests are unauthenticated: anyone who could "
                    "change these files could change them too; pass --pubkey with the publisher's key",
                )
            )
        targets = _plan(refs, whole, folders, given)
        workers = max(1, min(jobs, len(targets)))
        threads = max(1, (os.cpu_count() or 1) // workers)  # piece checks of few big files use every core
        with ThreadPoolExecutor(max_workers=workers) as pool:
            checks = [_ShardCheck(t, options, emit_locked, threads) for t in targets]
            results = list(pool.map(_ShardCheck.run, checks))
        for group in results:
            files.extend(group)
        _note_swaps([r for group in results for r in group], refs)
    return VerifyReport(files, findings, sources, authenticated)


def _note_swaps(results: list[FileResult], refs: References) -> None:
    """A file whose SHA-256 is another shard's: files swapped or misnamed, not damaged bytes."""
    owner = {ref.sha256: ref.path for ref in refs.shards.values() if ref.sha256}
    for r in results:
        other = owner.get(r.sha256) if r.sha256 and r.sha256 != r.expected_sha256 else None
        if other is not None and other != r.path:
            r.add(
                "file",
                DAMAGE,
                f"holds {other} (its SHA-256 matches that shard): the files are swapped or "
                f"misnamed; rename it rather than downloading again",
            )
