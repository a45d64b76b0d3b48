"""Build shards: one pass over each shard's input bytes, a .torrent from the recorded hashes, resumable.

A shard is the unit of work. A worker streams the shard's members from state.sqlite (its own read-only
connection), writes ``shards/<name>.tar.zst.part`` through the container writer while ShardHasher hashes every
output byte, fsyncs it and returns the hashes. Only the coordinating process writes state.sqlite. It
finishes a shard in this order, so that a kill at any moment leaves either no trace or a state it completes:

1. write ``torrents/<name>.torrent`` (atomic rename; identical bytes if it is ever rewritten);
2. one transaction records the build, the member records and the torrent, and marks the shard built;
3. rename ``.part`` into place and fsync the folder.

At the next start, a shard that is built but whose file is still ``.part`` (killed between 2 and 3) is
renamed after a size and SHA-256 check. A planned shard's ``.part`` resumes from the checkpoint saved
beside it (``.part.checkpoint``, see container/resume.py) once that checkpoint and the ``.part`` pass their
checks, and is otherwise deleted and the shard rebuilt from its first byte; either way the bytes are those
of an uninterrupted build. A shard whose final file exists is never written again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import layout
from .config import Phase, ReleaseConfig
from .container import MemberRecord, MemberSource, write_shard
from .container import resume as container_resume
from .container.resume import (
    CheckpointRejected,
    Checkpoints,
    Resume,
    check_part,
    decode_checkpoint,
    encode_checkpoint,
    rehash_tail,
)
from .container.writer import ResumeMismatch
from .errors import EnvironmentProblem, PackagerError, ShardBuildError, UsageError, WorkspaceError
from .fsutil import file_sha256, fsync_dir, write_atomic
from .hashing import ShardHasher, ShardHashes
from .state import MemberRow, ShardRow, State
from .workspace import Workspace

# torrent.py (and so libtorrent, 0.3 s to import) is imported only on the coordinator's side, so that the
# spawned build workers start fast.


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

    def key(self) -> str:
        """What a checkpoint must have been written for: everything the shard's bytes depend on, but the
        members (the writer checks those itself)."""
        import zstandard

        from . import __version__

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


@dataclass
class BuildReport:
    built: list[str]
    failed: list[tuple[str, str]]
    skipped: int
    recovered: list[str]
    unplanned: tuple[int, int] = (0, 0)  # (items, bytes) ingested but in no shard: `packager plan` first
    resumed: list[tuple[str, int]] = field(default_factory=list)  # (shard, bytes kept from its .part)
    restarted: list[tuple[str, str]] = field(default_factory=list)  # (shard, why its checkpoint was refused)

    def as_dict(self) -> dict:
        return {
            "built": self.built,
            "failed": [{"shard": n, "reason": r} for n, r in self.failed],
            "already_built": self.skipped,
            "recovered": self.recovered,
            "unplanned": {"items": self.unplanned[0], "bytes": self.unplanned[1]},
            "resumed": [{"shard": n, "from_byte": b} for n, b in self.resumed],
            "restarted": [{"shard": n, "reason": r} for n, r in self.restarted],
        }


Event = BuildPlanned | ShardStarted | BytesDone | ShardFinished | ShardFailed


# ---- the worker side -------------------------------------------------------------------------------------


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
    interrupted build if one passes its checks, else from byte 0. On a failure the .part and its
    checkpoint are removed; on an interrupt (KeyboardInterrupt, SystemExit) they stay, for the next build.

    The one shard build shared by every executor: job in, result out, input bytes reported to
    `on_progress`. `members` (in plan order) spares a worker on another machine from reading state.sqlite."""
    job.part_path.parent.mkdir(parents=True, exist_ok=True)
    resume, hasher, rejected = _resume_point(job)
    try:
        return _write_part(job, on_progress, members, resume, hasher, rejected)
    except ResumeMismatch as exc:  # the members differ from those the checkpoint saw: start again
        _discard(job)
        return _write_part(job, on_progress, members, None, None, str(exc))
    except Exception:
        _discard(job)
        raise


