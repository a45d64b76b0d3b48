"""The swarm view of a release: each published torrent with what the sources said of it, and the seeder
buckets (Anna's Archive's: 0, 1-3, 4-10, more than 10 seeders) per phase and tier.

Built from the state alone (the newest counts per torrent and the daily history), so `packager health`,
`packager publish` and `packager pick` show the same numbers and swarm.json is a pure function of the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from .. import layout
from ..errors import PackagerError
from ..manifest import TorrentEntry
from ..member_index import MemberIndex
from ..member_index.format import parse_root
from ..state import State
from ..state_scrapes import (
    CountRow,
    DayCounts,
    SourceRow,
    daily_history,
    latest_counts,
    latest_run,
    run_sources,
)
from ..torrent import magnet_link

# (name, fewest seeders, most seeders or None): a torrent in 4 or more places survives a few seedboxes going
# away; above 10 it is safe for now (Anna's Archive's torrents page uses the same cut points).
BUCKETS = (("0", 0, 0), ("1-3", 1, 3), ("4-10", 4, 10), (">10", 11, None))
UNKNOWN = "unknown"  # no source has ever answered for the torrent
BUCKET_NAMES = tuple(b[0] for b in BUCKETS) + (UNKNOWN,)
HISTORY_DAYS = 60
# The member index's own torrent in the scrape tables (shard ids start at 1). One swarm under one id: a
# publish that adds shards makes a new pack, whose torrent takes over the id and its history.
INDEX_ID = 0
INDEX_PHASE = "member index"  # what stands in its phase: it belongs to none, and is in no summary


@dataclass(frozen=True)
class IndexEntry:
    """The member index's torrent as published, as health and the live files need it."""

    info_hash_v1: str
    size: int  # bytes of members.pack
    name: str = layout.MEMBER_INDEX_PACK_NAME
    torrent_file: str = layout.MEMBER_INDEX_TORRENT
    info_hash_v2: str | None = None
    info_hash_v2_truncated: str | None = None
    trackers: tuple[str, ...] = ()  # the release's (publish gives members.torrent the shards' trackers)

    @property
    def magnet(self) -> str:
        return magnet_link(self.name, self.info_hash_v1, trackers=self.trackers)

    def with_trackers_of(self, magnets: Iterable[str]) -> IndexEntry:
        """This entry with the trackers of the release's shard magnets (each `tr=` once, in order): a
        magnet without them finds peers only through DHT, which a release with its own tracker may not use."""
        seen: dict[str, None] = {}
        for magnet in magnets:
            for key, value in parse_qsl(urlsplit(magnet).query):
                if key == "tr" and value:
                    seen.setdefault(value)
        return replace(self, trackers=tuple(seen))


def index_entry(root: bytes, where: str) -> IndexEntry | None:
    """The index torrent as a members/index.json's bytes give it; None if it has none or is not one."""
    try:
        parsed = parse_root(root, where)
    except PackagerError:
        return None
    return IndexEntry(parsed.torrent.info_hash_v1, parsed.pack_size) if parsed.torrent is not None else None


def published_index(folder: Path) -> IndexEntry | None:
    """The index torrent of a published folder (from its members/index.json); None if it has none."""
    try:
        with MemberIndex.open(Path(folder)) as index:
            root = index.root
    except PackagerError:
        return None
    return IndexEntry(root.torrent.info_hash_v1, root.pack_size) if root.torrent is not None else None


def bucket_of(seeders: int | None) -> str:
    if seeders is None:
        return UNKNOWN
    for name, low, high in BUCKETS:
        if seeders >= low and (high is None or seeders <= high):
            return name
    raise AssertionError(f"negative seeder count {seeders}")


