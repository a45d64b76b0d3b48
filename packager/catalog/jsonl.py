"""The JSON Lines reader: whole lines in blocks (the unit two parser processes share a file in), each line
parsed with orjson, and a reason in a user's words for every line that is not one JSON object."""

from __future__ import annotations

import bisect
import json
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import orjson
import xxhash

from . import rows
from .checks import _SURROGATE
from .compression import open_catalog_bytes, stream_failure
from .rows import RawRow

_xxh3 = xxhash.xxh3_64_intdigest
T = TypeVar("T")
_HALF = 2**63  # fingerprints are signed 64-bit, as SQLite stores them
MAX_DEPTH = 1024  # orjson's limit of nesting (arrays and objects) in a line
# RawRow(*values) with all five given, at a quarter of the cost: RawRow's generated __new__ took 0.5 us of
# a row's ~8 us of parsing and checking.
_new_tuple = tuple.__new__


# About this much of a JSON Lines file, in whole lines, is the unit two parser processes share it in.
BLOCK_BYTES = 16 * 2**20
BLOCK_END = RawRow("", -1, None, "end of block")
BLOCK_SKIPPED = RawRow("", -1, None, "block parsed by the other process")
# The line of a RawRow whose fields are the stage tuples of a whole block, checked by a caller's `checked`.
STAGED = -2


def read_jsonl(
    path: Path,
    part: tuple[int, int] | None = None,
    block: int = 0,
    seed: int = 0,
    select: Sequence[int] | None = None,
    checked: Callable[[int, bytes], list | None] | None = None,
) -> Iterator[RawRow]:
    """Rows of a JSON Lines file, each with its line_fingerprint(raw line, seed). With part=(k, n), only the
    rows of blocks b with b % n == k, each owned block followed by BLOCK_END and each other block by
    BLOCK_SKIPPED (so that n processes share a file). With select (sorted line numbers), only those lines
    are parsed (a refresh's lines whose fingerprint is not stored); lines that cannot be read are always
    reported. With checked, each block is first offered to checked(first line, bytes): a list it returns
    (the block's stage tuples) comes as one RawRow(path, STAGED, that list), None sends the block on
    here, line by line."""
    name = str(path)
    for b, (first, lines) in enumerate(read_ahead(jsonl_blocks(path, block or BLOCK_BYTES))):
        if part is not None and b % part[1] != part[0]:
            yield BLOCK_SKIPPED
            continue
        if lines is None:
            yield RawRow(name, first, None, f"line longer than {rows.MAX_LINE // 2**20} MiB")
        elif type(lines) is str:  # the compressed stream cannot be read on from here
            yield RawRow(name, first, None, lines)
        else:
            staged = None if checked is None else checked(first, lines)
            if staged is None:
                yield from jsonl_rows(name, first, lines, seed, select)
            else:
                yield RawRow(name, STAGED, staged)  # type: ignore[arg-type]
        if part is not None:
            yield BLOCK_END


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The items of an iterator, made by a thread up to `depth` ahead: the next blocks are read (the GIL
    released in the read) while this one is parsed. The iterator runs and is closed in the thread; its
    exception is raised here, and closing this generator stops the thread."""
    ahead: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                ahead.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as e:  # raised in the reader's thread, where the caller sees it
            put((False, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=run, name="catalog read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            more, item = ahead.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        reader.join()


def jsonl_blocks(path: Path, size: int) -> Iterator[tuple[int, bytes | str | None]]:
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
                if len(carry) > rows.MAX_LINE:
                    yield line, None
                    carry, skipping = b"", True
                continue
            block = carry + data[:cut]  # its first line may reach 2 * MAX_LINE: still bounded
            carry = data[cut:]
            yield line, block
            line += block.count(b"\n")


def jsonl_rows(
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
    loads, new = orjson.loads, _new_tuple
    for n, raw in numbered:
        try:
            obj = loads(raw)  # 2x faster than json; it also refuses invalid UTF-8
        except orjson.JSONDecodeError:
            if not raw.strip():
                continue
            yield RawRow(name, n, None, _json_error(raw))
            continue
        if type(obj) is not dict:
            yield RawRow(name, n, None, "not a JSON object")
            continue
        # Each key is followed by '":', so fewer of those than keys is impossible and as many means no
        # key repeats; anything else (nested objects, '":' in a string) takes the exact check.
        if raw.count(b'":') != len(obj):
            repeated = _repeated_key(raw)
            if repeated is not None:
                yield RawRow(name, n, None, f"key {repeated!r} appears twice in the object")
                continue
        yield new(RawRow, (name, n, obj, None, _xxh3(raw, seed) - _HALF))  # line_fingerprint(raw, seed)


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
    except (ValueError, RecursionError):  # nested deeper than the standard parser goes: orjson took it
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
    except RecursionError:  # it was a traceback
        return f"not a JSON object: nested more than {MAX_DEPTH} levels deep"
    except json.JSONDecodeError as e:
        return f"not a JSON object: {e.msg} at column {e.colno}"
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        return "not a JSON object: a number too long to read (over 4300 digits)"
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str) and _SURROGATE.search(v):
                return f"{k} {v!r} is not valid UTF-8 (a lone surrogate escape)"
            if isinstance(v, _NonFinite):
                return (
                    f"{k} {v} is not a finite number (JSON has no NaN or Infinity; doubles end near 1.8e308)"
                )
    return "not a JSON object (a NaN, an Infinity, a number beyond 1.8e308 or a lone surrogate inside it)"


def read_jsonl_at(path: Path, lines: Sequence[int], offsets: Sequence[int], seed: int) -> Iterator[RawRow]:
    """The rows of the given lines of a JSON Lines file, each read at its byte offset (found by a refresh's
    fingerprint pass over the same file, which also saw that no line is longer than MAX_LINE)."""
    name = str(path)
    with open(path, "rb", buffering=2**20) as f:
        for n, at in zip(lines, offsets, strict=True):
            f.seek(at)  # forward, mostly within the buffer
            yield from jsonl_rows(name, n, f.readline(rows.MAX_LINE + 1), seed)
