"""Catalog readers (JSONL, CSV, SQLite) and validation, and ingest into state.sqlite.

A catalog row has ``id``, ``path`` (relative to the archive root), ``kind``, ``popularity``, optional ``size``
and ``mtime``; any other field is kept as it is. Ingest reads every catalog, checks every row (and stats its
file unless sizes are trusted) and reports all problems together, each with its file and line. With any
problem nothing is committed, unless the caller asks to skip invalid rows, which then go to a rejects file.
"""

from __future__ import annotations

import bisect
import bz2
import csv
import gc
import gzip
import io
import itertools
import json
import math
import multiprocessing
import operator
import os
import pickle
import re
import sqlite3
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import orjson
import xxhash
import zstandard

from . import refresh
from .config import USTAR_MTIME_LIMIT, ReleaseConfig
from .errors import CatalogError, CatalogProblem, EnvironmentProblem, UsageError, WorkspaceError
from .ingest import Loader, Outcome, remove_rows
from .refresh import FullPath
from .state import (
    dumps_extra,
    extra_names_key,
    fingerprint_seed,
    row_fingerprint,
)
from .timing import phase
from .workspace import Workspace

# container.RESERVED_MANIFEST_NAME lives in this folder, so no catalog path may.
RESERVED_PREFIX = ".packager"
KNOWN_FIELDS = ("id", "path", "kind", "popularity", "size", "mtime")
KNOWN_SET = frozenset(KNOWN_FIELDS)
_xxh3 = _path_hash = xxhash.xxh3_64_intdigest
_HALF = 2**63  # fingerprints and keys are signed 64-bit, as SQLite stores them
MAX_PROBLEMS_KEPT = 10_000  # enough to show and count; the rest are only counted
BATCH = 20_000


class RawRow(NamedTuple):
    """One row as read from a catalog, before validation. (A NamedTuple: a frozen dataclass costs 0.6 s
    per million rows just to construct.)"""

    source: str
    line: int
    fields: dict | None  # None when the line could not be decoded at all
    error: str | None = None
    fp: int | None = None  # a JSON Lines row's line_fingerprint()


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


# ---- readers --------------------------------------------------------------------------------------


def _read_jsonl(
    path: Path,
    part: tuple[int, int] | None = None,
    block: int = 0,
    seed: int = 0,
    select: Sequence[int] | None = None,
) -> Iterator[RawRow]:
    """Rows of a JSON Lines file, each with its line_fingerprint(raw line, seed). With part=(k, n), only the
    rows of blocks b with b % n == k, each owned block followed by BLOCK_END and each other block by
    BLOCK_SKIPPED (so that n processes share a file). With select (sorted line numbers), only those lines
    are parsed (a refresh's lines whose fingerprint is not stored); lines that cannot be read are always
    reported."""
    name = str(path)
    for b, (first, lines) in enumerate(_jsonl_blocks(path, block or BLOCK_BYTES)):
        if part is not None and b % part[1] != part[0]:
            yield BLOCK_SKIPPED
            continue
        if lines is None:
            yield RawRow(name, first, None, f"line longer than {MAX_LINE // 2**20} MiB")
        elif type(lines) is str:  # the compressed stream cannot be read on from here
            yield RawRow(name, first, None, lines)
        else:
            yield from _jsonl_rows(name, first, lines, seed, select)
        if part is not None:
            yield BLOCK_END


# About this much of a JSON Lines file, in whole lines, is the unit two parser processes share it in.
BLOCK_BYTES = 16 * 2**20
MAX_LINE = 32 * 2**20
# A compressed catalog may expand to at most this many times its size (real dumps: 4-15x); past it the
# rest is refused as a decompression bomb, so a small file cannot cost unbounded time.
MAX_EXPANSION = 200
MIN_EXPANDED = 2**30  # a small file may always expand to this much
BLOCK_END = RawRow("", -1, None, "end of block")
BLOCK_SKIPPED = RawRow("", -1, None, "block parsed by the other process")


