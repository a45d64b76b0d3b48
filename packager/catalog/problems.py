"""An ingest's report, and its problems as they are found: counted, the first ones kept, and with
--skip-invalid each written to the rejects file, which is put in place before the rows are committed."""

from __future__ import annotations

import heapq
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CatalogProblem, EnvironmentProblem, UsageError
from ..fsutil import NotRegularFile, refuse_non_regular

MAX_PROBLEMS_KEPT = 10_000  # enough to show and count; the rest are only counted
# Deferred rejects records whose catalog rows are read again at a time (each chunk: one pass over the catalogs
# that hold them): a chunk's rows are what the rejects file's merge holds in memory.
DEFER_CHUNK = 100_000
# {(source, line)} -> {(source, line): the catalog's fields of that row}
RowReader = Callable[[set[tuple[str, int]]], dict[tuple[str, int], dict]]


@dataclass
class IngestReport:
    rows: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    rejected: int = 0
    absent: int = 0  # present items that no row of these catalogs names
    absent_ids: list[str] = field(default_factory=list)  # the first ingest.ABSENT_LISTED, by id
    marked_absent: dict[str, int] = field(default_factory=dict)  # --mark-absent: outcome -> items
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
            "absent": self.absent,
            "absent_ids": self.absent_ids,
            "absent_unlisted": self.absent - len(self.absent_ids),  # absent items absent_ids leaves out
            "marked_absent": self.marked_absent,
            "rejects_file": str(self.rejects_file) if self.rejects_file else None,
            "problems": [vars(p) for p in self.problems],
        }


