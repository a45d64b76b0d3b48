"""Catalog readers (JSONL, CSV, SQLite) and validation, and ingest into state.sqlite.

A catalog row has ``id``, ``path`` (relative to the archive root), ``kind``, ``popularity``, optional ``size``
and ``mtime``; any other field is kept as it is. Ingest reads every catalog, checks every row (and stats its
file unless sizes are trusted) and reports all problems together, each with its file and line. With any
problem nothing is committed, unless the caller asks to skip invalid rows, which then go to a rejects file.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import pickle
import re
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import orjson

from .config import USTAR_MTIME_LIMIT, ReleaseConfig
from .errors import CatalogError, CatalogProblem, UsageError, WorkspaceError
from .state import State, dumps_extra
from .workspace import Workspace

# container.RESERVED_MANIFEST_NAME lives in this folder, so no catalog path may.
RESERVED_PREFIX = ".packager"
KNOWN_FIELDS = ("id", "path", "kind", "popularity", "size", "mtime")
MAX_PROBLEMS_KEPT = 10_000  # enough to show and count; the rest are only counted
BATCH = 20_000


class RawRow(NamedTuple):
    """One row as read from a catalog, before validation. (A NamedTuple: a frozen dataclass costs 0.6 s
    per million rows just to construct.)"""

    source: str
    line: int
    fields: dict | None  # None when the line could not be decoded at all
    error: str | None = None


@dataclass
class IngestReport:
    rows: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    rejected: int = 0
    problems: list[CatalogProblem] = field(default_factory=list)
    problem_count: int = 0
    rejects_file: Path | None = None

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "added": self.added,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "rejects_file": str(self.rejects_file) if self.rejects_file else None,
            "problems": [vars(p) for p in self.problems],
        }


# ---- readers --------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    name = str(path)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                obj = orjson.loads(raw)  # 2x faster than json; it also refuses invalid UTF-8
            except orjson.JSONDecodeError:
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield RawRow(name, n, None, f"not valid UTF-8 at byte {e.start}")
                    continue
                try:  # the standard parser explains the error better
                    json.loads(text)
                except json.JSONDecodeError as e:
                    yield RawRow(name, n, None, f"not a JSON object: {e.msg} at column {e.colno}")
                else:
                    yield RawRow(name, n, None, "not a JSON object")
                continue
            if not isinstance(obj, dict):
                yield RawRow(name, n, None, "not a JSON object")
                continue
            yield RawRow(name, n, obj)


class _LineCountingReader:
    """Lines for csv.reader, decoded one by one so a bad byte is reported at its line, not as a crash."""

    def __init__(self, f):
        self.f, self.bad_lines = f, {}
        self.n = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise StopIteration
        self.n += 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.bad_lines[self.n] = f"not valid UTF-8 at byte {e.start}"
            return raw.decode("utf-8", errors="replace")


def _read_csv(path: Path, delimiter: str = ",") -> Iterator[RawRow]:
    name = str(path)
    with open(path, "rb") as f:
        lines = _LineCountingReader(f)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield RawRow(name, 1, None, f"bad CSV header: {e}")
            return
        header = [h.strip() for h in header]
        if header:  # Excel writes UTF-8 CSV with a byte order mark
            header[0] = header[0].lstrip("\ufeff").strip()
        while True:
            start = lines.n + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield RawRow(name, start, None, f"bad CSV: {e}")
                continue
            if not values or values == [""]:
                continue
            bad = [lines.bad_lines.pop(n) for n in range(start, lines.n + 1) if n in lines.bad_lines]
            if bad:
                yield RawRow(name, start, None, bad[0])
                continue
            if len(values) != len(header):
                yield RawRow(name, start, None, f"has {len(values)} fields, the header has {len(header)}")
                continue
            row = {
                k: v for k, v in zip(header, values, strict=True) if not (k not in KNOWN_FIELDS and v == "")
            }
            yield RawRow(name, start, row)


def _read_sqlite(path: Path, table: str) -> Iterator[RawRow]:
    name = f"{path}:{table}"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.text_factory = bytes
        cur = db.execute(f'SELECT rowid, * FROM "{table.replace(chr(34), "")}"')
    except sqlite3.Error as e:
        raise UsageError(
            f"{path}: cannot read table {table!r}: {e}", hint="name the table with --table"
        ) from None
    columns = [d[0] for d in cur.description][1:]
    try:
        for rowid, *values in cur:
            row = {}
            for k, v in zip(columns, values, strict=True):
                if isinstance(v, bytes):
                    try:
                        v = v.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield RawRow(name, rowid, None, f"column {k}: not valid UTF-8 at byte {e.start}")
                        break
                if v is not None:
                    row[k] = v
            else:
                yield RawRow(name, rowid, row)
    finally:
        db.close()


SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def read_catalog(path: Path, table: str | None = None) -> Iterator[RawRow]:
    """Rows of a catalog file, chosen by extension (.jsonl/.ndjson, .csv, .sqlite/.db)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: catalog not found", hint="give the path of a .jsonl, .csv or .sqlite file")
    suffix = path.suffix.lower()
    if table is not None and suffix not in SQLITE_SUFFIXES:
        raise UsageError(
            f"{path}: --table {table!r} applies to SQLite catalogs only",
            hint="drop --table, or give a .sqlite catalog",
        )
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _read_jsonl(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in SQLITE_SUFFIXES:
        return _read_sqlite(path, table or "catalog")
    raise UsageError(
        f"{path}: unknown catalog format {suffix!r}", hint="use .jsonl, .csv or .sqlite (with --table)"
    )


# ---- validation -----------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NOT_NORMAL = re.compile(r"(^|/)\.?(/|$)")


# One search that every acceptable path fails, so the common case costs one regex call.
_SUSPECT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]|^/|^.:|(?:^|/)\.{0,2}(?:/|$)|^\.packager(?:/|$)")


