"""The coordinating side of a build, the only writer of state.sqlite whatever the executor: the jobs to run,
the recovery of an interrupted build, and the settling of each shard an executor hands back.

It finishes a shard in this order, so that a kill at any moment leaves either no trace or a state it
completes:

1. write ``torrents/<name>.torrent`` (atomic rename; identical bytes if it is ever rewritten);
2. one transaction records the build, the member records and the torrent, and marks the shard built;
3. rename ``.part`` into place and fsync the folder.

At the next start, a shard that is built but whose file is still ``.part`` (killed between 2 and 3) is
renamed after a size and SHA-256 check. A planned shard's ``.part`` is kept when a checkpoint lies beside it
(write_one resumes from it, or starts again, after its checks, see shard.py) and is otherwise deleted; a
checkpoint or seal whose ``.part`` is gone is deleted. A shard whose final file exists is never written
again.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from .. import __version__, layout
from ..config import Phase, ReleaseConfig
from ..errors import EnvironmentProblem, PackagerError, ShardBuildError
from ..fsutil import file_sha256, fsync_dir
from ..hashing import ShardHashes
from ..state import ShardRow
from ..torrent import TorrentSpec, build_metainfo, identity, piece_size_for, web_seed_url, write_torrent
from ..workspace import Workspace
from .shard import (
    BuildReport,
    Event,
    PathInTheWay,
    Resumed,
    ShardFailed,
    ShardFinished,
    ShardJob,
    ShardResult,
    discard,
    unlink_file,
)


def torrent_spec(config: ReleaseConfig, name: str, fmt: str, hashes: ShardHashes):
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
    spec = torrent_spec(ws.config, name, fmt, hashes)
    metainfo = build_metainfo(spec)
    ident = identity(spec)  # from the spec: the metainfo read back would need libtorrent (0.3 s cold)
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


def recover(ws: Workspace) -> list[str]:
    """Complete renames interrupted after the commit; delete .part files of shards that are not built."""
    state = ws.state
    recovered: list[str] = []
    shards_dir = ws.shards_dir
    shards_dir.mkdir(exist_ok=True)
    built = {row[0]: row for row in state.built_files()}
    for stale in shards_dir.glob(".*.tmp"):  # an atomic write killed midway; nothing else runs here
        if not _is_directory(stale):
            stale.unlink(missing_ok=True)
    for part in sorted(shards_dir.glob(layout.part_name("*" + layout.SHARD_SUFFIX))):
        if _is_directory(part):
            continue  # not packager's: its shard's build refuses it (shard.py) and leaves it be
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
        elif rel not in built and os.path.lexists(part.with_name(layout.checkpoint_name(part.name))):
            # lexists: a checkpoint that is a dangling symlink is refused, and said, by write_one
            continue  # an interrupted build: write_one resumes it, or starts it again, after its checks
        part.unlink()
    for stale in shards_dir.glob(layout.attempt_part_glob("*" + layout.SHARD_SUFFIX)):
        if layout.attempt_part_of(stale.name) and not _is_directory(stale):  # an attempt never settled
            stale.unlink(missing_ok=True)
    sidecars = [
        (layout.checkpoint_name("*" + layout.PART_SUFFIX), layout.CHECKPOINT_SUFFIX),
        (layout.seal_name("*" + layout.PART_SUFFIX), layout.SEAL_SUFFIX),
    ]
    for pattern, suffix in sidecars:
        for sidecar in shards_dir.glob(pattern):
            part = sidecar.with_name(sidecar.name[: -len(suffix)])
            if not _is_directory(sidecar) and not os.path.lexists(part):
                sidecar.unlink()  # its .part is gone (built, or discarded above)
    for rel, _, _ in built.values():
        if not ws.file(rel).exists():
            state.mark_unbuilt(rel)
    for row in state.shards():
        if row.state != "built":  # a torrent written just before a kill, for a shard that never landed
            unlink_file(ws.torrent_path(row.name))  # a directory there: its shard's build refuses it
    return recovered


def _is_directory(path) -> bool:
    return path.is_dir() and not path.is_symlink()


def plan_jobs(ws: Workspace, phase: str | None, check_kept: bool = False) -> list[tuple[ShardJob, str]]:
    """(job, torrent format) for every planned or failed shard, optionally of one phase; `check_kept`:
    a resumed shard's kept prefix is read again and checked even where its seal says it is intact."""
    config = ws.config
    if phase is not None:
        config.phase(phase)  # raises ConfigError naming the phases
    jobs = []
    for row in ws.state.shards(phase=phase):
        if row.state == "built":
            continue
        p = config.phase(row.phase)
        jobs.append((_job(ws, p, row, check_kept), p.format))
    return jobs


def _job(ws: Workspace, phase: Phase, row: ShardRow, check_kept: bool = False) -> ShardJob:
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
        check_kept=check_kept,
    )


# Input-side errors come wrapped as ShardBuildError, so a raw OSError with one of these is the output side.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class Coordinator:
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
        discard(job)
        unlink_file(self.ws.torrent_path(job.name))  # no finished-looking torrent without data
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
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
        if isinstance(error, PathInTheWay):
            self.report.in_the_way.append(job.name)
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
        unlink_file(job.seal_path)  # a directory there is someone else's (the seal was then not written)
        if result.resumed_from:
            resumed = Resumed(job.name, result.resumed_from, result.kept_read_again, result.kept)
            self.report.resumed.append(resumed)
        if result.resume_rejected:
            self.report.restarted.append((job.name, result.resume_rejected))
        return v1 or v2
