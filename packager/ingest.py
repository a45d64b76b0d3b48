"""The catalog engine: bulk loading of checked catalog rows into state.sqlite, with set operations.

catalog/ reads and checks rows one by one; everything that needs all rows at once (duplicate ids and
paths, paths of other items, changes to items already in a shard, rows absent from a refresh) is done here
with sorts and index scans in SQLite, never row by row in Python and never with random B-tree inserts:

- **first ingest** (no items yet): rows go straight into ``items`` with its indexes dropped; the indexes are
  then built in one sort each, and duplicates are read off them (a unique index that fails to build is
  how duplicate paths are found).
- **re-ingest**: rows go into an unindexed temporary table, which is then indexed by (id, fingerprint)
  and merged with ``items_id`` in id order: both sides are read sequentially, and the 99 % of a monthly
  refresh that is unchanged never reads its item (the fingerprint is in both indexes). Only new and changed
  rows are checked further and written.

Random ids inserted one by one into two text B-trees cost 2x more per row at 10^7 rows than at 10^6 (the
B-trees stop fitting any cache); sorted builds and merges keep the cost per row flat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .errors import WorkspaceError
from .state import State
from .state_schema import item_path_sql, path_key, path_stem

COLUMNS = "id, path, kind, popularity, size, mtime, extra, fp, xk, ph"
# What catalog/checks.py stages of a row, in its order; a row without mtime and path key ends at xk.
STAGE_COLUMNS = ("id", "path", "kind", "popularity", "size", "extra", "line", "fp", "xk", "mtime", "ph")
TEMP_TABLES = (
    "stage",
    "runs",
    "bad",
    "todo",
    "refp",
    "claims",
    "unread",
    "gone",
    "unmatched",
    "stems",
    "pathrows",
)
# A first ingest inserts keyed rows into items_ph (partial, over keyed rows only) up to this many, and builds
# it in one sort after the inserts beyond.
KEYED_INSERTS = 2**20
# Absent items a report names, the first by id (the count is always whole).
ABSENT_LISTED = 20
# Fields of an item that may change after it is planned, even once its shard is built: no shard holds them.
FREE_IN_A_SHARD = frozenset({"popularity", "extra"})


class FullPath(Exception):
    """The catalogs need the plain path (every row parsed): the reason says why. Raised by the loader and
    by the fast refresh (refresh.py) for a catalog whose rows cannot be judged line by line."""


# (source file, line, reason, id or None)
Problem = tuple[str, int, str, str | None]
AddProblem = Callable[[str, int, str, str | None, dict | None], None]


@dataclass
class Outcome:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    absent: int = 0
    absent_ids: list[str] = field(default_factory=list)  # the first ABSENT_LISTED, by id
    removal: dict[str, int] = field(default_factory=dict)  # --mark-absent: outcome -> count


class Loader:
    """One ingest's rows, inside the caller's transaction: stage(), then check(), then apply()."""

    def __init__(self, state: State, kinds: Iterable[str]):
        """kinds: every kind a row may have (release.toml's), registered before any row is staged."""
        self.state, self.db = state, state.db
        state.register_kinds(kinds)
        self.names: dict[int, int] = dict(self.db.execute("SELECT h, n FROM extra_names"))
        self.insert_sql: dict[tuple[int, int], str] = {}  # (columns staged, source) -> their INSERT
        self.direct = not self.db.execute("SELECT EXISTS (SELECT 1 FROM items)").fetchone()[0]
        self.watermark = self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM items").fetchone()[0]
        self.sources: dict[int, str] = {}
        self.staged = 0
        # A fast refresh (refresh.py): lines matched by fingerprint, each an unchanged item never staged;
        # temp.unmatched holds the rowids of the items whose fingerprint no line has.
        self.matched: int | None = None
        for table in TEMP_TABLES:
            self.db.execute(f"DROP TABLE IF EXISTS temp.{table}")
        # Paths named by their ids have no key (state_schema.path_named_by_id): these find their clashes.
        self.db.create_function("path_stem", 1, path_stem, deterministic=True)
        self.db.create_function("path_key", 1, path_key, deterministic=True)
        self.keyed = self.named = 0  # a first ingest's rows with a path key, and without
        self.ph_dropped = False  # a first ingest's items_ph, dropped for a bulk build (KEYED_INSERTS)
        self.db.execute("CREATE TEMP TABLE bad (n INTEGER PRIMARY KEY)")  # rows refused, by stage number
        self.db.execute("CREATE TEMP TABLE unread (id TEXT PRIMARY KEY) WITHOUT ROWID")  # ids of refused rows
        # A first ingest's totals, per kind [rows, bytes], counted as rows are staged: no scan of the items.
        self.totals: dict[str, list[int]] = {}
        if self.direct:
            # items_removed stays: no new row is removed, so it costs the inserts nothing. So does items_ph
            # while few rows are keyed (it covers only those): built after the inserts, it cost a scan of
            # the whole table (0.8 s of CPU at 10^6 rows). Past KEYED_INSERTS keyed rows it is dropped, as
            # random inserts into it would then cost more than one sort.
            self.db.execute("DROP INDEX IF EXISTS items_id")
            self.db.execute("CREATE INDEX IF NOT EXISTS items_ph ON items (ph) WHERE ph IS NOT NULL")
            # items keeps no catalog line: these runs of rows on consecutive lines give each row's (_origin).
            self.db.execute("CREATE TEMP TABLE runs (n INTEGER PRIMARY KEY, source INTEGER, line INTEGER)")
            self.table = "items"
        else:
            # Columns as in items (kind and xk as their numbers).
            self.db.execute(
                "CREATE TEMP TABLE stage (n INTEGER PRIMARY KEY, id TEXT, path TEXT, kind INTEGER, "
                "popularity REAL, size INTEGER, mtime INTEGER, extra TEXT, source INTEGER, line INTEGER, "
                "fp INTEGER, xk INTEGER, ph INTEGER)"
            )
            self.table = "temp.stage"

    def matched_by_fingerprint(self, lines: int) -> None:
        self.matched = lines

    def _line_matched(self, item: str) -> str:
        """SQL: the item (an alias of items) was matched by a line's fingerprint in this refresh."""
        return f"{item}.rowid NOT IN (SELECT n FROM temp.unmatched)"

    def source_number(self, name: str) -> int:
        self.db.execute("INSERT OR IGNORE INTO catalog_files (path) VALUES (?)", (name,))
        n = self.db.execute("SELECT n FROM catalog_files WHERE path = ?", (name,)).fetchone()[0]
        self.sources[n] = name
        return n

    def _insert_sql(self, width: int, source: int) -> str:
        """The INSERT of staged rows of `width` STAGE_COLUMNS from one source: the kind's name and the extra
        names' key become their numbers (items.kind, items.xk) in SQL, a CASE of a few literals (a subquery
        for each row cost ~0.5 us)."""
        sql = self.insert_sql.get((width, source))
        if sql is None:
            columns = list(STAGE_COLUMNS[:width])
            values = [f"?{k + 1}" for k in range(width)]
            values[2] = self.state.kind_code_sql("?3")
            # A key the literals do not list (a set of names new since this INSERT was made) is looked up.
            lookup = "CASE WHEN ?9 IS NOT NULL THEN (SELECT n FROM extra_names WHERE h = ?9) END"
            if 0 < len(self.names) <= 16:
                literals = " ".join(f"WHEN {h} THEN {n}" for h, n in self.names.items())
                values[8] = f"CASE ?9 {literals} ELSE {lookup} END"
            else:
                values[8] = lookup
            if self.direct:  # the line (?7) goes into temp.runs
                del columns[6], values[6]
            else:
                columns.append("source")
                values.append(str(int(source)))
            sql = self.insert_sql[width, source] = (
                f"INSERT INTO {self.table} ({', '.join(columns)}) VALUES ({', '.join(values)})"
            )
        return sql

    def stage(self, source: int, rows: list) -> None:
        """Checked rows of one catalog (source number), all of one shape: STAGE_COLUMNS or its first nine."""
        width = len(rows[0])
        self.db.executemany(self._insert_sql(width, source), rows)
        self.staged += len(rows)
        if self.direct:
            self._add_runs(source, rows)
            totals = self.totals
            short = width < len(STAGE_COLUMNS)
            named = len(rows) if short else sum(1 for row in rows if row[10] is None)
            for row in rows:
                kind = row[2]
                if kind in totals:
                    t = totals[kind]
                    t[0] += 1
                    t[1] += row[4]
                else:
                    totals[kind] = [1, row[4]]
            self.named += named
            self.keyed += len(rows) - named
            if self.keyed > KEYED_INSERTS and not self.ph_dropped:
                self.db.execute("DROP INDEX items_ph")
                self.ph_dropped = True

    def _add_runs(self, source: int, rows: list) -> None:
        """Record the catalog lines of rows just inserted into items, as runs on consecutive lines (a batch
        is one, unless rows were refused in it)."""
        last = self.db.execute("SELECT MAX(rowid) FROM items").fetchone()[0]
        first = last - len(rows) + 1
        if rows[-1][6] - rows[0][6] == len(rows) - 1:  # lines only grow within a batch: all consecutive
            runs = [(first, source, rows[0][6])]
        else:
            runs, prev = [], None
            for k, row in enumerate(rows):
                if prev is None or row[6] != prev + 1:
                    runs.append((first + k, source, row[6]))
                prev = row[6]
        self.db.executemany("INSERT INTO temp.runs VALUES (?, ?, ?)", runs)

    def _origin(self, alias: str) -> tuple[str, str]:
        """SQL: (catalog file number, line) of the staged row `alias` (of self.table)."""
        if not self.direct:
            return f"{alias}.source", f"{alias}.line"
        run = f"FROM temp.runs r WHERE r.n <= {alias}.rowid ORDER BY r.n DESC LIMIT 1"
        return f"(SELECT r.source {run})", f"(SELECT r.line + {alias}.rowid - r.n {run})"

    def extra_names(self, names: dict[int, str]) -> None:
        """Record sets of extra field names by their key (extra_names_key)."""
        for h, text in names.items():
            self.db.execute("INSERT OR IGNORE INTO extra_names (h, names) VALUES (?, ?)", (h, text))
            n, stored = self.db.execute("SELECT n, names FROM extra_names WHERE h = ?", (h,)).fetchone()
            if stored != text:  # 47 bits of a hash: two sets alike happen once in ~10^14 pairs
                raise WorkspaceError(
                    f"the extra field names {text} and {stored} have the same key {h} in the state",
                    hint="rename one of the fields in the catalog",
                )
            if h not in self.names:
                self.names[h] = n
                self.insert_sql.clear()

    def refused_ids(self, ids: Iterable[str]) -> None:
        """Ids of rows refused before staging: such an item is not absent from the catalog."""
        self.db.executemany("INSERT OR IGNORE INTO temp.unread VALUES (?)", ((i,) for i in ids))

    # ---- checks ---------------------------------------------------------------------------------------

    def check(self, add: AddProblem) -> None:
        """Report every row that cannot go in, and remember it in temp.bad."""
        if self.direct:
            self._check_direct(add)
        else:
            self._check_merge(add)

    def _refuse(self, rows: Iterator[tuple], add: AddProblem, reason: Callable[[tuple], str]) -> None:
        """rows of (n, source, line, id, ...): each one not yet refused is reported and refused."""
        for row in rows:
            n, src, line, item_id = row[:4]
            if self.db.execute("INSERT OR IGNORE INTO temp.bad VALUES (?)", (n,)).rowcount:
                # No fields: a rejects file gets the catalog's own row (catalog.problems reads it again).
                add(self.sources.get(src, str(src)), line, reason(row), item_id, None)

    def _duplicate_ids(self, add: AddProblem) -> None:
        """Repeats of an id after its first row (in catalog order), read off the index on (id, fp)."""
        t = self.table
        (s_source, s_line), (f_source, f_line) = self._origin("s"), self._origin("f")
        self._refuse(
            self.db.execute(
                f"SELECT s.rowid, {s_source}, {s_line}, s.id, {f_source}, {f_line} FROM (SELECT id, "
                "MIN(rowid) AS first "
                f"FROM {t} GROUP BY id HAVING COUNT(*) > 1) d JOIN {t} s ON s.id = d.id AND s.rowid "
                "!= d.first "
                f"JOIN {t} f ON f.rowid = d.first ORDER BY s.rowid"
            ),
            add,
            lambda r: f"duplicate id {r[3]!r}, first seen at {self.sources.get(r[4], r[4])}:{r[5]}",
        )

    def _check_direct(self, add: AddProblem) -> None:
        self.db.execute("CREATE INDEX items_id ON items (id, fp)")
        self._duplicate_ids(add)
        if self.ph_dropped:
            self.db.execute("CREATE INDEX items_ph ON items (ph) WHERE ph IS NOT NULL")
        # Rows that may share a path: keyed ones whose key repeats, and a keyed one beside the row named
        # by its stem at the same path (two rows named by their ids never share a path: their ids differ).
        self.db.execute("CREATE TEMP TABLE pathrows (n INTEGER, path TEXT, UNIQUE (n, path))")
        if self.keyed > 1:
            self.db.execute(
                "INSERT OR IGNORE INTO temp.pathrows SELECT rowid, path FROM items WHERE ph IN (SELECT ph "
                "FROM items INDEXED BY items_ph WHERE ph IS NOT NULL GROUP BY ph HAVING COUNT(*) > 1)"
            )
        if self.keyed and self.named:
            self._keyed_beside_named()
        if not self._count("temp.pathrows"):
            return
        # Only a catalog with errors (or a 2^-64 chance of equal keys) gets here.
        (s_source, s_line), (f_source, f_line) = self._origin("s"), self._origin("f")
        self._refuse(
            self.db.execute(
                f"SELECT s.rowid, {s_source}, {s_line}, s.id, {f_source}, {f_line}, p.path FROM (SELECT "
                "path, "
                "MIN(n) AS first FROM temp.pathrows WHERE n NOT IN (SELECT n FROM temp.bad) GROUP BY path "
                "HAVING COUNT(*) > 1) d JOIN temp.pathrows p ON p.path = d.path AND p.n != d.first "
                "JOIN items s ON s.rowid = p.n JOIN items f ON f.rowid = d.first "
                "WHERE p.n NOT IN (SELECT n FROM temp.bad) ORDER BY s.rowid"
            ),
            add,
            lambda r: f"duplicate path {r[6]!r}, first seen at {self.sources.get(r[4], r[4])}:{r[5]}",
        )

    def _keyed_beside_named(self) -> None:
        """Into temp.pathrows: each keyed item whose path is also an item's named by its id, and that item.
        The keyed paths' stems are sorted first, so that the id index is read in order."""
        self.db.execute(
            "CREATE TEMP TABLE stems AS SELECT path_stem(path) AS stem, path, rowid AS n FROM items "
            "WHERE ph IS NOT NULL ORDER BY 1"
        )
        self.db.execute(
            "INSERT OR IGNORE INTO temp.pathrows WITH pairs AS (SELECT e.n AS keyed, t.rowid AS named, "
            "e.path FROM temp.stems e JOIN items t INDEXED BY items_id ON t.id = e.stem WHERE t.ph IS NULL "
            f"AND {item_path_sql('t')} = e.path) SELECT keyed, path FROM pairs UNION ALL "
            "SELECT named, path FROM pairs"
        )

    def _check_merge(self, add: AddProblem) -> None:
        db = self.db
        db.execute("CREATE INDEX temp.stage_id ON stage (id, fp)")
        self._duplicate_ids(add)
        # The merge: the catalog's rows in id order against items_id; both indexes hold the fingerprint.
        db.execute("CREATE TEMP TABLE todo (n INTEGER PRIMARY KEY, item INTEGER)")  # item NULL: a new id
        db.execute(
            "INSERT INTO temp.todo SELECT s.n, i.rowid FROM temp.stage s INDEXED BY stage_id "
            "LEFT JOIN items i INDEXED BY items_id ON i.id = s.id WHERE (i.rowid IS NULL OR i.fp != s.fp) "
            "AND s.n NOT IN (SELECT n FROM temp.bad) ORDER BY s.id"
        )
        if (
            self.matched is not None
            and db.execute(
                "SELECT EXISTS (SELECT 1 FROM temp.todo t JOIN items i ON i.rowid = t.item WHERE "
                f"{self._line_matched('i')})"
            ).fetchone()[0]
        ):
            # An id both on a line matched by fingerprint and on a parsed one: which came first, and so
            # which is the repeat, only the plain path can tell.
            raise FullPath("an id is on two lines")
        # Rows whose line differs but whose content is the item's (spacing, key order, another format) are
        # unchanged: only their fingerprint is taken, so the next refresh matches them by it.
        db.execute(
            "CREATE TEMP TABLE refp AS SELECT t.n, t.item, s.fp FROM temp.todo t JOIN temp.stage s "
            "ON s.n = t.n JOIN items i ON i.rowid = t.item WHERE s.path = i.path AND s.kind = i.kind "
            "AND s.popularity = i.popularity AND s.size = i.size AND s.mtime IS i.mtime "
            "AND s.extra IS i.extra AND s.xk IS i.xk"
        )
        db.execute("DELETE FROM temp.todo WHERE n IN (SELECT n FROM temp.refp)")
        # Paths claimed by new ids and by known ids that move: each must be free and claimed once.
        db.execute(
            "CREATE TEMP TABLE claims AS SELECT n, path, COALESCE(ph, path_key(path)) AS ph, named, id "
            f"FROM (SELECT s.n, {item_path_sql('s')} AS path, s.ph, s.ph IS NULL AS named, s.id "
            "FROM temp.todo t JOIN temp.stage s ON s.n = t.n LEFT JOIN items i ON i.rowid = t.item "
            "WHERE i.rowid IS NULL OR i.path != s.path)"
        )
        # The holder of a claimed path is a keyed item (found by the key) or one named by its id (found by
        # the claimed path's stem; a claim named by its own id can only meet itself there).
        self._refuse(
            db.execute(
                "SELECT c.n, s.source, s.line, s.id, k.id, c.path FROM temp.claims c JOIN temp.stage "
                "s ON s.n = c.n JOIN items k ON k.ph = c.ph AND k.path = c.path WHERE k.id != c.id "
                "UNION ALL SELECT c.n, s.source, s.line, s.id, k.id, c.path FROM temp.claims c "
                "JOIN temp.stage s ON s.n = c.n JOIN items k INDEXED BY items_id ON k.id = path_stem(c.path) "
                f"WHERE NOT c.named AND k.ph IS NULL AND {item_path_sql('k')} = c.path AND k.id != c.id "
                "ORDER BY 1"
            ),
            add,
            lambda r: f"path {r[5]!r} already belongs to id {r[4]!r}",
        )
        self._refuse(
            db.execute(
                "SELECT s.n, s.source, s.line, s.id, f.source, f.line, c.path FROM (SELECT path, "
                "MIN(n) AS first "
                "FROM temp.claims WHERE n NOT IN (SELECT n FROM temp.bad) GROUP BY path HAVING "
                "COUNT(*) > 1) d "
                "JOIN temp.claims c ON c.path = d.path AND c.n != d.first JOIN temp.stage s ON s.n = c.n "
                "JOIN temp.stage f ON f.n = d.first WHERE c.n NOT IN (SELECT n FROM temp.bad) ORDER BY s.n"
            ),
            add,
            lambda r: f"duplicate path {r[6]!r}, first seen at {self.sources.get(r[4], r[4])}:{r[5]}",
        )
        self._refuse(self._changes_in_shards(), add, _change_refusal)

    def _changes_in_shards(self) -> Iterator[tuple]:
        """Changed rows of items in a shard that may not change: (n, source, line, id, shard, diffs)."""
        names = ("path", "kind", "popularity", "size", "mtime", "extra")
        rows = self.db.execute(
            f"SELECT s.n, s.source, s.line, s.id, sh.name, sh.state, {item_path_sql('i')}, "
            f"{item_path_sql('s')}, {self.state.kind_name_sql('i.kind')}, "
            f"{self.state.kind_name_sql('s.kind')}, "
            "i.popularity, s.popularity, i.size, s.size, i.mtime, s.mtime, i.extra, s.extra "
            "FROM temp.todo t JOIN temp.stage s ON s.n = t.n JOIN items i ON i.rowid = t.item "
            "JOIN members m ON m.item_rowid = i.rowid JOIN shards sh ON sh.id = m.shard_id "
            "WHERE t.n NOT IN (SELECT n FROM temp.bad) ORDER BY s.n"
        )
        for n, src, line, item_id, shard, shard_state, *pairs in rows:
            changed = [(name, pairs[2 * k], pairs[2 * k + 1]) for k, name in enumerate(names)]
            # Popularity and extra fields are in no byte of a shard: a new figure is recorded (it steers
            # the planning of items not planned yet), and the item stays where it is.
            changed = [c for c in changed if c[1] != c[2] and c[0] not in FREE_IN_A_SHARD]
            if not changed:
                continue
            if shard_state != "built" and "kind" not in {c[0] for c in changed}:
                # Nothing was written from that shard yet: a file that moved or changed size since planning
                # (the build reported its shard failed) is corrected here; its place in the plan stays.
                continue
            yield n, src, line, item_id, shard, changed

    # ---- apply ----------------------------------------------------------------------------------------

    def drop_refused(self) -> None:
        """With --skip-invalid: refused rows of a first ingest leave items (a re-ingest never wrote them)."""
        if self.direct:
            for kind, rows, size in self.state.summed(
                f"SELECT {self.state.kind_name_sql('kind')}, COUNT(*), COALESCE(SUM(size), 0) FROM items "
                "WHERE rowid IN (SELECT n FROM temp.bad) GROUP BY kind"
            ):
                self.totals[kind][0] -= rows
                self.totals[kind][1] -= size
            self.db.execute("DELETE FROM items WHERE rowid IN (SELECT n FROM temp.bad)")

    def apply(self, mark_absent: bool, remove: Callable[[str], dict[str, int]]) -> Outcome:
        out = Outcome()
        if self.direct:
            self.db.execute("CREATE INDEX IF NOT EXISTS items_ph ON items (ph) WHERE ph IS NOT NULL")
            self.db.execute("CREATE INDEX IF NOT EXISTS items_removed ON items (id) WHERE removed = 1")
            out.added = self.staged - self._count("temp.bad")
            self.state.add_totals((k, n, 0, n, size) for k, (n, size) in self.totals.items() if n)
            return out
        db = self.db
        refused = "t.n NOT IN (SELECT n FROM temp.bad)"
        changed = f"SELECT t.item FROM temp.todo t WHERE t.item IS NOT NULL AND {refused}"
        self.state.add_totals(self._contributions(changed, -1))
        # A planned item keeps the popularity it was planned with for its shard; items takes the new one.
        db.execute(
            "INSERT OR IGNORE INTO planned_popularity SELECT i.rowid, i.popularity FROM temp.todo t "
            "JOIN temp.stage s ON s.n = t.n JOIN items i ON i.rowid = t.item JOIN members m ON "
            f"m.item_rowid = i.rowid WHERE s.popularity != i.popularity AND {refused}"
        )
        # Paths of one id compare as stored (state_schema.stored_path). Rows that keep their path leave
        # items_ph alone (an index SQLite updates for any column SET): at 10^8 rows its pages are mostly on
        # disk, and each changed row would cost a random read.
        same = (
            "SET kind = s.kind, popularity = s.popularity, size = s.size, mtime = s.mtime, extra = s.extra, "
        )
        same += "fp = s.fp, xk = s.xk"
        joined = f"FROM temp.todo t JOIN temp.stage s ON s.n = t.n WHERE items.rowid = t.item AND {refused}"
        moving = self._count(
            "temp.todo t JOIN temp.stage s ON s.n = t.n LEFT JOIN items i ON i.rowid = t.item "
            f"WHERE {refused} AND (i.rowid IS NULL OR i.path != s.path)"
        )
        if moving > 10_000:
            # New and moved paths go into items_ph at random places: one sequential read of it first
            # costs less than a random read for each (at 10^8 rows, 2 GB against 10^6 random reads).
            db.execute("SELECT COUNT(*) FROM items INDEXED BY items_ph WHERE ph > -9223372036854775808")
        out.changed = db.execute(f"UPDATE items {same} {joined} AND s.path = items.path").rowcount
        out.changed += db.execute(
            f"UPDATE items {same}, path = s.path, ph = s.ph {joined} AND s.path != items.path"
        ).rowcount
        self.state.add_totals(self._contributions(changed, +1))
        db.execute("UPDATE items SET fp = r.fp FROM temp.refp r WHERE items.rowid = r.item")
        if out.changed:
            # Members' sizes were corrected in shards not built yet (the plan allows that): their totals too.
            db.execute(
                "UPDATE shards SET bytes = (SELECT COALESCE(SUM(i.size), 0) FROM members m JOIN items i "
                "ON i.rowid = m.item_rowid WHERE m.shard_id = shards.id) WHERE state != 'built' AND id IN "
                "(SELECT m.shard_id FROM temp.todo t JOIN members m ON m.item_rowid = t.item WHERE "
                f"{refused})"
            )
        # New ids in id order: the id index takes them as an ordered sweep instead of random inserts.
        out.added = db.execute(
            f"INSERT INTO items ({COLUMNS}) SELECT {', '.join('s.' + c for c in COLUMNS.split(', '))} "
            f"FROM temp.todo t JOIN temp.stage s ON s.n = t.n WHERE t.item IS NULL AND {refused} "
            "ORDER BY s.id"
        ).rowcount
        self._add_new_totals()
        todo, refused_in_todo = db.execute(
            "SELECT COUNT(*), COUNT(b.n) FROM temp.todo t LEFT JOIN temp.bad b ON b.n = t.n"
        ).fetchone()
        repeats = self._count("temp.bad") - refused_in_todo  # repeated ids: the only refusals not in todo
        new_ids = self._count("temp.todo WHERE item IS NULL")
        out.unchanged = self.staged - repeats - todo + (self.matched or 0)
        self._count_absent(out, matched_ids=self.staged - repeats - new_ids + (self.matched or 0))
        if mark_absent and out.absent:
            self._list_absent(None)
            out.removal = remove("temp.gone")
        return out

    def _count(self, what: str) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM {what}").fetchone()[0]

    def _count_absent(self, out: Outcome, matched_ids: int) -> None:
        """Present items named by no row: counted from the totals and the merge, without a scan of items;
        the first ABSENT_LISTED are listed (the anti-join stops there)."""
        db = self.db
        present_before = (
            db.execute("SELECT COALESCE(SUM(items - removed), 0) FROM catalog_totals").fetchone()[0]
            - out.added
        )
        named = (
            "EXISTS (SELECT 1 FROM temp.stage s WHERE s.id = i.id) OR i.id IN (SELECT id FROM temp.unread)"
        )
        if self.matched is not None:
            named += f" OR {self._line_matched('i')}"
        matched_removed = db.execute(
            f"SELECT COUNT(*) FROM items i INDEXED BY items_removed WHERE i.removed = 1 AND ({named})"
        ).fetchone()[0]
        # Ids of rows refused before staging (a bad kind, say) are not absent: their rows are there.
        unread_known = db.execute(
            "SELECT COUNT(*) FROM temp.unread u WHERE NOT EXISTS (SELECT 1 FROM temp.stage s WHERE "
            "s.id = u.id) "
            "AND EXISTS (SELECT 1 FROM items i WHERE i.id = u.id AND i.rowid <= ?"
            + ("" if self.matched is None else f" AND NOT {self._line_matched('i')}")
            + ")",
            (self.watermark,),
        ).fetchone()[0]
        out.absent = max(0, present_before - (matched_ids - matched_removed) - unread_known)
        if out.absent:
            self._list_absent(ABSENT_LISTED)
            out.absent_ids = [r[0] for r in db.execute("SELECT id FROM temp.gone ORDER BY id")]

    def _list_absent(self, limit: int | None) -> None:
        """temp.gone (n, id): absent present items, found by one anti-join of items_id against the catalog's
        ids, both read in id order."""
        self.db.execute("DROP TABLE IF EXISTS temp.gone")
        if self.matched is not None:
            # Only items whose fingerprint no line has can be absent: a few, read by rowid.
            self.db.execute(
                "CREATE TEMP TABLE gone AS SELECT i.rowid AS n, i.id FROM temp.unmatched u "
                "CROSS JOIN items i ON i.rowid = u.n WHERE i.rowid <= ? AND i.removed = 0 "
                "AND NOT EXISTS (SELECT 1 FROM temp.stage s WHERE s.id = i.id) "
                "AND NOT EXISTS (SELECT 1 FROM temp.unread r WHERE r.id = i.id) ORDER BY i.id"
                + (f" LIMIT {int(limit)}" if limit else ""),
                (self.watermark,),
            )
            return
        self.db.execute(
            "CREATE TEMP TABLE gone AS SELECT n, id FROM (SELECT i.rowid AS n, i.id FROM items i "
            "INDEXED BY items_id WHERE i.rowid <= ? AND NOT EXISTS (SELECT 1 FROM temp.stage s WHERE "
            "s.id = i.id) "
            "AND NOT EXISTS (SELECT 1 FROM temp.unread u WHERE u.id = i.id) ORDER BY i.id) g "
            "WHERE NOT EXISTS (SELECT 1 FROM items r INDEXED BY items_removed WHERE r.removed = 1 "
            "AND r.id = g.id)" + (f" LIMIT {int(limit)}" if limit else ""),
            (self.watermark,),
        )

    def _contributions(self, rowids_sql: str, sign: int) -> list[tuple[str, int, int, int, int]]:
        """Per kind: (kind, items, removed, unplanned, unplanned bytes) of these items, times sign."""
        return [
            (kind, sign * a, sign * b, sign * c, sign * d)
            for kind, a, b, c, d in self.state.totals_of(rowids_sql)
        ]

    def _add_new_totals(self) -> None:
        self.state.add_totals(
            self.state.summed(
                f"SELECT {self.state.kind_name_sql('kind')}, COUNT(*), 0, COUNT(*), COALESCE(SUM(size), 0) "
                "FROM items WHERE rowid > ? GROUP BY kind",
                (self.watermark,),
            )
        )

    def close(self) -> None:
        for table in TEMP_TABLES:
            self.db.execute(f"DROP TABLE IF EXISTS temp.{table}")


def _change_refusal(row: tuple) -> str:
    _, _, _, item_id, shard, changed = row
    diffs = "; ".join(f"{name} {old!r} -> {new!r}" for name, old, new in changed)
    return f"id {item_id!r} is already in shard {shard} and cannot change ({diffs})"


# ---- removal ------------------------------------------------------------------------------------------


def remove_rows(state: State, table: str) -> dict[str, int]:
    """Mark removed the present items whose rowids are in `table` (a temp table with column n), by the rules
    of `packager remove`: an item in no shard is never planned; one in a shard not yet built leaves it (the
    shard's totals follow; an emptied shard is deleted); one in a built shard stays there, marked. Returns
    counts per outcome ("unplanned", "dropped", "stays"). Call in a transaction."""
    db = state.db
    counts = dict(
        db.execute(
            "SELECT CASE WHEN sh.id IS NULL THEN 'unplanned' WHEN sh.state = 'built' THEN 'stays' "
            f"ELSE 'dropped' END AS outcome, COUNT(*) FROM {table} g JOIN items i ON i.rowid = g.n "
            "LEFT JOIN members m ON m.item_rowid = g.n LEFT JOIN shards sh ON sh.id = m.shard_id "
            "WHERE i.removed = 0 GROUP BY outcome"
        ).fetchall()
    )
    rowids = f"SELECT g.n FROM {table} g"
    loader_totals = state.totals_of(rowids)
    state.add_totals([(k, -a, -b, -c, -d) for k, a, b, c, d in loader_totals])
    db.execute("DROP TABLE IF EXISTS temp.touched")
    db.execute(
        "CREATE TEMP TABLE touched AS SELECT DISTINCT m.shard_id AS id FROM members m JOIN shards sh "
        f"ON sh.id = m.shard_id WHERE m.item_rowid IN ({rowids}) AND sh.state != 'built'"
    )
    db.execute(f"UPDATE items SET removed = 1 WHERE rowid IN ({rowids})")
    db.execute(
        "DELETE FROM planned_popularity WHERE item_rowid IN (SELECT m.item_rowid FROM members m WHERE "
        f"m.item_rowid IN ({rowids}) AND m.shard_id IN (SELECT id FROM temp.touched))"
    )
    db.execute(
        f"DELETE FROM members WHERE item_rowid IN ({rowids}) AND shard_id IN (SELECT id FROM temp.touched)"
    )
    db.execute(
        "DELETE FROM shards WHERE id IN (SELECT id FROM temp.touched) AND NOT EXISTS "
        "(SELECT 1 FROM members m WHERE m.shard_id = shards.id)"
    )
    db.execute(
        "UPDATE shards SET (items, bytes, pop_min, pop_max) = (SELECT COUNT(*), COALESCE(SUM(i.size), 0), "
        "MIN(COALESCE(p.popularity, i.popularity)), MAX(COALESCE(p.popularity, i.popularity)) "
        "FROM members m JOIN items i ON i.rowid = m.item_rowid "
        "LEFT JOIN planned_popularity p ON p.item_rowid = m.item_rowid WHERE m.shard_id = shards.id) "
        "WHERE id IN (SELECT id FROM temp.touched)"
    )
    db.execute("DROP TABLE temp.touched")
    state.add_totals(state.totals_of(rowids))
    return counts
