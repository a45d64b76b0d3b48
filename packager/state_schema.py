"""The schema of state.sqlite and the rows its queries return; the queries themselves are state.py's.

SCHEMA is a list of CREATE ... IF NOT EXISTS statements, so opening an older workspace adds what it lacks;
SCHEMA_VERSION changes only when a table changes shape, and state_migrate.py migrates what it can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson
import xxhash

SCHEMA_VERSION = 7
MAX_SQLITE_INTEGER = 2**63 - 1  # the largest value an INTEGER column holds; beyond it SQLite has REALs

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalog_files (n INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS items (
    n INTEGER PRIMARY KEY,      -- the item's rowid: members point at it (explicit, so VACUUM keeps it)
    id TEXT NOT NULL,
    path TEXT NOT NULL,         -- stored_path(): a path named by its id keeps ID_MARK for the id
    kind INTEGER NOT NULL,      -- kinds.code: 0-1 byte a row, where the name took 3-8
    popularity REAL NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER,
    extra TEXT,                 -- the values of the catalog row's other fields: a JSON array, in the
                                -- order of their names in extra_names (names once, not in every row)
    removed INTEGER NOT NULL DEFAULT 0,
    fp INTEGER NOT NULL,        -- line_fingerprint() or row_fingerprint(): what a re-ingest compares first
    xk INTEGER,                 -- extra_names.n of the names of the extra fields (NULL: none)
    ph INTEGER                  -- path_key(path), or NULL for a path named by its id (path_named_by_id):
                                -- paths are found and kept unique through ids and this key's index
);
-- Read an item's path through item_path_sql(), never items.path itself. A row's catalog file and line are
-- kept only while its ingest runs (the stage's columns, ingest.py's temp.runs): nothing reads them after,
-- and they cost 5-6 bytes a row.
-- The sets of extra field names (a catalog has a few), numbered as first seen (n, the rows' xk: 0-1 byte a
-- row, where the 47-bit key took 6); h is extra_names_key() of the sorted names, what fingerprints use.
CREATE TABLE IF NOT EXISTS extra_names (
    n INTEGER PRIMARY KEY,
    h INTEGER NOT NULL UNIQUE,
    names TEXT NOT NULL
);
-- The kinds, numbered from 0 as first registered (State.register_kinds, in release.toml's order).
CREATE TABLE IF NOT EXISTS kinds (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
-- Indexes are created apart from the table so that a bulk ingest can drop and rebuild them in one sort.
-- (id, fp) covers the re-ingest merge: a catalog row is matched and compared without reading the item;
-- a refresh reads every (fp, rowid) from it too, to match its lines' fingerprints before it parses any.
-- Ingest keeps ids and paths unique (sorts of every ingest's rows, and the path keys' index).
CREATE INDEX IF NOT EXISTS items_id ON items (id, fp);
-- Paths through an 8-byte key: an index of the paths themselves cost 56 bytes a row (5.6 GB at 10^8).
-- Only the paths not named by their ids: audio/ab/cd/<id>.ogg, the real shape, needs no key (20 B a row).
CREATE INDEX IF NOT EXISTS items_ph ON items (ph) WHERE ph IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_removed ON items (id) WHERE removed = 1;
-- Kept as ingest, plan and remove change items, so status never counts 10^8 rows.
CREATE TABLE IF NOT EXISTS catalog_totals (
    kind TEXT PRIMARY KEY,
    items INTEGER NOT NULL,     -- every row of the kind, removed ones included
    removed INTEGER NOT NULL,
    unplanned INTEGER NOT NULL, -- present items in no shard
    unplanned_bytes INTEGER NOT NULL
) WITHOUT ROWID;
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
    item_rowid INTEGER NOT NULL,
    PRIMARY KEY (shard_id, ord)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS members_item ON members (item_rowid);
-- The popularity a planned item had when it was planned, kept when a later catalog gives it a new one:
-- items holds the new figure, while its shard is built (and rebuilt, byte-identical) from this one.
CREATE TABLE IF NOT EXISTS planned_popularity (
    item_rowid INTEGER PRIMARY KEY,
    popularity REAL NOT NULL
);
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
-- Swarm health (packager health): one run per scrape, what each source (a tracker, our seeder's status
-- port) said, and its counts per torrent; bounded by count and age as runs are recorded. Queries in
-- state_scrapes.py.
CREATE TABLE IF NOT EXISTS scrape_runs (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL            -- ISO 8601 UTC
);
CREATE TABLE IF NOT EXISTS scrape_sources (
    run_id INTEGER NOT NULL REFERENCES scrape_runs(id),
    source TEXT NOT NULL,       -- a tracker's announce URL, or "seeder 127.0.0.1:PORT"
    protocol TEXT NOT NULL,     -- udp | http | https | seeder
    answered INTEGER NOT NULL,  -- torrents it gave counts for
    error TEXT,
    seconds REAL NOT NULL,
    PRIMARY KEY (run_id, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scrapes (
    shard_id INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    seeders INTEGER NOT NULL,
    leechers INTEGER,           -- NULL from our seeder, which sees peers, not the swarm
    completed INTEGER,
    PRIMARY KEY (shard_id, run_id, source)
) WITHOUT ROWID;
-- One run's rows (its day counts, the prune): without it, every row of every kept run is read.
CREATE INDEX IF NOT EXISTS scrapes_run ON scrapes (run_id);
CREATE TABLE IF NOT EXISTS scrape_days (   -- kept as runs are recorded: each day's highest counts
    shard_id INTEGER NOT NULL,
    day TEXT NOT NULL,          -- YYYY-MM-DD (UTC)
    seeders INTEGER NOT NULL,
    leechers INTEGER,
    completed INTEGER,
    PRIMARY KEY (shard_id, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS published_torrents (
    n INTEGER PRIMARY KEY,      -- release order: only ever appended to
    shard_id INTEGER NOT NULL UNIQUE REFERENCES shards(id),
    phase TEXT NOT NULL,
    entry TEXT NOT NULL         -- the torrent's release.json entry (JSON), frozen when first published
);
-- Publication statements (trust.py): one per publish that changed the published folder, numbered from 1 and
-- only appended; the signature is kept so that publications/<n>.json.minisig is written back unchanged.
CREATE TABLE IF NOT EXISTS statements (
    n INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    body BLOB NOT NULL,
    signature BLOB
);
"""


