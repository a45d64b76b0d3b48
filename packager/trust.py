"""The signed publication statement and the downloader's trust file: no rollback, no mix-and-match.

Each `packager publish` that changes the published folder writes one statement, ``publication.json``, signed
with the release's minisign key (``publication.json.minisig``; the stock ``minisign -V`` verifies it). It
lists the path, size and SHA-256 of every other file of the published folder (release.json, torrents.json,
SHA256SUMS and the signatures, whitelist.txt, feed.xml, index.html, the member index, every .torrent, the
earlier statements) except the live, unsigned files of ``layout.LIVE_FILES``; a publication number that
only grows; the SHA-256 of the previous statement; and optionally ``valid_until``. Earlier statements stay
published as ``publications/<n>.json`` (+ ``.minisig``), each listed with its SHA-256 by every later one, so
the chain can be walked and a file found to belong to an older publication says which.

The models: The Update Framework's snapshot and timestamp roles (a signed list of every metadata file with
its hash, so files of two publications cannot be mixed; version numbers a client remembers and never lets go
down, so an old but validly signed publication is refused), and Debian's signed Release file with
``Valid-Until`` (an expiry, so a mirror cannot serve a frozen publication for ever).

A downloader keeps a small trust file (default ``$XDG_DATA_HOME/packager/trust.json``, that is
``~/.local/share/packager/trust.json``; ``--trust-file`` or ``$PACKAGER_TRUST_FILE`` choose another): per
release and signing key, the last publication it accepted and that statement's SHA-256. A statement older
than it, another statement with the same number, or a newer one whose chain does not contain it is refused.
The trust file is updated atomically, and only by a caller whose whole check succeeded (``TrustFile.accept``),
as TUF's clients must not persist metadata that failed a later step.

Everything read here may be hostile: the statement, its signature and the trust file are read with a size
bound, as regular files only; JSON nesting is bounded by the parser (a RecursionError is a refusal); counts,
numbers and paths are checked one by one. Errors: PublicationRefused (the statement as a whole),
FileNotAuthenticated (one file), UntrustedManifest (anything malformed), all exit 2.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from . import layout
from .errors import FileNotAuthenticated, PublicationRefused, UntrustedManifest, UsageError
from .fsutil import write_atomic

FORMAT = 1
KIND = "packager publication statement"  # so that no other signed JSON (release.json) passes for one
TRUST_FORMAT = 1
TRUST_FILE_ENV = "PACKAGER_TRUST_FILE"

# Bounds on what a hostile mirror can make a reader hold. A release of 300 TB in 100 GB shards has ~3000
# torrents, so ~6000 files and a statement near 1 MB; these leave a hundredfold room.
MAX_STATEMENT_BYTES = 64 * 2**20
MAX_SIGNATURE_BYTES = 64 * 2**10
MAX_FILES = 400_000
MAX_PATH_BYTES = 1024
MAX_PUBLICATION = 2**53  # exact in every JSON reader
MAX_SIZE = 2**63 - 1
MAX_TRUST_FILE_BYTES = 16 * 2**20
HASH_CHUNK = 4 * 2**20

_HEX64 = re.compile(r"[0-9a-f]{64}")
_STAMP = "%Y-%m-%dT%H:%M:%SZ"
_STAMP_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_RELEASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]{0,199}")


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
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FileNotAuthenticated(relpath, self.publication, f"missing ({path})") from None
        except OSError as e:
            raise FileNotAuthenticated(relpath, self.publication, f"cannot be read: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FileNotAuthenticated(relpath, self.publication, "is not a regular file")
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
    r = _Fields(doc, where)
    release = r.string("release", _RELEASE_RE, "a release name")
    publication = r.number("publication", 1, MAX_PUBLICATION)
    published_at = r.string("published_at", _STAMP_RE, "a UTC time like 2025-01-31T12:00:00Z")
    valid_until = r.string("valid_until", _STAMP_RE, "null or a UTC time", optional=True)
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


class _Fields:
    def __init__(self, doc: dict, where: Path | str):
        self.doc, self.where = doc, where

    def string(self, key: str, pattern: re.Pattern, expected: str, optional: bool = False) -> Any:
        value = self.doc.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise UntrustedManifest(self.where, f"{key} is {value!r:.80}, expected {expected}")
        if pattern is _STAMP_RE:
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
    return datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)


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
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
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
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise UntrustedManifest(
                where, f"files[{n}].sha256 is {digest!r:.80}, expected 64 lowercase hex digits"
            )
        if path in files:
            raise UntrustedManifest(where, f"files[{n}]: {path} is listed twice")
        if path in _NEVER_LISTED:
            raise UntrustedManifest(where, f"files[{n}]: {path} cannot be part of a publication")
        files[path] = FileDigest(size, digest)
    return files


# The statement cannot list itself; live files are never signed (they change with every scrape).
_NEVER_LISTED = frozenset({layout.STATEMENT, layout.signature_name(layout.STATEMENT), *layout.LIVE_FILES})


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


# ---- authentication --------------------------------------------------------------------------------------


def public_key_text(pubkey: str) -> str:
    """The key given to `--pubkey`: a .pub file's content, or the base64 line itself. UsageError otherwise."""
    path = Path(pubkey)
    try:
        if path.is_file():
            return _read_bounded(path, MAX_SIGNATURE_BYTES, pubkey).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{pubkey}: cannot read the public key: {e}") from None
    if not re.fullmatch(r"[A-Za-z0-9+/]{40,}={0,2}", pubkey.strip()):
        raise UsageError(f"{pubkey}: no such public key file", hint="pass the .pub file or its base64 line")
    return pubkey.strip()


