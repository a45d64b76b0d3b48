"""What to seed: the published torrents of a workspace with their shard files, checked before they are added;
and the opentracker whitelist of those torrents."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import layout
from ..errors import EnvironmentProblem, TorrentError, UsageError
from ..fsutil import write_atomic
from ..hashing import swarm_hashes
from ..manifest import whitelist_hashes as manifest_whitelist_hashes
from ..state import State
from ..torrent import read_torrent
from ..workspace import Workspace


@dataclass(frozen=True)
class SeedTorrent:
    """A published torrent and its data file (a shard, or the member index's pack), with absolute paths."""

    shard_id: int
    name: str
    phase: str
    data: Path  # the shard file
    length: int | None  # recorded at build time; None if the shard is no longer built
    torrent: Path
    info_hash_v1: str | None
    info_hash_v2: str | None  # full 64 hex

    @property
    def is_index(self) -> bool:
        """The member index's own torrent (its data is members/members.pack, not a shard)."""
        return self.shard_id == 0

    @property
    def key(self) -> str:
        """The name of its resume file and its row in seed_torrents: the v1 info-hash, else the v2 one."""
        return self.info_hash_v1 or self.info_hash_v2 or ""

    @property
    def swarm_hashes(self) -> tuple[str, ...]:
        """What trackers see: the v1 info-hash and the v2 one truncated to 20 bytes (BEP 52)."""
        return swarm_hashes(self.info_hash_v1, self.info_hash_v2)


@dataclass(frozen=True)
class SeedProblem:
    """A torrent that is not seeded, and why."""

    name: str
    info_hash: str
    reason: str


def published_torrents(ws: Workspace, phases: Sequence[str] | None = None) -> list[SeedTorrent]:
    """Every published torrent of the given phases (default: all published phases), in release order;
    with all phases, the member index's own torrent last."""
    check_published(ws.state, phases)
    folder = ws.path.resolve()
    rows = ws.state.seedable(list(phases) if phases else None)
    index = [] if phases else [t for t in (index_torrent(ws),) if t is not None]
    return [
        SeedTorrent(
            r.shard_id,
            r.name,
            r.phase,
            folder / (r.file or layout.shard_file(r.name)),
            r.length,
            folder / r.torrent_file,
            r.info_hash_v1,
            r.info_hash_v2,
        )
        for r in rows
    ] + index


INDEX_NAME = "member index"  # how the index's torrent shows among the seeded ones


def index_torrent(ws: Workspace) -> SeedTorrent | None:
    """The member index's torrent as published (its pack in published/members/), or None before the first
    publish. Its .torrent is the workspace's torrents/members.torrent when `packager torrent` re-made it
    for the published pack (same info-hash, the current trackers), else the published copy. shard_id 0:
    it belongs to no shard."""
    published = ws.published_dir.resolve()
    path = published / layout.MEMBER_INDEX_TORRENT
    if not path.is_file():
        return None
    info = read_torrent(path)
    remade = ws.path.resolve() / layout.MEMBER_INDEX_TORRENT
    try:
        if remade.is_file() and read_torrent(remade).info_hash_v1 == info.info_hash_v1:
            path = remade
    except TorrentError:
        pass  # a damaged copy in the workspace: the published one is used
    return SeedTorrent(
        0,
        INDEX_NAME,
        INDEX_NAME,
        published / layout.MEMBER_INDEX_PACK,
        info.size,
        path,
        info.info_hash_v1,
        None,
    )


def check_published(state: State, phases: Sequence[str] | None) -> None:
    """UsageError unless something is published and every phase asked for is."""
    published = [phase for phase, _ in state.publications()]
    if not published:
        raise UsageError(
            "nothing is published yet", hint="publish a phase first: packager publish DIR --phase NAME"
        )
    unknown = [p for p in phases or () if p not in published]
    if unknown:
        raise UsageError(
            f"phase {unknown[0]!r} is not published", hint=f"published phases: {', '.join(published)}"
        )


def check_files(torrents: Iterable[SeedTorrent]) -> tuple[list[SeedTorrent], list[SeedProblem]]:
    """(torrents whose .torrent and shard file exist with the recorded length, problems of the others)."""
    ready, problems = [], []
    for t in torrents:
        reason = None
        if t.length is None:
            reason = "the shard is not built (its file went missing since the build)"
        elif not t.torrent.is_file():
            reason = f"{t.torrent}: the .torrent file is missing"
        else:
            try:
                size = t.data.stat().st_size
            except FileNotFoundError:
                reason = f"{t.data}: missing"
            except OSError as e:
                reason = f"{t.data}: {e.strerror or e}"
            else:
                if size != t.length:
                    which = "too short" if size < t.length else "too long"
                    reason = f"{t.data}: {which}: {size} instead of {t.length} bytes"
        if reason is None:
            ready.append(t)
        else:
            problems.append(SeedProblem(t.name, t.key, reason))
    return ready, problems


def whitelist_hashes(ws: Workspace, phases: Sequence[str] | None = None) -> list[str]:
    """opentracker's whitelist: the v1 info-hash and the truncated v2 info-hash of each published torrent."""
    check_published(ws.state, phases)
    rows: list = list(ws.state.seedable(list(phases) if phases else None))
    index = index_torrent(ws) if not phases else None
    return manifest_whitelist_hashes(rows + ([index] if index is not None else []))


def write_whitelist(path: Path, hashes: Iterable[str]) -> int:
    """Write one hash per line, atomically (opentracker may re-read it at any SIGHUP). The number written."""
    lines = [f"{h}\n" for h in hashes]
    try:
        write_atomic(Path(path), "".join(lines).encode())
    except OSError as e:
        raise EnvironmentProblem(f"{path}: cannot write: {e.strerror or e}") from e
    return len(lines)