def schema_statements() -> list[str]:
    """SCHEMA as single statements, for use inside a transaction (executescript would commit it)."""
    lines = [line.split("--", 1)[0] for line in SCHEMA.splitlines()]
    return [q.strip() for q in "\n".join(lines).split(";") if q.strip()]


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


# ---- how a catalog row's columns are encoded in items -----------------------------------------------

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


def path_stem(path: str) -> str:
    """The file name of a path without its last extension: 'ab' for 'audio/x/ab.ogg' and for 'x/ab'."""
    start = path.rfind("/") + 1
    dot = path.rfind(".")
    return path[start:dot] if dot > start else path[start:]


def path_named_by_id(path: str, item_id: str) -> bool:
    """Whether a path's file is named by its item's id (its stem is the id), as in audio/ab/cd/<id>.ogg.
    Such a path needs no key: two of them are equal only with equal stems, so equal ids, and ids are
    unique. A path named otherwise has a key, and the index of keys finds it; one of each kind are equal
    only if the keyed path's stem is the other's id, which the id index finds."""
    return path_stem(path) == item_id


# Stands for the id in the stored path of a path named by its id (a control character: no catalog path
# has one). audio/ab/cd/<id>.ogg, the real shape, keeps 17 of its ~40 bytes.
ID_MARK = "\x01"


def stored_path(path: str, item_id: str) -> str:
    """The path as items stores it: with its id as ID_MARK if it is named by its id (path_named_by_id).
    Two rows of one id have equal paths exactly when their stored paths are equal."""
    start = path.rfind("/") + 1
    dot = path.rfind(".")
    end = dot if dot > start else len(path)
    return path[:start] + ID_MARK + path[end:] if path[start:end] == item_id else path


def item_path_sql(alias: str) -> str:
    """SQL: the path of the item (or staged row) `alias`, a row with columns path, ph and id. Measured on
    10^6 items: replace() costs about what reading the whole path did (a join with a table of the paths'
    folders cost 1.3 us a row, rendering in Python 1.4)."""
    rendered = f"replace({alias}.path, char({ord(ID_MARK)}), {alias}.id)"
    return f"CASE WHEN {alias}.ph IS NULL THEN {rendered} ELSE {alias}.path END"


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


def kind_name_sql(column: str, kinds: dict[str, int]) -> str:
    """SQL: the name of the kind whose code is in `column`, for the kinds (name -> code) of the state. A CASE
    of literals: a join with kinds for each of 10^8 rows would cost a lookup each."""
    if not kinds:
        return "NULL"
    cases = " ".join(f"WHEN {code} THEN {_literal(name)}" for name, code in kinds.items())
    return f"CASE {column} {cases} END"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def kind_code_sql(param: str, kinds: dict[str, int]) -> str:
    """SQL: the code of the kind named by `param` (a parameter or column), NULL for a kind not registered."""
    if not kinds:
        return "NULL"
    cases = " ".join(f"WHEN {_literal(name)} THEN {code}" for name, code in kinds.items())
    return f"CASE {param} {cases} END"
