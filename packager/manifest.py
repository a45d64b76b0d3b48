"""The published formats, each with its writer and its reader: release.json (and its torrent entries),
torrents.json, SHA256SUMS and the opentracker whitelist. Their minisign signatures are signing.py's.

Formats are stable once published; `manifests/*.schema.json` describes each JSON one, and the tests validate
what we write against them. Every writer here is a pure function of its input (no clock, no randomness), so
the same published torrents give byte-identical files: publishing twice changes nothing, and a torrent's
release.json entry, frozen in state.sqlite when first published, never changes afterwards.

The readers take bytes from anywhere (a mirror, a download) and trust none of them: a wrong type, an absolute
or `..` path, a malformed hash or a format we do not know is refused with UntrustedManifest naming the file,
the entry and the value. The member index has its own module (member_index/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from . import layout
from .errors import UntrustedManifest
from .hashing import swarm_hashes, truncated_v2
from .units import FORMATS

FORMAT = 1
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def json_number(value: float) -> int | float:
    """An integral popularity as an int ("7", not "7.0"), as in the member manifest."""
    number = float(value)
    return int(number) if number.is_integer() else number


def _dump(data: object) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _load_json(data: bytes | str, where: Path | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: arrays nested thousands deep
        raise UntrustedManifest(where, f"not JSON: {e}") from None


def safe_relative(text: object, where: Path | str, what: str) -> str:
    """`text` if it is a plain relative POSIX path (no `/` start, no `..`, `.` or empty part, no backslash or
    NUL); UntrustedManifest otherwise, since the path is joined to a folder on the reader's machine."""
    if not isinstance(text, str) or not text or text.startswith("/") or "\\" in text or "\0" in text:
        raise UntrustedManifest(where, f"{what} {text!r} is not a relative path")
    if any(part in ("", ".", "..") for part in text.split("/")):
        raise UntrustedManifest(where, f"{what} {text!r} is not a plain relative path")
    return text


# --- release.json entries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the published folder / a mirror's folder
    size: int
    sha256: str

    def as_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class TorrentEntry:
    """One torrent as release.json lists it. Frozen when first published."""

    name: str  # <release>-<phase>[-<tier>]-<seq>
    phase: str
    tier: str | None
    popularity_min: int | float
    popularity_max: int | float
    items: int
    data_size: int  # sum of the member sizes (uncompressed content)
    format: str
    piece_size: int
    info_hash_v1: str | None
    info_hash_v2: str | None  # the full SHA-256 (64 hex); trackers see its first 40
    magnet: str
    files: tuple[FileEntry, FileEntry]  # the shard, then its .torrent
    added: str  # ISO 8601 UTC, when the torrent was first published
    obsolete: bool = False

    @property
    def shard(self) -> FileEntry:
        return self.files[0]

    @property
    def torrent(self) -> FileEntry:
        return self.files[1]

    @property
    def torrent_file(self) -> str:
        return self.torrent.path

    @property
    def info_hash_v2_truncated(self) -> str | None:
        return truncated_v2(self.info_hash_v2)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "phase": self.phase,
            "tier": self.tier,
            "popularity": {"min": self.popularity_min, "max": self.popularity_max},
            "items": self.items,
            "data_size": self.data_size,
            "format": self.format,
            "piece_size": self.piece_size,
            "info_hash_v1": self.info_hash_v1,
            "info_hash_v2": self.info_hash_v2,
            "magnet": self.magnet,
            "torrent_file": self.torrent_file,
            "files": [f.as_dict() for f in self.files],
            "added": self.added,
            "obsolete": self.obsolete,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: Path | str = "<entry>") -> TorrentEntry:
        return _read_entry(_load_json(text, where), where, 0)