def _write_part(
    job: ShardJob,
    on_progress: Callable[[int], None] | None,
    members: Iterable[MemberRow] | None,
    resume: Resume | None,
    hasher: ShardHasher | None,
    rejected: str | None,
) -> ShardResult:
    hasher = hasher or ShardHasher(job.piece_size, v2=job.v2)
    checkpoints = None
    if hasher.resumable and not job.attempt:  # no later attempt reuses a cluster attempt's own file
        key = job.key()
        checkpoints = Checkpoints(
            save=lambda cp: write_atomic(job.checkpoint_path, encode_checkpoint(key, cp)),
            snapshots=hasher.snapshots,
            every_bytes=container_resume.CHECKPOINT_EVERY_BYTES,
            every_seconds=container_resume.CHECKPOINT_EVERY_SECONDS,
        )
    sources = _member_sources(job, members)
    with contextlib.closing(sources), open(job.part_path, "r+b" if resume else "wb") as out:
        # closing(): an interrupted generator is closed here, not by whichever thread collects it (its
        # SQLite connection belongs to this one).
        if resume is not None:
            os.ftruncate(out.fileno(), resume.checkpoint.offset)
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
        rejected,
    )


def _resume_point(job: ShardJob) -> tuple[Resume | None, ShardHasher | None, str | None]:
    """The checked checkpoint of an interrupted build of `job` and the hasher restored to it; or, if there
    is none or it fails a check, (None, None, why) with the .part and checkpoint removed."""
    part, saved = job.part_path, job.checkpoint_path
    if job.attempt or not saved.exists():
        part.unlink(missing_ok=True)
        return None, None, None
    try:
        fd = _open_regular(saved)
        try:
            data = os.read(fd, container_resume.MAX_CHECKPOINT_BYTES + 1)
        finally:
            os.close(fd)
        cp = decode_checkpoint(data, job.key())
        fd = _open_regular(part)
        try:
            resume = check_part(fd, cp, job.frame_size - job.frame_size % 512)
            hasher = ShardHasher.resumed(job.piece_size, job.v2, cp.offset, cp.sink_states)
            rehash_tail(fd, hasher.piece_start(cp.offset), cp.offset, hasher.piece_sinks)
        finally:
            os.close(fd)
    except (CheckpointRejected, ValueError, OSError) as exc:
        _discard(job)
        why = str(exc) if isinstance(exc, CheckpointRejected) else f"{type(exc).__name__}: {exc}"
        return None, None, why
    return resume, hasher, None


def _open_regular(path: Path) -> int:
    """A read-only descriptor of `path` if it is a regular file (not a FIFO that blocks, nor a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointRejected(f"{path.name} is not a regular file")
    return fd


def _discard(job: ShardJob) -> None:
    job.part_path.unlink(missing_ok=True)
    job.checkpoint_path.unlink(missing_ok=True)


_progress_queue: multiprocessing.Queue | None = None


def _init_worker(q: multiprocessing.Queue) -> None:
    global _progress_queue
    _progress_queue = q
    parent = os.getppid()

    def watch_parent() -> None:
        # A killed coordinator (kill -9, OOM) would otherwise leave its workers blocked forever, maybe
        # still writing a .part that the next build wants.
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()


def _write_in_worker(job: ShardJob) -> ShardResult:
    q = _progress_queue
    assert q is not None
    q.put(ShardStarted(job.name, job.planned_bytes))
    return write_one(job, lambda n: q.put(BytesDone(job.name, n)))


# ---- the coordinator side --------------------------------------------------------------------------------


def torrent_spec(config: ReleaseConfig, name: str, fmt: str, hashes: ShardHashes):
    from . import __version__
    from .torrent import TorrentSpec, web_seed_url

    file_name = layout.shard_file_name(name)
    return TorrentSpec(
        name=file_name,
        hashes=hashes,
        format=fmt,
        trackers=config.trackers,
        web_seeds=tuple(web_seed_url(base, file_name) for base in config.web_seeds),
        private=config.private,
        source=config.source,
        created_by=f"packager {__version__}",
        creation_date=config.creation_date,
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_torrent(
    ws: Workspace, shard_id: int, name: str, fmt: str, hashes: ShardHashes
) -> tuple[str | None, str | None, str]:
    """Write the shard's .torrent from recorded hashes and record it; (v1 hash, v2 hash, magnet)."""
    from .torrent import build_metainfo, identity, write_torrent

    metainfo = build_metainfo(torrent_spec(ws.config, name, fmt, hashes))
    ident = identity(metainfo)
    ws.torrents_dir.mkdir(exist_ok=True)
    write_torrent(ws.torrent_path(name), metainfo)
    ws.state.record_torrent(
        shard_id,
        layout.torrent_file(name),
        fmt,
        ident.info_hash_v1,
        ident.info_hash_v2,
        ident.magnet,
        hashlib.sha256(metainfo).hexdigest(),
        len(metainfo),
        _now(),
    )
    return ident.info_hash_v1, ident.info_hash_v2, ident.magnet


