"""One shard end to end, the part every executor shares: a ShardJob in, the shard written to its ``.part``
file in one pass over the input bytes, its hashes out (ShardResult); and the events of a build.

A worker streams the shard's members from state.sqlite (its own read-only connection), writes
``shards/<name>.tar.zst.part`` through the container writer while ShardHasher hashes every output byte,
fsyncs it and returns the hashes. It never writes state.sqlite: coordinator.py does, for every executor.

An interrupted build resumes: the writer saves a checkpoint beside the ``.part`` (``.part.checkpoint``, see
container/resume.py); the next write_one continues from it once the checkpoint and the ``.part`` pass their
checks, and otherwise deletes both and starts from the first byte; either way the bytes are those of an
uninterrupted build. Unless the .part's seal (``.part.seal``) says that nothing has touched it since its
writer stopped, the kept prefix is read again and checked against the checkpoint's piece hashes while the
tail is written; the shard is handed back only once it has passed (else it is rebuilt from byte 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from .. import __version__, layout
from ..container import MemberRecord, MemberSource, write_shard
from ..container import resume as container_resume
from ..container.resume import (
    CheckpointRejected,
    Checkpoints,
    PartSeal,
    PrefixCheck,
    PrefixMismatch,
    Resume,
    SealVerdict,
    check_part,
    decode_checkpoint,
    encode_checkpoint,
    open_part_file,
    read_seal,
    rehash_tail,
    seal_verdict,
)
from ..container.writer import ResumeMismatch
from ..errors import ShardBuildError
from ..fsutil import write_atomic
from ..hashing import ShardHasher, ShardHashes
from ..state import MemberRow, State


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write one shard; small and picklable."""

    shard_id: int
    name: str
    workspace: str
    root: str
    level: int
    frame_size: int
    piece_size: int
    v2: bool
    default_mtime: int
    planned_bytes: int
    attempt: str = ""  # a cluster attempt writes its own temporary file; see cluster.py
    check_kept: bool = False  # resuming, read the kept prefix again even where its seal says it is intact

    @property
    def final_path(self) -> Path:
        return Path(self.workspace) / layout.shard_file(self.name)

    @property
    def part_path(self) -> Path:
        name = self.final_path.name
        return self.final_path.with_name(
            layout.attempt_part_name(name, self.attempt) if self.attempt else layout.part_name(name)
        )

    @property
    def checkpoint_path(self) -> Path:
        return self.part_path.with_name(layout.checkpoint_name(self.part_path.name))

    @property
    def seal_path(self) -> Path:
        return self.part_path.with_name(layout.seal_name(self.part_path.name))

    @property
    def torrent_path(self) -> Path:
        return Path(self.workspace) / layout.torrent_file(self.name)

    def key(self) -> str:
        """What a checkpoint must have been written for: everything the shard's bytes depend on, but the
        members (the writer checks those itself)."""
        fields = (self.shard_id, self.name, self.level, self.frame_size, self.piece_size, self.v2)
        return json.dumps([*fields, self.default_mtime, zstandard.ZSTD_VERSION, __version__])


@dataclass(frozen=True)
class ShardResult:
    shard_id: int
    name: str
    hashes: ShardHashes
    records: list[MemberRecord]
    frames: int
    uncompressed: int
    resumed_from: int = 0  # bytes of the .part kept from an interrupted build
    resume_rejected: str | None = None  # why a checkpoint found was not used
    kept_read_again: bool = False  # whether those bytes were read again and checked (see resume.py)
    kept: str = ""  # why, or why not: the seal's verdict ("unchanged since the build stopped", ...)


# ---- events: the library never prints; the CLI turns these into progress bars --------------------------


@dataclass(frozen=True)
class BuildPlanned:
    shards: int
    total: int  # planned content bytes of every shard to build


@dataclass(frozen=True)
class ShardStarted:
    name: str
    total: int


@dataclass(frozen=True)
class BytesDone:
    name: str
    n: int


@dataclass(frozen=True)
class ShardFinished:
    name: str
    length: int
    info_hash: str | None


@dataclass(frozen=True)
class ShardFailed:
    name: str
    reason: str


@dataclass(frozen=True)
class Resumed:
    """A shard that went on from its checkpoint: `from_byte` bytes of its .part kept, and whether they were
    read again and checked against the checkpoint (`read_again`), with the seal's verdict that decided."""

    shard: str
    from_byte: int
    read_again: bool
    why: str

    def as_dict(self) -> dict:
        return {
            "shard": self.shard,
            "from_byte": self.from_byte,
            "kept_read_again": self.read_again,
            "kept": self.why,
        }


