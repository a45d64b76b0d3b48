"""The publication statement's format, writer and reader: what ``publication.json`` lists (every published
file's size and SHA-256), its chain to the previous statement, and the checks of a file against it.

Everything read here may be hostile: sizes, counts, numbers and paths are bounded and checked one by one,
JSON nesting by the parser (a RecursionError is a refusal), files are read as regular files only and with a
size bound. Authentication is check.py's; the downloader's memory is trustfile.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from .. import layout
from ..errors import FileNotAuthenticated, UntrustedManifest, UsageError
from ..fsutil import open_regular

FORMAT = 1
KIND = "packager publication statement"  # so that no other signed JSON (release.json) passes for one

# Bounds on what a hostile mirror can make a reader hold. A release of 300 TB in 100 GB shards has ~3000
# torrents, so ~6000 files and a statement near 1 MB; these leave a hundredfold room.
MAX_STATEMENT_BYTES = 64 * 2**20
MAX_SIGNATURE_BYTES = 64 * 2**10
MAX_FILES = 400_000
MAX_PATH_BYTES = 1024
MAX_PUBLICATION = 2**53  # exact in every JSON reader
MAX_SIZE = 2**63 - 1
HASH_CHUNK = 4 * 2**20

HEX64 = re.compile(r"[0-9a-f]{64}")
STAMP = "%Y-%m-%dT%H:%M:%SZ"
STAMP_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
RELEASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]{0,199}")


# ---- the statement ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileDigest:
    """What the statement says of one published file."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Previous:
    """The statement before this one: its number (this one's minus 1) and the SHA-256 of its bytes."""

    publication: int
    sha256: str


@dataclass(frozen=True)
class Statement:
    """A parsed publication statement.

    ``files`` maps each published file's path (relative to the published folder, POSIX, e.g. ``release.json``
    or ``torrents/<name>.tar.zst.torrent``) to its FileDigest. ``sha256`` is the SHA-256 of the statement's
    own bytes (what the next statement's ``previous`` and a trust file record); ``key_id`` is the minisign
    key id that signed it, or None when it was read without a public key (then it proves only consistency:
    anyone can write a statement).
    """

    release: str
    publication: int
    published_at: str
    valid_until: str | None
    previous: Previous | None
    files: Mapping[str, FileDigest]
    sha256: str
    key_id: str | None = None
    where: str = layout.STATEMENT

    @property
    def authenticated(self) -> bool:
        return self.key_id is not None

    def digest(self, relpath: str) -> FileDigest:
        """The listed size and SHA-256 of `relpath`; FileNotAuthenticated if the statement omits it."""
        found = self.files.get(relpath)
        if found is None:
            raise FileNotAuthenticated(
                relpath,
                self.publication,
                f"not part of publication {self.publication} (its {layout.STATEMENT} does not list it)",
                hint="use only files that the publication statement lists",
            )
        return found

    def check(self, relpath: str, data: bytes) -> bytes:
        """`data` if it is exactly the listed `relpath` (size and SHA-256); FileNotAuthenticated otherwise.
        Check every byte before acting on it: ``root = statement.check("members/index.json", body)``."""
        checker = self.checker(relpath)
        checker.update(data)
        checker.finish()
        return data

    def checker(self, relpath: str) -> FileCheck:
        """A streaming check of `relpath` for a file too big to hold (a member index, a download): feed it
        ``update(chunk)`` (it refuses as soon as more bytes arrive than listed) and call ``finish()``."""
        return FileCheck(relpath, self.digest(relpath), self.publication)

    def check_file(self, relpath: str, path: Path) -> None:
        """Check the file at `path` on disk against the listed `relpath`: a regular file of the listed size
        (checked before any byte is hashed), then its SHA-256 read in bounded chunks."""
        expected = self.digest(relpath)
        refuse = lambda why: FileNotAuthenticated(relpath, self.publication, why)  # noqa: E731
        f, info = open_regular(path, refuse, missing=f"missing ({path})")
        with f:
            checker = FileCheck(relpath, expected, self.publication)
            if info.st_size != expected.size:
                checker.wrong(f"{info.st_size} bytes, publication {self.publication} lists {expected.size}")
            while chunk := f.read(min(HASH_CHUNK, expected.size - checker.done + 1)):
                checker.update(chunk)
            checker.finish()

    def publication_of(self, relpath: str, sha256: str, history: Iterable[Statement]) -> int | None:
        """The newest publication (this one or one of `history`) that lists `relpath` with `sha256`."""
        for s in sorted([self, *history], key=lambda s: -s.publication):
            d = s.files.get(relpath)
            if d is not None and d.sha256 == sha256:
                return s.publication
        return None

    def expired(self, now: datetime | None = None) -> bool:
        if self.valid_until is None:
            return False
        return _parse_stamp(self.valid_until) < (now or datetime.now(UTC))


