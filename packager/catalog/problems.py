"""An ingest's report, and its problems as they are found: counted, the first ones kept, and with
--skip-invalid each written to the rejects file, which is put in place before the rows are committed."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CatalogProblem, EnvironmentProblem, UsageError

MAX_PROBLEMS_KEPT = 10_000  # enough to show and count; the rest are only counted


@dataclass
class IngestReport:
    rows: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    rejected: int = 0
    absent: int = 0  # present items that no row of these catalogs names
    absent_ids: list[str] = field(default_factory=list)  # the first few, by id
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
        if rejects is not None:
            self.part = rejects.with_name(rejects.name + ".part")
            try:
                self.rejects_file = open(self.part, "w", encoding="utf-8")  # noqa: SIM115 - see finish()
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
        if self.rejects_file is not None:
            rec = {"file": source, "line": line, "reason": reason, "row": row}
            try:
                text = json.dumps(rec, ensure_ascii=False, default=str)
            except RecursionError:  # a row nested too deeply to write again (its reason says so)
                text = json.dumps(rec | {"row": None}, ensure_ascii=False, default=str)
            try:
                self.rejects_file.write(text + "\n")
            except OSError as e:
                raise EnvironmentProblem(
                    f"{self.part}: cannot write the rejects file ({e.strerror})"
                ) from None

    def reset(self) -> None:
        """Forget every problem (the ingest starts again from the first row)."""
        self.report.problems.clear()
        self.report.problem_count = 0
        self.without_id = 0
        if self.rejects_file is not None:
            self.rejects_file.seek(0)
            self.rejects_file.truncate()

    def keep(self) -> None:
        """Put the complete rejects file in place (before the commit: rows are never committed while
        their rejects are lost)."""
        if self.rejects_file is None:
            return
        try:
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
        if self.rejects_path is None:
            return
        if self.rejects_file is not None:
            self.rejects_file.close()
            self.rejects_file = None
        self.part.unlink(missing_ok=True)
        if self.report.rejects_file is not None:  # the commit failed after the file was put in place
            self.rejects_path.unlink(missing_ok=True)
