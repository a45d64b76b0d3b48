"""state.sqlite: the catalog, the plan, and build and publish state. Nothing else in packager speaks SQL.

The items table is sized for 10^8 rows: reads stream through cursors, bulk writes go through
``executemany`` inside one transaction, and the planner works from a temporary table that SQLite sorts.
Membership of a shard lives in ``members``, which is only ever appended to: that is the append-only plan.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from . import layout
from .errors import EnvironmentProblem, WorkspaceError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    popularity REAL NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER,
    extra TEXT,                 -- the catalog row's other fields, as JSON
    source TEXT NOT NULL,       -- catalog file the row came from
    line INTEGER NOT NULL,      -- its line (or rowid) there
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    phase TEXT NOT NULL,
    tier TEXT NOT NULL,
    seq INTEGER NOT NULL,
    items INTEGER NOT NULL,
    bytes INTEGER NOT NULL,     -- sum of member sizes (uncompressed content)
    pop_min REAL NOT NULL,
    pop_max REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'planned',   -- planned | built | failed
    error TEXT,
    planned_at TEXT NOT NULL,
    UNIQUE (phase, tier, seq)
);
CREATE TABLE IF NOT EXISTS members (
    shard_id INTEGER NOT NULL REFERENCES shards(id),
    ord INTEGER NOT NULL,       -- position in the shard: plan order
    item_rowid INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (shard_id, ord)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS builds (
    shard_id INTEGER PRIMARY KEY REFERENCES shards(id),
    file TEXT NOT NULL,         -- path relative to the workspace
    length INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    piece_size INTEGER NOT NULL,
    v1_pieces BLOB NOT NULL,
    v2_root BLOB,
    v2_piece_layer BLOB,
    frames INTEGER NOT NULL,
    uncompressed INTEGER NOT NULL,
    built_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS member_builds (
    shard_id INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    xxh3_128 TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    offset INTEGER NOT NULL,
    first_frame INTEGER NOT NULL,
    last_frame INTEGER NOT NULL,
    PRIMARY KEY (shard_id, ord)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS torrents (
    shard_id INTEGER PRIMARY KEY REFERENCES shards(id),
    file TEXT NOT NULL,
    format TEXT NOT NULL,
    info_hash_v1 TEXT,
    info_hash_v2 TEXT,
    magnet TEXT NOT NULL,
    torrent_sha256 TEXT NOT NULL,
    torrent_size INTEGER NOT NULL,
    made_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seed_torrents (
    info_hash TEXT PRIMARY KEY, -- v1 hex, or the full v2 hex of a v2-only torrent
    shard_id INTEGER NOT NULL,
    state TEXT NOT NULL,        -- seeding | paused | error | not added | ... as the seeder last saw it
    uploaded INTEGER NOT NULL DEFAULT 0,     -- all-time payload bytes uploaded by our seeder
    peers INTEGER NOT NULL DEFAULT 0,
    tracker_replies INTEGER NOT NULL DEFAULT 0,
    last_reply_at TEXT,
    last_reply_peers INTEGER,
    tracker_error TEXT,
    tracker_error_at TEXT,
    error TEXT,
    error_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS publications (
    phase TEXT PRIMARY KEY,
    published_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS published_torrents (
    n INTEGER PRIMARY KEY,      -- release order: only ever appended to
    shard_id INTEGER NOT NULL UNIQUE REFERENCES shards(id),
    phase TEXT NOT NULL,
    entry TEXT NOT NULL         -- the torrent's release.json entry (JSON), frozen when first published
);
"""


@dataclass(frozen=True)
class ShardRow:
    id: int
    name: str
    phase: str
    tier: str
    seq: int
    items: int
    bytes: int
    pop_min: float
    pop_max: float
    state: str
    error: str | None


@dataclass(frozen=True)
class MemberRow:
    """A shard member in plan order, with what the container writer needs."""

    ord: int
    id: str
    path: str
    kind: str
    popularity: float
    size: int
    mtime: int | None


@dataclass(frozen=True)
class TorrentFacts:
    """What publishing needs of a built shard and its torrent."""

    file: str  # shards/<name>.tar.zst, relative to the workspace
    length: int
    sha256: str
    piece_size: int
    torrent_file: str  # torrents/<name>.tar.zst.torrent
    format: str
    info_hash_v1: str | None
    info_hash_v2: str | None
    magnet: str
    torrent_sha256: str
    torrent_size: int


