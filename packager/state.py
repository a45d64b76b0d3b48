"""state.sqlite: the catalog, the plan, and build and publish state. Nothing else in packager speaks SQL
(but ingest.py's bulk catalog queries and state_scrapes.py's swarm history); the schema and the row types
are state_schema.py's.

The items table is sized for 10^8 rows: reads stream through cursors, bulk writes go through
``executemany`` inside one transaction, and the planner works from a temporary table that SQLite sorts.
Membership of a shard lives in ``members``, which is only ever appended to: that is the append-only plan.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import xxhash

from . import layout
from .errors import EnvironmentProblem, WorkspaceError
from .hashing import ShardHashes
from .state_schema import (
    SCHEMA,
    SCHEMA_VERSION,
    MemberRow,
    SeedableRow,
    SeedStatusRow,
    ShardRow,
    TorrentFacts,
    schema_statements,
)

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


class State:
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
            return
        # isolation_level=None: we open transactions explicitly, so one ingest or plan is one commit.
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
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
            version = self._check_version(migratable=True)
            if version == 1:
                self._migrate_from_v1()
            if version in (1, 2):
                self._migrate_from_v2()
            # Tables added since the workspace was made (all CREATE ... IF NOT EXISTS).
            self.db.executescript(SCHEMA)

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
        if version != SCHEMA_VERSION and not (migratable and version in (1, 2)):
            raise WorkspaceError(
                f"{self.path}: unknown state schema version {row and row[0]}",
                hint=None
                if version is None or version > SCHEMA_VERSION
                else "open it once with packager (not read-only) to bring it up to date",
            )
        return version

    def _migrate_from_v1(self) -> None:
        """Schema 1 -> 2: catalog files numbered, row fingerprints, indexes apart from the tables, totals."""
        self.db.create_function("row_fingerprint", 7, row_fingerprint, deterministic=True)
        with self.transaction():
            self.db.execute("ALTER TABLE items RENAME TO items_v1")
            self.db.execute("ALTER TABLE members RENAME TO members_v1")
            tables = [q for q in schema_statements() if "INDEX" not in q.split("(", 1)[0]]
            for statement in tables:
                self.db.execute(statement)
            self.db.execute("INSERT INTO catalog_files (path) SELECT DISTINCT source FROM items_v1")
            self.db.execute(
                "INSERT INTO items (n, id, path, kind, popularity, size, mtime, extra, source, line, "
                "removed, "
                "fp) SELECT v.rowid, v.id, v.path, v.kind, v.popularity, v.size, v.mtime, v.extra, "
                "c.n, v.line, "
                "v.removed, row_fingerprint(v.id, v.path, v.kind, v.popularity, v.size, v.mtime, v.extra) "
                "FROM items_v1 v JOIN catalog_files c ON c.path = v.source ORDER BY v.rowid"
            )
            self.db.execute("INSERT INTO members SELECT * FROM members_v1")
            self.db.execute("DROP TABLE items_v1")
            self.db.execute("DROP TABLE members_v1")
            for statement in schema_statements():
                self.db.execute(statement)
            self.recount_totals()
            self.db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    def _migrate_from_v2(self) -> None:
        """Schema 2 -> 3: extra fields as an array of values, their names once in extra_names."""
        names: dict[int, str] = {}

        def values_of(extra: str) -> str:
            return split_extra(extra, names)[1]

        def key_of(extra: str) -> int:
            return split_extra(extra, names)[0]

        self.db.create_function("extra_values", 1, values_of, deterministic=True)
        self.db.create_function("extra_key", 1, key_of, deterministic=True)
        self.db.create_function("path_key", 1, path_key, deterministic=True)
        with self.transaction():
            columns = [r[1] for r in self.db.execute("PRAGMA table_info(items)")]
            if "xk" not in columns:
                self.db.execute("ALTER TABLE items ADD COLUMN xk INTEGER")
            if "ph" not in columns:
                self.db.execute("ALTER TABLE items ADD COLUMN ph INTEGER")
            self.db.execute("UPDATE items SET ph = path_key(path) WHERE ph IS NULL")
            self.db.execute("DROP INDEX IF EXISTS items_path")
            self.db.execute("CREATE INDEX IF NOT EXISTS items_ph ON items (ph)")
            self.db.execute("DROP INDEX IF EXISTS items_fp")  # an earlier refresh kept it; items_id serves
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS extra_names (h INTEGER PRIMARY KEY, names TEXT NOT NULL)"
            )
            self.db.execute(
                "UPDATE items SET xk = extra_key(extra), extra = extra_values(extra) "
                "WHERE extra IS NOT NULL AND xk IS NULL"
            )
            self.db.executemany("INSERT OR IGNORE INTO extra_names VALUES (?, ?)", names.items())
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

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
            "SELECT n.names, i.extra FROM items i LEFT JOIN extra_names n ON n.h = i.xk WHERE i.id = ?",
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
        return self.db.execute(
            "SELECT kind, COUNT(*), SUM(removed), SUM(removed = 0 AND m.item_rowid IS NULL), "
            "COALESCE(SUM(CASE WHEN removed = 0 AND m.item_rowid IS NULL THEN size END), 0) "
            "FROM items i LEFT JOIN members m ON m.item_rowid = i.rowid GROUP BY kind ORDER BY kind"
        ).fetchall()

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
        """Add (kind, items, removed, unplanned, unplanned bytes) deltas. Call in a transaction."""
        self.db.executemany(
            "INSERT INTO catalog_totals VALUES (?,?,?,?,?) ON CONFLICT (kind) DO UPDATE SET "
            "items = items + excluded.items, removed = removed + excluded.removed, "
            "unplanned = unplanned + excluded.unplanned, unplanned_bytes = unplanned_bytes + "
            "excluded.unplanned_bytes",
            rows,
        )

    # ---- plan -----------------------------------------------------------------------------------

    def candidates(
        self, groups: list[tuple[tuple[str, ...], float | None, float | None]]
    ) -> Iterator[tuple[int, int, int, float, str, str]]:
        """(group, item rowid, size, popularity, kind, path) of every unassigned, present item that one of
        the (kinds, lo, hi) groups takes (the first that matches), in plan order: group, then popularity
        desc, id asc. One scan of the items and one sort, streamed from SQLite's sorter: Python never holds
        the list, and nothing is written twice (a temporary table of the candidates cost 10^7 rows x 90
        bytes written and read again). The sorter takes every row before it gives the first, so members may
        be appended while this runs: the NOT EXISTS has been answered by then."""
        cases, args = [], []
        for g, (kinds, lo, hi) in enumerate(groups):
            cond = [f"i.kind IN ({','.join('?' * len(kinds))})"]
            args.extend(kinds)
            if lo is not None:
                cond.append("i.popularity >= ?")
                args.append(lo)
            if hi is not None:
                cond.append("i.popularity < ?")
                args.append(hi)
            cases.append(f"WHEN {' AND '.join(cond)} THEN {g}")
        if not cases:
            return
        group = f"CASE {' '.join(cases)} END"
        yield from self.db.execute(
            "SELECT grp, n, size, popularity, kind, path FROM (SELECT "
            f"{group} AS grp, i.n, i.size, i.popularity, i.kind, i.path, i.id FROM items i "
            "WHERE i.removed = 0 AND NOT EXISTS (SELECT 1 FROM members m WHERE m.item_rowid = i.n)) "
            "WHERE grp IS NOT NULL ORDER BY grp, popularity DESC, id ASC",
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
            "SELECT m.ord, i.id, i.path, i.kind, COALESCE(p.popularity, i.popularity), i.size, i.mtime "
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

    # ---- publish --------------------------------------------------------------------------------

    def publications(self) -> list[tuple[str, str]]:
        """(phase, published_at) in the order the phases were first published."""
        return self.db.execute("SELECT phase, published_at FROM publications ORDER BY rowid").fetchall()

    def published_entries(self) -> list[tuple[int, str, str]]:
        """(shard_id, phase, entry JSON) of every published torrent, in release order."""
        return self.db.execute("SELECT shard_id, phase, entry FROM published_torrents ORDER BY n").fetchall()

    def torrent_facts(self, shard_id: int) -> TorrentFacts | None:
        row = self.db.execute(
            "SELECT b.file, b.length, b.sha256, b.piece_size, t.file, t.format, t.info_hash_v1, "
            "t.info_hash_v2, t.magnet, t.torrent_sha256, t.torrent_size FROM builds b "
            "JOIN torrents t ON t.shard_id = b.shard_id WHERE b.shard_id = ?",
            (shard_id,),
        ).fetchone()
        return TorrentFacts(*row) if row else None

    def iter_member_records(self, shard_id: int) -> Iterator[tuple[str, str, int, int, int, int, str, str]]:
        """(id, path, size, offset, first_frame, last_frame, xxh3_128, sha256) of a built shard's members, in
        plan order: what the member index records of each."""
        yield from self.db.execute(
            "SELECT i.id, i.path, i.size, mb.offset, mb.first_frame, mb.last_frame, mb.xxh3_128, mb.sha256 "
            "FROM member_builds mb "
            "JOIN members m ON m.shard_id = mb.shard_id AND m.ord = mb.ord "
            "JOIN items i ON i.rowid = m.item_rowid WHERE mb.shard_id = ? ORDER BY mb.ord",
            (shard_id,),
        )

    def iter_member_builds(self, shard_id: int) -> Iterator[tuple]:
        """What iter_member_records gives, in plan order, with the item's rowid in place of its id, and its
        path and size None: members and member_builds share their key, so this reads both in order and
        no item (index_rows.py joins the items in rowid order)."""
        yield from self.db.execute(
            "SELECT m.item_rowid, NULL, NULL, mb.offset, mb.first_frame, mb.last_frame, mb.xxh3_128, "
            "mb.sha256 "
            "FROM member_builds mb JOIN members m ON m.shard_id = mb.shard_id AND m.ord = mb.ord "
            "WHERE mb.shard_id = ? ORDER BY mb.ord",
            (shard_id,),
        )

    def iter_item_facts(self, lo: int, hi: int) -> Iterator[tuple[int, str, str, int]]:
        """(rowid, id, path, size) of the items with rowids in [lo, hi), in rowid order: one range of the
        table, read in order."""
        yield from self.db.execute("SELECT n, id, path, size FROM items WHERE n >= ? AND n < ?", (lo, hi))

    def item_facts(self, rowid: int) -> tuple[int, str, str, int] | None:
        return self.db.execute("SELECT n, id, path, size FROM items WHERE n = ?", (rowid,)).fetchone()

    def max_item_rowid(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(n), 0) FROM items").fetchone()[0]

    def record_publication(
        self, phase: str, published_at: str, entries: Iterable[tuple[int, str, str]]
    ) -> None:
        """Record a phase as published (its first date stays) and append (shard_id, phase, entry JSON) rows
        for its newly published torrents. Call inside a transaction."""
        self.db.execute(
            "INSERT OR IGNORE INTO publications (phase, published_at) VALUES (?, ?)", (phase, published_at)
        )
        self.db.executemany("INSERT INTO published_torrents (shard_id, phase, entry) VALUES (?,?,?)", entries)

    def statements(self) -> list[tuple[int, str, bytes, bytes | None]]:
        """(publication, sha256, statement bytes, signature bytes or None) of every statement, in order."""
        return self.db.execute("SELECT n, sha256, body, signature FROM statements ORDER BY n").fetchall()

    def record_statement(self, n: int, sha256: str, body: bytes, signature: bytes | None) -> None:
        """Append publication `n`'s statement. Call inside the transaction that records the publication."""
        self.db.execute("INSERT INTO statements VALUES (?, ?, ?, ?)", (n, sha256, body, signature))

    # ---- seed -----------------------------------------------------------------------------------

    def seedable(self, phases: Iterable[str] | None = None) -> list[SeedableRow]:
        """Published torrents in release order, optionally of some phases only. file and length are None for
        a shard that is no longer built (its file went missing): still published, so still whitelisted."""
        sql = (
            "SELECT s.id, s.name, s.phase, b.file, b.length, t.file, t.info_hash_v1, t.info_hash_v2 "
            "FROM published_torrents p JOIN shards s ON s.id = p.shard_id "
            "JOIN torrents t ON t.shard_id = s.id LEFT JOIN builds b ON b.shard_id = s.id"
        )
        args: list = []
        if phases is not None:
            args = list(phases)
            sql += f" WHERE s.phase IN ({','.join('?' * len(args))})"
        return [SeedableRow(*r) for r in self.db.execute(sql + " ORDER BY p.n", args)]

    def seed_uploaded(self) -> dict[str, int]:
        """info-hash -> all-time bytes uploaded, as the seeder last recorded it."""
        return dict(self.db.execute("SELECT info_hash, uploaded FROM seed_torrents"))

    def record_seed_status(self, rows: Iterable[SeedStatusRow]) -> None:
        """Upsert the seeder's latest view of its torrents. Uploaded totals only grow; tracker_replies is
        added; a None reply or error time keeps the stored one; a reply clears a stored tracker error."""
        self.db.executemany(
            "INSERT INTO seed_torrents (info_hash, shard_id, state, uploaded, peers, tracker_replies, "
            "last_reply_at, last_reply_peers, tracker_error, tracker_error_at, error, error_at, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(info_hash) DO UPDATE SET "
            "shard_id=excluded.shard_id, state=excluded.state, uploaded=MAX(uploaded, excluded.uploaded), "
            "peers=excluded.peers, "
            "tracker_replies=tracker_replies + excluded.tracker_replies, "
            "last_reply_at=COALESCE(excluded.last_reply_at, last_reply_at), "
            "last_reply_peers=COALESCE(excluded.last_reply_peers, last_reply_peers), "
            "tracker_error=CASE WHEN excluded.last_reply_at IS NOT NULL AND excluded.tracker_error IS NULL "
            "THEN NULL ELSE COALESCE(excluded.tracker_error, tracker_error) END, "
            "tracker_error_at=COALESCE(excluded.tracker_error_at, tracker_error_at), "
            "error=excluded.error, error_at=COALESCE(excluded.error_at, error_at), "
            "updated_at=excluded.updated_at",
            (
                (
                    r.info_hash,
                    r.shard_id,
                    r.state,
                    r.uploaded,
                    r.peers,
                    r.tracker_replies,
                    r.last_reply_at,
                    r.last_reply_peers,
                    r.tracker_error,
                    r.tracker_error_at,
                    r.error,
                    r.error_at,
                    r.updated_at,
                )
                for r in rows
            ),
        )

    def seed_status(self) -> list[SeedStatusRow]:
        return [
            SeedStatusRow(*r)
            for r in self.db.execute(
                "SELECT info_hash, shard_id, state, uploaded, peers, tracker_replies, last_reply_at, "
                "last_reply_peers, tracker_error, tracker_error_at, error, error_at, updated_at "
                "FROM seed_torrents ORDER BY shard_id"
            )
        ]


