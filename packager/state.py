"""state.sqlite: the catalog, the plan, and build and publish state. Nothing else in packager speaks SQL
(but ingest.py's bulk catalog queries and state_scrapes.py's swarm history). The schema, the row types and
the encoding of a catalog row's columns are state_schema.py's, the migrations from older schemas
state_migrate.py's, and the queries of publications and of the seeder state_release.py's.

The items table is sized for 10^8 rows: reads stream through cursors, bulk writes go through
``executemany`` inside one transaction, and the planner works from a temporary table that SQLite sorts.
Membership of a shard lives in ``members``, which is only ever appended to: that is the append-only plan.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from . import layout
from .errors import EnvironmentProblem, TotalsOverflow, WorkspaceError
from .hashing import ShardHashes
from .state_migrate import MIGRATABLE, migrate
from .state_release import ReleaseQueries
from .state_schema import (
    MAX_SQLITE_INTEGER,
    SCHEMA,
    SCHEMA_VERSION,
    MemberRow,
    SeedableRow,
    SeedStatusRow,
    ShardRow,
    TorrentFacts,
    item_path_sql,
    kind_code_sql,
    kind_name_sql,
    loads_extra,
)

# The row types travel with the queries that return them: callers import them from here.
__all__ = [
    "SCHEMA_VERSION",
    "MemberRow",
    "SeedStatusRow",
    "SeedableRow",
    "ShardRow",
    "State",
    "TorrentFacts",
    "open_state",
]

PAGE_SIZE = 8192  # of a new state.sqlite (State.__init__)

_STAGED_MEMBERS = (
    "CREATE TEMP TABLE IF NOT EXISTS staged_members (shard_id INTEGER, ord INTEGER, item_rowid INTEGER)"
)


def _open_error(path: Path, e: sqlite3.DatabaseError, how: str) -> WorkspaceError:
    if "not a database" in str(e) or "malformed" in str(e):
        return WorkspaceError(
            f"{path}: not a packager state database ({e})",
            hint="restore it from a backup, or start a new workspace with `packager init`",
        )
    return WorkspaceError(
        f"{path}: cannot open the state database{' ' + how if how else ''} ({e})",
        hint="check the permissions of the workspace folder and its state.sqlite* files",
    )


# The plan order's first sort key (see State.candidates): the group, then the popularity desc scaled by 2^20
# and clamped to +-2^54, in one integer.
_PLAN_KEY = (
    "{group} * 72057594037927936 + (36028797018963968 - CAST(max(-18014398509481984, "
    "min(18014398509481984, popularity * 1048576.0)) AS INTEGER))"
)


def candidate_kinds(groups: list[tuple[tuple[str, ...], float | None, float | None]]) -> int:
    """The most kinds a plan group takes: State.candidates' "group and kind" is group * this + kind index."""
    return max((len(kinds) for kinds, _, _ in groups), default=1) or 1


_PATH = item_path_sql("i")  # an item's path, in every query that gives one


