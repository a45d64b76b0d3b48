"""Which reader a catalog takes (by its name: .jsonl, .csv, .tsv, .parquet, .sqlite, each text format
maybe compressed), and how reports name a catalog."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError
from ..fsutil import file_type
from .compression import COMPRESSED_SUFFIXES, catalog_suffix, compression_of
from .jsonl import read_jsonl
from .rows import RawRow
from .tables import read_csv, read_parquet, read_sqlite

SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_SUFFIXES = JSONL_SUFFIXES + (".csv", ".tsv")
_CATALOG_HINT = "give the path of a .jsonl, .csv, .parquet or .sqlite file"


def read_catalog(path: Path, table: str | None = None, seed: int = 0) -> Iterator[RawRow]:
    """Rows of a catalog file, chosen by extension (.jsonl/.ndjson, .csv/.tsv, .parquet, .sqlite/.db)."""
    path = Path(path)
    try:
        # stat, never open: a FIFO would block its opener until some program writes to it. A symlink to a
        # catalog is one (stat follows it).
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path}: catalog not found", hint=_CATALOG_HINT) from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the catalog ({e.strerror})", hint=_CATALOG_HINT) from None
    if not stat.S_ISREG(info.st_mode):
        streamed = not stat.S_ISDIR(info.st_mode)
        raise UsageError(
            f"{path}: is {file_type(info.st_mode)}, not a regular file",
            hint=_CATALOG_HINT
            + (
                "; an ingest reads a catalog more than once: save a stream to a file first"
                if streamed
                else ""
            ),
        )
    suffix, compression = catalog_suffix(path)
    if compression is not None and suffix not in TEXT_SUFFIXES:
        raise UsageError(
            f"{path}: unknown catalog format {suffix + path.suffix.lower()!r}",
            hint="compressed catalogs are JSON Lines, CSV or TSV (.jsonl.zst, .csv.gz, .tsv.bz2, ...); "
            "Parquet and SQLite are read uncompressed",
        )
    sniffed = compression_of(path) if suffix in TEXT_SUFFIXES else None
    if sniffed is not None and sniffed != compression:
        right = path.name[: -len(path.suffix)] if compression else path.name
        ext = {v: k for k, v in reversed(COMPRESSED_SUFFIXES.items())}[sniffed]
        raise UsageError(
            f"{path}: is a {sniffed} stream, but its name says "
            + (f"{compression}" if compression else "uncompressed"),
            hint=f"rename it {right}{ext}: a catalog's compression is read from its name",
        )
    if table is not None and suffix not in SQLITE_SUFFIXES:
        raise UsageError(
            f"{path}: --table {table!r} applies to SQLite catalogs only",
            hint="drop --table, or give a .sqlite catalog",
        )
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(path, seed=seed)
    if suffix in (".csv", ".tsv"):
        return read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in SQLITE_SUFFIXES:
        return read_sqlite(path, table or "catalog")
    if suffix in (".parquet", ".pq"):
        return read_parquet(path)
    raise UsageError(
        f"{path}: unknown catalog format {suffix!r}",
        hint="use .jsonl, .csv, .tsv (each may be compressed: .zst, .gz, .bz2), .parquet or .sqlite "
        "(with --table)",
    )


def source_name(path: Path, table: str | None = None) -> str:
    """How reports name a catalog: its path, and the table of a SQLite catalog."""
    path = Path(path)
    if path.suffix.lower() in SQLITE_SUFFIXES:
        return f"{path}:{table or 'catalog'}"
    return str(path)