@dataclass(frozen=True)
class TorrentMade:
    shard: str
    format: str
    info_hash_v1: str | None
    info_hash_v2: str | None
    magnet: str

    def as_dict(self) -> dict:
        return asdict(self)


def remake_torrents(ws: Workspace, phase: str | None = None) -> list[TorrentMade]:
    """Re-create the .torrent of every built shard from its recorded hashes (no read of the shards), e.g.
    after trackers or web seeds changed: those sit outside the info dict, so the info-hashes stay."""
    config, state = ws.config, ws.state
    if phase is not None:
        config.phase(phase)
    made = []
    for row in state.shards(phase=phase, state="built"):
        hashes = state.build_hashes(row.id)
        fmt = config.phase(row.phase).format
        with state.transaction():
            v1, v2, magnet = make_torrent(ws, row.id, row.name, fmt, hashes)
        made.append(TorrentMade(row.name, fmt, v1, v2, magnet))
    return made


def _recover(ws: Workspace) -> list[str]:
    """Complete renames interrupted after the commit; delete .part files of shards that are not built."""
    state = ws.state
    recovered: list[str] = []
    shards_dir = ws.shards_dir
    shards_dir.mkdir(exist_ok=True)
    built = {row[0]: row for row in state.built_files()}
    for stale in shards_dir.glob(".*.tmp"):  # an atomic write killed midway; nothing else runs here
        stale.unlink(missing_ok=True)
    for part in sorted(shards_dir.glob(layout.part_name("*" + layout.SHARD_SUFFIX))):
        final = part.with_name(part.name[: -len(layout.PART_SUFFIX)])
        rel = f"{layout.SHARDS}/{final.name}"
        if rel in built and not final.exists():
            _, length, sha256 = built[rel]
            if part.stat().st_size == length and file_sha256(part) == sha256:
                os.replace(part, final)
                fsync_dir(shards_dir)
                recovered.append(final.name)
                continue
            state.mark_unbuilt(rel)
        elif rel not in built and part.with_name(layout.checkpoint_name(part.name)).exists():
            continue  # an interrupted build: write_one resumes it, or starts it again, after its checks
        part.unlink()
    for stale in shards_dir.glob(layout.attempt_part_glob("*" + layout.SHARD_SUFFIX)):
        if layout.attempt_part_of(stale.name):  # a cluster attempt that never settled
            stale.unlink(missing_ok=True)
    for checkpoint in shards_dir.glob(layout.checkpoint_name("*" + layout.PART_SUFFIX)):
        if not checkpoint.with_name(checkpoint.name[: -len(layout.CHECKPOINT_SUFFIX)]).exists():
            checkpoint.unlink()  # its .part is gone (built, or discarded above)
    for rel, _, _ in built.values():
        if not ws.file(rel).exists():
            state.mark_unbuilt(rel)
    for row in state.shards():
        if row.state != "built":  # a torrent written just before a kill, for a shard that never landed
            ws.torrent_path(row.name).unlink(missing_ok=True)
    return recovered


