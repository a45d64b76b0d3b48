"""The swarm-health history in state.sqlite: scrape runs, what each source said, counts per torrent.

State code owns SQL; these are the only queries on the scrape tables (created with the rest of the schema in
state.py). A run is one `packager health`; its rows are kept, so the history per day can be drawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .state import State


@dataclass(frozen=True)
class SourceRow:
    source: str  # a tracker's announce URL, or "seeder 127.0.0.1:PORT"
    protocol: str  # udp | http | https | seeder
    answered: int
    error: str | None
    seconds: float


@dataclass(frozen=True)
class CountRow:
    shard_id: int
    source: str
    seeders: int
    leechers: int | None
    completed: int | None


@dataclass(frozen=True)
class DayCounts:
    day: str  # YYYY-MM-DD (UTC)
    seeders: int  # the day's highest count, over every run and source
    leechers: int | None
    completed: int | None


def record_run(state: State, at: str, sources: Iterable[SourceRow], counts: Iterable[CountRow]) -> int:
    """Store one health run in one transaction; returns its id."""
    with state.transaction():
        run = state.db.execute("INSERT INTO scrape_runs (at) VALUES (?)", (at,)).lastrowid
        state.db.executemany(
            "INSERT INTO scrape_sources (run_id, source, protocol, answered, error, seconds) "
            "VALUES (?,?,?,?,?,?)",
            ((run, s.source, s.protocol, s.answered, s.error, s.seconds) for s in sources),
        )
        state.db.executemany(
            "INSERT OR REPLACE INTO scrapes (shard_id, run_id, source, seeders, leechers, completed) "
            "VALUES (?,?,?,?,?,?)",
            ((c.shard_id, run, c.source, c.seeders, c.leechers, c.completed) for c in counts),
        )
    return run


def latest_run(state: State) -> tuple[int, str] | None:
    """(id, at) of the newest health run, or None before the first."""
    return state.db.execute("SELECT id, at FROM scrape_runs ORDER BY id DESC LIMIT 1").fetchone()


def run_sources(state: State, run: int) -> list[SourceRow]:
    return [
        SourceRow(*r)
        for r in state.db.execute(
            "SELECT source, protocol, answered, error, seconds FROM scrape_sources WHERE run_id = ? "
            "ORDER BY source",
            (run,),
        )
    ]


def latest_counts(state: State) -> dict[int, tuple[str, list[CountRow]]]:
    """shard id -> (when, what each source said) from the newest run that has counts for that torrent: a
    run in which every tracker failed leaves the torrent's previous counts standing, with their date."""
    out: dict[int, tuple[str, list[CountRow]]] = {}
    for shard_id, at, source, seeders, leechers, completed in state.db.execute(
        "SELECT s.shard_id, r.at, s.source, s.seeders, s.leechers, s.completed "
        "FROM (SELECT shard_id, MAX(run_id) AS run_id FROM scrapes GROUP BY shard_id) m "
        "JOIN scrapes s ON s.shard_id = m.shard_id AND s.run_id = m.run_id "
        "JOIN scrape_runs r ON r.id = m.run_id ORDER BY s.shard_id, s.source"
    ):
        out.setdefault(shard_id, (at, []))[1].append(CountRow(shard_id, source, seeders, leechers, completed))
    return out


def daily_history(state: State, since: str) -> dict[int, list[DayCounts]]:
    """shard id -> the day's highest counts for every day from `since` (YYYY-MM-DD) on, oldest first."""
    out: dict[int, list[DayCounts]] = {}
    for shard_id, day, seeders, leechers, completed in state.db.execute(
        "SELECT s.shard_id, substr(r.at, 1, 10) AS day, MAX(s.seeders), MAX(s.leechers), MAX(s.completed) "
        "FROM scrape_runs r JOIN scrapes s ON s.run_id = r.id WHERE r.at >= ? "
        "GROUP BY s.shard_id, day ORDER BY s.shard_id, day",
        (since,),
    ):
        out.setdefault(shard_id, []).append(DayCounts(day, seeders, leechers, completed))
    return out
