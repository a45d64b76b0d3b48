"""One exception hierarchy. Each class carries the offending values and builds its own message.

The CLI catches :class:`PackagerError` once and maps ``exit_code`` to the process exit status:
2 for bad input or usage, 3 for an environment problem, 1 for damage found by verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PackagerError(Exception):
    """Base of every error packager raises on purpose."""

    exit_code = 2
    hint: str | None = None

    def __new__(cls, *args, **kwargs):
        # Remember the constructor's arguments: build workers raise these in another process, and pickle
        # would otherwise call __init__ with the message alone.
        self = super().__new__(cls, *args)
        self._init = (args, kwargs)
        return self

    def __reduce__(self):
        args, kwargs = self._init
        return _rebuild, (type(self), args, kwargs)

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


def _rebuild(cls, args, kwargs):
    return cls(*args, **kwargs)


class UsageError(PackagerError):
    """Bad arguments or a request that cannot be satisfied as asked."""


class EnvironmentProblem(PackagerError):
    """Something outside the user's input is wrong: a missing tool, a port in use, a full disk."""

    exit_code = 3


class ConfigError(PackagerError):
    """release.toml is invalid. Names the key and what is allowed."""

    def __init__(self, file: Path | str, key: str, reason: str, allowed: str | None = None):
        self.file, self.key, self.reason, self.allowed = Path(file), key, reason, allowed
        text = f"{file}: {key}: {reason}"
        super().__init__(text, hint=f"allowed: {allowed}" if allowed else None)


@dataclass(frozen=True)
class CatalogProblem:
    """One bad catalog row: where it is and what is wrong with it."""

    file: str
    line: int
    reason: str
    item_id: str | None = None

    def __str__(self) -> str:
        shown = self.item_id if self.item_id is None or self.item_id.isprintable() else repr(self.item_id)
        who = (
            f" (id {shown})" if self.item_id is not None else ""
        )  # a raw escape sequence would reach the terminal
        return f"{self.file}:{self.line}{who}: {self.reason}"


class CatalogError(PackagerError):
    """One or more catalog rows are invalid; all of them are reported together."""

    def __init__(self, problems: list[CatalogProblem], total: int | None = None, shown: int = 50):
        self.problems = problems
        self.total = len(problems) if total is None else total
        lines = [str(p) for p in problems[:shown]]
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines)} more")
        count = f"{self.total} problem{'s' if self.total != 1 else ''}"
        super().__init__(
            f"catalog rejected, {count}, nothing was ingested:\n  " + "\n  ".join(lines),
            hint="fix the rows, or pass --skip-invalid to load the good rows and write the bad ones "
            "to a rejects file",
        )


class TotalsOverflow(UsageError):
    """A total the state keeps of a kind (its bytes, most likely) would pass SQLite's largest integer,
    2^63-1: SQLite would turn it into a floating-point number (or stop with "integer overflow")."""

    def __init__(self, kind: str | None, total: int | float | None = None):
        self.kind, self.total = kind, total
        what = "the sizes of one kind's items" if kind is None else f"the sizes of the {kind!r} items"
        beyond = "" if total is None else f" ({total})"
        super().__init__(
            f"{what} add up to more than 2^63-1 bytes{beyond}, beyond what the state can count; "
            "nothing was changed",
            hint="check the catalog's sizes (one file is at most 2^40 bytes), or split the release",
        )


class WorkspaceError(PackagerError):
    """The release workspace is missing, incomplete or inconsistent."""


class ShardBuildError(PackagerError):
    """A shard could not be built: an input file changed, vanished or could not be read."""

    def __init__(self, shard: str, reason: str, path: str | None = None):
        self.shard, self.reason, self.path = shard, reason, path
        where = f" ({path})" if path else ""
        super().__init__(f"{shard}: {reason}{where}")