@dataclass(frozen=True)
class TorrentHealth:
    shard_id: int
    name: str
    phase: str
    tier: str | None
    size: int  # bytes of the shard file: what a seeder stores
    info_hash_v1: str | None
    info_hash_v2: str | None  # full 64 hex
    magnet: str
    torrent_file: str
    obsolete: bool
    seeders: int | None  # the highest count any source gave; None if none ever answered
    leechers: int | None
    completed: int | None
    scraped_at: str | None
    sources: tuple[CountRow, ...] = ()
    history: tuple[DayCounts, ...] = ()

    @property
    def bucket(self) -> str:
        return bucket_of(self.seeders)

    @property
    def swarm_hashes(self) -> tuple[str, ...]:
        """What trackers see: the v1 info-hash and the v2 one truncated to 20 bytes (BEP 52)."""
        return tuple(h for h in (self.info_hash_v1, self.info_hash_v2 and self.info_hash_v2[:40]) if h)


@dataclass(frozen=True)
class BucketCount:
    torrents: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Summary:
    """Torrents and bytes per seeder bucket, for the release (phase None), a phase (tier None) or a tier."""

    phase: str | None
    tier: str | None
    buckets: dict[str, BucketCount] = field(default_factory=dict)

    @property
    def torrents(self) -> int:
        return sum(b.torrents for b in self.buckets.values())

    @property
    def bytes(self) -> int:
        return sum(b.bytes for b in self.buckets.values())

    def share(self, names: Iterable[str]) -> float:
        """The share of the bytes in the buckets named (unknown counts in the whole)."""
        total = self.bytes
        return sum(self.buckets[n].bytes for n in names) / total if total else 0.0

    @property
    def share_4_or_more(self) -> float:
        return self.share(("4-10", ">10"))

    @property
    def share_over_10(self) -> float:
        return self.share((">10",))

    def as_dict(self) -> dict:
        return {
            "phase": self.phase,
            "tier": self.tier,
            "torrents": self.torrents,
            "bytes": self.bytes,
            "buckets": {n: {"torrents": b.torrents, "bytes": b.bytes} for n, b in self.buckets.items()},
            "share_bytes_4_or_more": round(self.share_4_or_more, 6),
            "share_bytes_over_10": round(self.share_over_10, 6),
        }


def summarize(torrents: Sequence[TorrentHealth], phase_order: Sequence[str]) -> list[Summary]:
    """The release, then each phase in release order, each followed by its tiers. Obsolete torrents are
    left out: nobody is asked to seed them."""
    groups: dict[tuple[str | None, str | None], dict[str, list[int]]] = {}

    def add(key: tuple[str | None, str | None], t: TorrentHealth) -> None:
        slot = groups.setdefault(key, {n: [0, 0] for n in BUCKET_NAMES}).setdefault(t.bucket, [0, 0])
        slot[0] += 1
        slot[1] += t.size

    live = [t for t in torrents if not t.obsolete]
    groups[(None, None)] = {n: [0, 0] for n in BUCKET_NAMES}
    rank = {p: i for i, p in enumerate(phase_order)}
    for t in sorted(live, key=lambda t: (rank.get(t.phase, len(rank)), t.phase, t.tier or "")):
        add((None, None), t)
        add((t.phase, None), t)
        if t.tier:
            add((t.phase, t.tier), t)
    return [
        Summary(phase, tier, {n: BucketCount(*counts[n]) for n in BUCKET_NAMES})
        for (phase, tier), counts in groups.items()
    ]


@dataclass(frozen=True)
class SwarmView:
    release: str
    at: str | None  # when the newest health run was made; None before the first
    sources: tuple[SourceRow, ...]  # what each source did in that run
    torrents: tuple[TorrentHealth, ...]  # in release order
    summaries: tuple[Summary, ...]
    history: tuple[tuple[str, Summary], ...]  # (day, the release's buckets that day), oldest first
    index: TorrentHealth | None = None  # the member index's own torrent: in no summary, no pick

    @property
    def release_summary(self) -> Summary:
        return self.summaries[0]


