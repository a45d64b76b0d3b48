"""Blocks of plain JSON Lines rows parsed and checked in Arrow's C++, for --trust-sizes ingests.

A block is handed to pyarrow.json with a fixed schema for the known fields (extra fields kept, their types
inferred) and every check runs on whole columns. Only a block in which nothing could differ from the Python
path (jsonl.py, checks.py) is taken: one object per line and nothing nested, valid UTF-8, every value of the
type the Python path accepts without converting it, extra fields of every row the same and of plain types.
A block Arrow refuses, or one in which any row fails a check, gives None: the caller reads that block on
the Python path, which reports every problem as it always has (file, line, reason). So the state and the
problems are the same whichever path a block takes; only the cost differs (measured: the parser processes'
CPU per row fell by a fifth).
"""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import xxhash

from ..config import USTAR_MTIME_LIMIT
from ..state_schema import ID_MARK
from .checks import MAX_FILE_SIZE, RESERVED_PREFIX, Checker

_KNOWN = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("kind", pa.string()),
        ("popularity", pa.float64()),
        ("size", pa.int64()),
        ("mtime", pa.int64()),
    ]
)
_PARSE = pj.ParseOptions(explicit_schema=_KNOWN, unexpected_field_behavior="infer")
# One thread: the parser processes already take both cores (with the inserting one). A line longer than
# Arrow's chunks (1 MiB) is refused by it: its block takes the Python path.
_READ = pj.ReadOptions(use_threads=False)
# What checks.check_path refuses, and more (any control character): a path matching it takes the Python
# path, which says what is wrong with it. RE2 syntax; lone surrogates cannot be in valid UTF-8.
_SUSPECT_PATH = (
    r"[\x00-\x1f\x7f]|^/|^.:|(?:^|/)\.{0,2}(?:/|$)|^" + RESERVED_PREFIX.replace(".", r"\.") + r"(?:/|$)"
)
# Every character str.strip() removes (str.isspace), so an id of only these is refused as empty.
_BLANK_ID = r"^[\s\x1c-\x1f\x85\xa0\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*$"
_HALF = 2**63  # fingerprints and keys are signed 64-bit, as SQLite stores them
_xxh3 = xxhash.xxh3_64_intdigest


def plain_lines(block: bytes) -> pa.Array | None:
    """The lines of a block (as Arrow binary values, without their newlines) when each is one flat JSON
    object, '{' to '}', with no '{' or '[' inside it; else None. Nothing nested: deeply nested JSON
    crashes Arrow's parser. One '{' a line, starting it: Arrow then reads at most one row a line (an object
    cannot go on past the '}' that ends its line), so exactly one when it reads as many rows as lines."""
    if not block or b"[" in block:
        return None
    lines = pc.list_flatten(pc.split_pattern(pa.array([block], pa.binary()), b"\n"))
    if block[-1] == 0x0A:
        lines = lines.slice(0, len(lines) - 1)
    if block.count(b"{") != len(lines) or not (
        pc.all(pc.starts_with(lines, "{")).as_py() and pc.all(pc.ends_with(lines, "}")).as_py()
    ):
        return None
    return lines


def checked_block(block: bytes, first: int, checker: Checker) -> list[tuple] | None:
    """The stage tuples (Checker.check's) of the rows of a block whose first line is `first`, or None when
    the block must take the Python path (see the module's docstring)."""
    plain = plain_lines(block)
    if plain is None:
        return None
    n = len(plain)
    try:
        table = pj.read_json(pa.BufferReader(block), read_options=_READ, parse_options=_PARSE)
        table.validate(full=True)  # Arrow does not check UTF-8: invalid bytes take the Python path
    except (pa.ArrowException, UnicodeDecodeError):
        return None
    if table.num_rows != n:
        return None
    columns = _checked_columns(table, checker, escaped=b"\\" in block)
    if columns is None:
        return None
    extra, xk = columns
    seed = checker.seed
    fps = [_xxh3(raw, seed) - _HALF for raw in plain.to_pylist()]  # jsonl.line_fingerprint(raw, seed)
    ids, paths = table["id"].to_pylist(), table["path"].to_pylist()
    stored, keys = stored_paths(ids, paths)
    values = [
        ids,
        stored,
        table["kind"].to_pylist(),
        table["popularity"].to_pylist(),
        table["size"].to_pylist(),
        itertools.repeat(None) if extra is None else extra.to_pylist(),
        range(first, first + n),
        fps,
        itertools.repeat(xk),
    ]
    mtime = table["mtime"]
    # strict=False: the constant columns are endless repeats; the others have n values each.
    if mtime.null_count == n and keys is None:
        return list(zip(*values, strict=False))
    return list(zip(*values, mtime.to_pylist(), keys or itertools.repeat(None), strict=False))


