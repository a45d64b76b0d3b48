"""Reading a published member index: from a folder, a mirror or the swarm, only the chunks a lookup needs,
each checked against the SHA-256 the level above gives (format.py decodes them)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import orjson

from .. import layout
from ..errors import UntrustedManifest, UsageError
from .format import (
    ROOT_MAX_BYTES,
    ChunkRef,
    IndexedTorrent,
    Location,
    chunk_ref,
    decompress_chunk,
    directory_bits,
    id_prefix,
    is_count,
    parse_root,
    parse_row,
    parse_torrent,
    part_of,
)

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
        out = decompress_chunk(data, f"{layout.MEMBER_INDEX_PACK} {what}")
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
                ref = chunk_ref(e, self.where, f"directory {d} entry {i}", self.root.pack_size)
                if len(e) != 4 or not is_count(e[3]):
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
                    torrent = parse_torrent(t, self.where)
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
        at = (b"\n" + text).find(id_prefix(ident))  # a line start: the id is the first field
        if at < 0:
            return None
        end = text.find(b"\n", at)
        loc = parse_row(text[at : end if end >= 0 else None], self.torrent, self.where)
        if loc.id != ident:
            raise UntrustedManifest(
                self.where, f"part {part}: the line found for {ident!r:.60} is another id's"
            )
        return loc

    def members_of(self, torrent_name: str) -> Iterator[Location]:
        """Every member of one torrent, each parsed and checked as locate does: verify's fallback when a
        shard's own manifest is lost. It reads every part (the index is partitioned by id, not torrent)."""
        for line in self.iter_lines():
            loc = parse_row(line.rstrip(b"\n"), self.torrent, self.where)
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