def key_id_of(pubkey: str) -> str:
    """The minisign key id (as `minisign` prints it) of a public key's text; UsageError if it is not one."""
    from .signing import NotMinisign, public_key_id  # minisign, 75 ms to import: only where a key is read

    try:
        return public_key_id(_key_line(pubkey))
    except NotMinisign as e:
        raise UsageError(f"not a minisign public key ({e})", hint="pass the publisher's .pub file") from None


def _key_line(pubkey: str) -> str:
    lines = [
        line.strip() for line in pubkey.splitlines() if line.strip() and not line.startswith("untrusted")
    ]
    return lines[0] if lines else ""


def authenticate(
    data: bytes, signature: bytes | None, pubkey: str, where: Path | str = layout.STATEMENT
) -> str:
    """The key id, if `signature` (a .minisig file's bytes) is `pubkey`'s signature of `data`;
    PublicationRefused otherwise. `pubkey` is a .pub file's text or its base64 line."""
    # minisign, 75 ms to import: only where a signature is checked
    from .signing import NotMinisign, SignatureMismatch, verify_signature

    sig_name = layout.signature_name(Path(str(where)).name)
    name = Path(str(where)).name
    hint = f"fetch {name} and {sig_name} again from the publisher; trust nothing until they verify"
    if signature is None:
        raise PublicationRefused(
            where, f"has no signature ({sig_name}), so it cannot be authenticated", hint=hint
        )
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise PublicationRefused(
            where, f"{sig_name} is {len(signature)} bytes: not a minisign signature", hint=hint
        )
    key_id = key_id_of(pubkey)
    try:
        verify_signature(_key_line(pubkey), data, signature)
    except SignatureMismatch as e:
        raise PublicationRefused(where, f"does not match its signature {sig_name} ({e})", hint=hint) from None
    except NotMinisign as e:
        raise PublicationRefused(where, f"{sig_name} is not a minisign signature ({e})", hint=hint) from None
    return key_id