def stored_paths(ids: list[str], paths: list[str]) -> tuple[list[str], list[int | None] | None]:
    """(paths as stored, path keys or None if no path needs one): state_schema.stored_path and path_key,
    as checks.Checker.check makes them."""
    stored, keys, mark = [], None, ID_MARK
    for k, (item_id, path) in enumerate(zip(ids, paths, strict=True)):
        start = path.rfind("/") + 1
        dot = path.rfind(".")
        end = dot if dot > start else len(path)
        if path[start:end] == item_id:
            stored.append(f"{path[:start]}{mark}{path[end:]}")
            continue
        stored.append(path)
        if keys is None:
            keys = [None] * len(paths)
        keys[k] = _xxh3(path.encode()) - _HALF
    return stored, keys


def _checked_columns(table: pa.Table, checker: Checker, escaped: bool) -> tuple | None:
    """(extra values as JSON or None, their names key or None) when every row passes every check with
    values the Python path takes as they are; else None. Without `escaped` (no backslash in the block) no
    string holds a quote, a backslash or a control character below 0x20 (JSON has them escaped only)."""
    ids, path, kind = table["id"], table["path"], table["kind"]
    popularity, size, mtime = table["popularity"], table["size"], table["mtime"]
    n = table.num_rows
    if ids.null_count or path.null_count or kind.null_count or popularity.null_count or size.null_count:
        return None
    refused = [
        pc.match_substring_regex(ids, r"[\x00-\x1f\x7f]"),
        pc.match_substring_regex(ids, _BLANK_ID),
        pc.match_substring_regex(path, _SUSPECT_PATH),
        pc.invert(pc.is_in(kind, pa.array(sorted(checker.kinds), pa.string()))),
        pc.invert(pc.is_finite(popularity)),
        pc.less(size, 0),
        pc.greater(size, MAX_FILE_SIZE),
    ]
    if mtime.null_count < n:
        refused.append(pc.or_kleene(pc.less(mtime, 0), pc.greater_equal(mtime, USTAR_MTIME_LIMIT)))
    if any(pc.any(r).as_py() for r in refused):
        return None
    extra = _extra_json(table, escaped)
    if extra is False:
        return None
    if extra is None:
        return None, None
    names, values = extra
    return values, checker.extra_key(names)


_JSON_TYPES = (pa.string(), pa.int64(), pa.bool_())


def _extra_json(table: pa.Table, escaped: bool) -> tuple[tuple[str, ...], pa.ChunkedArray] | None | bool:
    """(sorted names, each row's values as checks.py writes them: orjson's JSON array) of the extra
    fields; None without any; False when some row's could differ (a null, a missing field, a float, a
    control character in a string: the Python path writes those)."""
    names = tuple(sorted(set(table.column_names) - set(_KNOWN.names)))
    if not names:
        return None
    pieces: list = ["["]
    for k, name in enumerate(names):
        column = table[name]
        if column.type not in _JSON_TYPES or column.null_count:
            return False
        if k:
            pieces.append(",")
        if column.type == pa.string():
            if escaped and pc.any(pc.match_substring_regex(column, r'[\x00-\x1f"\\]')).as_py():
                if pc.any(pc.match_substring_regex(column, r"[\x00-\x1f]")).as_py():
                    return False
                column = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
            pieces += ['"', column, '"']
        elif column.type == pa.bool_():
            pieces.append(pc.if_else(column, "true", "false"))
        else:
            pieces.append(pc.cast(column, pa.string()))
    pieces.append("]")
    arrays = [pa.scalar(p, pa.string()) if type(p) is str else p for p in pieces]
    return names, pc.binary_join_element_wise(*arrays, "")