class Problems:
    """Problems as they are found: counted, the first MAX_PROBLEMS_KEPT kept, and with --skip-invalid each
    written to the rejects file, which is opened before any work (an unwritable path stops the ingest
    before anything is read) and put in place before the rows are committed."""

    def __init__(self, report: IngestReport, rejects: Path | None):
        self.report, self.rejects_path = report, rejects
        self.rejects_file = None
        self.without_id = 0  # rows whose id could not be read: any absent item might be one of them
        self.deferring = False
        # (source, line, reason) written at keep(), kept on disk: a doubled catalog defers every row
        self.deferred: sqlite3.Connection | None = None
        if rejects is not None:
            self.part = rejects.with_name(rejects.name + ".part")
            try:
                refuse_non_regular(rejects)  # it is put in place by a rename, at keep()
                self.rejects_file = open(self.part, "w", encoding="utf-8")  # noqa: SIM115 - see finish()
            except NotRegularFile as e:
                raise UsageError(
                    f"--rejects {rejects} {e.strerror}",
                    hint="give --rejects the path of a new or regular file",
                ) from None
            except OSError as e:
                raise UsageError(
                    f"{rejects}: cannot write the rejects file ({e.strerror})",
                    hint="give --rejects a path in a folder you may write",
                ) from None

    def add(self, source: str, line: int, reason: str, item_id: str | None, row: dict | None = None) -> None:
        self.report.problem_count += 1
        if item_id is None and line > 0:
            self.without_id += 1
        if len(self.report.problems) < MAX_PROBLEMS_KEPT:
            self.report.problems.append(CatalogProblem(source, line, reason, item_id))
        if self.rejects_file is None:
            return
        if self.deferring:
            if self.deferred is None:
                self.deferred = sqlite3.connect("")  # a private temporary database, on disk beyond its cache
                self.deferred.execute("CREATE TABLE d (source TEXT, line INTEGER, reason TEXT)")
            self.deferred.execute("INSERT INTO d VALUES (?, ?, ?)", (source, line, reason))
            return
        self._write(self.rejects_file, {"file": source, "line": line, "reason": reason, "row": row})

    def defer_rows(self) -> None:
        """From now on (the loader's checks of repeats and conflicts, which see checked rows only), rows are
        written to the rejects file at keep(), as the catalog gives them and in catalog order."""
        self.deferring = True

    def _write(self, f, rec: dict) -> None:
        try:
            text = json.dumps(rec, ensure_ascii=False, default=str)
        except RecursionError:  # a row nested too deeply to write again (its reason says so)
            text = json.dumps(rec | {"row": None}, ensure_ascii=False, default=str)
        try:
            f.write(text + "\n")
        except OSError as e:
            raise EnvironmentProblem(f"{self.part}: cannot write the rejects file ({e.strerror})") from None

    def _merge_deferred(self, read_rows: RowReader, order: dict[str, int]) -> None:
        """The rejects file with the deferred problems' catalog rows put in, every record in catalog order
        (catalogs in the order given, then by line). Both sequences are in that order already (the parser's
        records as read; the deferred ones sorted by SQLite, out of core), so one merge of the two. The
        deferred records' rows are read again DEFER_CHUNK at a time, so memory is bounded by a chunk."""
        db = self.deferred
        db.execute("CREATE TABLE o (source TEXT PRIMARY KEY, k INTEGER)")
        db.executemany("INSERT INTO o VALUES (?, ?)", order.items())
        deferred = db.execute(
            "SELECT d.source, d.line, d.reason FROM d LEFT JOIN o ON o.source = d.source "
            "ORDER BY coalesce(o.k, ?), d.line, d.rowid",
            (len(order),),
        )

        def later() -> Iterator[dict]:
            while chunk := deferred.fetchmany(DEFER_CHUNK):
                rows = read_rows({(source, line) for source, line, _ in chunk})
                for source, line, reason in chunk:
                    yield {"file": source, "line": line, "reason": reason, "row": rows.get((source, line))}

        self.rejects_file.close()

        def place(rec: dict) -> tuple[int, int]:
            return order.get(rec["file"], len(order)), rec["line"]

        merged = self.part.with_name(self.part.name + "2")
        try:
            with open(self.part, encoding="utf-8") as written, open(merged, "w", encoding="utf-8") as out:
                for rec in heapq.merge(map(json.loads, written), later(), key=place):
                    self._write(out, rec)
            os.replace(merged, self.part)
        finally:
            merged.unlink(missing_ok=True)
            self.rejects_file = open(self.part, "a", encoding="utf-8")  # noqa: SIM115 - closed by keep()
            self._forget_deferred()

    def _forget_deferred(self) -> None:
        if self.deferred is not None:
            self.deferred.close()
            self.deferred = None

    def reset(self) -> None:
        """Forget every problem (the ingest starts again from the first row)."""
        self.report.problems.clear()
        self.report.problem_count = 0
        self.without_id = 0
        self.deferring = False
        self._forget_deferred()
        if self.rejects_file is not None:
            self.rejects_file.seek(0)
            self.rejects_file.truncate()

    def keep(self, read_rows: RowReader, order: dict[str, int]) -> None:
        """Put the complete rejects file in place (before the commit: rows are never committed while
        their rejects are lost). read_rows({(source, line)}) gives those rows as the catalogs have them
        ({(source, line): fields}); order numbers the sources in the order the catalogs were given."""
        if self.rejects_file is None:
            return
        try:
            if self.deferred is not None:
                self._merge_deferred(read_rows, order)
            self.rejects_file.flush()
            os.fsync(self.rejects_file.fileno())
            self.rejects_file.close()
            self.rejects_file = None
            if self.report.problem_count:
                os.replace(self.part, self.rejects_path)
                self.report.rejects_file = self.rejects_path
            else:
                self.part.unlink(missing_ok=True)
        except OSError as e:
            raise EnvironmentProblem(
                f"{self.rejects_path}: cannot write the rejects file ({e.strerror})"
            ) from None

    def discard(self) -> None:
        self._forget_deferred()
        if self.rejects_path is None:
            return
        if self.rejects_file is not None:
            self.rejects_file.close()
            self.rejects_file = None
        self.part.unlink(missing_ok=True)
        if self.report.rejects_file is not None:  # the commit failed after the file was put in place
            self.rejects_path.unlink(missing_ok=True)