def load_statement(
    data: bytes,
    signature: bytes | None,
    pubkey: str | None,
    trust: TrustFile | None = None,
    now: datetime | None = None,
    where: Path | str = layout.STATEMENT,
) -> Statement:
    """The statement in `data`, authenticated and checked; the one entry point for every reader of a release.

    `data` and `signature` are the bytes of ``publication.json`` and ``publication.json.minisig`` from
    anywhere (a folder, an HTTP mirror, the swarm); `signature` may be None when `pubkey` is None.
    With `pubkey` (a .pub file's text or its base64 line) the signature must verify (else
    PublicationRefused) and the returned statement has ``key_id`` set; without it nothing is authenticated
    and only the statement's own consistency is checked. An expired statement (``valid_until`` before `now`,
    default the clock) is PublicationRefused. With `trust` and `pubkey`, the statement must not be older than,
    nor fork from, the publication `trust` accepted last for this release and key (PublicationRefused naming
    both); the trust file is NOT updated: call ``trust.accept(statement)`` once everything the caller read
    has passed ``statement.check(relpath, data)`` (or ``check_file`` / ``checker``).

    Example (the fetch command's use)::

        trust = TrustFile()  # or TrustFile(Path(args.trust_file))
        statement = load_statement(get("publication.json"), get("publication.json.minisig"), pubkey, trust)
        root = statement.check("members/index.json", get("members/index.json"))  # FileNotAuthenticated
        ...
        trust.accept(statement)
    """
    if len(data) > MAX_STATEMENT_BYTES:
        raise UntrustedManifest(where, f"more than {MAX_STATEMENT_BYTES} bytes: not a publication statement")
    key_id = authenticate(data, signature, pubkey, where) if pubkey is not None else None
    statement = read_statement(data, where)
    statement = replace(statement, key_id=key_id)
    if statement.expired(now):
        raise PublicationRefused(
            where,
            f"publication {statement.publication} expired at {statement.valid_until} (valid_until); a mirror "
            "may be serving a frozen copy",
            seen=statement.publication,
            hint="fetch the current publication from the publisher or another mirror",
        )
    if trust is not None and key_id is not None:
        trust.check(statement)
    return statement


@dataclass(frozen=True)
class FolderStatement:
    """A statement read from a folder, with its earlier statements (those present) and its bytes."""

    statement: Statement
    data: bytes
    signature: bytes | None
    history: tuple[Statement, ...]  # earlier statements found under publications/, each checked by hash


def read_folder_statement(
    folder: Path, pubkey: str | None, trust: TrustFile | None = None, now: datetime | None = None
) -> FolderStatement | None:
    """load_statement() on ``folder/publication.json`` (+ its .minisig), and the earlier statements under
    ``folder/publications/`` that the current one lists (each checked against its listed SHA-256; absent ones
    are skipped). None if the folder holds no statement."""
    folder = Path(folder)
    path = folder / layout.STATEMENT
    if not path.exists() and not path.is_symlink():
        return None
    data = _read_bounded(path, MAX_STATEMENT_BYTES, path)
    sig_path = folder / layout.signature_name(layout.STATEMENT)
    signature = _read_bounded(sig_path, MAX_SIGNATURE_BYTES, sig_path) if sig_path.exists() else None
    statement = load_statement(data, signature, pubkey, trust, now, where=path)
    return FolderStatement(statement, data, signature, tuple(_history(folder, statement)))


def check_published_file(
    folder: Path,
    relpath: str,
    pubkey: str | None,
    trust: TrustFile | None = None,
    now: datetime | None = None,
) -> FolderStatement | None:
    """Authenticate one published file on disk before it is used (locate's member index): load the folder's
    statement (required with `pubkey`, which is a --pubkey argument: a .pub path or a base64 line) and check
    ``folder/relpath`` against it; FileNotAuthenticated naming the publication the file is from, if another.
    None when the folder has no statement and no key was given (nothing to check against)."""
    key = public_key_text(pubkey) if pubkey else None
    fs = read_folder_statement(folder, key, trust if key else None, now)
    if fs is None:
        if key:
            raise PublicationRefused(
                Path(folder) / layout.STATEMENT,
                f"missing, so {relpath} cannot be authenticated",
                hint=f"fetch {layout.STATEMENT} and its .minisig from the publisher, or drop --pubkey",
            )
        return None
    s = fs.statement
    path = Path(folder) / relpath
    try:
        s.check_file(relpath, path)
    except FileNotAuthenticated as e:
        digest = None
        if path.is_file() and relpath in s.files:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        older = s.publication_of(relpath, digest, fs.history) if digest else None
        if older is not None:
            raise FileNotAuthenticated(
                relpath,
                s.publication,
                f"is from publication {older}, but {layout.STATEMENT} is publication {s.publication}: "
                "a mixed set",
                from_publication=older,
                hint="fetch it again from the publisher or from the mirror its statement came from",
            ) from None
        raise e from None
    return fs