def _jsonl_blocks(path: Path, size: int) -> Iterator[tuple[int, bytes | str | None]]:
    """(number of its first line, bytes of whole lines) in file order; None for a line over MAX_LINE, which is
    skipped to its end (a file that never ends a line costs bounded memory); a reason (str), last, when a
    compressed file cannot be read on (damaged, or a decompression bomb)."""
    with open_catalog_bytes(path) as f:
        line, carry, skipping = 1, b"", False
        while True:
            data = f.read(size)
            if not data:
                if carry and not skipping:
                    yield line, carry
                    line += carry.count(b"\n")
                failure = stream_failure(f)
                if failure:
                    yield line, failure
                return
            cut = data.rfind(b"\n") + 1
            if skipping:
                if cut == 0:
                    continue
                first_end = data.find(b"\n") + 1
                line += 1
                skipping, data, cut = False, data[first_end:], cut - first_end
            if cut == 0:
                carry += data
                if len(carry) > MAX_LINE:
                    yield line, None
                    carry, skipping = b"", True
                continue
            block = carry + data[:cut]  # its first line may reach 2 * MAX_LINE: still bounded
            carry = data[cut:]
            yield line, block
            line += block.count(b"\n")


class _Decompressed(io.RawIOBase):
    """The bytes of a compressed catalog, as they are decompressed, bounded in total (MAX_EXPANSION); a
    stream that fails (damaged, cut short, a bomb) ends there, and says why in `failure`."""

    def __init__(self, path: Path, compression: str):
        self.raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.compression = compression
        self.limit = max(MIN_EXPANDED, MAX_EXPANSION * os.fstat(self.raw.fileno()).st_size)
        self.total = 0
        self.failure: str | None = None
        self.cut_short: str | None = None
        if compression == "zstd":
            # The stream reader says nothing of a last frame cut short: the headers are walked first.
            self.cut_short = _zstd_cut_short(self.raw.fileno())
            # The default window bound (128 MiB) bounds memory; a frame that needs more is refused.
            self.stream = zstandard.ZstdDecompressor().stream_reader(self.raw, read_across_frames=True)
        elif compression == "gzip":
            self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb")
        else:
            self.stream = bz2.BZ2File(self.raw, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        """Decompressed bytes; at a failure, the end of the stream (what came before it is read as usual),
        with the reason in self.failure."""
        if self.failure is not None:
            return 0
        try:  # read1: one chunk per call, so the bytes before a failure are not lost with it
            data = self.stream.read1(len(buffer))
            n = len(data)
            buffer[:n] = data
        except (zstandard.ZstdError, OSError, EOFError, ValueError, zlib.error) as e:
            self.failure = (
                f"cannot decompress the {self.compression} stream from here on ({e or type(e).__name__}); "
                "the file is damaged or cut short"
            )
            return 0
        if n == 0 and self.cut_short:
            self.failure = f"the zstd stream is cut short ({self.cut_short})"
        if self.total + n > self.limit:
            n = max(0, self.limit - self.total)
            self.failure = (
                f"decompresses to more than {MAX_EXPANSION} times its size: refused as a decompression bomb "
                "(the rest is not read)"
            )
        self.total += n
        return n

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
            self.raw.close()
        super().close()


def _zstd_cut_short(fd: int) -> str | None:
    """Why a zstd file does not end with a whole frame, or None: a walk of its frame and block headers
    (python-zstandard's stream reader ends silently where a cut file ends)."""
    size, pos = os.fstat(fd).st_size, 0
    while pos < size:
        head = os.pread(fd, 14, pos)
        magic = int.from_bytes(head[:4], "little")
        if magic & 0xFFFFFFF0 == 0x184D2A50 and len(head) >= 8:  # a skippable frame
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        if magic != 0xFD2FB528 or len(head) < 6:
            return None  # not zstd from here on: the decompressor says so itself
        fhd = head[4]
        p = pos + 5 + (0 if fhd >> 5 & 1 else 1) + (0, 1, 2, 4)[fhd & 3]
        p += ((1 if fhd >> 5 & 1 else 0), 2, 4, 8)[fhd >> 6]
        while True:
            block = os.pread(fd, 3, p)
            if len(block) < 3:
                return f"the file ends inside the frame at byte {pos}"
            v = int.from_bytes(block, "little")
            p += 3 + (1 if v >> 1 & 3 == 1 else v >> 3)
            if v & 1:
                break
        p += 4 if fhd >> 2 & 1 else 0
        if p > size:
            return f"the file ends inside the frame at byte {pos}"
        pos = p
    return None


def stream_failure(f) -> str | None:
    """Why the stream `f` (from open_catalog_bytes) ended early, or None: a compressed catalog that is
    damaged, cut short or a decompression bomb ends where it fails, and says so here."""
    return getattr(getattr(f, "raw", None), "failure", None)


def open_catalog_bytes(path: Path):
    """A catalog's bytes, decompressed if its name says so (.zst, .gz, .bz2)."""
    compression = catalog_suffix(path)[1]
    if compression is None:
        return open(path, "rb")
    return io.BufferedReader(_Decompressed(path, compression), 2**20)


def _jsonl_rows(
    name: str, first: int, block: bytes, seed: int = 0, select: Sequence[int] | None = None
) -> Iterator[RawRow]:
    if select is not None:
        lo = bisect.bisect_left(select, first)
        hi = bisect.bisect_left(select, first + block.count(b"\n") + 1)
        if lo == hi:  # the common case of a refresh: no line of this block is to be parsed
            return
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    numbered: Iterable[tuple[int, bytes]] = enumerate(lines, first)
    if select is not None:
        numbered = [(n, lines[n - first]) for n in select[lo:hi] if n - first < len(lines)]
    for n, raw in numbered:
        try:
            obj = orjson.loads(raw)  # 2x faster than json; it also refuses invalid UTF-8
        except orjson.JSONDecodeError:
            if not raw.strip():
                continue
            yield RawRow(name, n, None, _json_error(raw))
            continue
        if not isinstance(obj, dict):
            yield RawRow(name, n, None, "not a JSON object")
            continue
        # Each key is followed by '":', so fewer of those than keys is impossible and as many means no
        # key repeats; anything else (nested objects, '":' in a string) takes the exact check.
        if raw.count(b'":') != len(obj):
            repeated = _repeated_key(raw)
            if repeated is not None:
                yield RawRow(name, n, None, f"key {repeated!r} appears twice in the object")
                continue
        yield RawRow(name, n, obj, None, _xxh3(raw, seed) - _HALF)  # line_fingerprint(raw, seed)


class _NonFinite(str):
    """NaN, Infinity or a number beyond floating point, as written."""


class _RepeatedKey(Exception):
    pass


def _pairs_once(pairs: list) -> dict:
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _RepeatedKey(k)
        seen[k] = v
    return seen


def _repeated_key(raw: bytes) -> str | None:
    try:
        json.loads(raw, object_pairs_hook=_pairs_once)
    except _RepeatedKey as e:
        return e.args[0]
    except ValueError:
        return None
    return None


def _json_error(raw: bytes) -> str:
    """Why a line is not a JSON object, in words a user can act on."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 at byte {e.start}"

    def big(s: str) -> float | _NonFinite:
        f = float(s)
        return f if math.isfinite(f) else _NonFinite(s)

    try:  # the standard parser explains the error better, and it sees NaN and 1e400 for what they are
        obj = json.loads(text, parse_constant=_NonFinite, parse_float=big, object_pairs_hook=_pairs_once)
    except _RepeatedKey as e:
        return f"key {e.args[0]!r} appears twice in the object"
    except json.JSONDecodeError as e:
        return f"not a JSON object: {e.msg} at column {e.colno}"
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str) and _SURROGATE.search(v):
                return f"{k} {v!r} is not valid UTF-8 (a lone surrogate escape)"
            if isinstance(v, _NonFinite):
                return (
                    f"{k} {v} is not a finite number (JSON has no NaN or Infinity; doubles end near 1.8e308)"
                )
    return "not a JSON object (a NaN, an Infinity, a number beyond 1.8e308 or a lone surrogate inside it)"


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
        raw = self.f.readline(MAX_LINE + 1)
        if len(raw) > MAX_LINE:  # a line that never ends costs bounded memory: skipped to its end
            while raw and not raw.endswith(b"\n"):
                raw = self.f.readline(MAX_LINE)
            self.n += 1
            self.bad_lines[self.n] = f"line longer than {MAX_LINE // 2**20} MiB"
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


def _read_csv(path: Path, delimiter: str = ",") -> Iterator[RawRow]:
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


REQUIRED_FIELDS = ("id", "path", "kind", "popularity")


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


def _read_parquet(path: Path) -> Iterator[RawRow]:
    """Rows of a Parquet file, numbered from 1 in file order (the "line" of every report)."""
    try:
        import pyarrow.parquet as pq  # 75 ms to import, an optional extra: only for a Parquet catalog

        pf = pq.ParquetFile(path)
    except ImportError:
        raise UsageError("reading Parquet catalogs needs pyarrow", hint="pip install pyarrow") from None
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise UsageError(f"{path}: not a readable Parquet file ({e})") from None
    name, n = str(path), 0
    try:
        for batch in pf.iter_batches(batch_size=16_384):
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
                    if v is not None:
                        row[k] = v
                yield RawRow(name, n, None, bad) if bad else RawRow(name, n, row)
    except (OSError, ValueError) as e:  # a truncated or damaged file, found while reading it
        yield RawRow(name, n + 1, None, f"cannot read the Parquet data from here on: {e}")


SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_SUFFIXES = JSONL_SUFFIXES + (".csv", ".tsv")
# Compressed text catalogs (big dumps ship so), decompressed as they are read.
COMPRESSED_SUFFIXES = {".zst": "zstd", ".zstd": "zstd", ".gz": "gzip", ".bz2": "bzip2"}


def _compressed(path: Path) -> bool:
    return catalog_suffix(path)[1] is not None


def catalog_suffix(path: Path) -> tuple[str, str | None]:
    """(the format's suffix, the compression or None): ("".jsonl", "zstd") for catalog.jsonl.zst."""
    path = Path(path)
    suffix = path.suffix.lower()
    compression = COMPRESSED_SUFFIXES.get(suffix)
    if compression is None:
        return suffix, None
    return Path(path.stem).suffix.lower(), compression


def _compression_of(path: Path) -> str | None:
    """The compression a file's first bytes announce (zstd, gzip, bzip2), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None  # read_catalog's readers say why
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    return None


def read_catalog(path: Path, table: str | None = None, seed: int = 0) -> Iterator[RawRow]:
    """Rows of a catalog file, chosen by extension (.jsonl/.ndjson, .csv/.tsv, .parquet, .sqlite/.db)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"{path}: catalog not found", hint="give the path of a .jsonl, .csv, .parquet or .sqlite file"
        )
    suffix, compression = catalog_suffix(path)
    if compression is not None and suffix not in TEXT_SUFFIXES:
        raise UsageError(
            f"{path}: unknown catalog format {suffix + path.suffix.lower()!r}",
            hint="compressed catalogs are JSON Lines, CSV or TSV (.jsonl.zst, .csv.gz, .tsv.bz2, ...); "
            "Parquet and SQLite are read uncompressed",
        )
    sniffed = _compression_of(path) if suffix in TEXT_SUFFIXES else None
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
        return _read_jsonl(path, seed=seed)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix in SQLITE_SUFFIXES:
        return _read_sqlite(path, table or "catalog")
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
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


def _number(value: object) -> float | str:
    """A finite popularity, or why the value is not one."""
    if isinstance(value, bool):
        return f"popularity {value!r} is not a number"
    f: float | None = None
    if isinstance(value, int | float):
        try:
            f = float(value)
        except OverflowError:  # an integer beyond 1.8e308
            return f"popularity {value!r} is beyond floating point (about 1.8e308)"
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return f"popularity {value!r} is not a number"
    if f is None:
        return f"popularity {value!r} is not a number"
    if math.isnan(f):
        return f"popularity {value!r} is not a number (NaN cannot be ordered)"
    if math.isinf(f):
        return f"popularity {value!r} is not a finite number (at most about 1.8e308)"
    return f


MAX_SQLITE_INTEGER = 2**63 - 1


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


def check_id(item_id: object) -> str | None:
    """Why an id is unacceptable, or None. Ids are printed in reports and terminals, so no control
    characters (they printed raw escape sequences) and no lone surrogates."""
    if not isinstance(item_id, str) or not item_id.strip():
        return "id is missing or empty"
    if item_id.isprintable() or not _SUSPECT_ID.search(item_id):
        return None
    if _CONTROL.search(item_id):
        return f"id {item_id!r} contains control characters"
    return f"id {item_id!r} is not valid UTF-8"


_SUSPECT_ID = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


class _Checker:
    """Validates rows and stats their files, caching resolved directories."""

    def __init__(self, config: ReleaseConfig, trust_sizes: bool):
        self.root = config.root
        self.root_real = os.path.realpath(config.root)
        self.kinds = set(config.kinds)
        self.kind_list = ", ".join(config.kinds)
        self.trust_sizes = trust_sizes
        self.seed = fingerprint_seed(config.kinds, trust_sizes)
        self.dir_ok: dict[str, bool] = {}
        # The keys of a row, in its order -> (names key, a getter of the extra values in sorted-name order),
        # or None when the row has no extra field: a few entries serve a whole catalog.
        self.extra_plans: dict[tuple, tuple[int, Callable] | None] = {}
        self.new_names: dict[int, str] = {}  # names keys not yet handed to the loader -> names (JSON)

    def _extra_plan(self, keys: tuple) -> tuple[int, Callable] | None:
        names = tuple(sorted(k for k in keys if k not in KNOWN_SET))
        if not names:
            plan = None
        else:
            h, text = extra_names_key(names)
            self.new_names[h] = text
            getter = operator.itemgetter(*names) if len(names) > 1 else lambda f, k=names[0]: (f[k],)
            plan = (h, getter)
        if len(self.extra_plans) > 10_000:  # a catalog whose rows each have other fields: bounded
            self.extra_plans.clear()
        self.extra_plans[keys] = plan
        return plan

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

    def check(self, row: RawRow, source: int) -> tuple[tuple | None, str | None]:
        """(stage tuple, None) for a good row, (None, reason) for a bad one."""
        if row.fields is None:
            return None, row.error
        f = row.fields
        item_id = f.get("id")
        if type(item_id) is not str:
            if isinstance(item_id, bool) or not isinstance(item_id, int):
                return None, "id is missing or empty"
            item_id = str(item_id)
        elif not item_id.isprintable() or not item_id.strip():
            reason = check_id(item_id)
            if reason:
                return None, reason
        path = f.get("path")
        reason = check_path(path)
        if reason:
            return None, reason
        kind = f.get("kind")
        if kind not in self.kinds:
            return None, f"unknown kind {kind!r}; release.toml names: {self.kind_list}"
        popularity = f.get("popularity")
        if type(popularity) is not float or not math.isfinite(popularity):  # the common case costs nothing
            if popularity is None or popularity == "":
                return None, "popularity is empty"
            popularity = _number(popularity)
            if type(popularity) is str:
                return None, popularity
        size = f.get("size")
        if type(size) is not int or size < 0 or size > MAX_SQLITE_INTEGER:
            if size is None or size == "":
                size = None
            else:
                size = _integer(size)
                if size is None or size < 0:
                    return None, f"size {f.get('size')!r} is not a whole number of bytes"
                if size > MAX_SQLITE_INTEGER:
                    return None, f"size {size} is too large (at most 2^63-1 bytes)"
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
        extra = xk = None
        if len(f) > 4:
            keys = tuple(f)
            plan = self.extra_plans[keys] if keys in self.extra_plans else self._extra_plan(keys)
            if plan is not None:
                xk = plan[0]
                try:  # dumps_extra(), inline: a call costs a tenth of a row's check
                    extra = orjson.dumps(plan[1](f), option=orjson.OPT_SORT_KEYS).decode()
                except TypeError:
                    extra = dumps_extra(plan[1](f))
        # A line's own fingerprint stands for its row only when the line is all of it: with --trust-sizes.
        # Otherwise the size is the file's, which may change while the line stays the same.
        fp = row.fp if self.trust_sizes else None
        if fp is None:
            fp = row_fingerprint(item_id, path, kind, popularity, size, mtime, extra, xk, self.seed)
        ph = _path_hash(path.encode()) - _HALF  # state.path_key(path), inline
        return (item_id, path, kind, popularity, size, mtime, extra, source, row.line, fp, xk, ph), None


# ---- ingest ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestOptions:
    table: str | None = None
    trust_sizes: bool = False
    skip_invalid: bool = False
    rejects: Path | None = None
    mark_absent: bool = False


class _Problems:
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
                self.rejects_file.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
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
            self.report.rejects_file = None


# Catalogs at least this big are parsed in a second process; below it, starting one costs more than it saves.
# From SPLIT_BYTES on, two processes parse (JSON Lines in alternate blocks) while this one inserts.
PARALLEL_BYTES = 32 * 2**20
SPLIT_BYTES = 128 * 2**20


def ingest(
    ws: Workspace,
    catalogs: list[Path],
    options: IngestOptions,
    on_rows: Callable[[int], None] | None = None,
) -> IngestReport:
    """Validate and load catalogs in one transaction. Raises CatalogError (nothing committed) on any
    problem unless options.skip_invalid, in which case bad rows go to options.rejects. Reports rows new,
    changed, unchanged and absent; with options.mark_absent, absent items are removed as by `remove`."""
    state, config = ws.state, ws.config
    report = IngestReport()
    catalogs = [Path(c) for c in catalogs]
    if not options.trust_sizes and not config.root.is_dir():
        raise WorkspaceError(
            f"{config.root}: the archive root is not there, so no file can be checked",
            hint=f"fix release.root in {config.path} (or mount the archive)",
        )
    for catalog in catalogs:
        read_catalog(catalog, options.table)  # refuses a missing file or an unknown format before any work
    # Compressed catalogs count as what they will likely expand to.
    size = sum(c.stat().st_size * (1 if catalog_suffix(c)[1] is None else 5) for c in catalogs)
    problems = _Problems(report, options.rejects if options.skip_invalid else None)
    try:
        with _no_cycle_collector(), state.bulk_journal(state.is_empty()), state.transaction():
            try:
                outcome = _load(ws, catalogs, options, size, report, problems, on_rows, fast=True)
            except FullPath:  # the fast refresh met a row it cannot judge alone: every row is parsed
                problems.reset()
                outcome = _load(ws, catalogs, options, size, report, problems, on_rows, fast=False)
            report.added, report.changed, report.unchanged = outcome.added, outcome.changed, outcome.unchanged
            report.absent, report.absent_ids, report.marked_absent = (
                outcome.absent,
                outcome.absent_ids,
                outcome.removal,
            )
            report.rejected = report.problem_count
            problems.keep()
    except BaseException:
        problems.discard()
        raise
    return report


def _fast_refresh_applies(loader: Loader, catalogs: list[Path], options: IngestOptions) -> bool:
    """Whether unchanged lines may be matched by fingerprint and never parsed: a re-ingest of JSON Lines
    catalogs with --trust-sizes (without it, every row's file is checked again, so every row is read)."""
    return (
        not loader.direct
        and options.trust_sizes
        and all(catalog_suffix(c)[0] in JSONL_SUFFIXES for c in catalogs)
    )


def _load(
    ws: Workspace,
    catalogs: list[Path],
    options: IngestOptions,
    size: int,
    report: IngestReport,
    problems: _Problems,
    on_rows: Callable[[int], None] | None,
    fast: bool,
) -> Outcome:
    """One attempt at the ingest inside the caller's transaction; FullPath if the fast refresh cannot
    finish it."""
    state, config = ws.state, ws.config
    report.rows = 0
    loader = Loader(state)
    try:
        sources = {
            name: loader.source_number(name) for name in (source_name(c, options.table) for c in catalogs)
        }
        select, events = None, None
        if fast and _fast_refresh_applies(loader, catalogs, options):
            refresh.clean_leftovers(state.path.parent)
            matched = refresh.match_catalogs(
                state.db,
                state.path,
                catalogs,
                fingerprint_seed(config.kinds, trust_sizes=True),
                2 if size >= SPLIT_BYTES else 1,
                BLOCK_BYTES,
                refresh.Reader(_jsonl_blocks, _compressed),
            )
            loader.matched_by_fingerprint(matched.matched)
            select = matched.lines
            report.rows = matched.matched
            if _read_here(matched):
                # A few lines, each found at its byte offset: no need to read every catalog again.
                offsets = matched.offsets
                events = _parsed(config, catalogs, options, sources, select=select, offsets=offsets)
        if events is not None:
            pass
        elif size >= SPLIT_BYTES:
            events = _parsed_in_children(config, catalogs, options, sources, 2, select)
        elif size >= PARALLEL_BYTES:
            events = _parsed_in_children(config, catalogs, options, sources, 1, select)
        else:
            events = _parsed(config, catalogs, options, sources, select=select)
        rows_of: dict[str, int] = {}
        if select is not None:
            rows_of = {str(c): n for c, n in zip(catalogs, matched.per_catalog, strict=True)}
        with phase("parse, check and stage rows"):
            for kind, payload in events:
                if kind == "rows":
                    loader.stage(payload)
                elif kind == "names":
                    loader.extra_names(payload)
                elif kind == "bad":
                    for source, line, reason, item_id, fields in payload:
                        problems.add(source, line, reason, item_id, fields)
                    loader.refused_ids(p[3] for p in payload if p[3] is not None)
                elif kind == "catalog":
                    rows_of[payload[0]] = rows_of.get(payload[0], 0) + payload[1]
                else:
                    report.rows += payload
                    if on_rows:
                        on_rows(report.rows)
        for name, n in rows_of.items():
            if n == 0:
                problems.add(name, 0, "empty catalog: no rows", None)
        with phase("check (duplicates, merge, conflicts)"):
            loader.check(problems.add)
        if report.problem_count and not options.skip_invalid:
            raise CatalogError(report.problems, total=report.problem_count)
        if options.mark_absent and problems.without_id:
            raise UsageError(
                f"--mark-absent: {problems.without_id} row(s) have no readable id, so which items are "
                "absent cannot be told",
                hint="fix those rows (see the rejects file), or ingest without --mark-absent",
            )
        loader.drop_refused()
        with phase("apply (indexes, updates, inserts, absent)"):
            return loader.apply(options.mark_absent, lambda table: remove_rows(state, table))
    finally:
        loader.close()


def _read_here(matched: refresh.Matched) -> bool:
    """Whether the lines a refresh selected are read at their offsets by this process: when every catalog
    has offsets and they are at most a tenth of the lines (beyond that, a new reading of the catalogs by the
    parser processes costs less than parsing them all in one)."""
    selected = sum(len(lines) for lines in matched.lines)
    return all(o is not None for o in matched.offsets) and selected * 10 <= selected + matched.matched


def _read_jsonl_at(path: Path, lines: Sequence[int], offsets: Sequence[int], seed: int) -> Iterator[RawRow]:
    """The rows of the given lines of a JSON Lines file, each read at its byte offset (found by a refresh's
    fingerprint pass over the same file, which also saw that no line is longer than MAX_LINE)."""
    name = str(path)
    with open(path, "rb", buffering=2**20) as f:
        for n, at in zip(lines, offsets, strict=True):
            f.seek(at)  # forward, mostly within the buffer
            yield from _jsonl_rows(name, n, f.readline(MAX_LINE + 1), seed)


def _parsed(
    config: ReleaseConfig,
    catalogs: list[Path],
    options: IngestOptions,
    sources: dict[str, int],
    part: tuple[int, int, int] | None = None,
    select: list[Sequence[int]] | None = None,
    offsets: list[Sequence[int] | None] | None = None,
) -> Iterator[tuple[str, object]]:
    """("rows", batch of good rows) after ("names", {key: extra field names}) for the names its rows use
    first, ("bad", [(source, line, reason, id, fields)]), ("count", rows read),
    ("catalog", (name, rows it read)) after each catalog. With part=(k, n, block bytes), only the blocks b
    with b % n == k of a
    numbering shared by n processes (each block of whole lines of a JSON Lines file, and each other catalog
    whole, is one block), each followed by ("block", None). With select (JSON Lines catalogs only), only
    the lines select[i] of catalog i are parsed, read at offsets[i] if given."""
    checker = _Checker(config, options.trust_sizes)
    block = 0
    for i, catalog in enumerate(catalogs):
        source = sources[source_name(catalog, options.table)]
        chosen = None if select is None else select[i]
        if part is None:
            if chosen is None:
                rows: Iterable[RawRow] = read_catalog(catalog, options.table, checker.seed)
            elif offsets is not None and offsets[i] is not None:
                rows = _read_jsonl_at(catalog, chosen, offsets[i], checker.seed)
            else:
                rows = _read_jsonl(catalog, seed=checker.seed, select=chosen)
        elif catalog_suffix(catalog)[0] in JSONL_SUFFIXES:
            rows = _read_jsonl(catalog, ((part[0] - block) % part[1], part[1]), part[2], checker.seed, chosen)
        elif block % part[1] == part[0]:
            rows = itertools.chain(read_catalog(catalog, options.table), [BLOCK_END])
        else:
            rows = [BLOCK_SKIPPED]
        batch: list[tuple] = []
        bad: list[tuple] = []
        count = done = 0
        for row in rows:
            if row.line < 0:  # BLOCK_END or BLOCK_SKIPPED
                block += 1
                if row is BLOCK_END:
                    if batch:
                        yield from _rows_event(checker, batch)
                        batch = []
                    if bad:
                        yield "bad", bad
                        bad = []
                    yield "count", count - done
                    done = count
                    yield "block", None
                continue
            count += 1
            staged, reason = checker.check(row, source)
            if reason:
                fields = row.fields
                item_id = None if fields is None or fields.get("id") is None else str(fields["id"])
                bad.append((row.source, row.line, reason, item_id, fields))
                continue
            batch.append(staged)
            if len(batch) >= BATCH:
                yield from _rows_event(checker, batch)
                batch = []
                if bad:
                    yield "bad", bad
                    bad = []
                yield "count", count - done
                done = count
        if batch:
            yield from _rows_event(checker, batch)
        if bad:
            yield "bad", bad
        yield "count", count - done
        yield "catalog", (str(catalog), count)


def _rows_event(checker: _Checker, batch: list) -> Iterator[tuple[str, object]]:
    """A batch of rows, after the extra field names its rows use that were not handed on yet."""
    if checker.new_names:
        yield "names", checker.new_names
        checker.new_names = {}
    yield "rows", batch


@contextmanager
def _no_cycle_collector() -> Iterator[None]:
    """Rows are made and dropped by the million, and none is in a reference cycle: Python's cycle collector
    would only walk them (measured: 0.5 us of the 3.2 us per row that this process spends on a batch)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _parse_child(
    conn, config: ReleaseConfig, catalogs: list[Path], options: IngestOptions, sources, part, select
) -> None:
    gc.disable()  # as in _no_cycle_collector: 0.4 us of a row's ~6 us of parsing and checking
    try:
        for kind, payload in _parsed(config, catalogs, options, sources, part, select):
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


def _parsed_in_children(
    config: ReleaseConfig,
    catalogs: list[Path],
    options: IngestOptions,
    sources,
    processes: int,
    select: list[Sequence[int]] | None = None,
):
    """The same events, parsed and checked in other processes while this one inserts: Python's parsing
    and SQLite's inserting then use both cores (a thread did not help: the sqlite3 module holds the GIL
    for most of executemany). With two processes, they take the blocks of a JSON Lines file in turns and
    this one reads their events in block order, so rows arrive in file order as from one."""
    ctx = multiprocessing.get_context("spawn")
    children, pipes = [], []
    for k in range(processes):
        ours, theirs = ctx.Pipe(duplex=False)
        part = (k, processes, BLOCK_BYTES) if processes > 1 else None
        child = ctx.Process(
            target=_parse_child, args=(theirs, config, catalogs, options, sources, part, select), daemon=True
        )
        child.start()
        theirs.close()
        children.append(child)
        pipes.append(ours)
    try:
        current, ended = 0, set()
        while len(ended) < processes:
            try:
                message = pipes[current].recv_bytes()
            except EOFError:
                raise UsageError("the catalog parser stopped unexpectedly") from None
            if message[:1] == b"[":
                yield "rows", orjson.loads(message)
                continue
            kind, payload = pickle.loads(message)
            if kind == "error":
                raise payload
            if kind == "end":
                ended.add(current)
            if kind in ("end", "block"):
                current = (current + 1) % processes
                continue
            yield kind, payload
    finally:
        for ours, child in zip(pipes, children, strict=True):
            ours.close()
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