class FileCheck:
    """Size and SHA-256 of one file, fed in chunks, against what the statement lists (Statement.checker)."""

    def __init__(self, relpath: str, expected: FileDigest, publication: int):
        self.relpath, self.expected, self.publication = relpath, expected, publication
        self.hash = hashlib.sha256()
        self.done = 0

    def wrong(self, reason: str) -> NoReturn:
        raise FileNotAuthenticated(
            self.relpath,
            self.publication,
            reason,
            hint="fetch it again from the publisher; the statement shows which publication each file is from",
        )

    def update(self, data: bytes | memoryview) -> None:
        self.done += len(data)
        if self.done > self.expected.size:
            self.wrong(f"more than the {self.expected.size} bytes publication {self.publication} lists")
        self.hash.update(data)

    def finish(self) -> None:
        if self.done != self.expected.size:
            self.wrong(f"{self.done} bytes, publication {self.publication} lists {self.expected.size}")
        got = self.hash.hexdigest()
        if got != self.expected.sha256:
            self.wrong(
                f"its SHA-256 {got} is not the {self.expected.sha256} publication {self.publication} lists"
            )


def statement_json(
    release: str,
    publication: int,
    published_at: str,
    files: Mapping[str, FileDigest],
    previous: Previous | None = None,
    valid_until: str | None = None,
) -> bytes:
    """The statement's bytes: a pure function of its arguments (files sorted by path), so publishing the
    same folder again writes the same statement. The writer refuses what its reader would refuse."""
    doc = {
        "format": FORMAT,
        "kind": KIND,
        "release": release,
        "publication": publication,
        "published_at": published_at,
        "valid_until": valid_until,
        "previous": None
        if previous is None
        else {"publication": previous.publication, "sha256": previous.sha256},
        "files": [{"path": p, "size": d.size, "sha256": d.sha256} for p, d in sorted(files.items())],
    }
    data = (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    read_statement(data)  # the same rules on both sides
    return data


def read_statement(data: bytes, where: Path | str = layout.STATEMENT) -> Statement:
    """Parse a statement's bytes (not authenticated: see load_statement); UntrustedManifest naming the key of
    anything malformed, out of bounds or inconsistent."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise UntrustedManifest(
            where, f"{len(data)} bytes, more than a statement may hold ({MAX_STATEMENT_BYTES})"
        )
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: arrays nested thousands deep
        raise UntrustedManifest(where, f"not JSON: {str(e)[:200]}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise UntrustedManifest(where, f'not a packager publication statement (no "kind": "{KIND}")')
    if doc.get("format") != FORMAT:
        raise UntrustedManifest(
            where,
            f"format {doc.get('format')!r:.40} is not one this packager reads ({FORMAT})",
            hint="update packager",
        )
    r = Fields(doc, where)
    release = r.string("release", RELEASE_RE, "a release name")
    publication = r.number("publication", 1, MAX_PUBLICATION)
    published_at = r.string("published_at", STAMP_RE, "a UTC time like 2025-01-31T12:00:00Z")
    valid_until = r.string("valid_until", STAMP_RE, "null or a UTC time", optional=True)
    previous = _previous(doc.get("previous"), where, publication)
    files = _files(doc.get("files"), where)
    if previous is not None:
        # The previous statement is itself a published file: its listing must be the chain's own link.
        listed = files.get(layout.statement_file(previous.publication))
        if listed is None or listed.sha256 != previous.sha256:
            raise UntrustedManifest(
                where,
                f"previous is publication {previous.publication} ({previous.sha256[:16]}...), but files has "
                f"{layout.statement_file(previous.publication)} "
                + ("not at all" if listed is None else f"with SHA-256 {listed.sha256[:16]}..."),
            )
    return Statement(
        release,
        publication,
        published_at,
        valid_until,
        previous,
        MappingProxyType(files),
        hashlib.sha256(data).hexdigest(),
        None,
        str(where),
    )


class Fields:
    def __init__(self, doc: dict, where: Path | str):
        self.doc, self.where = doc, where

    def string(self, key: str, pattern: re.Pattern, expected: str, optional: bool = False) -> Any:
        value = self.doc.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise UntrustedManifest(self.where, f"{key} is {value!r:.80}, expected {expected}")
        if pattern is STAMP_RE:
            _stamp_or_fail(value, self.where, key)
        return value

    def number(self, key: str, low: int, high: int) -> int:
        return _int(self.doc.get(key), low, high, self.where, key)


def _int(value: object, low: int, high: int, where: Path | str, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise UntrustedManifest(
            where, f"{what} is {value!r:.80}, expected a whole number from {low} to {high}"
        )
    return value


def _stamp_or_fail(value: str, where: Path | str, what: str) -> None:
    try:
        _parse_stamp(value)
    except ValueError:
        raise UntrustedManifest(where, f"{what} {value!r} is not a real date and time") from None


def _parse_stamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)


def _previous(raw: object, where: Path | str, publication: int) -> Previous | None:
    if raw is None:
        if publication != 1:
            raise UntrustedManifest(where, f"publication {publication} names no previous statement")
        return None
    if not isinstance(raw, dict):
        raise UntrustedManifest(where, f"previous is {raw!r:.80}, expected null or an object")
    number = _int(raw.get("publication"), 1, MAX_PUBLICATION, where, "previous.publication")
    digest = raw.get("sha256")
    if number != publication - 1:
        raise UntrustedManifest(
            where, f"publication {publication} names publication {number} as its previous"
        )
    if not isinstance(digest, str) or not HEX64.fullmatch(digest):
        raise UntrustedManifest(where, f"previous.sha256 is {digest!r:.80}, expected 64 lowercase hex digits")
    return Previous(number, digest)


def _files(raw: object, where: Path | str) -> dict[str, FileDigest]:
    if not isinstance(raw, list):
        raise UntrustedManifest(where, "files is not a list")
    if len(raw) > MAX_FILES:
        raise UntrustedManifest(where, f"lists {len(raw)} files, more than {MAX_FILES}")
    files: dict[str, FileDigest] = {}
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise UntrustedManifest(where, f"files[{n}] is not an object")
        path = entry.get("path")
        reason = _unsafe_path(path)
        if reason:
            raise UntrustedManifest(where, f"files[{n}].path {path!r:.120} {reason}")
        size = _int(entry.get("size"), 0, MAX_SIZE, where, f"files[{n}].size")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            raise UntrustedManifest(
                where, f"files[{n}].sha256 is {digest!r:.80}, expected 64 lowercase hex digits"
            )
        if path in files:
            raise UntrustedManifest(where, f"files[{n}]: {path} is listed twice")
        if path in NEVER_LISTED:
            raise UntrustedManifest(where, f"files[{n}]: {path} cannot be part of a publication")
        files[path] = FileDigest(size, digest)
    return files


# The statement cannot list itself; live files are never signed (they change with every scrape).
NEVER_LISTED = frozenset({layout.STATEMENT, layout.signature_name(layout.STATEMENT), *layout.LIVE_FILES})


def _unsafe_path(path: object) -> str | None:
    if not isinstance(path, str):
        return "is not a string"
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is empty or longer than {MAX_PATH_BYTES} bytes"
    if path.startswith("/") or "\\" in path or any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return "is not a plain relative POSIX path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "has an empty, '.' or '..' component"
    return None


# ---- publishing: what the statement lists ----------------------------------------------------------------


def folder_digests(folder: Path, on_bytes: Callable[[int], None] | None = None) -> dict[str, FileDigest]:
    """Size and SHA-256 of every file under `folder` that a statement lists: all but the statement, its
    signature and layout.LIVE_FILES. Anything that is not a regular file or a folder is refused."""
    out: dict[str, FileDigest] = {}
    folder = Path(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if rel in NEVER_LISTED:
                continue
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                raise UsageError(f"{path}: not a regular file; a publication holds only files")
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(HASH_CHUNK):
                    h.update(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            out[rel] = FileDigest(info.st_size, h.hexdigest())
    return out
