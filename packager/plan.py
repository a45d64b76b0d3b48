"""Tiering and append-only shard assignment.

Within each phase and tier, unassigned items are taken in (popularity desc, id asc) order and cut greedily:
a shard takes items while they fit in the phase's shard size; an item larger than the shard size gets a
shard of its own. Existing shards are never touched: new items only ever open new shards with higher
sequence numbers. The ordering is done by SQLite into a temporary table and read back through a cursor,
so memory stays flat whatever the catalog size (the real one has 10^8 rows).
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from .config import Phase, Tier
from .errors import UsageError
from .ingest import remove_rows
from .state import ShardRow, State, candidate_kinds
from .workspace import Workspace

MEMBER_BATCH = 50_000


@dataclass(frozen=True)
class PlannedShard:
    name: str
    phase: str
    tier: str
    seq: int
    items: int
    bytes: int
    pop_min: float
    pop_max: float


@dataclass(frozen=True)
class PathCollision:
    """Two members of one shard whose paths differ only by case or Unicode normalization: distinct files
    here and in the tar, but one file when the shard is extracted on macOS (APFS, HFS+) or Windows (NTFS)."""

    shard: str
    path: str
    other_path: str
    id: str
    other_id: str

    def __str__(self) -> str:
        return (
            f"{self.shard}: {self.path!r} ({self.id}) and {self.other_path!r} ({self.other_id}) are one file "
            "on case-insensitive or normalizing file systems (macOS, Windows)"
        )


MAX_COLLISIONS_KEPT = 1000


@dataclass
class PlanReport:
    dry_run: bool
    shards: list[PlannedShard] = field(default_factory=list)
    items: int = 0
    bytes: int = 0
    unassigned: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, items, bytes)
    collisions: list[PathCollision] = field(default_factory=list)  # the first MAX_COLLISIONS_KEPT
    collision_count: int = 0

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "new_shards": [vars(s) for s in self.shards],
            "items": self.items,
            "bytes": self.bytes,
            "unassigned": [{"kind": k, "items": n, "bytes": b} for k, n, b in self.unassigned],
            "path_collisions": self.collision_count,
            "path_collision_examples": [vars(c) for c in self.collisions],
        }


def folded_path(path: str) -> str:
    """The name a case-insensitive, normalization-insensitive file system sees (NFC of the case fold)."""
    if path.isascii():
        return path.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


class _DryRun(Exception):
    """Raised inside the plan transaction to roll it back after a --dry-run."""


def _bounds(phase: Phase, tier: Tier) -> tuple[float | None, float | None]:
    los = [v for v in (phase.min_popularity, tier.min_popularity) if v is not None]
    his = [v for v in (phase.max_popularity, tier.max_popularity) if v is not None]
    return (max(los) if los else None), (min(his) if his else None)


Range = tuple[float | None, float | None]  # [min, max) of popularity, None where unbounded


def taken_ranges(phases: Sequence[Phase]) -> dict[tuple[str, str], tuple[Range, ...]]:
    """(phase, tier) -> the popularity ranges of the items it can take, ascending and disjoint: its own
    bounds within its phase's, less what an earlier (phase, tier) takes first (an item goes to the first
    that admits its kind and popularity, as State.candidates' CASE does), over each kind of its phase."""
    inf = float("inf")
    out: dict[tuple[str, str], tuple[Range, ...]] = {}
    earlier: list[tuple[tuple[str, ...], float, float]] = []
    for phase in phases:
        for tier in phase.tiers:
            lo, hi = _bounds(phase, tier)
            lo, hi = -inf if lo is None else lo, inf if hi is None else hi
            taken: list[tuple[float, float]] = []
            for kind in phase.kinds:
                ranges = [(lo, hi)] if lo < hi else []
                for kinds, a, b in earlier:
                    if kind in kinds:
                        ranges = _minus(ranges, a, b)
                taken += ranges
            earlier.append((phase.kinds, lo, hi))
            out[(phase.name, tier.name)] = tuple(
                (None if a == -inf else a, None if b == inf else b) for a, b in _union(taken)
            )
    return out


