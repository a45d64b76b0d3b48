"""What verify reports: its options, its progress events, the damage vocabulary, and the results.

The vocabulary is StrEnums, so that handling is checked by name while the JSON keeps the same strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Severity(StrEnum):
    """How bad a finding is; the exit code follows from the worst one present."""

    DAMAGE = "damage"
    MISSING = "missing"
    BAD_INPUT = "bad input"
    NOTE = "note"


class Level(StrEnum):
    """What a finding is about."""

    RELEASE = "release"
    FILE = "file"
    PIECE = "piece"
    MEMBER = "member"


class Status(StrEnum):
    """The verdict on one file."""

    OK = "ok"
    DAMAGED = "damaged"
    MISSING = "missing"
    NOT_A_SHARD = "not a shard"
    UNLISTED = "unlisted"


class FileKind(StrEnum):
    SHARD = "shard"
    TORRENT = "torrent"
    MEMBER_INDEX = "member index"  # its pack: data with a torrent of its own, checked as a shard is


class Check(StrEnum):
    """A check that ran on a file; those sharing a read are started together."""

    SIZE = "size"
    SHA256 = "sha256"
    PIECES = "pieces"
    MEMBERS = "members"


# --- options and events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyOptions:
    pieces: bool = False  # check every piece, not only those of files whose SHA-256 is wrong
    deep: bool = False  # decompress every frame and check every member
    jobs: int = 0  # files checked at once; 0: one per core
    pubkey: str | None = None  # minisign public key file, or its base64 line
    trust_file: Path | None = None  # the downloader's trust file (trust/); None: its default location
    partial: bool = False  # missing files are not failures: with the rest good, the trust file is updated


@dataclass(frozen=True)
class PassStarted:
    """A read of `total` bytes of `path` begins, for the checks named."""

    path: str
    levels: tuple[Check, ...]
    total: int


@dataclass(frozen=True)
class BytesRead:
    path: str
    n: int


@dataclass(frozen=True)
class FileChecked:
    result: FileResult


Event = PassStarted | BytesRead | FileChecked


# --- results ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing found, located as precisely as the evidence allows; `message` is what a user reads."""

    file: str
    level: Level
    severity: Severity
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
    kind: FileKind
    status: Status = Status.OK
    size: int | None = None
    expected_size: int | None = None
    sha256: str | None = None
    expected_sha256: str | None = None
    levels: list[Check] = field(default_factory=list)  # the checks that ran
    piece_size: int | None = None
    pieces: int | None = None  # pieces in the torrent, when pieces were checked
    bad_pieces: list[int] = field(default_factory=list)
    members: int | None = None  # members checked, with --deep
    damaged_members: list[MemberDamage] = field(default_factory=list)
    members_in_bad_pieces: list[tuple[str | None, str | None]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    bytes_read: int = 0

    def add(self, level: Level, severity: Severity, message: str, **where) -> None:
        self.findings.append(Finding(self.path, level, severity, message, **where))
        if severity == Severity.DAMAGE and self.status in (Status.OK, Status.UNLISTED):
            self.status = Status.DAMAGED

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


@dataclass(frozen=True)
class PublicationSeen:
    """The publication statement a release folder was checked against, and what became of the trust file."""

    folder: str
    release: str
    publication: int
    published_at: str
    valid_until: str | None
    key_id: str | None  # None: read without a key, nothing authenticated
    trust: str  # "accepted", "already trusted", "not updated: ..." or "no key"
    trust_file: str | None

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class VerifyReport:
    files: list[FileResult]
    findings: list[Finding]  # about the release as a whole: sources used, authentication
    sources: list[str]
    authenticated: bool
    publications: list[PublicationSeen] = field(default_factory=list)

    def all_findings(self) -> list[Finding]:
        return self.findings + [f for r in self.files for f in r.findings]

    def count(self, status: Status) -> int:
        return sum(1 for r in self.files if r.status == status)

    def exit_code(self, partial: bool = False) -> int:
        """2 bad input, 1 damage (or a missing file unless `partial`), 0 all good."""
        severities = {f.severity for f in self.all_findings()}
        if Severity.BAD_INPUT in severities:
            return 2
        if Severity.DAMAGE in severities or (Severity.MISSING in severities and not partial):
            return 1
        return 0

    def as_dict(self, partial: bool = False) -> dict:
        return {
            "exit_code": self.exit_code(partial),
            "authenticated": self.authenticated,
            "sources": self.sources,
            "publications": [p.as_dict() for p in self.publications],
            "summary": {status: self.count(status) for status in Status}
            | {"files": len(self.files), "bytes_read": sum(r.bytes_read for r in self.files)},
            "files": [r.as_dict() for r in self.files],
            "findings": [f.as_dict() for f in self.all_findings()],
        }


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