def open_state(workspace: Path, readonly: bool = False) -> State:
    return State(Path(workspace) / layout.STATE, readonly=readonly)


# Changed when what ingest checks changes: rows fingerprinted under other rules are checked again.
FINGERPRINT_RULES = b"packager catalog rules 3"


def fingerprint_seed(kinds, trust_sizes: bool) -> int:
    """The seed of every row fingerprint under these ingest rules, these kinds (release.toml) and this
    choice of --trust-sizes: a line accepted under other rules, kinds or sizes never matches, so it is read
    and checked again."""
    rules = FINGERPRINT_RULES + (b" trusted sizes" if trust_sizes else b" statted sizes")
    return xxhash.xxh3_64_intdigest(rules + b"\0" + "\0".join(sorted(kinds)).encode())


def path_key(path: str) -> int:
    """The 64-bit key of a path in items_ph, as a signed int64 (equal paths, equal keys; a repeated key is
    then told apart by the paths themselves)."""
    return xxhash.xxh3_64_intdigest(path.encode("utf-8", "surrogatepass")) - 2**63


def line_fingerprint(raw: bytes, seed: int) -> int:
    """The fingerprint of a JSON Lines row: xxh3_64 of the line's own bytes, as a signed int64. A refresh
    hashes each line and matches it with the stored fingerprints; only lines that differ are parsed and
    checked (a line is the row, its id included, so an equal fingerprint is the same row). A collision
    would hide one change with probability 2^-64; the catalog's author gains nothing by it."""
    return xxhash.xxh3_64_intdigest(raw, seed) - 2**63


