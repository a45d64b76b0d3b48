"""Migrations of state.sqlite from older schema versions, each in one transaction: a killed migration
leaves the state as it was, and the next open migrates it again."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from .state_schema import (
    SCHEMA_VERSION,
    path_key,
    path_named_by_id,
    row_fingerprint,
    schema_statements,
    split_extra,
    stored_path,
)

if TYPE_CHECKING:
    from .state import State

# The versions an open brings up to SCHEMA_VERSION.
MIGRATABLE = (1, 2, 3, 4, 5, 6)


def migrate(state: State, version: int) -> None:
    """Bring a state of schema `version` (SCHEMA_VERSION or one of MIGRATABLE) up to SCHEMA_VERSION. The steps
    from 5 on rewrite the items table: through a rollback journal (bulk_journal), as the write-ahead log
    would hold a second copy of it beside the state (2.4x the state's size on disk at its peak)."""
    if version in MIGRATABLE:
        # Minutes at 10^8 items, with nothing else said: a user would think it hung (review F11).
        items = state.db.execute("SELECT COALESCE(MAX(n), 0) FROM items").fetchone()[0]
        print(
            f"{state.path}: migrating from schema {version} to {SCHEMA_VERSION} ({items:,} items); "
            "interrupted, it leaves the state as it was ...",
            file=sys.stderr,
            flush=True,
        )
        start = time.monotonic()
        with state.bulk_journal():
            _migrate(state, version)
        print(f"{state.path}: migrated in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)


def _migrate(state: State, version: int) -> None:
    if version == 1:
        _from_v1(state)
    if version in (1, 2):
        _from_v2(state)
    if version in (1, 2, 3):
        _from_v3(state)
    if version in (1, 2, 3, 4):
        _from_v4(state)
    if version in (1, 2, 3, 4, 5):
        _from_v5(state)
    if version in (1, 2, 3, 4, 5, 6):
        _from_v6(state)


def _from_v1(state: State) -> None:
    """Schema 1 -> 2: catalog files numbered, row fingerprints, indexes apart from the tables, totals."""
    state.db.create_function("row_fingerprint", 7, row_fingerprint, deterministic=True)
    with state.transaction():
        state.db.execute("ALTER TABLE items RENAME TO items_v1")
        state.db.execute("ALTER TABLE members RENAME TO members_v1")
        tables = [q for q in schema_statements() if "INDEX" not in q.split("(", 1)[0]]
        for statement in tables:
            state.db.execute(statement)
        state.db.execute("INSERT INTO catalog_files (path) SELECT DISTINCT source FROM items_v1")
        state.db.execute(
            "INSERT INTO items (n, id, path, kind, popularity, size, mtime, extra, removed, fp) "
            "SELECT v.rowid, v.id, v.path, v.kind, v.popularity, v.size, v.mtime, v.extra, v.removed, "
            "row_fingerprint(v.id, v.path, v.kind, v.popularity, v.size, v.mtime, v.extra) "
            "FROM items_v1 v ORDER BY v.rowid"
        )
        state.db.execute("INSERT INTO members SELECT * FROM members_v1")
        state.db.execute("DROP TABLE items_v1")
        state.db.execute("DROP TABLE members_v1")
        for statement in schema_statements():
            state.db.execute(statement)
        # The totals as schema 2 counted them (kinds by name: _from_v5 numbers them).
        state.db.execute("DELETE FROM catalog_totals")
        state.db.execute(
            "INSERT INTO catalog_totals SELECT kind, COUNT(*), SUM(removed), "
            "SUM(removed = 0 AND m.item_rowid IS NULL), "
            "COALESCE(SUM(CASE WHEN removed = 0 AND m.item_rowid IS NULL THEN size END), 0) "
            "FROM items i LEFT JOIN members m ON m.item_rowid = i.rowid GROUP BY kind"
        )
        state.db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def _from_v2(state: State) -> None:
    """Schema 2 -> 3: extra fields as an array of values, their names once in extra_names."""
    names: dict[int, str] = {}

    def values_of(extra: str) -> str:
        return split_extra(extra, names)[1]

    def key_of(extra: str) -> int:
        return split_extra(extra, names)[0]

    state.db.create_function("extra_values", 1, values_of, deterministic=True)
    state.db.create_function("extra_key", 1, key_of, deterministic=True)
    state.db.create_function("path_key", 1, path_key, deterministic=True)
    with state.transaction():
        columns = [r[1] for r in state.db.execute("PRAGMA table_info(items)")]
        if "xk" not in columns:
            state.db.execute("ALTER TABLE items ADD COLUMN xk INTEGER")
        if "ph" not in columns:
            state.db.execute("ALTER TABLE items ADD COLUMN ph INTEGER")
        state.db.execute("UPDATE items SET ph = path_key(path) WHERE ph IS NULL")
        state.db.execute("DROP INDEX IF EXISTS items_path")
        state.db.execute("CREATE INDEX IF NOT EXISTS items_ph ON items (ph)")
        state.db.execute("DROP INDEX IF EXISTS items_fp")  # an earlier refresh kept it; items_id serves
        state.db.execute(
            "CREATE TABLE IF NOT EXISTS extra_names (h INTEGER PRIMARY KEY, names TEXT NOT NULL)"
        )
        state.db.execute(
            "UPDATE items SET xk = extra_key(extra), extra = extra_values(extra) "
            "WHERE extra IS NOT NULL AND xk IS NULL"
        )
        state.db.executemany("INSERT OR IGNORE INTO extra_names (h, names) VALUES (?, ?)", names.items())
        state.db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")


def _from_v3(state: State) -> None:
    """Schema 3 -> 4: no path key for a path named by its id (state_schema.path_named_by_id), and the index
    of keys over the other paths only."""
    state.db.create_function("path_named_by_id", 2, path_named_by_id, deterministic=True)
    with state.transaction():
        state.db.execute("DROP INDEX IF EXISTS items_ph")
        state.db.execute("UPDATE items SET ph = NULL WHERE ph IS NOT NULL AND path_named_by_id(path, id)")
        state.db.execute("CREATE INDEX items_ph ON items (ph) WHERE ph IS NOT NULL")
        state.db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")


def _from_v4(state: State) -> None:
    """Schema 4 -> 5: a path named by its id is stored with ID_MARK for the id (state_schema.stored_path).
    (The pages the table no longer needs are reused by later rows; VACUUM gives them back.)"""
    state.db.create_function("stored_path", 2, stored_path, deterministic=True)
    with state.transaction():
        # ph is NULL exactly for the paths named by their ids (schema 4).
        state.db.execute("UPDATE items SET path = stored_path(path, id) WHERE ph IS NULL")
        state.db.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")


def _from_v5(state: State) -> None:
    """Schema 5 -> 6: kinds by number (kinds), the sets of extra field names by number (extra_names.n). The
    table is written anew, in rowid order (a kind's name becomes an integer, which a column of text affinity
    would turn back into text); fingerprints are kept as they are (they hash the names' 47-bit key, which
    extra_names keeps as h)."""
    kinds: dict[str, int] = {}

    def kind_code(name: str) -> int:
        return kinds.setdefault(name, len(kinds))

    state.db.create_function("kind_code", 1, kind_code, deterministic=True)
    columns = "n, id, path, kind, popularity, size, mtime, extra, removed, fp, xk, ph"
    with state.transaction():
        for index in ("items_id", "items_ph", "items_removed"):
            state.db.execute(f"DROP INDEX IF EXISTS {index}")
        state.db.execute("ALTER TABLE items RENAME TO items_v5")
        state.db.execute("ALTER TABLE extra_names RENAME TO extra_names_v5")
        for statement in schema_statements():
            head = statement.split("(", 1)[0].split()
            if head[1] == "TABLE" and head[-1] in ("items", "extra_names", "kinds"):
                state.db.execute(statement)
        state.db.execute("INSERT INTO extra_names (h, names) SELECT h, names FROM extra_names_v5 ORDER BY h")
        state.db.execute(
            f"INSERT INTO items ({columns}) SELECT v.n, v.id, v.path, kind_code(v.kind), v.popularity, "
            "v.size, v.mtime, v.extra, v.removed, v.fp, x.n, v.ph "
            "FROM items_v5 v LEFT JOIN extra_names x ON x.h = v.xk ORDER BY v.n"
        )
        state.db.executemany("INSERT INTO kinds VALUES (?, ?)", ((c, k) for k, c in kinds.items()))
        state.db.execute("DROP TABLE items_v5")
        state.db.execute("DROP TABLE extra_names_v5")
        for statement in schema_statements():
            if "INDEX" in statement.split("(", 1)[0] and " ON items " in statement:
                state.db.execute(statement)
        state.db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")


def _from_v6(state: State) -> None:
    """Schema 6 -> 7: items keep no catalog file and line (nothing read them after the ingest that wrote
    them). A state migrated from schema 5 or older has neither already."""
    with state.transaction():
        columns = {r[1] for r in state.db.execute("PRAGMA table_info(items)")}
        for column in ("source", "line"):
            if column in columns:
                state.db.execute(f"ALTER TABLE items DROP COLUMN {column}")
        state.db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
