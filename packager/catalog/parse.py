"""Rows read and checked as a stream of events, in this process or in one or two parser processes while
this one inserts (the events are the same either way, in file order)."""

from __future__ import annotations

import gc
import itertools
import marshal
import multiprocessing
import pickle
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ReleaseConfig
from ..errors import UsageError
from . import jsonl
from .checks import Checker
from .compression import catalog_suffix
from .formats import JSONL_SUFFIXES, read_catalog, source_name
from .jsonl import BLOCK_END, BLOCK_SKIPPED, STAGED, read_jsonl, read_jsonl_at
from .rows import RawRow

if TYPE_CHECKING:
    from .load import IngestOptions

BATCH = 20_000
# Blocks of JSON Lines at least this big go to Arrow (arrow_jsonl) with --trust-sizes: below it, Arrow's
# set-up costs more than it saves (a small catalog is one small block).
ARROW_MIN_BLOCK = 2**20
ROWS = b"R"  # the first byte of a message of rows (pickle's, of the other events, is 0x80)


def parsed(
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
    checker = Checker(config, options.trust_sizes)
    block = 0
    for i, catalog in enumerate(catalogs):
        source = sources[source_name(catalog, options.table)]
        chosen = None if select is None else select[i]
        jsonl_here = catalog_suffix(catalog)[0] in JSONL_SUFFIXES
        checked = _arrow_checker(checker) if jsonl_here and options.trust_sizes and chosen is None else None
        if part is None:
            if checked is not None:
                rows: Iterable[RawRow] = read_jsonl(catalog, seed=checker.seed, checked=checked)
            elif chosen is None:
                rows = read_catalog(catalog, options.table, checker.seed)
            elif offsets is not None and offsets[i] is not None:
                rows = read_jsonl_at(catalog, chosen, offsets[i], checker.seed)
            else:
                rows = read_jsonl(catalog, seed=checker.seed, select=chosen)
        elif jsonl_here:
            rows = read_jsonl(
                catalog, ((part[0] - block) % part[1], part[1]), part[2], checker.seed, chosen, checked
            )
        elif block % part[1] == part[0]:
            rows = itertools.chain(read_catalog(catalog, options.table), [BLOCK_END])
        else:
            rows = [BLOCK_SKIPPED]
        batch: list[tuple] = []
        bad: list[tuple] = []
        count = done = 0
        width = 0  # the length of the batch's tuples: one batch, one shape (the order of rows is kept)
        for row in rows:
            if row.line < 0:  # STAGED, BLOCK_END or BLOCK_SKIPPED
                if row.line == STAGED:  # a block checked whole (arrow_jsonl)
                    yield from _batch_events(checker, source, batch, bad, count - done)
                    staged: list = row.fields  # type: ignore[assignment]
                    yield from _batch_events(checker, source, staged, [], len(staged))
                    count += len(staged)
                    batch, bad, done = [], [], count
                    continue
                block += 1
                if row is BLOCK_END:
                    yield from _batch_events(checker, source, batch, bad, count - done)
                    batch, bad, done = [], [], count
                    yield "block", None
                continue
            count += 1
            staged, reason = checker.check(row)
            if reason:
                fields = row.fields
                item_id = None if fields is None or fields.get("id") is None else str(fields["id"])
                bad.append((row.source, row.line, reason, item_id, fields))
                continue
            if len(staged) != width:
                if batch:
                    yield from _rows_event(checker, source, batch)
                    batch = []
                width = len(staged)
            batch.append(staged)
            if len(batch) >= BATCH:
                yield from _batch_events(checker, source, batch, bad, count - done)
                batch, bad, done = [], [], count
        yield from _batch_events(checker, source, batch, bad, count - done)
        yield "catalog", (str(catalog), count)


def _arrow_checker(checker: Checker):
    """checked() for read_jsonl: a block big enough goes to arrow_jsonl (which imports pyarrow only then)."""

    def checked(first: int, block: bytes) -> list | None:
        if len(block) < ARROW_MIN_BLOCK:
            return None
        # pyarrow (~50 ms to import) only for a catalog with a block of at least ARROW_MIN_BLOCK bytes
        from .arrow_jsonl import checked_block

        return checked_block(block, first, checker)

    return checked


def _batch_events(
    checker: Checker, source: int, batch: list, bad: list, count: int
) -> Iterator[tuple[str, object]]:
    """The events of a batch: its good rows (if any), its bad ones (if any), and how many rows it read."""
    if batch:
        yield from _rows_event(checker, source, batch)
    if bad:
        yield "bad", bad
    yield "count", count


def _rows_event(checker: Checker, source: int, batch: list) -> Iterator[tuple[str, object]]:
    """A batch of rows of one catalog (source) and one shape, after the extra field names its rows use
    that were not handed on yet."""
    if checker.new_names:
        yield "names", checker.new_names
        checker.new_names = {}
    yield "rows", (source, batch)


@contextmanager
def no_cycle_collector() -> Iterator[None]:
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
    gc.disable()  # as in no_cycle_collector: 0.4 us of a row's ~6 us of parsing and checking
    try:
        for kind, payload in parsed(config, catalogs, options, sources, part, select):
            if kind == "rows":
                # marshal packs a batch of tuples of str, int, float and None 4x faster than pickle, and
                # unpacks it 1.4x faster than orjson (measured: 0.17 + 0.68 us a row, against 0.24 + 0.95).
                conn.send_bytes(ROWS + marshal.dumps(payload))
            else:
                conn.send((kind, payload))
        conn.send(("end", None))
    except _GONE:
        pass  # the inserting process is gone (killed, or stopped reading after an error): no one to tell
    except BaseException as e:  # handed to the parent, which raises it
        _send_error(conn, e)
    finally:
        conn.close()


# What sending to a process that is gone raises: a parser child then ends quietly (it printed two
# tracebacks on the user's terminal after ingest itself had stopped).
_GONE = (BrokenPipeError, ConnectionResetError)


def _send_error(conn, e: BaseException) -> None:
    try:
        try:
            conn.send(("error", e))
        except _GONE:
            raise
        except Exception:  # an exception that does not pickle
            conn.send(("error", UsageError(f"catalog parser failed: {type(e).__name__}: {e}")))
    except _GONE:
        pass


def parsed_in_children(
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
        part = (k, processes, jsonl.BLOCK_BYTES) if processes > 1 else None
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
            if message[:1] == ROWS:
                yield "rows", marshal.loads(memoryview(message)[1:])
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