@dataclass
class BuildReport:
    built: list[str]
    failed: list[tuple[str, str]]
    skipped: int
    recovered: list[str]
    unplanned: tuple[int, int] = (0, 0)  # (items, bytes) ingested but in no shard: `packager plan` first
    resumed: list[Resumed] = field(default_factory=list)
    restarted: list[tuple[str, str]] = field(default_factory=list)  # (shard, why its checkpoint was refused)
    in_the_way: list[str] = field(
        default_factory=list
    )  # failed shards refused for a directory (PathInTheWay)

    def as_dict(self) -> dict:
        return {
            "built": self.built,
            "failed": [{"shard": n, "reason": r} for n, r in self.failed],
            "already_built": self.skipped,
            "recovered": self.recovered,
            "unplanned": {"items": self.unplanned[0], "bytes": self.unplanned[1]},
            "resumed": [r.as_dict() for r in self.resumed],
            "restarted": [{"shard": n, "reason": r} for n, r in self.restarted],
        }


Event = BuildPlanned | ShardStarted | BytesDone | ShardFinished | ShardFailed


# ---- the shard build -------------------------------------------------------------------------------------


def _member_sources(job: ShardJob, members: Iterable[MemberRow] | None) -> Iterator[MemberSource]:
    """The shard's members in plan order: the given rows, or streamed from state.sqlite (without holding
    them all) when none are given."""
    state = None if members is not None else State(Path(job.workspace) / layout.STATE, readonly=True)
    try:
        root = Path(job.root)
        for m in members if state is None else state.iter_members(job.shard_id):
            yield MemberSource(
                id=m.id,
                path=m.path,
                kind=m.kind,
                popularity=m.popularity,
                size=m.size,
                source=root / m.path,
                mtime=job.default_mtime if m.mtime is None else m.mtime,
            )
    finally:
        if state is not None:
            state.close()


def write_one(
    job: ShardJob,
    on_progress: Callable[[int], None] | None = None,
    members: Iterable[MemberRow] | None = None,
) -> ShardResult:
    """Write one shard to its .part file, fsynced, and return its hashes: from the checkpoint of an
    interrupted build if one passes its checks (the kept prefix read again beside the writer, against the
    checkpoint's piece hashes, unless its seal says nothing touched it), else from byte 0. On a failure the
    .part and its checkpoint and seal are removed; on an interrupt (KeyboardInterrupt, SystemExit) they
    stay, for the next build.

    The one shard build shared by every executor: job in, result out, input bytes reported to
    `on_progress`. `members` (in plan order) spares a worker on another machine from reading state.sqlite."""
    job.part_path.parent.mkdir(parents=True, exist_ok=True)
    start = _resume_point(job)
    starts = [start]
    progress = _Progress(on_progress, start.prefix)
    try:
        return _write_part(job, progress, members, start)
    except (ResumeMismatch, PrefixMismatch) as exc:
        # The members differ from those the checkpoint saw, or the kept bytes from those it hashed: again
        # from byte 0, the bytes already reported taken back from the progress.
        start.stop()
        discard(job)
        progress.restart()
        starts.append(_Start(rejected=str(exc)))
        return _write_part(job, progress, members, starts[-1])
    except Exception:
        discard(job)
        raise
    finally:
        for s in starts:
            s.stop()


@dataclass
class _Start:
    """Where a shard's writing starts: a checked checkpoint (`resume`, the hasher restored to it, and the
    check of the kept prefix if it runs, with the seal's verdict in `kept`), or byte 0 (`rejected`: why a
    checkpoint found was not used); and the seal the writer keeps."""

    resume: Resume | None = None
    hasher: ShardHasher | None = None
    rejected: str | None = None
    prefix: PrefixCheck | None = None
    seal: PartSeal | None = None
    kept: str = ""

    def stop(self) -> None:
        if self.prefix is not None:
            self.prefix.cancel()
        if self.seal is not None:
            self.seal.close()


class _Progress:
    """The caller's on_progress, counting what it was told (to take it back if the shard starts again), and
    stopping the writer (it runs on the writer's calling thread) once the kept prefix is found bad."""

    def __init__(self, report: Callable[[int], None] | None, prefix: PrefixCheck | None):
        self._report, self._prefix, self._done = report, prefix, 0

    def __call__(self, n: int) -> None:
        self._done += n
        if self._report is not None:
            self._report(n)
        why = self._prefix.failure() if self._prefix is not None else None
        if why is not None:
            raise PrefixMismatch(why)

    def restart(self) -> None:
        if self._done and self._report is not None:
            self._report(-self._done)
        self._done, self._prefix = 0, None


