"""Build shards: one pass over each shard's input bytes, a .torrent from the recorded hashes, resumable.

A shard is the unit of work (shard.py); the coordinator (coordinator.py) alone writes state.sqlite and
settles each shard; an executor runs many: a local process pool (local.py) or a Dask cluster (cluster.py).
"""

from __future__ import annotations

from collections.abc import Callable

# The module, not its function: cluster.py imports this package's modules, and whichever of the two is
# imported first, the other is then found in sys.modules.
from .. import cluster
from ..errors import EnvironmentProblem, UsageError, WorkspaceError
from ..workspace import Workspace
from .coordinator import (
    Coordinator,
    TorrentMade,
    make_torrent,
    plan_jobs,
    recover,
    remake_torrents,
    torrent_spec,
)
from .local import build_inline, build_pool, default_jobs
from .shard import (
    BuildPlanned,
    BuildReport,
    BytesDone,
    Event,
    Resumed,
    ShardFailed,
    ShardFinished,
    ShardJob,
    ShardResult,
    ShardStarted,
    write_one,
)

__all__ = [
    "BuildPlanned",
    "BuildReport",
    "BytesDone",
    "Event",
    "Resumed",
    "ShardFailed",
    "ShardFinished",
    "ShardJob",
    "ShardResult",
    "ShardStarted",
    "TorrentMade",
    "build",
    "default_jobs",
    "make_torrent",
    "plan_jobs",
    "remake_torrents",
    "torrent_spec",
    "write_one",
]


def build(
    ws: Workspace,
    jobs_count: int = 0,
    phase: str | None = None,
    on_event: Callable[[Event], None] = lambda e: None,
    scheduler: str | None = None,
    check_kept: bool = False,
) -> BuildReport:
    """Build every planned (or previously failed) shard. Failures are per shard; the others still finish.

    With `scheduler` (a Dask scheduler's address) the shards are built on that cluster (cluster.py), and
    `jobs_count` bounds the shards in flight per worker thread; without, in a local process pool. With
    `check_kept`, a shard resumed from its checkpoint has its kept prefix read again and checked even
    where its seal says nothing touched it (container/resume.py)."""
    if not ws.config.root.is_dir():
        raise WorkspaceError(f"{ws.config.root}: the archive root is not there", hint="check release.root")
    if jobs_count < 0:
        raise UsageError(f"--jobs {jobs_count}: must be 0 (one per two cores) or more")
    with ws.locked("build"):
        return _build_locked(ws, jobs_count, phase, on_event, scheduler, check_kept)


def _build_locked(
    ws: Workspace,
    jobs_count: int,
    phase: str | None,
    on_event,
    scheduler: str | None = None,
    check_kept: bool = False,
) -> BuildReport:
    recovered = recover(ws)
    todo = plan_jobs(ws, phase, check_kept)
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
    coordinator = Coordinator(ws, report, on_event)
    if scheduler is not None:
        cluster.build_on_cluster(coordinator, todo, scheduler, jobs_count)
        return report
    workers = jobs_count or default_jobs()
    if workers == 1 or len(todo) == 1:
        build_inline(coordinator, todo)
    else:
        try:
            build_pool(coordinator, todo, min(workers, len(todo)))
        except (BrokenPipeError, ConnectionError) as e:  # the pool's own pipes, not a shard's files
            raise EnvironmentProblem(
                f"cannot run build workers: {e}", hint="retry; with --jobs 1 no worker process is used"
            ) from None
    return report
