"""Migrations of state.sqlite from older schema versions, each in one transaction: a killed migration
leaves the state as it was, and the next open migrates it again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .state_schema import (
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
MIGRATABLE = (1, 2, 3, 4)


def migrate(state: State, version: int) -> None:
    """Bring a state of schema `version` (SCHEMA_VERSION or one of MIGRATABLE) up to SCHEMA_VERSION."""
    if version == 1:
        _from_v1(state)
    if version in (1, 2):
        _from_v2(state)
    if version in (1, 2, 3):
        _from_v3(state)
    if version in (1, 2, 3, 4):
        _from_v4(state)


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
            "INSERT INTO items (n, id, path, kind, popularity, size, mtime, extra, source, line, "
            "removed, "
            "fp) SELECT v.rowid, v.id, v.path, v.kind, v.popularity, v.size, v.mtime, v.extra, "
            "c.n, v.line, "
            "v.removed, row_fingerprint(v.id, v.path, v.kind, v.popularity, v.size, v.mtime, v.extra) "
            "FROM items_v1 v JOIN catalog_files c ON c.path = v.source ORDER BY v.rowid"
        )
        state.db.execute("INSERT INTO members SELECT * FROM members_v1")
        state.db.execute("DROP TABLE items_v1")
        state.db.execute("DROP TABLE members_v1")
        for statement in schema_statements():
            state.db.execute(statement)
        state.recount_totals()
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
        state.db.executemany("INSERT OR IGNORE INTO extra_names VALUES (?, ?)", names.items())
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
