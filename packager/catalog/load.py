"""One ingest, in one transaction: the fast refresh when it applies (refresh.py), else every row parsed and
checked (parse.py), then the loader's stage, check and apply (ingest.py); all problems reported together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CatalogError, UsageError, WorkspaceError
from ..ingest import FullPath, Loader, Outcome, remove_rows
from ..state_schema import fingerprint_seed
from ..timing import phase
from ..workspace import Workspace
from . import jsonl
from .compression import catalog_suffix, is_compressed
from .formats import JSONL_SUFFIXES, read_catalog, source_name
from .jsonl import jsonl_blocks, read_jsonl
from .parse import no_cycle_collector, parsed, parsed_in_children
from .problems import IngestReport, Problems, RowReader

if TYPE_CHECKING:
    from ..refresh import Matched


@dataclass(frozen=True)
class IngestOptions:
    table: str | None = None
    trust_sizes: bool = False
    skip_invalid: bool = False
    rejects: Path | None = None
    mark_absent: bool = False


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
    identities = [_identity(c) for c in catalogs]
    # Compressed catalogs count as what they will likely expand to.
    size = sum(c.stat().st_size * (1 if catalog_suffix(c)[1] is None else 5) for c in catalogs)
    problems = Problems(report, options.rejects if options.skip_invalid else None)
    try:
        with no_cycle_collector(), state.bulk_journal(state.is_empty()), state.transaction():
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
            order: dict[str, int] = {}
            for catalog in catalogs:
                order.setdefault(source_name(catalog, options.table), len(order))
            _unchanged(catalogs, identities)  # before the commit: what was read is one file each
            problems.keep(_catalog_rows(catalogs, options.table), order)
    except CatalogError:
        problems.discard()
        _unchanged(catalogs, identities)  # problems read from a catalog replaced meanwhile are not its own
        raise
    except BaseException:
        problems.discard()
        raise
    return report


def _identity(catalog: Path) -> tuple[int, ...]:
    st = catalog.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _unchanged(catalogs: list[Path], identities: list[tuple[int, ...]]) -> None:
    """Refuses the ingest if a catalog was replaced or written while it was read. Its rows are read by
    several opens (parser processes, a refresh's fingerprints then its lines at their offsets), each of
    which may have met another file: the usual way a new dump lands (written beside, renamed over the
    old) would otherwise mix two catalogs, or read lines at the old file's offsets in the new one."""
    for catalog, before in zip(catalogs, identities, strict=True):
        try:
            now = _identity(catalog)
        except OSError:
            now = None
        if now != before:
            raise UsageError(
                f"{catalog}: the catalog changed while it was read (replaced, written or removed); "
                "nothing was ingested",
                hint="ingest again once the catalog is complete",
            )


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
    problems: Problems,
    on_rows: Callable[[int], None] | None,
    fast: bool,
) -> Outcome:
    """One attempt at the ingest inside the caller's transaction; FullPath if the fast refresh cannot
    finish it."""
    state, config = ws.state, ws.config
    report.rows = 0
    loader = Loader(state, config.kinds)
    try:
        sources = {
            name: loader.source_number(name) for name in (source_name(c, options.table) for c in catalogs)
        }
        select, events = None, None
        if fast and _fast_refresh_applies(loader, catalogs, options):
            from .. import refresh  # pyarrow (~50 ms to import): only a refresh needs it

            refresh.clean_leftovers(state.path.parent)
            matched = refresh.match_catalogs(
                state.db,
                state.path,
                catalogs,
                fingerprint_seed(config.kinds, trust_sizes=True),
                2 if size >= SPLIT_BYTES else 1,
                jsonl.BLOCK_BYTES,
                refresh.Reader(jsonl_blocks, is_compressed),
            )
            loader.matched_by_fingerprint(matched.matched)
            select = matched.lines
            report.rows = matched.matched
            if _read_here(matched):
                # A few lines, each found at its byte offset: no need to read every catalog again.
                offsets = matched.offsets
                events = parsed(config, catalogs, options, sources, select=select, offsets=offsets)
        if events is not None:
            pass
        elif size >= SPLIT_BYTES:
            events = parsed_in_children(config, catalogs, options, sources, 2, select)
        elif size >= PARALLEL_BYTES:
            events = parsed_in_children(config, catalogs, options, sources, 1, select)
        else:
            events = parsed(config, catalogs, options, sources, select=select)
        rows_of: dict[str, int] = {}
        if select is not None:
            rows_of = {str(c): n for c, n in zip(catalogs, matched.per_catalog, strict=True)}
        with phase("parse, check and stage rows"):
            for kind, payload in events:
                if kind == "rows":
                    loader.stage(*payload)
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
        problems.defer_rows()
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


def _read_here(matched: Matched) -> bool:
    """Whether the lines a refresh selected are read at their offsets by this process: when every catalog
    has offsets and they are at most a tenth of the lines (beyond that, a new reading of the catalogs by the
    parser processes costs less than parsing them all in one)."""
    selected = sum(len(lines) for lines in matched.lines)
    return all(o is not None for o in matched.offsets) and selected * 10 <= selected + matched.matched


def _catalog_rows(catalogs: list[Path], table: str | None) -> RowReader:
    """problems.RowReader over these catalogs: rows read again as the catalog gives them (JSON Lines at the
    lines asked for; other formats read through)."""

    def read(wanted: set[tuple[str, int]]) -> dict[tuple[str, int], dict]:
        found: dict[tuple[str, int], dict] = {}
        for catalog in catalogs:
            name = source_name(catalog, table)
            lines = sorted(line for source, line in wanted if source == name)
            if not lines:
                continue
            if catalog_suffix(catalog)[0] in JSONL_SUFFIXES:
                rows = read_jsonl(catalog, select=lines)
            else:
                rows = read_catalog(catalog, table)
            chosen = set(lines)
            for row in rows:
                if row.line in chosen and row.fields is not None:
                    found[(name, row.line)] = row.fields
        return found

    return read
