"""The readers of catalogs in columns: CSV and TSV (plain or compressed), SQLite tables, Parquet files."""

from __future__ import annotations

import csv
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError
from . import rows
from .compression import open_catalog_bytes, stream_failure
from .rows import KNOWN_FIELDS, REQUIRED_FIELDS, RawRow


class _LineCountingReader:
    """Lines for csv.reader, decoded one by one so a bad byte is reported at its line, not as a crash."""

    def __init__(self, f):
        self.f, self.bad_lines = f, {}
        self.n = 0
        self.ended = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.ended:
            raise StopIteration
        raw = self.f.readline(rows.MAX_LINE + 1)
        if len(raw) > rows.MAX_LINE:  # a line that never ends costs bounded memory: skipped to its end
            while raw and not raw.endswith(b"\n"):
                raw = self.f.readline(rows.MAX_LINE)
            self.n += 1
            self.bad_lines[self.n] = f"line longer than {rows.MAX_LINE // 2**20} MiB"
            return ""
        if not raw:
            failure = stream_failure(self.f)
            if failure is None:
                raise StopIteration
            self.n += 1
            self.bad_lines[self.n] = failure
            self.ended = True
            return ""
        self.n += 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.bad_lines[self.n] = f"not valid UTF-8 at byte {e.start}"
            return raw.decode("utf-8", errors="replace")


def read_csv(path: Path, delimiter: str = ",") -> Iterator[RawRow]:
    name = str(path)
    with open_catalog_bytes(path) as f:
        lines = _LineCountingReader(f)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield RawRow(name, 1, None, f"bad CSV header: {e}")
            return
        if 1 in lines.bad_lines:
            yield RawRow(name, 1, None, lines.bad_lines[1])
            return
        header = [h.strip() for h in header]
        if header:  # Excel writes UTF-8 CSV with a byte order mark
            header[0] = header[0].lstrip("\ufeff").strip()
        wrong = _header_problem(header, delimiter)
        if wrong:  # said once, for the header, instead of once per row
            yield RawRow(name, 1, None, wrong)
            return
        while True:
            start = lines.n + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield RawRow(name, start, None, f"bad CSV: {e}")
                continue
            bad = [lines.bad_lines.pop(n) for n in range(start, lines.n + 1) if n in lines.bad_lines]
            if bad:
                yield RawRow(name, start, None, bad[0])
                if lines.ended:
                    return
                continue
            if not values or values == [""]:
                continue
            if len(values) != len(header):
                yield RawRow(name, start, None, f"has {len(values)} fields, the header has {len(header)}")
                continue
            row = {
                k: v for k, v in zip(header, values, strict=True) if not (k not in KNOWN_FIELDS and v == "")
            }
            yield RawRow(name, start, row)


def _header_problem(header: list[str], delimiter: str) -> str | None:
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        return f"column {repeated[0]!r} appears twice in the header"
    missing = [f for f in REQUIRED_FIELDS if f not in header]
    if not missing:
        return None
    shown = delimiter.join(header)
    if len(header) == 1:
        for d in (";", "\t", "|", ","):
            if d != delimiter and d in header[0]:
                return (
                    f"the header {shown!r} is one column: the delimiter here is {delimiter!r}, this "
                    "file seems to "
                    f"use {d!r} (.csv is read with ',', .tsv with tabs)"
                )
    folded = {h.lower(): h for h in header}
    if all(f in folded for f in missing):
        return (
            f"header columns {', '.join(repr(folded[f]) for f in missing)} must be lowercase: "
            f"{', '.join(missing)}"
        )
    return f"the header {shown!r} has no {', '.join(repr(f) for f in missing)} column"


def read_sqlite(path: Path, table: str) -> Iterator[RawRow]:
    name = f"{path}:{table}"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.text_factory = bytes
        quoted = '"' + table.replace('"', '""') + '"'
        cur = db.execute(f"SELECT rowid, * FROM {quoted}")
    except sqlite3.Error as e:
        raise UsageError(
            f"{path}: cannot read table {table!r}: {e}", hint="name the table with --table"
        ) from None
    columns = [d[0] for d in cur.description][1:]
    try:
        for n, (rowid, *values) in enumerate(cur, 1):
            if rowid is None:  # a view has no rowid: its rows are numbered in the order it gives them
                rowid = n
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


def _parquet_schema_problem(schema) -> str | None:
    """Why a Parquet file's columns cannot be read as catalog rows, once for the file, or None: a column
    named twice (which one is meant?), or values that have no JSON form for the extra fields (decimals and
    durations: pyarrow gives Decimal and timedelta objects)."""
    import pyarrow.types as pt  # a Parquet catalog only: pyarrow is imported by its reader already

    names = schema.names
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        return f"column {repeated[0]!r} appears twice"

    def no_json(t) -> bool:
        if pt.is_decimal(t) or pt.is_duration(t) or pt.is_interval(t):
            return True
        return any(no_json(t.field(i).type) for i in range(t.num_fields))

    for field in schema:
        if no_json(field.type):
            return f"column {field.name!r} holds {field.type} values, which catalog rows cannot hold"
    return None


def _mtime_seconds(schema):
    """For an mtime column of Parquet timestamps: a batch's with its values as Unix seconds (whole, cut
    toward zero), as a catalog's mtime is; else None. pyarrow gives datetime objects, which every row then
    refused as "not Unix seconds". A timestamp without a time zone is taken as UTC, as Arrow stores it."""
    import pyarrow as pa  # a Parquet catalog only: pyarrow is imported by its reader already
    import pyarrow.types as pt  # likewise

    if "mtime" not in schema.names or not pt.is_timestamp(schema.field("mtime").type):
        return None

    def seconds(batch):
        k = batch.schema.get_field_index("mtime")
        column = batch.column(k).cast(pa.timestamp("s"), safe=False).cast(pa.int64())
        return batch.set_column(k, "mtime", column)

    return seconds


def read_parquet(path: Path) -> Iterator[RawRow]:
    """Rows of a Parquet file, numbered from 1 in file order (the "line" of every report)."""
    try:
        import pyarrow.parquet as pq  # 75 ms to import, an optional extra: only for a Parquet catalog

        pf = pq.ParquetFile(path)
    except ImportError:
        raise UsageError("reading Parquet catalogs needs pyarrow", hint="pip install pyarrow") from None
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise UsageError(f"{path}: not a readable Parquet file ({e})") from None
    wrong = _parquet_schema_problem(pf.schema_arrow)
    if wrong:
        raise UsageError(f"{path}: {wrong}", hint="cast the column to a double or a string when writing it")
    name, n = str(path), 0
    seconds = _mtime_seconds(pf.schema_arrow)
    try:
        for batch in pf.iter_batches(batch_size=16_384):
            if seconds is not None:
                batch = seconds(batch)
            for values in batch.to_pylist():
                n += 1
                row, bad = {}, None
                for k, v in values.items():
                    if isinstance(v, bytes):
                        try:
                            v = v.decode("utf-8")
                        except UnicodeDecodeError as e:
                            bad = f"column {k}: not valid UTF-8 at byte {e.start}"
                            break
                    elif type(v) is float and not math.isfinite(v) and k not in KNOWN_FIELDS:  # as JSON Lines
                        bad = f"column {k}: {v} is not a finite number"
                        break
                    if v is not None:
                        row[k] = v
                yield RawRow(name, n, None, bad) if bad else RawRow(name, n, row)
    except (OSError, ValueError) as e:  # a truncated or damaged file, found while reading it
        yield RawRow(name, n + 1, None, f"cannot read the Parquet data from here on: {e}")