class _Entry:
    """Typed fields of one `torrents[n]` object of a release.json, each refused with its key if wrong."""

    def __init__(self, entry: object, where: Path | str, n: int):
        if not isinstance(entry, dict):
            raise UntrustedManifest(where, f"torrents[{n}] is not an object")
        self.entry, self.where, self.n = entry, where, n

    def fail(self, key: str, value: object, expected: str) -> UntrustedManifest:
        return UntrustedManifest(self.where, f"torrents[{self.n}].{key} is {value!r}, expected {expected}")

    def get(self, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        value = self.entry.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            raise self.fail(key, value, " or ".join(k.__name__ for k in kinds))
        return value

    def count(self, key: str) -> int:
        value = self.get(key, int)
        if value < 0:
            raise self.fail(key, value, "a count of 0 or more")
        return value

    def hex_hash(self, key: str, digits: int) -> str | None:
        value = self.get(key, str, optional=True)
        if value is not None and not (_HEX40 if digits == 40 else _HEX64).fullmatch(value):
            raise self.fail(key, value, f"null or {digits} lowercase hex digits")
        return value

    def popularity(self) -> tuple[int | float, int | float]:
        pop = self.get("popularity", dict)
        bounds = []
        for end in ("min", "max"):
            value = pop.get(end)
            if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
                raise self.fail(f"popularity.{end}", value, "a number")
            bounds.append(value)
        return bounds[0], bounds[1]

    def files(self, name: str) -> tuple[FileEntry, FileEntry]:
        by_kind: dict[str, FileEntry] = {}
        for f in self.get("files", list):
            if not isinstance(f, dict):
                raise UntrustedManifest(self.where, f"torrents[{self.n}].files holds {f!r}, not an object")
            path = safe_relative(f.get("path"), self.where, f"torrents[{self.n}].files path")
            size, digest = f.get("size"), f.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise UntrustedManifest(
                    self.where, f"torrents[{self.n}]: {path}: size {size!r} is not a byte count"
                )
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise UntrustedManifest(
                    self.where, f"torrents[{self.n}]: {path}: sha256 {digest!r} is not 64 hex"
                )
            by_kind["torrent" if path.endswith(layout.TORRENT_SUFFIX) else "shard"] = FileEntry(
                path, size, digest
            )
        for kind, what in (("shard", "shard file"), ("torrent", ".torrent file")):
            if kind not in by_kind:
                raise UntrustedManifest(self.where, f"torrents[{self.n}] ({name}) lists no {what}")
        return by_kind["shard"], by_kind["torrent"]


def _read_entry(raw: object, where: Path | str, n: int) -> TorrentEntry:
    e = _Entry(raw, where, n)
    name = e.get("name", str)
    fmt = e.get("format", str)
    if fmt not in FORMATS:
        raise e.fail("format", fmt, " or ".join(FORMATS))
    low, high = e.popularity()
    files = e.files(name)
    torrent_file = e.get("torrent_file", str)
    if torrent_file != files[1].path:
        raise e.fail("torrent_file", torrent_file, f"its .torrent file {files[1].path!r}")
    return TorrentEntry(
        name=name,
        phase=e.get("phase", str),
        tier=e.get("tier", str, optional=True),
        popularity_min=low,
        popularity_max=high,
        items=e.count("items"),
        data_size=e.count("data_size"),
        format=fmt,
        piece_size=e.count("piece_size"),
        info_hash_v1=e.hex_hash("info_hash_v1", 40),
        info_hash_v2=e.hex_hash("info_hash_v2", 64),
        magnet=e.get("magnet", str),
        files=files,
        added=e.get("added", str),
        obsolete=e.get("obsolete", bool),
    )


@dataclass(frozen=True)
class PhaseEntry:
    name: str
    published_at: str
    torrents: int

    def as_dict(self) -> dict:
        return {"name": self.name, "published_at": self.published_at, "torrents": self.torrents}


# --- release.json -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """release.json as read back: what the publisher published, phases in publication order."""

    release: str
    packager_version: str
    phases: tuple[PhaseEntry, ...]
    torrents: tuple[TorrentEntry, ...]


def release_json(
    release: str, version: str, phases: Sequence[PhaseEntry], entries: Sequence[TorrentEntry]
) -> bytes:
    """release.json: every torrent of every published phase, phases in publication order."""
    return _dump(
        {
            "format": FORMAT,
            "release": release,
            "packager_version": version,
            "phases": [p.as_dict() for p in phases],
            "torrents": [e.as_dict() for e in entries],
        }
    )


def _release_doc(data: bytes, where: Path | str) -> dict:
    doc = _load_json(data, where)
    if not isinstance(doc, dict) or not isinstance(doc.get("torrents"), list):
        raise UntrustedManifest(where, "no `torrents` list: not a packager release.json")
    if doc.get("format") != FORMAT:
        raise UntrustedManifest(
            where,
            f"format {doc.get('format')!r} is not one this packager reads ({FORMAT})",
            hint="update packager",
        )
    return doc


def read_release_json(data: bytes, where: Path | str = layout.RELEASE_JSON) -> Release:
    """The inverse of release_json(); UntrustedManifest naming the entry and key of anything malformed."""
    doc = _release_doc(data, where)
    release, version, phases = doc.get("release"), doc.get("packager_version"), doc.get("phases")
    if not isinstance(release, str) or not isinstance(version, str) or not isinstance(phases, list):
        raise UntrustedManifest(where, "`release`, `packager_version` or `phases` is missing or mistyped")
    return Release(
        release,
        version,
        tuple(_read_phase(p, where, i) for i, p in enumerate(phases)),
        tuple(_read_entry(entry, where, n) for n, entry in enumerate(doc["torrents"])),
    )


def _read_phase(raw: object, where: Path | str, i: int) -> PhaseEntry:
    if not isinstance(raw, dict):
        raise UntrustedManifest(where, f"phases[{i}] is not an object")
    name, at, count = raw.get("name"), raw.get("published_at"), raw.get("torrents")
    if not isinstance(name, str) or not isinstance(at, str) or type(count) is not int or count < 0:
        raise UntrustedManifest(where, f"phases[{i}] is not {{name, published_at, torrents}}: {raw!r:.200}")
    return PhaseEntry(name, at, count)


@dataclass(frozen=True)
class ListedFiles:
    """What a downloader checks of one release.json entry: its shard file, its .torrent and info-hashes."""

    name: str
    shard: FileEntry
    torrent: FileEntry | None  # None for an entry that lists its shard only
    torrent_file: str | None
    info_hash_v1: str | None
    info_hash_v2: str | None
    obsolete: bool


def read_release_files(data: bytes, where: Path | str = layout.RELEASE_JSON) -> list[ListedFiles]:
    """The files each entry of release.json lists, for verify: it asks of an entry only what it checks
    (name, files, info-hashes), so a release.json with fewer fields than release_json() writes (an older
    packager's, a mirror's own) is still read; anything malformed is UntrustedManifest naming the entry."""
    doc = _release_doc(data, where)
    return [_listed_files(entry, where, n) for n, entry in enumerate(doc["torrents"])]


def _listed_files(entry: object, where: Path | str, n: int) -> ListedFiles:
    if not isinstance(entry, dict):
        raise UntrustedManifest(where, f"torrents[{n}] is not an object")

    def field(key: str, kind: type, optional: bool = False) -> Any:
        value = entry.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UntrustedManifest(where, f"torrents[{n}].{key} is {value!r}, expected {kind.__name__}")
        return value

    name = field("name", str)
    by_kind: dict[str, FileEntry] = {}
    for f in field("files", list):
        if not isinstance(f, dict):
            raise UntrustedManifest(where, f"torrents[{n}].files holds {f!r}, not an object")
        path = safe_relative(f.get("path"), where, f"torrents[{n}].files path")
        size, digest = f.get("size"), f.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise UntrustedManifest(where, f"torrents[{n}]: {path}: size {size!r} is not a byte count")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise UntrustedManifest(where, f"torrents[{n}]: {path}: sha256 {digest!r} is not 64 hex")
        by_kind["torrent" if path.endswith(layout.TORRENT_SUFFIX) else "shard"] = FileEntry(
            path, size, digest
        )
    if "shard" not in by_kind:
        raise UntrustedManifest(where, f"torrents[{n}] ({name}) lists no shard file")
    torrent = by_kind.get("torrent")
    return ListedFiles(
        name,
        by_kind["shard"],
        torrent,
        torrent.path if torrent else field("torrent_file", str, optional=True),
        field("info_hash_v1", str, optional=True),
        field("info_hash_v2", str, optional=True),
        bool(entry.get("obsolete", False)),
    )


# --- torrents.json ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedTorrent:
    """One row of torrents.json, for mirrors: Anna's Archive's field names (and meanings) where they apply.

    As there, `data_size` is what a seeder stores (the shard file), `display_name` the .torrent's file name,
    `added_to_torrents_list_at` a date, and the scrape fields are null until a tracker scrape fills them.
    """

    url: str
    top_level_group_name: str
    group_name: str
    display_name: str
    added_to_torrents_list_at: str
    btih: str | None
    magnet_link: str
    torrent_size: int
    num_files: int
    data_size: int
    obsolete: bool
    embargo: bool
    seeders: int | None
    leechers: int | None
    completed: int | None
    stats_scraped_at: str | None
    name: str
    phase: str
    tier: str | None
    info_hash_v2: str | None
    sha256: str

    def as_dict(self) -> dict:
        return asdict(self)


_LISTED_TYPES: dict[str, tuple[type, ...]] = {
    "url": (str,),
    "btih": (str, type(None)),
    "torrent_size": (int,),
    "num_files": (int,),
    "data_size": (int,),
    "obsolete": (bool,),
    "embargo": (bool,),
    "seeders": (int, type(None)),
    "leechers": (int, type(None)),
    "completed": (int, type(None)),
    "stats_scraped_at": (str, type(None)),
    "tier": (str, type(None)),
    "info_hash_v2": (str, type(None)),
}


def torrent_url(base_url: str, entry: TorrentEntry) -> str:
    """The .torrent's URL under `[publish] base_url`; relative to the published folder without one."""
    file_name = entry.torrent_file.rsplit("/", 1)[-1]
    if not base_url:
        return entry.torrent_file
    return base_url + ("" if base_url.endswith("/") else "/") + file_name


def listed_torrents(release: str, base_url: str, entries: Sequence[TorrentEntry]) -> list[ListedTorrent]:
    return [
        ListedTorrent(
            url=torrent_url(base_url, e),
            top_level_group_name=release,
            group_name=e.phase,
            display_name=e.torrent_file.rsplit("/", 1)[-1],
            added_to_torrents_list_at=e.added[:10],
            btih=e.info_hash_v1,
            magnet_link=e.magnet,
            torrent_size=e.torrent.size,
            num_files=1,
            data_size=e.shard.size,
            obsolete=e.obsolete,
            embargo=False,
            seeders=None,
            leechers=None,
            completed=None,
            stats_scraped_at=None,
            name=e.name,
            phase=e.phase,
            tier=e.tier,
            info_hash_v2=e.info_hash_v2,
            sha256=e.shard.sha256,
        )
        for e in entries
    ]


def torrents_json(rows: Sequence[ListedTorrent]) -> bytes:
    """torrents.json: the rows of listed_torrents()."""
    return _dump([r.as_dict() for r in rows])


def read_torrents_json(data: bytes, where: Path | str = layout.TORRENTS_JSON) -> list[ListedTorrent]:
    """The inverse of torrents_json(); UntrustedManifest naming the row and key of anything malformed."""
    doc = _load_json(data, where)
    if not isinstance(doc, list):
        raise UntrustedManifest(where, "not a list of torrents")
    rows = []
    for n, raw in enumerate(doc):
        if not isinstance(raw, dict):
            raise UntrustedManifest(where, f"[{n}] is not an object")
        values = {}
        for f in fields(ListedTorrent):
            value = raw.get(f.name)
            kinds = _LISTED_TYPES.get(f.name, (str,))
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise UntrustedManifest(where, f"[{n}].{f.name} is {value!r:.100}")
            values[f.name] = value
        rows.append(ListedTorrent(**values))
    return rows


# --- SHA256SUMS -------------------------------------------------------------------------------------------


def sha256sums(entries: Iterable[TorrentEntry], others: Iterable[tuple[str, str]] = ()) -> bytes:
    """coreutils format, `<hex>  <path>`, sorted by path: `sha256sum -c` works in a mirror's folder. Lists
    every torrent's files, and `others` (path, hex): the member index's."""
    lines = sorted([(f.path, f.sha256) for e in entries for f in e.files] + list(others))
    for path, _ in lines:
        # Shard names are [A-Za-z0-9._-]; coreutils would need its backslash escape for anything odder.
        if "\\" in path or "\n" in path:
            raise ValueError(f"{path!r} needs escaping in SHA256SUMS")
    return "".join(f"{digest}  {path}\n" for path, digest in lines).encode()


def read_sha256sums(data: bytes, where: Path | str = layout.SHA256SUMS) -> dict[str, str]:
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
        path = safe_relative(name, where, f"line {number}: path")
        if path in sums and sums[path] != digest.lower():
            raise UntrustedManifest(where, f"line {number}: {path} is listed twice with different hashes")
        sums[path] = digest.lower()
    return sums


# --- the opentracker whitelist ----------------------------------------------------------------------------


def whitelist_hashes(torrents: Iterable) -> list[str]:
    """The whitelist's hashes, in order, once each, of anything with `info_hash_v1` and `info_hash_v2`."""
    seen = {h.lower(): None for t in torrents for h in swarm_hashes(t.info_hash_v1, t.info_hash_v2)}
    return list(seen)


def whitelist(torrents: Iterable) -> bytes:
    """opentracker's access.whitelist: one 40-hex info-hash a line, v1 and truncated v2 (BEP 52)."""
    return "".join(f"{h}\n" for h in whitelist_hashes(torrents)).encode()


def read_whitelist(data: bytes, where: Path | str = layout.WHITELIST) -> list[str]:
    """The inverse of whitelist(): its hashes in order; UntrustedManifest naming a malformed line."""
    hashes = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue
        if not _HEX40.fullmatch(line.decode("ascii", "replace")):
            raise UntrustedManifest(where, f"line {number} is not a 40-hex info-hash: {line[:80]!r}")
        hashes.append(line.decode())
    return hashes