def _write_part(
    job: ShardJob,
    on_progress: Callable[[int], None],
    members: Iterable[MemberRow] | None,
    start: _Start,
) -> ShardResult:
    resume, prefix = start.resume, start.prefix
    hasher = start.hasher or ShardHasher(job.piece_size, v2=job.v2)
    checkpoints = None
    if hasher.resumable and not job.attempt:  # no later attempt reuses a cluster attempt's own file
        key = job.key()
        if start.seal is None:  # from byte 0: every byte of the .part is this writer's
            start.seal = PartSeal(job.seal_path, armed=True)
        checkpoints = Checkpoints(
            save=lambda cp: write_atomic(job.checkpoint_path, encode_checkpoint(key, cp)),
            snapshots=hasher.snapshots,
            every_bytes=container_resume.CHECKPOINT_EVERY_BYTES,
            every_seconds=container_resume.CHECKPOINT_EVERY_SECONDS,
            seal=start.seal,
        )
    sources = _member_sources(job, members)
    with contextlib.closing(sources), open(job.part_path, "r+b" if resume else "wb") as out:
        # closing(): an interrupted generator is closed here, not by whichever thread collects it (its
        # SQLite connection belongs to this one).
        if resume is not None:
            os.ftruncate(out.fileno(), resume.checkpoint.offset)
            if start.seal is not None:
                start.seal.after(out.fileno())
        written = write_shard(
            out,
            sources,
            level=job.level,
            frame_size=job.frame_size,
            manifest_mtime=job.default_mtime,
            sinks=hasher.sinks,
            on_progress=on_progress,
            shard_name=job.name,
            checkpoints=checkpoints,
            resume=resume,
        )
        out.flush()
        os.fsync(out.fileno())
    why = prefix.wait() if prefix is not None else None
    if why is not None:
        raise PrefixMismatch(why)
    hashes = hasher.finish()
    if hashes.length != written.compressed_size:
        raise ShardBuildError(job.name, f"wrote {written.compressed_size} bytes but hashed {hashes.length}")
    return ShardResult(
        job.shard_id,
        job.name,
        hashes,
        written.records,
        written.frames,
        written.uncompressed_size,
        resume.checkpoint.offset if resume else 0,
        start.rejected,
        prefix is not None,
        start.kept,
    )


def _resume_point(job: ShardJob) -> _Start:
    """The checked checkpoint of an interrupted build of `job`, the hasher restored to it, and the check of
    the kept prefix started unless the seal says nothing has touched the .part since its writer stopped;
    or, if there is no checkpoint or it fails a check, a start from byte 0 (with why), the .part and
    checkpoint removed. PathInTheWay if a directory is where the build puts one of its files."""
    part, saved = job.part_path, job.checkpoint_path
    for path in (part, saved, job.final_path, job.torrent_path):
        _refuse_directory(job, path)
    if job.attempt or not os.path.lexists(saved):
        part.unlink(missing_ok=True)
        return _Start()
    seal = None
    try:
        fd = open_part_file(saved)
        try:
            data = os.read(fd, container_resume.MAX_CHECKPOINT_BYTES + 1)
        finally:
            os.close(fd)
        cp = decode_checkpoint(data, job.key())
        fd = open_part_file(part)
        try:
            # Before anything writes the .part: its fstat now against the seal of its last write.
            if job.check_kept:
                kept = SealVerdict(False, "not taken on trust (--check-kept)")
            else:
                kept = seal_verdict(read_seal(job.seal_path), os.fstat(fd))
            resume = check_part(fd, cp, job.frame_size - job.frame_size % 512)
            hasher = ShardHasher.resumed(job.piece_size, job.v2, cp.offset, cp.sink_states)
            pieces = ShardHasher.prefix_check(job.piece_size, cp.offset, cp.sink_states)
            rehash_tail(fd, hasher.piece_start(cp.offset), cp.offset, hasher.piece_sinks)
            if hasher.pieces.partial() != cp.sink_states[1][-20:]:
                raise CheckpointRejected("the unfinished piece before the checkpoint is not what it recorded")
        finally:
            os.close(fd)
        # Armed now only if the kept bytes are known good; else once the check below has passed.
        seal = PartSeal(job.seal_path, armed=kept.intact)
        prefix = None
        if not kept.intact:
            check = pieces

            def passed() -> None:
                check.finish()
                seal.arm()

            prefix = PrefixCheck(open_part_file(part), cp.offset, check.update, passed)
    except (CheckpointRejected, ValueError, OSError) as exc:
        if seal is not None:
            seal.close()
        discard(job)
        why = str(exc) if isinstance(exc, CheckpointRejected) else f"{type(exc).__name__}: {exc}"
        return _Start(rejected=why)
    return _Start(resume, hasher, None, prefix, seal, kept.why)


class PathInTheWay(ShardBuildError):
    """A directory where the build writes one of its own files (the .part, its checkpoint, the shard, its
    .torrent): someone else's, so it is neither deleted nor written over, and the shard is not built."""

    def __init__(self, shard: str, path: Path):
        super().__init__(
            shard,
            f"{path.name} in {path.parent} is a directory, where the build keeps a file of its own; "
            "move it away, then build again",
            str(path),
        )


def _refuse_directory(job: ShardJob, path: Path) -> None:
    """Checked before the work: a directory found at the torrent's name only after the shard was written
    cost the shard (the failure discards the .part)."""
    try:
        is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        raise PathInTheWay(job.name, path)


def discard(job: ShardJob) -> None:
    """Remove the shard's .part, its checkpoint and its seal (a failed shard, or a checkpoint that failed a
    check); a directory in their place is not packager's, and stays."""
    for path in (job.part_path, job.checkpoint_path, job.seal_path):
        unlink_file(path)


def unlink_file(path: Path) -> None:
    """Remove `path` if it is there and not a directory (a directory is someone else's)."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        path.unlink()