def swarm_view(
    state: State,
    release: str,
    phase_order: Sequence[str],
    days: int = HISTORY_DAYS,
    today: datetime | None = None,
    entries: Sequence[tuple[int, TorrentEntry]] | None = None,
    history: bool = True,
    index: IndexEntry | None = None,
) -> SwarmView:
    """The published torrents (or `entries`: (shard id, entry), as a publish about to record them) with
    their newest counts and (unless `history` is False) their daily history, summarized; and the member
    index's torrent when `index` is given."""
    if entries is None:
        entries = [(sid, TorrentEntry.from_json(text)) for sid, _, text in state.published_entries()]
    counts = latest_counts(state)
    run = latest_run(state)
    # The days up to the newest run, not the clock's: the same state renders the same files.
    if today is None:
        today = datetime.strptime(run[1], "%Y-%m-%dT%H:%M:%SZ") if run else datetime.now(UTC)
    since = (today - timedelta(days=days - 1)).strftime("%Y-%m-%d")
    days_of = daily_history(state, since) if history else {}
    torrents = tuple(_torrent(sid, e, counts.get(sid), days_of.get(sid, [])) for sid, e in entries)
    return SwarmView(
        release=release,
        at=run[1] if run else None,
        sources=tuple(run_sources(state, run[0])) if run else (),
        torrents=torrents,
        summaries=tuple(summarize(torrents, phase_order)),
        history=tuple(_daily_summaries(torrents)),
        index=_index(index, torrents, counts.get(INDEX_ID), days_of.get(INDEX_ID, [])) if index else None,
    )


def _index(
    index: IndexEntry,
    torrents: Sequence[TorrentHealth],
    latest: tuple[str, list[CountRow]] | None,
    history: list[DayCounts],
) -> TorrentHealth:
    index = index.with_trackers_of(t.magnet for t in torrents)
    return TorrentHealth(
        shard_id=INDEX_ID,
        name=index.name,
        phase=INDEX_PHASE,
        tier=None,
        size=index.size,
        info_hash_v1=index.info_hash_v1,
        info_hash_v2=None,
        magnet=index.magnet,
        torrent_file=index.torrent_file,
        obsolete=False,
        **_counts(latest, history),
    )


def _counts(latest: tuple[str, list[CountRow]] | None, history: list[DayCounts]) -> dict:
    """A torrent's newest counts: the highest any source gave (leechers and completed from trackers)."""
    at, rows = latest if latest else (None, [])
    trackers = [r for r in rows if r.leechers is not None]
    return {
        "seeders": max((r.seeders for r in rows), default=None),
        "leechers": max((r.leechers for r in trackers), default=None),
        "completed": max((r.completed for r in trackers if r.completed is not None), default=None),
        "scraped_at": at,
        "sources": tuple(rows),
        "history": tuple(history),
    }


def _torrent(
    shard_id: int, e: TorrentEntry, latest: tuple[str, list[CountRow]] | None, history: list[DayCounts]
) -> TorrentHealth:
    return TorrentHealth(
        shard_id=shard_id,
        name=e.name,
        phase=e.phase,
        tier=e.tier,
        size=e.shard.size,
        info_hash_v1=e.info_hash_v1,
        info_hash_v2=e.info_hash_v2,
        magnet=e.magnet,
        torrent_file=e.torrent_file,
        obsolete=e.obsolete,
        **_counts(latest, history),
    )


def _daily_summaries(torrents: Sequence[TorrentHealth]) -> list[tuple[str, Summary]]:
    """The release's buckets on each day of the history; a torrent with no count that day is unknown."""
    live = [t for t in torrents if not t.obsolete]
    per_day: dict[str, dict[str, list[int]]] = {}
    for t in live:
        for d in t.history:
            slot = per_day.setdefault(d.day, {n: [0, 0] for n in BUCKET_NAMES})[bucket_of(d.seeders)]
            slot[0] += 1
            slot[1] += t.size
    total = [len(live), sum(t.size for t in live)]
    out = []
    for day in sorted(per_day):
        counts = per_day[day]
        known = [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())]
        counts[UNKNOWN] = [total[0] - known[0], total[1] - known[1]]
        out.append((day, Summary(None, None, {n: BucketCount(*counts[n]) for n in BUCKET_NAMES})))
    return out
