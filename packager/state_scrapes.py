"""The swarm-health history in state.sqlite: scrape runs, what each source said, counts per torrent.

State code owns SQL; these are the only queries on the scrape tables (created with the rest of the schema in
state_schema.py). A run is one `packager health`. The history per day is kept as runs are recorded
(scrape_days: each day's highest counts), since computing it from every row is the slow way: measured at
10^4 torrents with 60 days of 4 runs (2.4 million rows), 3.3 s against 1.5 s to read the 600,000 day rows.

Both are bounded as each run is recorded: a run's rows are torrents x sources (2·10^4 at 10^4 torrents and
two trackers), so a health run every minute would add 3·10^7 rows a day. The rows of the newest RUNS_KEPT
runs are kept, and each torrent's newest counts however old (a torrent no source has answered for since
keeps them, with their date); day rows older than DAYS_KEPT days before the run go.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .state import State

RUNS_KEPT = 28  # a week of runs at four a day
DAYS_KEPT = 90  # the 60 days swarm.json shows, and a margin


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
        if state.db.execute("SELECT NOT EXISTS (SELECT 1 FROM scrape_days)").fetchone()[0]:
            _add_days(state, "", ())  # the first run since scrape_days was added: every earlier run too
        else:
            _add_days(state, "WHERE s.run_id = ?", (run,))
        _prune(state, at)
    return run


def _prune(state: State, at: str) -> None:
    """Drop what is past the bounds (module docstring), as of the run recorded at `at`."""
    db = state.db
    oldest = db.execute(
        "SELECT id FROM scrape_runs ORDER BY id DESC LIMIT 1 OFFSET ?", (RUNS_KEPT - 1,)
    ).fetchone()
    if oldest is not None:
        db.execute(
            "DELETE FROM scrapes WHERE run_id < ? AND run_id < (SELECT MAX(n.run_id) FROM scrapes n "
            "WHERE n.shard_id = scrapes.shard_id)",
            (oldest[0],),
        )
        db.execute(
            "DELETE FROM scrape_sources WHERE run_id < ? AND NOT EXISTS "
            "(SELECT 1 FROM scrapes s WHERE s.run_id = scrape_sources.run_id)",
            (oldest[0],),
        )
        db.execute(
            "DELETE FROM scrape_runs WHERE id < ? AND NOT EXISTS "
            "(SELECT 1 FROM scrapes s WHERE s.run_id = scrape_runs.id)",
            (oldest[0],),
        )
    db.execute("DELETE FROM scrape_days WHERE day < date(substr(?, 1, 10), ?)", (at, f"-{DAYS_KEPT} days"))


def _larger(column: str) -> str:
    """The higher of the stored and the new value, either of which may be NULL (SQLite's MAX(a, b) is NULL
    when one is)."""
    return f"{column} = COALESCE(MAX({column}, excluded.{column}), {column}, excluded.{column})"


def _add_days(state: State, where: str, args: tuple) -> None:
    state.db.execute(
        "INSERT INTO scrape_days (shard_id, day, seeders, leechers, completed) "
        "SELECT s.shard_id, substr(r.at, 1, 10), MAX(s.seeders), MAX(s.leechers), MAX(s.completed) "
        f"FROM scrapes s JOIN scrape_runs r ON r.id = s.run_id {where or 'WHERE true'} "
        "GROUP BY s.shard_id, substr(r.at, 1, 10) "
        f"ON CONFLICT (shard_id, day) DO UPDATE SET {_larger('seeders')}, {_larger('leechers')}, "
        f"{_larger('completed')}",
        args,
    )


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
        "SELECT shard_id, day, seeders, leechers, completed FROM scrape_days WHERE day >= ? "
        "ORDER BY shard_id, day",
        (since,),
    ):
        out.setdefault(shard_id, []).append(DayCounts(day, seeders, leechers, completed))
    return out
