"""The downloader's trust file: per release and signing key, the last publication it accepted, so that an
older statement (a rollback) or another history signed with the same key (a fork) is refused. Read like
any hostile input; written atomically, under a lock, by a caller whose whole check succeeded."""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .. import layout
from ..errors import PublicationRefused, UntrustedManifest
from ..fsutil import read_bounded, write_atomic
from .statement import (
    HEX64,
    MAX_PUBLICATION,
    RELEASE_RE,
    STAMP,
    STAMP_RE,
    Fields,
    Statement,
)

TRUST_FORMAT = 1
TRUST_FILE_ENV = "PACKAGER_TRUST_FILE"
MAX_TRUST_FILE_BYTES = 16 * 2**20


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
            data = read_bounded(self.path, MAX_TRUST_FILE_BYTES, self.path)
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
                (now or datetime.now(UTC)).strftime(STAMP),
            )
            doc = {"format": TRUST_FORMAT, "trusted": [t.as_dict() for _, t in sorted(entries.items())]}
            write_atomic(self.path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o644)
            return True
        finally:
            os.close(fd)


def _trusted(raw: object, where: Path, n: int) -> Trusted:
    if not isinstance(raw, dict):
        raise UntrustedManifest(where, f"trusted[{n}] is not an object")
    f = Fields(raw, where)
    key_id = raw.get("key_id")
    if not isinstance(key_id, str) or not re.fullmatch(r"[0-9A-F]{1,16}", key_id):
        raise UntrustedManifest(where, f"trusted[{n}].key_id is {key_id!r:.40}")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or not HEX64.fullmatch(digest):
        raise UntrustedManifest(where, f"trusted[{n}].sha256 is {digest!r:.80}")
    return Trusted(
        f.string("release", RELEASE_RE, "a release name"),
        key_id,
        f.number("publication", 1, MAX_PUBLICATION),
        digest,
        f.string("published_at", STAMP_RE, "a UTC time"),
        f.string("valid_until", STAMP_RE, "null or a UTC time", optional=True),
        f.string("accepted_at", STAMP_RE, "a UTC time"),
    )