def _minus(ranges: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    out = []
    for a, b in ranges:
        out += (
            [r for r in ((a, min(b, lo)), (max(a, hi), b)) if r[0] < r[1]] if lo < b and a < hi else [(a, b)]
        )
    return out


def _union(ranges: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def range_text(ranges: Sequence[Range]) -> str:
    """Ranges as a person reads them, e.g. "[-inf, 50) ∪ [60, inf)"; "none" for a tier that takes nothing
    (earlier tiers take all its range)."""
    texts = [
        f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'})" for lo, hi in ranges
    ]
    return " ∪ ".join(texts) or "none"


class _ShardCutter:
    """Accumulates one group's candidates into shards, writing members in batches as it goes."""

    def __init__(
        self,
        state: State,
        release: str,
        phase: Phase,
        tier: Tier,
        now: str,
        report: PlanReport,
        staged: bool,
    ):
        self.state, self.release, self.phase, self.tier, self.staged = state, release, phase, tier, staged
        self.now, self.report = now, report
        self.seq = state.next_seq(phase.name, tier.name)
        self.shard_id: int | None = None
        self.count = self.bytes = 0
        self.pop_min = self.pop_max = 0.0
        self.batch: list[int] = []  # item rowids of the open shard from position count - len(batch) on
        self.names: dict[str, int] = {}  # folded path -> item rowid, in this shard
        self.by_kind: dict[str, list[int]] = {}  # kind -> [items, bytes] planned
        self.closed = [0, 0]  # items and bytes of the shards this cutter closed
        self.tallied = (0, 0)  # items and bytes taken when by_kind was last added to

    def take(self, rows: Iterator[tuple], first: int, on_items: Callable[[int], None] | None = None):
        """Cut candidates, (group and kind, rowid, size, popularity, path) in plan order (State.candidates),
        into shards while their group and kind is in [first, first + len(kinds)): the kind is its index
        in the phase's kinds. Returns the first row past them, or None at the end. The loop of 10^8 rows,
        written out for speed: the open shard's counts live in locals and go back to self only when it
        closes (or the kind changes); with no shard open, nbytes is past the limit, so the first row opens
        one; a file larger than the limit leaves the shard past it, so the next row closes it."""
        limit, kinds = self.phase.shard_size, self.phase.kinds
        end = first + len(kinds)
        batch, names = self.batch, self.names
        shard_id, count, nbytes, pop_min = self.shard_id, self.count, self.bytes, self.pop_min
        if shard_id is None:
            nbytes = limit + 1
        current = None  # the group and kind of the rows being taken
        for gk, rowid, size, popularity, path in rows:
            if gk != current:
                if not first <= gk < end:
                    self.count, self.bytes, self.pop_min = count, nbytes, pop_min
                    self._tally(current, first)
                    return gk, rowid, size, popularity, path
                self.count, self.bytes = count, nbytes
                self._tally(current, first)
                current = gk
            if nbytes + size > limit:
                if shard_id is not None:
                    self.count, self.bytes, self.pop_min = count, nbytes, pop_min
                    self.close()
                self._open(popularity)
                shard_id, count, nbytes = self.shard_id, 0, 0
            batch.append(rowid)
            count += 1
            nbytes += size
            pop_min = popularity  # candidates arrive in descending popularity
            other = names.setdefault(path.lower() if path.isascii() else folded_path(path), rowid)
            if other != rowid:
                self._collision(path, rowid, other)
            if len(batch) >= MEMBER_BATCH:
                self.state.add_member_run(shard_id, count - len(batch), batch, self.staged)
                batch.clear()
                if on_items:
                    on_items(self.report.items + count)
        self.count, self.bytes, self.pop_min = count, nbytes, pop_min
        self._tally(current, first)
        return None

    def _tally(self, gk: int | None, first: int) -> None:
        """Add what was taken since the last tally to by_kind, all of it of the kind of `gk` (a group and
        kind, as take's rows give it; None: nothing was taken)."""
        taken = (
            (self.closed[0] + self.count, self.closed[1] + self.bytes)
            if self.shard_id is not None
            else self.closed
        )
        if gk is not None:
            totals = self.by_kind.setdefault(self.phase.kinds[gk - first], [0, 0])
            totals[0] += taken[0] - self.tallied[0]
            totals[1] += taken[1] - self.tallied[1]
        self.tallied = tuple(taken)

    def _collision(self, path: str, rowid: int, other_rowid: int) -> None:
        self.report.collision_count += 1
        if len(self.report.collisions) < MAX_COLLISIONS_KEPT:
            ids = dict(self.state.item_ids([rowid, other_rowid]))
            other_path = self.state.item_facts(other_rowid)[2]
            name = self.phase.shard_name(self.release, self.tier.name, self.seq)
            self.report.collisions.append(PathCollision(name, path, other_path, ids[rowid], ids[other_rowid]))

    def _open(self, popularity: float) -> None:
        name = self.phase.shard_name(self.release, self.tier.name, self.seq)
        self.shard_id = self.state.add_shard(
            name, self.phase.name, self.tier.name, self.seq, 0, 0, popularity, popularity, self.now
        )
        self.count = self.bytes = 0
        self.pop_max = popularity
        self.names.clear()

    def close(self) -> None:
        if self.shard_id is None:
            return
        if self.batch:
            self.state.add_member_run(self.shard_id, self.count - len(self.batch), self.batch, self.staged)
            self.batch.clear()
        self.state.set_shard_totals(self.shard_id, self.count, self.bytes, self.pop_min, self.pop_max)
        name = self.phase.shard_name(self.release, self.tier.name, self.seq)
        self.report.shards.append(
            PlannedShard(
                name,
                self.phase.name,
                self.tier.name,
                self.seq,
                self.count,
                self.bytes,
                self.pop_min,
                self.pop_max,
            )
        )
        self.report.items += self.count
        self.report.bytes += self.bytes
        self.closed[0] += self.count
        self.closed[1] += self.bytes
        self.seq += 1
        self.shard_id = None


# A plan adding more members than this fraction of those already planned rebuilds the members' item
# index in one sort afterwards rather than inserting into it at random places.
REBUILD_FRACTION = 0.2


def plan(ws: Workspace, dry_run: bool = False, on_items: Callable[[int], None] | None = None) -> PlanReport:
    """Assign every unassigned item to a phase, tier and new shard. With dry_run nothing is stored.

    One scan of the items and one sort give every candidate in plan order (phase, tier, popularity desc,
    id asc); the cutters then stream through them, so memory stays flat at any catalog size."""
    state, config = ws.state, ws.config
    report = PlanReport(dry_run=dry_run)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    groups = [(phase, tier) for phase in config.phases for tier in phase.tiers]
    try:
        # A first plan writes a whole new members table and its index: under a rollback journal their pages
        # are written once, not to the log and again at the checkpoint (10^6 rows: 28 MB, not 56).
        with state.bulk_journal(not state.has_members()), state.transaction():
            # The members' item index answers the candidates' NOT EXISTS, so it can go before them only
            # when there are no members; when many are added to many, they are staged and appended after.
            first = not state.has_members()
            if first:
                state.drop_member_index()
            many = not first and sum(n for _, n, _ in state.unassigned_counts()) > (
                REBUILD_FRACTION * state.member_count()
            )
            by_kind: dict[str, list[int]] = {}
            specs = [(p.kinds, *_bounds(p, t)) for p, t in groups]
            width = candidate_kinds(specs)
            candidates = state.candidates(specs)
            row = next(candidates, None)
            while row is not None:
                group = row[0] // width
                cutter = _ShardCutter(state, config.name, *groups[group], now, report, many)
                row = cutter.take(itertools.chain((row,), candidates), group * width, on_items)
                cutter.close()
                _merge(by_kind, cutter.by_kind)
            if many:
                state.drop_member_index()
                state.add_staged_members()
            state.restore_member_index()
            state.add_totals((k, 0, 0, -n, -b) for k, (n, b) in by_kind.items())
            report.unassigned = state.unassigned_counts()
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    if on_items:
        on_items(report.items)
    return report


def _merge(into: dict[str, list[int]], more: dict[str, list[int]]) -> None:
    for kind, (n, b) in more.items():
        totals = into.setdefault(kind, [0, 0])
        totals[0] += n
        totals[1] += b


@dataclass(frozen=True)
class TierStatus:
    name: str
    ranges: tuple[Range, ...]  # of popularity it takes (taken_ranges), not only its own bounds
    shards: int
    items: int
    bytes: int
    pop_min: float | None
    pop_max: float | None
    states: dict[str, int]  # shard state -> count

    @property
    def popularity(self) -> str:
        """The range as a person reads it, e.g. "[50, inf)"."""
        return range_text(self.ranges)

    def as_dict(self) -> dict:
        # Numbers for scripts, null where the range is unbounded (JSON has no infinity). "popularity" spans
        # the ranges (null: the tier takes nothing); "popularity_ranges" are the ranges themselves.
        ranges = [{"min": lo, "max": hi} for lo, hi in self.ranges]
        span = {"min": ranges[0]["min"], "max": ranges[-1]["max"]} if ranges else None
        return {"name": self.name, "popularity": span, "popularity_ranges": ranges} | {
            k: v for k, v in asdict(self).items() if k not in ("name", "ranges")
        }


@dataclass(frozen=True)
class PhaseStatus:
    name: str
    kinds: tuple[str, ...]
    tiers: tuple[TierStatus, ...]
    published: bool

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kinds": list(self.kinds),
            "tiers": [t.as_dict() for t in self.tiers],
            "published": self.published,
        }


@dataclass(frozen=True)
class ShardStatus:
    row: ShardRow
    extras: dict  # state.shard_extras: file, length, sha256 once built; torrent, info-hashes, magnet

    @property
    def magnet(self) -> str | None:
        return self.extras.get("magnet")

    @property
    def info_hash_v1(self) -> str | None:
        return self.extras.get("info_hash_v1")

    def as_dict(self) -> dict:
        return vars(self.row) | self.extras


@dataclass(frozen=True)
class ReleaseStatus:
    release: str
    root: str
    items: int
    phases: tuple[PhaseStatus, ...]
    shards: tuple[ShardStatus, ...]
    unassigned: tuple[tuple[str, int, int], ...]  # (kind, items, bytes) of present items in no shard

    def as_dict(self) -> dict:
        return {
            "release": self.release,
            "root": self.root,
            "items": self.items,
            "phases": [p.as_dict() for p in self.phases],
            "shards": [s.as_dict() for s in self.shards],
            "unassigned": [{"kind": k, "items": n, "bytes": b} for k, n, b in self.unassigned],
        }


def release_status(ws: Workspace) -> ReleaseStatus:
    """Phases, tiers and shards with counts, sizes, popularity ranges and states, for `status`."""
    state, config = ws.state, ws.config
    shards = state.shards()
    taken = taken_ranges(config.phases)
    phases = []
    for phase in config.phases:
        tiers = []
        for tier in phase.tiers:
            mine = [s for s in shards if s.phase == phase.name and s.tier == tier.name]
            states: dict[str, int] = {}
            for s in mine:
                states[s.state] = states.get(s.state, 0) + 1
            tiers.append(
                TierStatus(
                    name=tier.name,
                    ranges=taken[(phase.name, tier.name)],
                    shards=len(mine),
                    items=sum(s.items for s in mine),
                    bytes=sum(s.bytes for s in mine),
                    pop_min=min((s.pop_min for s in mine), default=None),
                    pop_max=max((s.pop_max for s in mine), default=None),
                    states=states,
                )
            )
        phases.append(PhaseStatus(phase.name, phase.kinds, tuple(tiers), state.is_published(phase.name)))
    return ReleaseStatus(
        release=config.name,
        root=str(config.root),
        items=state.item_count(),
        phases=tuple(phases),
        shards=tuple(ShardStatus(s, state.shard_extras(s.id)) for s in shards),
        unassigned=tuple(state.unassigned_counts()),
    )


@dataclass(frozen=True)
class Removal:
    id: str
    outcome: str  # "unplanned" | "dropped from <shard>" | "stays in <shard>" | "already removed"

    def as_dict(self) -> dict:
        return asdict(self)


def remove_items(ws: Workspace, ids: list[str]) -> list[Removal]:
    """Mark items removed from the archive. An item in no shard, or in a shard not yet built, will not be
    packaged; an item in a built shard stays in it (a built shard never changes) and is only marked. Unknown
    ids are refused together, before anything changes."""
    state = ws.state
    placements = {i: state.item_placement(i) for i in dict.fromkeys(ids)}
    unknown = [i for i, p in placements.items() if p is None]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise UsageError(f"{len(unknown)} unknown id(s): {shown}", hint="check the ids against the catalog")
    out = []
    with state.transaction():
        state.db.execute("DROP TABLE IF EXISTS temp.gone")
        state.db.execute("CREATE TEMP TABLE gone (n INTEGER PRIMARY KEY)")
        for item_id, (rowid, removed, shard, shard_state, _) in placements.items():
            if removed:
                out.append(Removal(item_id, "already removed"))
                continue
            state.db.execute("INSERT OR IGNORE INTO temp.gone VALUES (?)", (rowid,))
            if shard is not None and shard_state == "built":
                out.append(Removal(item_id, f"stays in {shard} (built shards never change)"))
            elif shard is not None:
                out.append(Removal(item_id, f"dropped from {shard} (not built yet)"))
            else:
                out.append(Removal(item_id, "will not be planned"))
        remove_rows(state, "temp.gone")
        state.db.execute("DROP TABLE temp.gone")
    return out