class ContainerError(PackagerError):
    """A file is not a packager shard, or its container structure is broken."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class MemberNotFound(PackagerError):
    def __init__(self, shard: Path | str, key: str):
        self.shard, self.key = Path(shard), key
        super().__init__(
            f"{shard}: no member with id or path {key!r}",
            hint="list the members with `packager extract SHARD --list`",
        )


class UnsafeMemberName(PackagerError):
    def __init__(self, shard: Path | str, name: str, reason: str):
        self.shard, self.name, self.reason = Path(shard), name, reason
        super().__init__(f"{shard}: refusing member {name!r}: {reason}")


class ShardDamaged(PackagerError):
    """Data read back from a shard does not match what its manifest promises."""

    exit_code = 1

    def __init__(self, shard: Path | str, member: str, offset: int, reason: str):
        self.shard, self.member, self.offset, self.reason = Path(shard), member, offset, reason
        super().__init__(f"{shard}: member {member!r} at offset {offset}: {reason}")


class TorrentError(PackagerError):
    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class PieceSizeError(PackagerError):
    def __init__(self, size: int, minimum: int, maximum: int):
        self.size, self.minimum, self.maximum = size, minimum, maximum
        super().__init__(
            f"piece size {size} is not a power of two between {minimum} and {maximum} bytes",
            hint="use a power of two such as 16KiB, 1MiB or 16MiB",
        )


class PublishError(PackagerError):
    """A phase cannot be published as asked (unknown, empty, shards not built, a published file changed),
    or the signing key cannot be used. `subject` is the phase or the file; `items` lists the offenders."""

    def __init__(
        self,
        subject: str | Path,
        reason: str,
        items: list[str] | tuple[str, ...] = (),
        hint: str | None = None,
    ):
        self.subject, self.reason, self.items = str(subject), reason, tuple(items)
        lines = "".join(f"\n  {item}" for item in self.items)
        super().__init__(f"{subject}: {reason}{lines}", hint=hint)


class ListenError(EnvironmentProblem):
    """The seeder could not listen on any of its interfaces (a port in use, an address not on this host)."""

    def __init__(self, interfaces: str, reasons: list[str] | tuple[str, ...]):
        self.interfaces, self.reasons = interfaces, tuple(reasons)
        super().__init__(
            f"cannot listen on {interfaces}: {'; '.join(self.reasons) or 'no socket opened'}",
            hint="choose another port with --listen, e.g. --listen 0.0.0.0:6882",
        )


class ClientError(EnvironmentProblem):
    """A torrent client's web API could not be reached, refused our login, or failed a request."""

    def __init__(self, url: str, reason: str, hint: str | None = None):
        self.url, self.reason = url, reason
        super().__init__(f"{url}: {reason}", hint=hint)


class UntrustedManifest(PackagerError):
    """A published manifest (release.json, SHA256SUMS, a .torrent listed in them) cannot be trusted: it fails
    or lacks its signature, does not parse, or contradicts another manifest. Verification refuses to go on."""

    def __init__(self, path: Path | str, reason: str, hint: str | None = None):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}", hint=hint)


class RemoteError(EnvironmentProblem):
    """A remote server (a mirror, a tracker, a seeder's status port) could not be reached in time, or sent
    a reply we refuse: too big, too slow, not what was asked for, malformed."""

    def __init__(self, url: str, reason: str, hint: str | None = None):
        self.url, self.reason = url, reason
        super().__init__(f"{url}: {reason}", hint=hint)


class FileNotAuthenticated(UntrustedManifest):
    """A published file is not the one the publication statement lists: another size or SHA-256, or not
    listed at all. `from_publication` names the earlier publication whose statement lists exactly these
    bytes (a mixed set), when the statements at hand show one."""

    def __init__(
        self,
        path: Path | str,
        publication: int,
        reason: str,
        from_publication: int | None = None,
        hint: str | None = None,
    ):
        self.publication, self.from_publication = publication, from_publication
        super().__init__(path, reason, hint=hint)


class PublicationRefused(UntrustedManifest):
    """A publication statement is refused as a whole: older than (or forked from) the one the downloader
    trusted before, expired, or not continuing its own chain. `trusted` and `seen` are publication numbers
    where they apply."""

    def __init__(
        self,
        path: Path | str,
        reason: str,
        trusted: int | None = None,
        seen: int | None = None,
        hint: str | None = None,
    ):
        self.trusted, self.seen = trusted, seen
        super().__init__(path, reason, hint=hint)


class MixedPublication(UntrustedManifest):
    """Files of a release folder are not all of the publication its statement names: some are from earlier
    publications (a mixed set, which TUF calls mix-and-match) or from none (edited). `files` pairs each such
    path with the publication whose statement lists its bytes, or None."""

    def __init__(
        self, folder: Path | str, publication: int, files: list[tuple[str, int | None]] | tuple = ()
    ):
        self.publication, self.files = publication, tuple(files)
        lines = "".join(
            f"\n  {path}: "
            + (f"from publication {n}" if n else "listed by no publication (edited, or foreign)")
            for path, n in self.files
        )
        super().__init__(
            folder,
            f"not one publication: its statement is publication {publication}, but{lines}",
            hint="fetch these files again from the publisher or from one mirror; never mix copies",
        )