def _history(folder: Path, statement: Statement) -> Iterable[Statement]:
    for n in range(statement.publication - 1, 0, -1):
        rel = layout.statement_file(n)
        listed = statement.files.get(rel)
        path = folder / rel
        if listed is None or not path.is_file() or path.stat().st_size != listed.size:
            continue
        data = _read_bounded(path, MAX_STATEMENT_BYTES, path)
        if hashlib.sha256(data).hexdigest() != listed.sha256:
            continue
        try:
            yield read_statement(data, path)
        except UntrustedManifest:
            continue  # listed with this hash by a checked statement, so written by the publisher; skip it


def read_regular(path: Path, limit: int) -> bytes:
    """A published file's bytes for a reader: a regular file (not a FIFO or a device) of at most `limit`
    bytes, else UntrustedManifest naming it."""
    return _read_bounded(path, limit, path)


def _read_bounded(path: Path, limit: int, where: Path | str) -> bytes:
    """A regular file's bytes, at most `limit`: UntrustedManifest for a FIFO, a device, a bigger file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UntrustedManifest(where, "missing") from None
    except OSError as e:
        raise UntrustedManifest(where, f"cannot be read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedManifest(where, "is not a regular file")
        # read(n) allocates n bytes up front: ask for what the file holds (one more to see it grew).
        data = f.read(min(limit, info.st_size) + 1)
    if len(data) > limit:
        raise UntrustedManifest(where, f"more than {limit} bytes: not what it claims to be")
    return data


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
            if rel in _NEVER_LISTED:
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


# ---- the trust file --------------------------------------------------------------------------------------


def default_trust_file() -> Path:
    """$PACKAGER_TRUST_FILE, else $XDG_DATA_HOME/packager/trust.json (~/.local/share/packager/trust.json)."""
    if os.environ.get(TRUST_FILE_ENV):
        return Path(os.environ[TRUST_FILE_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "packager" / "trust.json"


@dataclass(frozen=True)
class Trusted:
    """What a trust file remembers of one release signed by one key."""

    release: str
    key_id: str
    publication: int
    sha256: str  # of that statement's bytes
    published_at: str
    valid_until: str | None
    accepted_at: str

    def as_dict(self) -> dict:
        return {
            "release": self.release,
            "key_id": self.key_id,
            "publication": self.publication,
            "sha256": self.sha256,
            "published_at": self.published_at,
            "valid_until": self.valid_until,
            "accepted_at": self.accepted_at,
        }


class TrustFile:
    """The downloader's trust file (JSON; manifests/trust.schema.json): the last accepted publication per
    (release, key id). Reading it is checked like any input; writing replaces it atomically under a lock."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else default_trust_file()

    def entries(self) -> dict[tuple[str, str], Trusted]:
        if not self.path.exists():
            return {}
        hint = (
            "restore it from a backup; deleting it makes the next publication you see trusted afresh "
            "(you lose rollback protection for that check)"
        )
        try:
            data = _read_bounded(self.path, MAX_TRUST_FILE_BYTES, self.path)
        except UntrustedManifest as e:
            raise UntrustedManifest(self.path, f"the trust file {e.reason}", hint=hint) from None
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise UntrustedManifest(
                self.path, f"the trust file is not JSON: {str(e)[:120]}", hint=hint
            ) from None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != TRUST_FORMAT
            or not isinstance(doc.get("trusted"), list)
        ):
            raise UntrustedManifest(self.path, "not a packager trust file (format 1)", hint=hint)
        out = {}
        for n, raw in enumerate(doc["trusted"]):
            try:
                t = _trusted(raw, self.path, n)
            except UntrustedManifest as e:
                raise UntrustedManifest(self.path, e.reason, hint=hint) from None
            out[(t.release, t.key_id)] = t
        return out

    def trusted(self, release: str, key_id: str) -> Trusted | None:
        return self.entries().get((release, key_id))

    def check(self, statement: Statement) -> None:
        """PublicationRefused if `statement` is older than, or forks from, what was accepted before."""
        assert statement.key_id is not None, "only an authenticated statement is checked against trust"
        before = self.trusted(statement.release, statement.key_id)
        if before is None or (before.publication, before.sha256) == (statement.publication, statement.sha256):
            return
        where, seen = statement.where, statement.publication
        when = f"publication {before.publication} of {before.published_at}, accepted {before.accepted_at}"
        if seen < before.publication:
            raise PublicationRefused(
                where,
                f"is publication {seen} ({statement.published_at}), older than the {when} (trust file "
                f"{self.path}): a rollback, or a mirror that has not caught up",
                trusted=before.publication,
                seen=seen,
                hint="fetch the current publication from the publisher or another mirror",
            )
        link = statement.files.get(layout.statement_file(before.publication))
        if seen == before.publication or link is None or link.sha256 != before.sha256:
            raise PublicationRefused(
                where,
                f"publication {seen} ({statement.sha256[:16]}...) does not continue the {when} "
                f"({before.sha256[:16]}..., trust file {self.path}): two different publication histories are "
                "signed with this key",
                trusted=before.publication,
                seen=seen,
                hint="the signing key may be compromised; ask the publisher before trusting either",
            )

    def accept(self, statement: Statement, now: datetime | None = None) -> bool:
        """Record `statement` as the last accepted publication of its release and key, atomically, under a
        lock; the number never goes down (a concurrent check that accepted a newer one wins). Call only after
        everything read from the publication passed its check. True if the file changed."""
        if statement.key_id is None:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self.entries()
            key = (statement.release, statement.key_id)
            before = entries.get(key)
            if before is not None and before.publication >= statement.publication:
                return False
            self.check(statement)  # again under the lock: another process may have accepted a newer one
            entries[key] = Trusted(
                statement.release,
                statement.key_id,
                statement.publication,
                statement.sha256,
                statement.published_at,
                statement.valid_until,
                (now or datetime.now(UTC)).strftime(_STAMP),
            )
            doc = {"format": TRUST_FORMAT, "trusted": [t.as_dict() for _, t in sorted(entries.items())]}
            write_atomic(self.path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o644)
            return True
        finally:
            os.close(fd)


def _trusted(raw: object, where: Path, n: int) -> Trusted:
    if not isinstance(raw, dict):
        raise UntrustedManifest(where, f"trusted[{n}] is not an object")
    f = _Fields(raw, where)
    key_id = raw.get("key_id")
    if not isinstance(key_id, str) or not re.fullmatch(r"[0-9A-F]{1,16}", key_id):
        raise UntrustedManifest(where, f"trusted[{n}].key_id is {key_id!r:.40}")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise UntrustedManifest(where, f"trusted[{n}].sha256 is {digest!r:.80}")
    return Trusted(
        f.string("release", _RELEASE_RE, "a release name"),
        key_id,
        f.number("publication", 1, MAX_PUBLICATION),
        digest,
        f.string("published_at", _STAMP_RE, "a UTC time"),
        f.string("valid_until", _STAMP_RE, "null or a UTC time", optional=True),
        f.string("accepted_at", _STAMP_RE, "a UTC time"),
    )
