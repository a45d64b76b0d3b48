"""Tiering and append-only shard assignment.

Within each phase and tier, unassigned items are taken in (popularity desc, id asc) order and cut greedily:
a shard takes items while they fit in the phase's shard size; an item larger than the shard size gets a
shard of its own. Existing shards are never touched: new items only ever open new shards with higher
sequence numbers. The ordering is done by SQLite into a temporary table and read back through a cursor,
so memory stays flat whatever the catalog size (the real one has 10^8 rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .config import Phase, Tier
from .errors import UsageError
from .state import State
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


@dataclass
class PlanReport:
    dry_run: bool
    shards: list[PlannedShard] = field(default_factory=list)
    items: int = 0
    bytes: int = 0
    unassigned: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, items, bytes)

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "new_shards": [vars(s) for s in self.shards],
            "items": self.items,
            "bytes": self.bytes,
            "unassigned": [{"kind": k, "items": n, "bytes": b} for k, n, b in self.unassigned],
        }


class _DryRun(Exception):
    """Raised inside the plan transaction to roll it back after a --dry-run."""


def _bounds(phase: Phase, tier: Tier) -> tuple[float | None, float | None]:
    los = [v for v in (phase.min_popularity, tier.min_popularity) if v is not None]
    his = [v for v in (phase.max_popularity, tier.max_popularity) if v is not None]
    return (max(los) if los else None), (min(his) if his else None)


class _ShardCutter:
    """Accumulates candidates into shards, writing members in batches as it goes."""

    def __init__(self, state: State, release: str, phase: Phase, tier: Tier, now: str, report: PlanReport):
        self.state, self.release, self.phase, self.tier = state, release, phase, tier
        self.now, self.report = now, report
        self.seq = state.next_seq(phase.name, tier.name)
        self.shard_id: int | None = None
        self.count = self.bytes = 0
        self.pop_min = self.pop_max = 0.0
        self.batch: list[tuple[int, int, int]] = []

    def add(self, rowid: int, size: int, popularity: float) -> None:
        if self.shard_id is not None and self.bytes + size > self.phase.shard_size:
            self.close()
        if self.shard_id is None:
            self._open(popularity)
        self.batch.append((self.shard_id, self.count, rowid))
        self.count += 1
        self.bytes += size
        self.pop_min = popularity  # candidates arrive in descending popularity
        if len(self.batch) >= MEMBER_BATCH:
            self.state.add_members(self.batch)
            self.batch.clear()
        if size > self.phase.shard_size:
            self.close()

    def _open(self, popularity: float) -> None:
        name = self.phase.shard_name(self.release, self.tier.name, self.seq)
        self.shard_id = self.state.add_shard(
            name, self.phase.name, self.tier.name, self.seq, 0, 0, popularity, popularity, self.now
        )
        self.count = self.bytes = 0
        self.pop_max = popularity

    def close(self) -> None:
        if self.shard_id is None:
            return
        self.state.add_members(self.batch)
        self.batch.clear()
        self.state.db.execute(
            "UPDATE shards SET items=?, bytes=?, pop_min=?, pop_max=? WHERE id=?",
            (self.count, self.bytes, self.pop_min, self.pop_max, self.shard_id),
        )
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
        self.seq += 1
        self.shard_id = None


def plan(ws: Workspace, dry_run: bool = False, on_items: Callable[[int], None] | None = None) -> PlanReport:
    """Assign every unassigned item to a phase, tier and new shard. With dry_run nothing is stored."""
    state, config = ws.state, ws.config
    report = PlanReport(dry_run=dry_run)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        with state.transaction():
            for phase in config.phases:
                for tier in phase.tiers:
                    lo, hi = _bounds(phase, tier)
                    if state.load_candidates(phase.kinds, lo, hi) == 0:
                        continue
                    cutter = _ShardCutter(state, config.name, phase, tier, now, report)
                    for n, (rowid, size, popularity) in enumerate(state.iter_candidates(), 1):
                        cutter.add(rowid, size, popularity)
                        if on_items and n % MEMBER_BATCH == 0:
                            on_items(report.items + cutter.count)
                    cutter.close()
            report.unassigned = state.unassigned_counts()
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    finally:
        state.db.execute("DROP TABLE IF EXISTS temp.cand")
    if on_items:
        on_items(report.items)
    return report


def release_status(ws: Workspace) -> dict:
    """Phases, tiers and shards with counts, sizes, popularity ranges and states, for `status`."""
    state, config = ws.state, ws.config
    shards = state.shards()
    phases = []
    for phase in config.phases:
        tiers = []
        for tier in phase.tiers:
            mine = [s for s in shards if s.phase == phase.name and s.tier == tier.name]
            states: dict[str, int] = {}
            for s in mine:
                states[s.state] = states.get(s.state, 0) + 1
            tiers.append(
                {
                    "name": tier.name,
                    "popularity": tier.range_text,
                    "shards": len(mine),
                    "items": sum(s.items for s in mine),
                    "bytes": sum(s.bytes for s in mine),
                    "pop_min": min((s.pop_min for s in mine), default=None),
                    "pop_max": max((s.pop_max for s in mine), default=None),
                    "states": states,
                }
            )
        phases.append(
            {
                "name": phase.name,
                "kinds": list(phase.kinds),
                "tiers": tiers,
                "published": state.is_published(phase.name),
            }
        )
    return {
        "release": config.name,
        "root": str(config.root),
        "items": state.item_count(),
        "phases": phases,
        "shards": [vars(s) | state.shard_extras(s.id) for s in shards],
        "unassigned": [{"kind": k, "items": n, "bytes": b} for k, n, b in state.unassigned_counts()],
    }


@dataclass(frozen=True)
class Removal:
    id: str
    outcome: str  # "unplanned" | "dropped from <shard>" | "stays in <shard>" | "already removed"


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
        for item_id, (rowid, removed, shard, shard_state, shard_id) in placements.items():
            if removed:
                out.append(Removal(item_id, "already removed"))
                continue
            if shard is not None and shard_state == "built":
                state.mark_removed(rowid, None)
                out.append(Removal(item_id, f"stays in {shard} (built shards never change)"))
            elif shard is not None:
                state.mark_removed(rowid, shard_id)
                out.append(Removal(item_id, f"dropped from {shard} (not built yet)"))
            else:
                state.mark_removed(rowid, None)
                out.append(Removal(item_id, "will not be planned"))
    return out