def row_fingerprint(
    item_id: str,
    path: str,
    kind: str,
    popularity: float,
    size: int,
    mtime: int | None,
    extra: str | None,
    extra_key: int | None = None,
    seed: int = 0,
) -> int:
    """The fingerprint of a row read from CSV, Parquet or SQLite: of its content, id included."""
    key = orjson.dumps((item_id, path, kind, float(popularity), size, mtime, extra, extra_key))
    return xxhash.xxh3_64_intdigest(key, seed) - 2**63


def dumps_extra(values) -> str:
    """Canonical JSON of the values of a row's extra fields (a sequence, in the order of their sorted names),
    so re-ingesting the same row compares equal."""
    try:
        return orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # integers beyond 64 bits and the like: the standard encoder copes
        return json.dumps(list(values), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def extra_names_key(names: tuple[str, ...]) -> tuple[int, str]:
    """(key, names as JSON) of a set of extra field names (sorted): the key is 47 bits of their hash, six
    bytes in a row instead of the names themselves (at 10^8 rows the names were ~45 of each row's bytes)."""
    text = orjson.dumps(names)
    return xxhash.xxh3_64_intdigest(text) >> 17, text.decode()


def split_extra(extra: str, names: dict[int, str]) -> tuple[int, str]:
    """(names key, values JSON) of extra fields stored as a JSON object (schema 2); records the names."""
    obj = json.loads(extra)
    keys = tuple(sorted(obj))
    h, text = extra_names_key(keys)
    names[h] = text
    return h, dumps_extra([obj[k] for k in keys])


def loads_extra(names: str | None, values: str | None) -> dict:
    """The extra fields of an item, from extra_names.names and items.extra."""
    if names is None or values is None:
        return {}
    return dict(zip(json.loads(names), json.loads(values), strict=True))