def plan_jobs(ws: Workspace, phase: str | None) -> list[tuple[ShardJob, str]]:
    """(job, torrent format) for every planned or failed shard, optionally of one phase."""
    config = ws.config
    if phase is not None:
        config.phase(phase)  # raises ConfigError naming the phases
    jobs = []
    for row in ws.state.shards(phase=phase):
        if row.state == "built":
            continue
        p = config.phase(row.phase)
        jobs.append((_job(ws, p, row), p.format))
    return jobs


def _job(ws: Workspace, phase: Phase, row: ShardRow) -> ShardJob:
    from .torrent import piece_size_for

    return ShardJob(
        shard_id=row.id,
        name=row.name,
        workspace=str(ws.path),
        root=str(ws.config.root),
        level=phase.level,
        frame_size=phase.frame_size,
        piece_size=phase.piece_size or piece_size_for(row.bytes),
        v2=phase.format in ("hybrid", "v2"),
        default_mtime=ws.config.mtime,
        planned_bytes=row.bytes,
    )


def default_jobs() -> int:
    """One shard at a time per two cores: a shard writer keeps about 1.8 cores busy on its own (reading and
    compressing, member hashes, output hashes and writing run on four threads), so one writer per core only
    adds contention. Measured with bench.py build on 2 cores: --jobs 1 2.65-2.75 s, --jobs 2 2.71-2.96 s."""
    return max(1, (os.cpu_count() or 2) // 2)


def build(
    ws: Workspace,
    jobs_count: int = 0,
    phase: str | None = None,
    on_event: Callable[[Event], None] = lambda e: None,
    scheduler: str | None = None,
) -> BuildReport:
    """Build every planned (or previously failed) shard. Failures are per shard; the others still finish.

    With `scheduler` (a Dask scheduler's address) the shards are built on that cluster (cluster.py), and
    `jobs_count` bounds the shards in flight per worker thread; without, in a local process pool."""
    if not ws.config.root.is_dir():
        raise WorkspaceError(f"{ws.config.root}: the archive root is not there", hint="check release.root")
    if jobs_count < 0:
        raise UsageError(f"--jobs {jobs_count}: must be 0 (one per core) or more")
    with ws.locked("build"):
        return _build_locked(ws, jobs_count, phase, on_event, scheduler)


def _build_locked(
    ws: Workspace, jobs_count: int, phase: str | None, on_event, scheduler: str | None = None
) -> BuildReport:
    recovered = _recover(ws)
    todo = plan_jobs(ws, phase)
    shards = ws.state.shards(phase=phase)
    skipped = len([s for s in shards if s.state == "built"])
    counts = ws.state.unassigned_counts()
    unplanned = (sum(n for _, n, _ in counts), sum(b for _, _, b in counts))
    if not shards and unplanned[0]:
        raise UsageError(
            f"{ws.path}: nothing to build: {unplanned[0]} ingested items are not planned into shards yet",
            hint=f"run `packager plan {ws.path}` first, then build",
        )
    report = BuildReport(built=[], failed=[], skipped=skipped, recovered=recovered, unplanned=unplanned)
    if not todo:
        return report
    ws.shards_dir.mkdir(exist_ok=True)
    on_event(BuildPlanned(len(todo), sum(job.planned_bytes for job, _ in todo)))
    coordinator = _Coordinator(ws, report, on_event)
    if scheduler is not None:
        from .cluster import build_on_cluster  # distributed is heavy and optional

        build_on_cluster(coordinator, todo, scheduler, jobs_count)
        return report
    workers = jobs_count or default_jobs()
    if workers == 1 or len(todo) == 1:
        _build_inline(coordinator, todo)
    else:
        try:
            _build_pool(coordinator, todo, min(workers, len(todo)))
        except (BrokenPipeError, ConnectionError) as e:  # the pool's own pipes, not a shard's files
            raise EnvironmentProblem(
                f"cannot run build workers: {e}", hint="retry; with --jobs 1 no worker process is used"
            ) from None
    return report


# Input-side errors come wrapped as ShardBuildError, so a raw OSError with one of these is the output side.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class _Coordinator:
    """The only writer of state.sqlite during a build: it settles each shard a worker returns (or fails)."""

    def __init__(self, ws: Workspace, report: BuildReport, on_event: Callable[[Event], None]):
        self.ws, self.report, self.on_event = ws, report, on_event

    def settle(
        self, job: ShardJob, fmt: str, result: ShardResult | None, error: BaseException | None
    ) -> None:
        if error is None:
            try:
                ih = self._finish(job, fmt, result)
            except Exception as e:  # noqa: BLE001 - one shard's failure must not abandon the others
                error = e
            else:
                self.report.built.append(job.name)
                self.on_event(ShardFinished(job.name, result.hashes.length, ih))
                return
        _discard(job)
        self.ws.torrent_path(job.name).unlink(missing_ok=True)  # no finished-looking torrent without data
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            # The output side is full or read-only: every other shard would fail the same way.
            raise EnvironmentProblem(
                f"{error.filename or self.ws.path}: {error.strerror}",
                hint="free space (or make the workspace writable), then run build again; "
                "built shards are kept",
            ) from None
        reason = error.message if isinstance(error, PackagerError) else f"{type(error).__name__}: {error}"
        if isinstance(error, ShardBuildError):
            reason = f"{error.reason}" + (f" ({error.path})" if error.path else "")
        self.ws.state.mark_failed(job.shard_id, reason)
        self.report.failed.append((job.name, reason))
        self.on_event(ShardFailed(job.name, reason))

    def _finish(self, job: ShardJob, fmt: str, result: ShardResult) -> str | None:
        h, state = result.hashes, self.ws.state
        rel = layout.shard_file(job.name)
        with state.transaction():
            state.record_build(
                job.shard_id, rel, h, result.frames, result.uncompressed, _now(), result.records
            )
            v1, v2, _ = make_torrent(self.ws, job.shard_id, job.name, fmt, h)
        os.replace(job.part_path, job.final_path)
        fsync_dir(job.final_path.parent)
        job.checkpoint_path.unlink(missing_ok=True)
        if result.resumed_from:
            self.report.resumed.append((job.name, result.resumed_from))
        if result.resume_rejected:
            self.report.restarted.append((job.name, result.resume_rejected))
        return v1 or v2


def _build_inline(coordinator: _Coordinator, todo: list[tuple[ShardJob, str]]) -> None:
    on_event = coordinator.on_event
    for job, fmt in todo:
        on_event(ShardStarted(job.name, job.planned_bytes))
        try:
            result = write_one(job, lambda n, name=job.name: on_event(BytesDone(name, n)))
        except Exception as e:  # noqa: BLE001 - settled per shard
            coordinator.settle(job, fmt, None, e)
        else:
            coordinator.settle(job, fmt, result, None)


def _build_pool(coordinator: _Coordinator, todo: list[tuple[ShardJob, str]], workers: int) -> None:
    # spawn, not fork: the coordinator runs threads (progress display, queue feeder) that fork would copy
    # in an arbitrary state.
    ctx = multiprocessing.get_context("spawn")
    progress: multiprocessing.Queue = ctx.Queue()
    stop = threading.Event()
    on_event = coordinator.on_event

    def pump() -> None:
        while not stop.is_set():
            try:
                on_event(progress.get(timeout=0.1))
            except queue.Empty:
                continue

    pumper = threading.Thread(target=pump, name="progress-pump", daemon=True)
    pumper.start()
    try:
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(progress,)
        ) as pool:
            pending: dict[Future, tuple[ShardJob, str]] = {}
            queue_jobs = list(todo)
            while queue_jobs or pending:
                while queue_jobs and len(pending) < workers * 2:
                    job, fmt = queue_jobs.pop(0)
                    pending[pool.submit(_write_in_worker, job)] = (job, fmt)
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job, fmt = pending.pop(fut)
                    error = fut.exception()
                    if isinstance(error, BrokenProcessPool):
                        raise EnvironmentProblem(
                            f"a build worker died ({error})", hint="retry; with --jobs 1 no worker is used"
                        )
                    coordinator.settle(job, fmt, None if error else fut.result(), error)
    finally:
        stop.set()
        pumper.join()
        while True:  # deliver the last progress events
            try:
                on_event(progress.get_nowait())
            except (queue.Empty, OSError, ValueError):
                break
