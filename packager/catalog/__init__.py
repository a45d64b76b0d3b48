"""Catalogs: their readers, the checks of every row, and ingest into state.sqlite.

A catalog row has ``id``, ``path`` (relative to the archive root), ``kind``, ``popularity``, optional ``size``
and ``mtime``; any other field is kept as it is. Ingest reads every catalog, checks every row (and stats its
file unless sizes are trusted) and reports all problems together, each with its file and line. With any
problem nothing is committed, unless the caller asks to skip invalid rows, which then go to a rejects file.

- rows.py: a row as read (RawRow), the known fields, the line limit every text reader keeps;
- compression.py: compressed text catalogs, decompressed with bounds (a bomb or a damaged stream is said);
- jsonl.py, tables.py: the readers of JSON Lines, and of CSV/TSV, SQLite and Parquet;
- arrow_jsonl.py: blocks of plain JSON Lines parsed and checked by Arrow (--trust-sizes), else row by row;
- formats.py: which reader a catalog's name takes, and how reports name a catalog;
- checks.py: the checks of one row (and its file), into the tuple the loader stages;
- problems.py: the ingest report, problems as found, and the rejects file;
- parse.py: rows read and checked as events, here or in parser processes;
- load.py: one ingest in one transaction (the fast refresh of ../refresh.py, the loader of ../ingest.py).
"""

from __future__ import annotations

from .checks import check_id, check_path
from .formats import read_catalog, source_name
from .load import IngestOptions, ingest
from .problems import IngestReport
from .rows import RawRow

__all__ = [
    "IngestOptions",
    "IngestReport",
    "RawRow",
    "check_id",
    "check_path",
    "ingest",
    "read_catalog",
    "source_name",
]