def check_path(path: object) -> str | None:
    """Why a catalog path is unacceptable, or None. Lexical checks only; the file system comes later."""
    if not isinstance(path, str) or not path:
        return "path is missing or empty"
    if (
        (  # string methods in C first: most real paths pass these and never reach a regex
            path.isprintable()
            and path[0] not in "/."
            and path[1:2] != ":"
            and path[-1] not in "/."
            and "//" not in path
            and "/." not in path
        )
        or not _SUSPECT.search(path)
    ):
        return None
    if _CONTROL.search(path):
        return f"path {path!r} contains control characters"
    if _SURROGATE.search(path):
        return f"path {path!r} is not valid UTF-8"
    if path[0] == "/" or path[1:2] == ":":
        return f"path {path!r} is absolute; paths are relative to the archive root"
    if ".." in path and ".." in path.split("/"):
        return f"path {path!r} escapes the archive root ('..')"
    if _NOT_NORMAL.search(path):
        return f"path {path!r} is not normalized (empty or '.' component); write {str(PurePosixPath(path))!r}"
    if path.startswith(RESERVED_PREFIX) and path.split("/", 1)[0] == RESERVED_PREFIX:
        return f"path {path!r} uses the reserved folder {RESERVED_PREFIX!r}"
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class _Checker:
    """Validates rows and stats their files, caching resolved directories."""

    def __init__(self, config: ReleaseConfig, trust_sizes: bool):
        self.root = config.root
        self.root_real = os.path.realpath(config.root)
        self.kinds = set(config.kinds)
        self.kind_list = ", ".join(config.kinds)
        self.trust_sizes = trust_sizes
        self.dir_ok: dict[str, bool] = {}

    def _inside_root(self, rel: str) -> bool:
        parent = os.path.dirname(rel)
        ok = self.dir_ok.get(parent)
        if ok is None:
            real = os.path.realpath(os.path.join(self.root, parent))
            ok = real == self.root_real or real.startswith(self.root_real + os.sep)
            if len(self.dir_ok) > 100_000:
                self.dir_ok.clear()
            self.dir_ok[parent] = ok
        return ok

    def _stat(self, rel: str, size: int | None) -> tuple[int | None, str | None]:
        if not self._inside_root(rel):
            return None, f"path {rel!r} leaves the archive root through a symlinked folder"
        full = os.path.join(self.root, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return None, f"file {rel!r} is missing under {self.root}"
        except OSError as e:
            return None, f"file {rel!r} cannot be read: {e.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return None, f"file {rel!r} is a symlink; only regular files are packaged"
        if not stat.S_ISREG(st.st_mode):
            return None, f"{rel!r} is not a regular file"
        if not os.access(full, os.R_OK):
            return None, f"file {rel!r} is not readable"
        if size is not None and st.st_size != size:
            return None, f"size mismatch for {rel!r}: catalog says {size} bytes, the file has {st.st_size}"
        return st.st_size, None

    def check(self, row: RawRow) -> tuple[tuple | None, str | None]:
        """(stage tuple, None) for a good row, (None, reason) for a bad one."""
        if row.fields is None:
            return None, row.error
        f = row.fields
        item_id = f.get("id")
        if type(item_id) is not str or not item_id.strip():
            if isinstance(item_id, bool) or not isinstance(item_id, int):
                return None, "id is missing or empty"
            item_id = str(item_id)
        path = f.get("path")
        reason = check_path(path)
        if reason:
            return None, reason
        kind = f.get("kind")
        if kind not in self.kinds:
            return None, f"unknown kind {kind!r}; release.toml names: {self.kind_list}"
        raw_pop = f.get("popularity")
        if type(raw_pop) is float and math.isfinite(raw_pop):  # the common case, without the generic parser
            popularity = raw_pop
        elif raw_pop is None or raw_pop == "":
            return None, "popularity is empty"
        else:
            popularity = _number(raw_pop)
            if popularity is None:
                return None, f"popularity {raw_pop!r} is not a number"
        size = f.get("size")
        if type(size) is not int or size < 0:
            if size is None or size == "":
                size = None
            else:
                size = _integer(size)
                if size is None or size < 0:
                    return None, f"size {f.get('size')!r} is not a whole number of bytes"
        mtime = f.get("mtime")
        if mtime is not None and (type(mtime) is not int or not 0 <= mtime < USTAR_MTIME_LIMIT):
            if mtime == "":
                mtime = None
            else:
                mtime = _integer(mtime)
                if mtime is None or not 0 <= mtime < USTAR_MTIME_LIMIT:
                    return None, f"mtime {f.get('mtime')!r} is not Unix seconds between 0 and the year 2242"
        if self.trust_sizes:
            if size is None:
                return None, "size is required with --trust-sizes"
        else:
            size, reason = self._stat(path, size)
            if reason:
                return None, reason
        extra = dumps_extra({k: v for k, v in f.items() if k not in KNOWN_FIELDS}) if len(f) > 4 else None
        return (item_id, path, kind, popularity, size, mtime, extra, row.source, row.line), None


# ---- ingest ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestOptions:
    table: str | None = None
    trust_sizes: bool = False
    skip_invalid: bool = False
    rejects: Path | None = None


class _Problems:
    def __init__(self, report: IngestReport, rejects: Path | None):
        self.report, self.rejects_path = report, rejects
        self.rejects_file = None

    def add(self, source: str, line: int, reason: str, item_id: str | None, row: dict | None) -> None:
        self.report.problem_count += 1
        if len(self.report.problems) < MAX_PROBLEMS_KEPT:
            self.report.problems.append(CatalogProblem(source, line, reason, item_id))
        if self.rejects_path is not None:
            if self.rejects_file is None:
                self.rejects_file = open(  # noqa: SIM115 - closed by finish(), after the last row
                    self.rejects_path.with_name(self.rejects_path.name + ".part"), "w", encoding="utf-8"
                )
            rec = {"file": source, "line": line, "reason": reason, "row": row}
            self.rejects_file.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")

    def finish(self, keep: bool) -> None:
        if self.rejects_file is None:
            return
        self.rejects_file.close()
        part = self.rejects_path.with_name(self.rejects_path.name + ".part")
        if keep:
            os.replace(part, self.rejects_path)
            self.report.rejects_file = self.rejects_path
        else:
            part.unlink(missing_ok=True)


# Catalogs at least this big are parsed in a second process; below it, starting one costs more than it saves.
PARALLEL_BYTES = 32 * 2**20


def ingest(
    ws: Workspace,
    catalogs: list[Path],
    options: IngestOptions,
    on_rows: Callable[[int], None] | None = None,
) -> IngestReport:
    """Validate and load catalogs in one transaction. Raises CatalogError (nothing committed) on any
    problem unless options.skip_invalid, in which case bad rows go to options.rejects."""
    state, config = ws.state, ws.config
    report = IngestReport()
    problems = _Problems(report, options.rejects if options.skip_invalid else None)
    catalogs = [Path(c) for c in catalogs]
    if not options.trust_sizes and not config.root.is_dir():
        raise WorkspaceError(
            f"{config.root}: the archive root is not there, so no file can be checked",
            hint=f"fix release.root in {config.path} (or mount the archive)",
        )
    for catalog in catalogs:
        read_catalog(catalog, options.table)  # refuses a missing file or an unknown format before any work
    big = sum(c.stat().st_size for c in catalogs) >= PARALLEL_BYTES
    try:
        with state.transaction():
            watermark = state.begin_ingest()
            try:
                events = (
                    _parsed_in_child(config, catalogs, options) if big else _parsed(config, catalogs, options)
                )
                for kind, payload in events:
                    if kind == "rows":
                        state.insert_items(payload, watermark)
                    elif kind == "bad":
                        for source, line, reason, item_id, fields in payload:
                            problems.add(source, line, reason, item_id, fields)
                    else:
                        report.rows += payload
                        if on_rows:
                            on_rows(report.rows)
            finally:
                state.end_ingest()
            bad_keys = _check_conflicts(state, watermark, problems)
            if report.problem_count and not options.skip_invalid:
                raise CatalogError(report.problems, total=report.problem_count)
            conflicts = state.conflict_count()
            state.drop_conflicts(bad_keys)
            report.changed = state.apply_changes(watermark)
            if report.changed:
                state.refresh_unbuilt_shard_sizes()
            report.added = state.added_since(watermark)
            report.unchanged = conflicts - len(bad_keys) - report.changed
            report.rejected = report.problem_count
        problems.finish(keep=True)
    except BaseException:
        problems.finish(keep=False)
        raise
    return report


def _parsed(
    config: ReleaseConfig, catalogs: list[Path], options: IngestOptions
) -> Iterator[tuple[str, object]]:
    """("rows", batch of good rows), ("bad", [(source, line, reason, id, fields)]), ("count", rows read)."""
    checker = _Checker(config, options.trust_sizes)
    for catalog in catalogs:
        batch: list[tuple] = []
        bad: list[tuple] = []
        count = done = 0
        for row in read_catalog(catalog, options.table):
            count += 1
            staged, reason = checker.check(row)
            if reason:
                fields = row.fields
                item_id = None if fields is None or fields.get("id") is None else str(fields["id"])
                bad.append((row.source, row.line, reason, item_id, fields))
                continue
            batch.append(staged)
            if len(batch) >= BATCH:
                yield "rows", batch
                batch = []
                if bad:
                    yield "bad", bad
                    bad = []
                yield "count", count - done
                done = count
        if batch:
            yield "rows", batch
        if count == 0:
            bad.append((str(catalog), 0, "empty catalog: no rows", None, None))
        if bad:
            yield "bad", bad
        yield "count", count - done


def _parse_child(conn, config: ReleaseConfig, catalogs: list[Path], options: IngestOptions) -> None:
    try:
        for kind, payload in _parsed(config, catalogs, options):
            if kind == "rows":
                # orjson packs a batch 4x faster than pickle (and unpacks 2x faster); parameters may be lists.
                conn.send_bytes(orjson.dumps(payload))
            else:
                conn.send((kind, payload))
        conn.send(("end", None))
    except BaseException as e:  # handed to the parent, which raises it
        try:
            conn.send(("error", e))
        except Exception:
            conn.send(("error", UsageError(f"catalog parser failed: {type(e).__name__}: {e}")))
    finally:
        conn.close()


def _parsed_in_child(config: ReleaseConfig, catalogs: list[Path], options: IngestOptions):
    """The same events, parsed and checked in a second process while this one inserts: Python's parsing
    and SQLite's inserting then use both cores (a thread did not help: the sqlite3 module holds the GIL
    for most of executemany)."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_parse_child, args=(theirs, config, catalogs, options), daemon=True)
    child.start()
    theirs.close()
    try:
        while True:
            try:
                message = ours.recv_bytes()
            except EOFError:
                raise UsageError("the catalog parser stopped unexpectedly") from None
            if message[:1] == b"[":
                yield "rows", orjson.loads(message)
                continue
            kind, payload = pickle.loads(message)
            if kind == "end":
                return
            if kind == "error":
                raise payload
            yield kind, payload
    finally:
        ours.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()


def _check_conflicts(state: State, watermark: int, problems: _Problems) -> set[tuple[str, int]]:
    """Checks that need all rows at once, over the rows whose id or path was taken: repeats within this
    ingest, paths of other known ids, and changes to ids already in a shard. Returns the bad rows."""
    bad: set[tuple[str, int]] = set()
    for what, value, f_src, f_line, src, line in state.repeated_in_ingest(watermark):
        if (src, line) not in bad:
            problems.add(
                src,
                line,
                f"duplicate {what} {value!r}, first seen at {f_src}:{f_line}",
                value if what == "id" else None,
                None,
            )
            bad.add((src, line))
    for path, src, line, other in state.path_clashes(watermark):
        if (src, line) not in bad:
            problems.add(src, line, f"path {path!r} already belongs to id {other!r}", None, None)
            bad.add((src, line))
    names = ("path", "kind", "popularity", "size", "mtime", "extra")
    for item_id, src, line, shard, shard_state, *pairs in state.changed_known_items(watermark):
        if shard is None or (src, line) in bad:
            continue  # a known id that is in no shard yet may still change
        changed = [n for i, n in enumerate(names) if pairs[2 * i] != pairs[2 * i + 1]]
        if shard_state != "built" and not set(changed) & {"kind", "popularity"}:
            # Nothing was written from that shard yet: a file that moved or changed size since planning
            # (the build reported its shard failed) is corrected here; its place in the plan stays.
            continue
        diffs = [
            f"{n} {pairs[2 * i]!r} -> {pairs[2 * i + 1]!r}"
            for i, n in enumerate(names)
            if pairs[2 * i] != pairs[2 * i + 1]
        ]
        problems.add(
            src,
            line,
            f"id {item_id!r} is already in shard {shard} and cannot change ({'; '.join(diffs)})",
            item_id,
            None,
        )
        bad.add((src, line))
    return bad