class State(ReleaseQueries):
    """A connection to state.sqlite with every query packager makes."""

    def __init__(self, path: Path, create: bool = False, readonly: bool = False):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise WorkspaceError(
                f"{self.path}: no state database: is this a release workspace?",
                hint="create one with `packager init DIR --root ARCHIVE`",
            )
        if readonly:
            # Build workers read their shard's members while the coordinator writes (WAL allows it); status
            # reads a workspace it may not be allowed to write.
            self.db = self._connect_readonly()
            self._check_version()
            self._load_kinds()
            return
        # isolation_level=None: we open transactions explicitly, so one ingest or plan is one commit.
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            if create:
                # Before WAL, which fixes it. Measured at 10^6 rows after plan: 224.6 MB instead of 228.5 (a
                # page of items holds 55 rows, not 27: less of each left over), the same ingest and
                # re-ingest CPU, plan 10 % less. A state made with 4096-byte pages keeps them.
                self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as e:
            raise _open_error(self.path, e, "for writing") from None
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA temp_store=FILE")
        self.db.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache bound
        # The temporary database (ingest's staged rows, the plan's candidates) has a cache of its own, 2 MiB
        # by default: its sorts then spill in tiny runs (1M-row refresh: 14.4 s, of which staging 4.6 s).
        self.db.execute("PRAGMA temp.cache_size=-262144")
        self.db.execute("PRAGMA threads=2")  # index builds and big sorts use both cores
        if create:
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        else:
            migrate(self, self._check_version(migratable=True))
            # Tables added since the workspace was made (all CREATE ... IF NOT EXISTS).
            self.db.executescript(SCHEMA)
        self._load_kinds()

    def _load_kinds(self) -> None:
        self.kinds: dict[str, int] = dict(self.db.execute("SELECT name, code FROM kinds ORDER BY code"))

    def register_kinds(self, names: Iterable[str]) -> None:
        """Give each kind not yet known its code (items.kind), the next one from 0, in the order given."""
        self._load_kinds()  # as committed: a rolled back transaction may have registered some
        new = [name for name in dict.fromkeys(names) if name not in self.kinds]
        for name in new:
            self.db.execute(
                "INSERT INTO kinds (code, name) SELECT COALESCE(MAX(code) + 1, 0), ? FROM kinds", (name,)
            )
        if new:
            self._load_kinds()

    def kind_name_sql(self, column: str) -> str:
        """SQL: the kind's name of the kind code in `column` (items.kind)."""
        return kind_name_sql(column, self.kinds)

    def kind_code_sql(self, param: str) -> str:
        """SQL: the kind code of the kind name in `param` (NULL for a kind never registered)."""
        return kind_code_sql(param, self.kinds)

    def _connect_readonly(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=60)
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
            return db
        except sqlite3.DatabaseError as e:
            db.close()
            if not isinstance(e, sqlite3.OperationalError) or "not a database" in str(e):
                raise _open_error(self.path, e, "") from None
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise WorkspaceError(
                    f"{self.path}: cannot be read ({e}), and its write-ahead log {wal.name} holds commits "
                    "that only a reader allowed to create {self.path.name}-shm can see",
                    hint="run this command as a user who may write the workspace folder",
                ) from None
        # A folder we may not write: no -shm can be made, but with no write-ahead log to read none is needed.
        return sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, isolation_level=None)

    def _check_version(self, migratable: bool = False) -> int:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise WorkspaceError(f"{self.path}: not a packager state database ({e})") from None
        version = int(row[0]) if row and str(row[0]).isdigit() else None
        if version != SCHEMA_VERSION and not (migratable and version in MIGRATABLE):
            raise WorkspaceError(
                f"{self.path}: unknown state schema version {row and row[0]}",
                hint=None
                if version is None or version > SCHEMA_VERSION
                else "open it once with packager (not read-only) to bring it up to date",
            )
        return version

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def bulk_journal(self, enabled: bool = True) -> Iterator[None]:
        """For a transaction that writes a whole new database (a first ingest): a rollback journal instead of
        the write-ahead log, so the pages are written once, not once to the log and again at the checkpoint
        (and the disk needs no room for a log as big as the state). Still atomic: a killed transaction is
        rolled back from the journal at the next open. WAL is back afterwards (readers during builds)."""
        if not enabled:
            yield
            return
        self.db.execute("PRAGMA journal_mode=DELETE")  # stays WAL if another connection is open: fine
        try:
            yield
        finally:
            self.db.execute("PRAGMA journal_mode=WAL")

    def is_empty(self) -> bool:
        return not self.db.execute("SELECT EXISTS (SELECT 1 FROM items)").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            raise EnvironmentProblem(
                f"{self.path}: another packager command has been writing this workspace for a minute",
                hint="wait for it to finish and run this command again",
            ) from None
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- catalog totals (ingest and its bulk queries live in ingest.py) --------------------------

    def item_placement(self, item_id: str) -> tuple[int, int, str | None, str | None, int | None] | None:
        """(item rowid, removed, shard name, shard state, shard id) of an id, or None if unknown."""
        return self.db.execute(
            "SELECT i.rowid, i.removed, sh.name, sh.state, sh.id FROM items i "
            "LEFT JOIN members m ON m.item_rowid = i.rowid LEFT JOIN shards sh ON sh.id = m.shard_id "
            "WHERE i.id = ?",
            (item_id,),
        ).fetchone()

    def item_extra(self, item_id: str) -> dict:
        """The extra fields of an item, as its catalog row gave them."""
        row = self.db.execute(
            "SELECT n.names, i.extra FROM items i LEFT JOIN extra_names n ON n.n = i.xk WHERE i.id = ?",
            (item_id,),
        ).fetchone()
        return loads_extra(*row) if row else {}

    def item_ids(self, rowids: Iterable[int]) -> list[tuple[int, str]]:
        rowids = list(rowids)
        return self.db.execute(
            f"SELECT rowid, id FROM items WHERE rowid IN ({','.join('?' * len(rowids))})", rowids
        ).fetchall()

    def item_count(self) -> int:
        return self.db.execute("SELECT COALESCE(SUM(items), 0) FROM catalog_totals").fetchone()[0]

    def unassigned_counts(self) -> list[tuple[str, int, int]]:
        """(kind, items, bytes) of present items in no shard, from the totals ingest, plan and remove keep."""
        return self.db.execute(
            "SELECT kind, unplanned, unplanned_bytes FROM catalog_totals WHERE unplanned > 0 ORDER BY kind"
        ).fetchall()

    def counted_totals(self) -> list[tuple[str, int, int, int, int]]:
        """(kind, items, removed, unplanned, unplanned bytes) counted from the items: a full scan."""
        return self.totals_of(None)

    def totals_of(self, rowids_sql: str | None) -> list[tuple[str, int, int, int, int]]:
        """(kind, items, removed, unplanned, unplanned bytes) of the items whose rowids the SQL selects (all
        items for None), by kind name."""
        where = "" if rowids_sql is None else f"WHERE i.rowid IN ({rowids_sql}) "
        return self.summed(
            f"SELECT {self.kind_name_sql('i.kind')}, COUNT(*), SUM(i.removed), "
            "SUM(i.removed = 0 AND m.item_rowid IS NULL), "
            "COALESCE(SUM(CASE WHEN i.removed = 0 AND m.item_rowid IS NULL THEN i.size END), 0) "
            f"FROM items i LEFT JOIN members m ON m.item_rowid = i.rowid {where}GROUP BY i.kind ORDER BY 1"
        )

    def summed(self, sql: str, params: tuple = ()) -> list[tuple]:
        """The rows of a query that sums items' sizes: TotalsOverflow where SQLite's SUM stops with "integer
        overflow" (a sum beyond 2^63-1), which was a traceback."""
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "integer overflow" not in str(e):
                raise
            raise TotalsOverflow(None) from None

    def stored_totals(self) -> list[tuple[str, int, int, int, int]]:
        return self.db.execute(
            "SELECT kind, items, removed, unplanned, unplanned_bytes FROM catalog_totals "
            "WHERE items > 0 ORDER BY kind"
        ).fetchall()

    def recount_totals(self) -> None:
        """Set catalog_totals from a full count. Call in a transaction."""
        self.db.execute("DELETE FROM catalog_totals")
        self.db.executemany("INSERT INTO catalog_totals VALUES (?,?,?,?,?)", self.counted_totals())

    def add_totals(self, rows: Iterable[tuple[str, int, int, int, int]]) -> None:
        """Add (kind, items, removed, unplanned, unplanned bytes) deltas. Call in a transaction. Added here,
        not in SQL: SQLite's integer sum beyond 2^63-1 silently becomes a REAL; TotalsOverflow instead."""
        totals: dict[str, list] = {}
        for kind, *deltas in rows:
            if kind not in totals:
                stored = self.db.execute(
                    "SELECT items, removed, unplanned, unplanned_bytes FROM catalog_totals WHERE kind = ?",
                    (kind,),
                ).fetchone()
                totals[kind] = list(stored or (0, 0, 0, 0))
            t = totals[kind]
            for k, delta in enumerate(deltas):
                t[k] += delta
                if t[k] > MAX_SQLITE_INTEGER:
                    raise TotalsOverflow(kind, t[k])
        self.db.executemany(
            "INSERT OR REPLACE INTO catalog_totals VALUES (?,?,?,?,?)", [(k, *t) for k, t in totals.items()]
        )

    # ---- plan -----------------------------------------------------------------------------------

    def candidates(
        self, groups: list[tuple[tuple[str, ...], float | None, float | None]]
    ) -> Iterator[tuple[int, int, int, float, str]]:
        """(group and kind, item rowid, size, popularity, path) of every unassigned, present item that one
        of the (kinds, lo, hi) groups takes (the first that matches), in plan order: group, then popularity
        desc, id asc. "Group and kind" is one integer, group * candidate_kinds(groups) + the index of the
        item's kind in its group's kinds: each value fetched costs the cursor a few calls into SQLite, so
        the kind is no column of its own (its text was one more string a row). One scan of the items and
        one sort, streamed from SQLite's sorter: Python never holds the list, and nothing is written twice
        (a temporary table of the candidates cost 10^7 rows x 90 bytes written and read again). The sorter
        takes every row before it gives the first, so members may be appended while this runs: the NOT
        EXISTS has been answered by then.

        The sort's first key is one integer, weakly monotone in plan order (the group, then the popularity
        scaled and clamped): SQLite's sorter compares a first integer key without decoding the record, and
        only its ties go on to (popularity desc, id asc). Measured on the candidates of 10^6 rows: 14 %
        less CPU for the query (3.9 s instead of 4.6), the same order. The scan is a subquery that SQLite
        may not flatten (OFFSET 0): flattened, the group's CASE was evaluated three times a row (the filter,
        the column and the sort key)."""
        width = candidate_kinds(groups)
        cases, args = [], []
        for g, (kinds, lo, hi) in enumerate(groups):
            codes = [self.kinds.get(k) for k in kinds]  # None for a kind never ingested: matches nothing
            cond = [f"i.kind IN ({','.join('?' * len(codes))})"]
            args.extend(codes)
            if lo is not None:
                cond.append("i.popularity >= ?")
                args.append(lo)
            if hi is not None:
                cond.append("i.popularity < ?")
                args.append(hi)
            value = str(g * width)
            if len(kinds) > 1:
                whens = " ".join(f"WHEN ? THEN {g * width + k}" for k in range(len(kinds)))
                value = f"CASE i.kind {whens} END"
                args.extend(codes)
            cases.append(f"WHEN {' AND '.join(cond)} THEN {value}")
        if not cases:
            return iter(())
        # A first plan (no members yet) needs no test of each item against them: 5 % of the query's work.
        unplanned = (
            " AND NOT EXISTS (SELECT 1 FROM members m WHERE m.item_rowid = i.n)" if self.has_members() else ""
        )
        return self.db.execute(
            f"SELECT gk, n, size, popularity, path FROM (SELECT CASE {' '.join(cases)} END AS gk, i.n, "
            f"i.size, i.popularity, {_PATH} AS path, i.id FROM items i WHERE i.removed = 0{unplanned} "
            "LIMIT -1 OFFSET 0) WHERE gk IS NOT NULL "
            f"ORDER BY {_PLAN_KEY.format(group=f'(gk / {width})')}, popularity DESC, id ASC",
            args,
        )

    def add_member_run(self, shard_id: int, first_ord: int, item_rowids: list[int], staged: bool) -> None:
        """Members first_ord, first_ord + 1, ... of one shard, in one statement (json_each: 0.4 µs a member,
        against 1.8 µs for executemany of rows), into members or, staged, into temp.staged_members until
        add_staged_members."""
        if staged:
            self.db.execute(_STAGED_MEMBERS)
        table = "temp.staged_members" if staged else "members"
        self.db.execute(
            f"INSERT INTO {table} (shard_id, ord, item_rowid) SELECT ?, ? + key, value FROM json_each(?)",
            (shard_id, first_ord, orjson.dumps(item_rowids)),
        )

    def add_staged_members(self) -> None:
        """Append the staged members (in the order staged: the members' key order) and drop the stage."""
        self.db.execute(_STAGED_MEMBERS)
        self.db.execute(
            "INSERT INTO members (shard_id, ord, item_rowid) SELECT shard_id, ord, item_rowid "
            "FROM temp.staged_members ORDER BY rowid"
        )
        self.db.execute("DROP TABLE temp.staged_members")

    def next_seq(self, phase: str, tier: str) -> int:
        row = self.db.execute(
            "SELECT MAX(seq) FROM shards WHERE phase=? AND tier=?", (phase, tier)
        ).fetchone()
        return (row[0] or 0) + 1

    def add_shard(
        self,
        name: str,
        phase: str,
        tier: str,
        seq: int,
        items: int,
        nbytes: int,
        pop_min: float,
        pop_max: float,
        planned_at: str,
    ) -> int:
        cur = self.db.execute(
            "INSERT INTO shards (name, phase, tier, seq, items, bytes, pop_min, pop_max, planned_at) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (name, phase, tier, seq, items, nbytes, pop_min, pop_max, planned_at),
        )
        return cur.lastrowid

    def set_shard_totals(
        self, shard_id: int, items: int, nbytes: int, pop_min: float, pop_max: float
    ) -> None:
        self.db.execute(
            "UPDATE shards SET items=?, bytes=?, pop_min=?, pop_max=? WHERE id=?",
            (items, nbytes, pop_min, pop_max, shard_id),
        )

    def add_members(self, rows: Iterable[tuple[int, int, int]]) -> None:
        """(shard_id, ord, item_rowid) rows."""
        self.db.executemany("INSERT INTO members (shard_id, ord, item_rowid) VALUES (?,?,?)", rows)

    def member_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM members").fetchone()[0]

    def has_members(self) -> bool:
        """Whether any item is planned: one row read, where member_count counts them all."""
        return bool(self.db.execute("SELECT EXISTS (SELECT 1 FROM members)").fetchone()[0])

    def drop_member_index(self) -> None:
        """Before appending many members: the unique index on item_rowid is rebuilt in one sort by
        restore_member_index, instead of taking random inserts. Call in a transaction."""
        self.db.execute("DROP INDEX IF EXISTS members_item")

    def restore_member_index(self) -> None:
        self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS members_item ON members (item_rowid)")

    # ---- shards ---------------------------------------------------------------------------------

    def shards(self, phase: str | None = None, state: str | None = None) -> list[ShardRow]:
        where, args = [], []
        if phase is not None:
            where.append("phase = ?")
            args.append(phase)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        sql = "SELECT id, name, phase, tier, seq, items, bytes, pop_min, pop_max, state, error FROM shards"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [ShardRow(*r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def shard(self, name: str) -> ShardRow | None:
        row = self.db.execute(
            "SELECT id, name, phase, tier, seq, items, bytes, pop_min, pop_max, state, error FROM shards "
            "WHERE name = ?",
            (name,),
        ).fetchone()
        return ShardRow(*row) if row else None

    def iter_members(self, shard_id: int) -> Iterator[MemberRow]:
        for row in self.db.execute(
            f"SELECT m.ord, i.id, {_PATH}, {self.kind_name_sql('i.kind')}, "
            "COALESCE(p.popularity, i.popularity), i.size, i.mtime "
            "FROM members m JOIN items i ON i.rowid = m.item_rowid "
            "LEFT JOIN planned_popularity p ON p.item_rowid = m.item_rowid "
            "WHERE m.shard_id = ? ORDER BY m.ord",
            (shard_id,),
        ):
            yield MemberRow(*row)

    def is_published(self, phase: str) -> bool:
        return self.db.execute("SELECT 1 FROM publications WHERE phase = ?", (phase,)).fetchone() is not None

    def shard_extras(self, shard_id: int) -> dict:
        """Build and torrent facts of a shard, for status: file, sha256, info-hashes, magnet."""
        out: dict = {}
        row = self.db.execute(
            "SELECT file, length, sha256 FROM builds WHERE shard_id = ?", (shard_id,)
        ).fetchone()
        if row:
            out.update(file=row[0], length=row[1], sha256=row[2])
        row = self.db.execute(
            "SELECT file, info_hash_v1, info_hash_v2, magnet FROM torrents WHERE shard_id = ?", (shard_id,)
        ).fetchone()
        if row:
            out.update(torrent=row[0], info_hash_v1=row[1], info_hash_v2=row[2], magnet=row[3])
        return out

    # ---- build ----------------------------------------------------------------------------------

    def record_build(
        self, shard_id: int, file: str, hashes, frames: int, uncompressed: int, built_at: str, records
    ) -> None:
        """Store a finished shard's hashes and member records and mark it built. Call in a transaction."""
        self.db.execute(
            "INSERT OR REPLACE INTO builds (shard_id, file, length, sha256, piece_size, v1_pieces, v2_root, "
            "v2_piece_layer, frames, uncompressed, built_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                shard_id,
                file,
                hashes.length,
                hashes.sha256.hex(),
                hashes.piece_size,
                hashes.v1_pieces,
                hashes.v2_root,
                hashes.v2_piece_layer,
                frames,
                uncompressed,
                built_at,
            ),
        )
        self.db.execute("DELETE FROM member_builds WHERE shard_id = ?", (shard_id,))
        # The plan's own positions: removing an item from an unbuilt shard leaves a gap in them.
        ords = [
            r[0]
            for r in self.db.execute("SELECT ord FROM members WHERE shard_id = ? ORDER BY ord", (shard_id,))
        ]
        if len(ords) != len(records):
            raise WorkspaceError(f"{file}: {len(records)} members written, but the plan has {len(ords)}")
        self.db.executemany(
            "INSERT INTO member_builds (shard_id, ord, xxh3_128, sha256, offset, first_frame, last_frame) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                (shard_id, o, r.xxh3_128, r.sha256, r.offset, r.first_frame, r.last_frame)
                for o, r in zip(ords, records, strict=True)
            ),
        )
        self.db.execute("UPDATE shards SET state = 'built', error = NULL WHERE id = ?", (shard_id,))

    def record_torrent(
        self,
        shard_id: int,
        file: str,
        fmt: str,
        v1: str | None,
        v2: str | None,
        magnet: str,
        torrent_sha256: str,
        torrent_size: int,
        made_at: str,
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO torrents (shard_id, file, format, info_hash_v1, info_hash_v2, magnet, "
            "torrent_sha256, torrent_size, made_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (shard_id, file, fmt, v1, v2, magnet, torrent_sha256, torrent_size, made_at),
        )

    def built_files(self) -> list[tuple[str, int, str]]:
        """(file, length, sha256) of every built shard."""
        return self.db.execute(
            "SELECT b.file, b.length, b.sha256 FROM builds b JOIN shards s ON s.id = b.shard_id "
            "WHERE s.state = 'built'"
        ).fetchall()

    def build_hashes(self, shard_id: int):
        """The ShardHashes recorded when the shard was built, or None."""
        row = self.db.execute(
            "SELECT length, sha256, piece_size, v1_pieces, v2_root, v2_piece_layer FROM builds "
            "WHERE shard_id = ?",
            (shard_id,),
        ).fetchone()
        if row is None:
            return None
        return ShardHashes(
            length=row[0],
            sha256=bytes.fromhex(row[1]),
            piece_size=row[2],
            v1_pieces=row[3],
            v2_root=row[4],
            v2_piece_layer=row[5],
        )

    def mark_unbuilt(self, file: str) -> None:
        with self.transaction():
            row = self.db.execute("SELECT shard_id FROM builds WHERE file = ?", (file,)).fetchone()
            if row:
                self.db.execute("DELETE FROM builds WHERE shard_id = ?", row)
                self.db.execute("DELETE FROM member_builds WHERE shard_id = ?", row)
                self.db.execute("UPDATE shards SET state = 'planned' WHERE id = ?", row)

    def mark_failed(self, shard_id: int, reason: str) -> None:
        self.db.execute("UPDATE shards SET state = 'failed', error = ? WHERE id = ?", (reason, shard_id))

    # ---- publish (the member index's reads; publications, statements, seeding: state_release.py) ---

    def iter_member_records(self, shard_id: int) -> Iterator[tuple[str, str, int, int, int, int, str, str]]:
        """(id, path, size, offset, first_frame, last_frame, xxh3_128, sha256) of a built shard's members, in
        plan order: what the member index records of each."""
        yield from self.db.execute(
            f"SELECT i.id, {_PATH}, i.size, mb.offset, mb.first_frame, mb.last_frame, mb.xxh3_128, mb.sha256 "
            "FROM member_builds mb "
            "JOIN members m ON m.shard_id = mb.shard_id AND m.ord = mb.ord "
            "JOIN items i ON i.rowid = m.item_rowid WHERE mb.shard_id = ? ORDER BY mb.ord",
            (shard_id,),
        )

    def iter_member_build_parts(self, shard_id: int) -> Iterator[tuple[int, int, int, int, bytes]]:
        """(item rowid, offset, first_frame, last_frame, b'"xxh3_128","sha256"') of a built shard's members
        in plan order, the hashes as the member index's row writes them (json_quote writes a string as
        orjson does: tests/test_member_index.py checks any text). members and member_builds share their
        key, so this reads both in order and no item (index_rows.py joins the items in rowid order). The
        cursor itself, as iter_item_parts': a generator around it cost each of 10^8 rows a resume."""
        return self.db.execute(
            "SELECT m.item_rowid, mb.offset, mb.first_frame, mb.last_frame, "
            "CAST(json_quote(mb.xxh3_128) || ',' || json_quote(mb.sha256) AS BLOB) "
            "FROM member_builds mb JOIN members m ON m.shard_id = mb.shard_id AND m.ord = mb.ord "
            "WHERE mb.shard_id = ? ORDER BY mb.ord",
            (shard_id,),
        )

    def index_gaps(self, shard_id: int, frames: int) -> list[str]:
        """Why a built shard's members cannot all be in the member index, each named (at most one of
        each kind): a build record with no planned member (no plan), a planned member with no build
        record, one whose item is gone, or one whose frames are not among the shard's `frames`. Empty
        when none: what index_rows asks once the rows read do not add up."""
        gaps = []
        row = self.db.execute(
            "SELECT mb.ord FROM member_builds mb LEFT JOIN members m ON m.shard_id = mb.shard_id "
            "AND m.ord = mb.ord WHERE mb.shard_id = ? AND m.ord IS NULL ORDER BY mb.ord LIMIT 1",
            (shard_id,),
        ).fetchone()
        if row:
            gaps.append(f"member {row[0]} has a build record but no plan (no members row)")
        row = self.db.execute(
            "SELECT m.ord, m.item_rowid FROM members m LEFT JOIN member_builds mb "
            "ON mb.shard_id = m.shard_id AND mb.ord = m.ord WHERE m.shard_id = ? AND mb.ord IS NULL "
            "ORDER BY m.ord LIMIT 1",
            (shard_id,),
        ).fetchone()
        if row:
            gaps.append(f"member {row[0]} (item rowid {row[1]}) has no build record")
        row = self.db.execute(
            "SELECT m.ord, m.item_rowid FROM members m LEFT JOIN items i ON i.n = m.item_rowid "
            "WHERE m.shard_id = ? AND i.n IS NULL ORDER BY m.ord LIMIT 1",
            (shard_id,),
        ).fetchone()
        if row:
            gaps.append(f"member {row[0]} has no item (item rowid {row[1]} is gone)")
        row = self.db.execute(
            "SELECT ord, first_frame, last_frame FROM member_builds WHERE shard_id = ? AND NOT "
            "(0 <= first_frame AND first_frame <= last_frame AND last_frame < ?) ORDER BY ord LIMIT 1",
            (shard_id, frames),
        ).fetchone()
        if row:
            gaps.append(
                f"member {row[0]} lies in frames {row[1]}-{row[2]}, but the shard's seek table lists "
                f"{frames} frames"
            )
        return gaps

    def shard_name(self, shard_id: int) -> str:
        row = self.db.execute("SELECT name FROM shards WHERE id = ?", (shard_id,)).fetchone()
        return row[0] if row else f"shard id {shard_id}"

    _ITEM_PARTS = (
        "SELECT i.n - ?, CAST(i.id AS BLOB), CAST(json_quote(i.id) AS BLOB), "
        f"CAST(json_quote({_PATH}) || ',' || i.size AS BLOB) FROM items i"
    )

    def iter_item_parts(self, lo: int, hi: int) -> Iterator[tuple[int, bytes, bytes, bytes]]:
        """(rowid - lo, id as UTF-8, id as JSON, b"<path as JSON>,<size>") of the items with rowids in
        [lo, hi), in rowid order: one range of the table, read in order."""
        return self.db.execute(f"{self._ITEM_PARTS} WHERE i.n >= ? AND i.n < ?", (lo, lo, hi))

    def item_parts(self, rowid: int, lo: int) -> tuple[int, bytes, bytes, bytes] | None:
        """One item's iter_item_parts row (its rowid given less `lo`, as theirs)."""
        return self.db.execute(f"{self._ITEM_PARTS} WHERE i.n = ?", (lo, rowid)).fetchone()

    def item_rowids(self, lo: int, hi: int) -> Iterator[int]:
        for (rowid,) in self.db.execute("SELECT n FROM items WHERE n >= ? AND n < ?", (lo, hi)):
            yield rowid

    def item_facts(self, rowid: int) -> tuple[int, str, str, int] | None:
        """(rowid, id, path, size) of one item, its path rendered."""
        return self.db.execute(f"SELECT n, id, {_PATH}, size FROM items i WHERE n = ?", (rowid,)).fetchone()

    def max_item_rowid(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(n), 0) FROM items").fetchone()[0]


def open_state(workspace: Path, readonly: bool = False) -> State:
    return State(Path(workspace) / layout.STATE, readonly=readonly)