@dataclass(frozen=True)
class SeedableRow:
    """A published torrent: what the seeder and the tracker whitelist need."""

    shard_id: int
    name: str
    phase: str
    file: str | None  # shards/<name>.tar.zst, relative to the workspace; None if no longer built
    length: int | None
    torrent_file: str  # torrents/<name>.tar.zst.torrent
    info_hash_v1: str | None
    info_hash_v2: str | None  # full 64 hex


@dataclass(frozen=True)
class SeedStatusRow:
    """The seeder's record of one torrent in seed_torrents. Written, tracker_replies is a count to add; read,
    it is the total."""

    info_hash: str
    shard_id: int
    state: str
    uploaded: int
    peers: int
    tracker_replies: int = 0
    last_reply_at: str | None = None
    last_reply_peers: int | None = None
    tracker_error: str | None = None
    tracker_error_at: str | None = None
    error: str | None = None
    error_at: str | None = None
    updated_at: str = ""


class State:
    """A connection to state.sqlite with every query packager makes."""

    def __init__(self, path: Path, create: bool = False, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            # Build workers read their shard's members while the coordinator writes (WAL allows it).
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=60)
            return
        if not create and not self.path.exists():
            raise WorkspaceError(
                f"{self.path}: no state database: is this a release workspace?",
                hint="create one with `packager init DIR --root ARCHIVE`",
            )
        # isolation_level=None: we open transactions explicitly, so one ingest or plan is one commit.
        # check_same_thread=False: ingest stages rows from a writer thread while the main thread parses;
        # the two never use the connection at the same time.
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA temp_store=FILE")
        self.db.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache bound
        if create:
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        else:
            try:
                row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            except sqlite3.DatabaseError as e:
                raise WorkspaceError(f"{self.path}: not a packager state database ({e})") from None
            if not row or int(row[0]) != SCHEMA_VERSION:
                raise WorkspaceError(f"{self.path}: unknown state schema version {row and row[0]}")
            # Tables added since the workspace was made (all CREATE ... IF NOT EXISTS).
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    # ---- ingest ---------------------------------------------------------------------------------

    def begin_ingest(self) -> int:
        """Prepare to insert catalog rows straight into items; returns the rowid watermark.

        Rows go in with INSERT OR IGNORE, so a new row is written once. A batch that inserts fewer rows than
        it holds has rows whose id or path was taken (by an earlier ingest or a row of this one); those
        rows, and only those, are copied to temp.conflicts to be examined afterwards. (A trigger doing
        the same tripled the insert time: 9.7 s instead of 3.4 s per million rows.) Call in a transaction."""
        for table in ("conflicts", "batch"):
            self.db.execute(f"DROP TABLE IF EXISTS temp.{table}")
            self.db.execute(
                f"CREATE TEMP TABLE {table} (id TEXT, path TEXT, kind TEXT, popularity REAL, size INTEGER, "
                "mtime INTEGER, extra TEXT, source TEXT, line INTEGER)"
            )
        return self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM items").fetchone()[0]

    def insert_items(self, rows: list[tuple], watermark: int) -> None:
        """(id, path, kind, popularity, size, mtime, extra, source, line) rows, after begin_ingest."""
        inserted = self.db.executemany(
            "INSERT OR IGNORE INTO items (id, path, kind, popularity, size, mtime, extra, source, line) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        ).rowcount
        if inserted == len(rows):
            return
        # (source, line) is unique within an ingest, so a row is in items only if that row put it there.
        self.db.executemany("INSERT INTO temp.batch VALUES (?,?,?,?,?,?,?,?,?)", rows)
        self.db.execute(
            "INSERT INTO temp.conflicts SELECT b.* FROM temp.batch b WHERE NOT EXISTS (SELECT 1 FROM items i "
            "WHERE i.id = b.id AND i.rowid > ? AND i.source = b.source AND i.line = b.line)",
            (watermark,),
        )
        self.db.execute("DELETE FROM temp.batch")

    def end_ingest(self) -> None:
        self.db.execute("DROP TABLE IF EXISTS temp.batch")

    def conflict_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM temp.conflicts").fetchone()[0]

    def repeated_in_ingest(self, watermark: int) -> Iterator[tuple[str, str, str, int, str, int]]:
        """Rows repeating an id or path first seen in this same ingest:
        (what, value, first source, first line, repeat source, repeat line)."""
        yield from self.db.execute(
            "SELECT 'id', c.id, i.source, i.line, c.source, c.line FROM temp.conflicts c "
            "JOIN items i ON i.id = c.id WHERE i.rowid > ? "
            "UNION ALL "
            "SELECT 'path', c.path, i.source, i.line, c.source, c.line FROM temp.conflicts c "
            "JOIN items i ON i.path = c.path WHERE i.rowid > ? AND i.id != c.id "
            "AND NOT EXISTS (SELECT 1 FROM items k WHERE k.id = c.id AND k.rowid > ?) "
            "UNION ALL "
            "SELECT 'id', c.id, f.source, f.line, c.source, c.line FROM temp.conflicts c "
            "JOIN (SELECT id, MIN(rowid) AS first FROM temp.conflicts GROUP BY id HAVING COUNT(*) > 1) d "
            "ON d.id = c.id AND c.rowid != d.first JOIN temp.conflicts f ON f.rowid = d.first",
            (watermark, watermark, watermark),
        )

    def path_clashes(self, watermark: int) -> Iterator[tuple[str, str, int, str]]:
        """Rows whose path belongs to another id known before this ingest: (path, source, line, other id)."""
        yield from self.db.execute(
            "SELECT c.path, c.source, c.line, i.id FROM temp.conflicts c JOIN items i ON i.path = c.path "
            "WHERE i.id != c.id AND i.rowid <= ? ORDER BY c.rowid",
            (watermark,),
        )

    def changed_known_items(self, watermark: int) -> Iterator[tuple]:
        """Rows that change an id known before this ingest: (id, source, line, shard name or None, shard
        state or None, old path, new path, old kind, new kind, old pop, new pop, old size, new size, old
        mtime, new mtime, old extra, new extra)."""
        yield from self.db.execute(
            "SELECT c.id, c.source, c.line, sh.name, sh.state, i.path, c.path, i.kind, c.kind, i.popularity, "
            "c.popularity, i.size, c.size, i.mtime, c.mtime, i.extra, c.extra "
            "FROM temp.conflicts c JOIN items i ON i.id = c.id "
            "LEFT JOIN members m ON m.item_rowid = i.rowid LEFT JOIN shards sh ON sh.id = m.shard_id "
            "WHERE i.rowid <= ? AND (i.path IS NOT c.path OR i.kind IS NOT c.kind OR "
            "i.popularity IS NOT c.popularity OR i.size IS NOT c.size OR i.mtime IS NOT c.mtime OR "
            "i.extra IS NOT c.extra) ORDER BY c.rowid",
            (watermark,),
        )

    def item_placement(self, item_id: str) -> tuple[int, int, str | None, str | None, int | None] | None:
        """(item rowid, removed, shard name, shard state, shard id) of an id, or None if unknown."""
        return self.db.execute(
            "SELECT i.rowid, i.removed, sh.name, sh.state, sh.id FROM items i "
            "LEFT JOIN members m ON m.item_rowid = i.rowid LEFT JOIN shards sh ON sh.id = m.shard_id "
            "WHERE i.id = ?",
            (item_id,),
        ).fetchone()

    def mark_removed(self, rowid: int, drop_from_shard: int | None) -> None:
        """Mark an item removed; take it out of its shard only if that shard is not built. Then refresh the
        shard's totals (an emptied shard is deleted: nothing was written from it). Call in a transaction."""
        self.db.execute("UPDATE items SET removed = 1 WHERE rowid = ?", (rowid,))
        if drop_from_shard is None:
            return
        self.db.execute("DELETE FROM members WHERE item_rowid = ?", (rowid,))
        left = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(i.size), 0), MIN(i.popularity), MAX(i.popularity) FROM members m "
            "JOIN items i ON i.rowid = m.item_rowid WHERE m.shard_id = ?",
            (drop_from_shard,),
        ).fetchone()
        if left[0] == 0:
            self.db.execute("DELETE FROM shards WHERE id = ?", (drop_from_shard,))
        else:
            self.db.execute(
                "UPDATE shards SET items = ?, bytes = ?, pop_min = ?, pop_max = ? WHERE id = ?",
                (*left, drop_from_shard),
            )

    def refresh_unbuilt_shard_sizes(self) -> None:
        """Recompute bytes of shards not yet built, after ingest corrected a member's size."""
        self.db.execute(
            "UPDATE shards SET bytes = (SELECT COALESCE(SUM(i.size), 0) FROM members m JOIN items i "
            "ON i.rowid = m.item_rowid WHERE m.shard_id = shards.id) WHERE state != 'built'"
        )

    def drop_conflicts(self, keys: Iterable[tuple[str, int]]) -> None:
        self.db.executemany("DELETE FROM temp.conflicts WHERE source = ? AND line = ?", keys)

    def apply_changes(self, watermark: int) -> int:
        """Update known items from the remaining conflict rows; returns how many changed."""
        return self.db.execute(
            "UPDATE items SET path=c.path, kind=c.kind, popularity=c.popularity, size=c.size, mtime=c.mtime, "
            "extra=c.extra, source=c.source, line=c.line FROM temp.conflicts c "
            "WHERE items.id = c.id AND items.rowid <= ? AND (items.path IS NOT c.path OR "
            "items.kind IS NOT c.kind OR items.popularity IS NOT c.popularity OR items.size IS NOT c.size "
            "OR items.mtime IS NOT c.mtime OR items.extra IS NOT c.extra)",
            (watermark,),
        ).rowcount

    def added_since(self, watermark: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items WHERE rowid > ?", (watermark,)).fetchone()[0]

    # ---- plan -----------------------------------------------------------------------------------

    def load_candidates(self, kinds: tuple[str, ...], lo: float | None, hi: float | None) -> int:
        """Fill temp.cand with the unassigned, present items of these kinds in [lo, hi), in plan order
        (popularity desc, id asc). SQLite sorts; Python never holds the list."""
        self.db.execute("DROP TABLE IF EXISTS temp.cand")
        self.db.execute(
            "CREATE TEMP TABLE cand (n INTEGER PRIMARY KEY, item_rowid INTEGER, size INTEGER, "
            "popularity REAL)"
        )
        where = [
            f"i.kind IN ({','.join('?' * len(kinds))})",
            "i.removed = 0",
            "NOT EXISTS (SELECT 1 FROM members m WHERE m.item_rowid = i.rowid)",
        ]
        args: list = list(kinds)
        if lo is not None:
            where.append("i.popularity >= ?")
            args.append(lo)
        if hi is not None:
            where.append("i.popularity < ?")
            args.append(hi)
        return self.db.execute(
            "INSERT INTO temp.cand (item_rowid, size, popularity) SELECT i.rowid, i.size, i.popularity "
            f"FROM items i WHERE {' AND '.join(where)} ORDER BY i.popularity DESC, i.id ASC",
            args,
        ).rowcount

    def iter_candidates(self) -> Iterator[tuple[int, int, float]]:
        yield from self.db.execute("SELECT item_rowid, size, popularity FROM temp.cand ORDER BY n")

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

    def add_members(self, rows: Iterable[tuple[int, int, int]]) -> None:
        """(shard_id, ord, item_rowid) rows."""
        self.db.executemany("INSERT INTO members (shard_id, ord, item_rowid) VALUES (?,?,?)", rows)

    def unassigned_counts(self) -> list[tuple[str, int, int]]:
        """(kind, items, bytes) of present items in no shard."""
        return self.db.execute(
            "SELECT kind, COUNT(*), COALESCE(SUM(size),0) FROM items i WHERE removed = 0 AND NOT EXISTS "
            "(SELECT 1 FROM members m WHERE m.item_rowid = i.rowid) GROUP BY kind ORDER BY kind"
        ).fetchall()

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
            "SELECT m.ord, i.id, i.path, i.kind, i.popularity, i.size, i.mtime FROM members m "
            "JOIN items i ON i.rowid = m.item_rowid WHERE m.shard_id = ? ORDER BY m.ord",
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
        from .hashing import ShardHashes

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

    def iter_member_locations(self, shard_id: int) -> Iterator[tuple[str, int, int, int, int]]:
        """(id, size, offset, first_frame, last_frame) of a built shard's members, in plan order."""
        yield from self.db.execute(
            "SELECT i.id, i.size, mb.offset, mb.first_frame, mb.last_frame FROM member_builds mb "
            "JOIN members m ON m.shard_id = mb.shard_id AND m.ord = mb.ord "
            "JOIN items i ON i.rowid = m.item_rowid WHERE mb.shard_id = ? ORDER BY mb.ord",
            (shard_id,),
        )

    def record_publication(
        self, phase: str, published_at: str, entries: Iterable[tuple[int, str, str]]
    ) -> None:
        """Record a phase as published (its first date stays) and append (shard_id, phase, entry JSON) rows
        for its newly published torrents. Call inside a transaction."""
        self.db.execute(
            "INSERT OR IGNORE INTO publications (phase, published_at) VALUES (?, ?)", (phase, published_at)
        )
        self.db.executemany("INSERT INTO published_torrents (shard_id, phase, entry) VALUES (?,?,?)", entries)

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

    def item_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]


def open_state(workspace: Path) -> State:
    return State(Path(workspace) / layout.STATE)


def dumps_extra(extra: dict) -> str | None:
    """Canonical JSON for extra catalog fields, so re-ingesting the same row compares equal."""
    if not extra:
        return None
    try:
        return orjson.dumps(extra, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # integers beyond 64 bits and the like: the standard encoder copes
        return json.dumps(extra, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
