"""The fast refresh (refresh.py) against the plain path: whatever the catalogs, the same report, the same
problems and the same state."""

import itertools
import json
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packager.catalog.load
from packager import refresh
from packager.catalog import IngestOptions, ingest
from packager.errors import CatalogError, UsageError
from packager.plan import plan
from packager.state import open_state
from packager.state_schema import item_path_sql
from packager.workspace import Workspace

_fresh = itertools.count()


def _row(i: int, pop: float = 1.0, path: str | None = None, **more) -> dict:
    return {"id": f"r{i:02d}", "path": path or f"audio/r{i}.ogg", "kind": "audio", "popularity": pop,
            "size": 10 + i} | more  # fmt: skip


def _line(row: dict, spacing: bool = False) -> str:
    if spacing:  # the same row written another way: other key order and spacing
        return json.dumps(dict(reversed(list(row.items())))) + "  "
    return json.dumps(row, separators=(",", ":"))


k_ = st.integers(0, 40)
edit_ = st.one_of(
    st.tuples(st.just("popularity"), k_),
    st.tuples(st.just("extra"), k_),
    st.tuples(st.just("path"), k_, st.integers(0, 2)),  # one of a few shared paths: clashes
    st.tuples(st.just("gone"), k_),
    st.tuples(st.just("new"), st.integers(0, 24)),  # may repeat a known id with other content
    st.tuples(st.just("repeat"), k_),  # the same line twice
    st.tuples(st.just("respace"), k_),
    st.tuples(st.just("bad kind"), k_),
    st.tuples(st.just("broken"), k_),
    st.tuples(st.just("blank"), k_),
    st.tuples(st.just("move"), k_, k_),
    st.tuples(st.just("named path"), k_, st.integers(8, 24)),  # the path item r{j} is named by
)
step_ = st.tuples(
    st.lists(edit_, max_size=5),
    st.booleans(),  # --skip-invalid
    st.booleans(),  # --mark-absent
    st.sampled_from([None, None, "plan", "plan and build"]),
)


def _edited(lines: list[str], edits: list[tuple]) -> list[str]:
    lines = list(lines)
    for edit in edits:
        what, k = edit[0], edit[1]
        if what == "new":
            lines.append(_line(_row(k, pop=float(k % 3))))
            continue
        if not lines:
            continue
        k %= len(lines)
        try:
            row = json.loads(lines[k])
        except ValueError:
            row = None
        if what == "gone":
            del lines[k]
        elif what == "repeat":
            lines.append(lines[k])
        elif what == "broken":
            lines[k] = '{"id": "r99", "path": '
        elif what == "blank":
            lines.insert(k, "")
        elif what == "move":
            lines.insert(edit[2] % len(lines), lines.pop(k))
        elif isinstance(row, dict):
            if what == "popularity":
                row["popularity"] = float(row.get("popularity", 0)) + 1
            elif what == "extra":
                row["title"] = row.get("title", "") + "x"
            elif what == "path":
                row["path"] = f"audio/shared{edit[2]}.ogg"
            elif what == "named path":
                row["path"] = f"audio/r{edit[2]:02d}.ogg"
            elif what == "bad kind":
                row["kind"] = "video"
            lines[k] = _line(row, spacing=what == "respace")
    return lines


def _outcome(ws: Path, catalog: Path, skip: bool, mark_absent: bool, fast: bool, at_offsets: bool = False):
    rejects = ws / "rejects.jsonl"
    rejects.unlink(missing_ok=True)
    options = IngestOptions(trust_sizes=True, skip_invalid=skip, rejects=rejects, mark_absent=mark_absent)
    matches = mock.patch.object(refresh, "match_catalogs", wraps=refresh.match_catalogs)
    plain = mock.patch.object(packager.catalog.load, "_fast_refresh_applies", lambda *a: False)
    with Workspace.open(ws) as w, matches as matched, mock.MagicMock() if fast else plain:
        try:
            got = ingest(w, [catalog], options).as_dict() | {"rejects_file": None}
        except CatalogError as e:
            got = [(p.file, p.line, p.reason, p.item_id) for p in e.problems]
        except UsageError as e:
            got = e.message
    with open_state(ws) as state:
        dump = [
            state.db.execute("SELECT * FROM items ORDER BY n").fetchall(),
            state.db.execute("SELECT * FROM catalog_totals ORDER BY kind").fetchall(),
            state.db.execute("SELECT * FROM planned_popularity ORDER BY item_rowid").fetchall(),
        ]
        assert state.stored_totals() == state.counted_totals()
    kept = rejects.read_text() if rejects.exists() else None
    return (got, dump, kept), matched.call_count


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.integers(0, 12), steps=st.lists(step_, min_size=1, max_size=5), at_offsets=st.booleans())
def test_the_fast_refresh_finds_what_the_plain_path_finds(make_workspace, archive, base, steps, at_offsets):
    """After any sequence of catalog edits (changed, new, gone, repeated, moved, respaced, refused and
    broken lines; path clashes; items planned and built), each ingest through the fast refresh gives the
    plain path's report or problems, rejects and state."""
    n = next(_fresh)
    fast_ws, plain_ws = make_workspace(f"fast-{n}"), make_workspace(f"plain-{n}")
    lines = [_line(_row(i, pop=float(i % 4))) for i in range(base)]
    for s, (edits, skip, mark_absent, then) in enumerate([([], False, False, None), *steps]):
        lines = _edited(lines, edits)
        catalog = archive.base / f"catalog-{n}-{s}.jsonl"
        catalog.write_text("".join(line + "\n" for line in lines))
        with open_state(fast_ws) as state:
            first = state.is_empty()
        fast, calls = _outcome(fast_ws, catalog, skip, mark_absent, fast=True, at_offsets=at_offsets)
        plain, _ = _outcome(plain_ws, catalog, skip, mark_absent, fast=False)
        assert fast == plain, (s, lines)
        assert calls == (0 if first else 1), "a re-ingest of JSON Lines with --trust-sizes goes fast"
        if then:
            for ws in (fast_ws, plain_ws):
                with Workspace.open(ws) as w:
                    plan(w)
                if then == "plan and build":
                    with open_state(ws) as state:
                        state.db.execute(
                            "UPDATE shards SET state = 'built' WHERE id = (SELECT MIN(id) FROM shards)"
                        )


def test_a_line_stands_for_its_row_only_when_sizes_are_trusted(workspace, archive):
    """Without --trust-sizes a row's size is its file's: a file that changed under the same line is a
    changed row; and a line ingested so (without a size) is refused by a --trust-sizes refresh, as by the
    plain path, instead of being matched as unchanged."""
    archive.add("audio/a.ogg", 100)
    archive.add("audio/b.ogg", 100)
    rows = [{"id": i, "path": f"audio/{i}.ogg", "kind": "audio", "popularity": 1} for i in ("a", "b")]
    cat = archive.jsonl(rows)
    with Workspace.open(workspace) as w:
        ingest(w, [cat], IngestOptions())
        archive.add("audio/a.ogg", 150)
        report = ingest(w, [cat], IngestOptions())
        assert (report.changed, report.unchanged) == (1, 1)
        with open_state(workspace) as state:
            assert state.db.execute("SELECT size FROM items WHERE id = 'a'").fetchone()[0] == 150
        try:
            ingest(w, [cat], IngestOptions(trust_sizes=True))
        except CatalogError as e:
            assert [(p.line, p.reason) for p in e.problems] == [
                (1, "size is required with --trust-sizes"),
                (2, "size is required with --trust-sizes"),
            ]
        else:
            raise AssertionError("a line without a size was taken as unchanged under --trust-sizes")


def _unnamed(line: str) -> str:
    """The same line with its path no longer named by its id (and no two paths equal that were not)."""
    try:
        row = json.loads(line)
    except ValueError:
        return line
    if isinstance(row, dict) and isinstance(row.get("path"), str):
        row["path"] = row["path"].replace("audio/", "audio/~", 1)
    return _line(row)


def _seen(ws: Path, catalog: Path, skip: bool, mark_absent: bool, plain_name: Path) -> tuple:
    """What a user sees of an ingest, with paths and the catalog's name written as in the plain catalog."""
    rejects = ws / "rejects.jsonl"
    rejects.unlink(missing_ok=True)
    options = IngestOptions(trust_sizes=True, skip_invalid=skip, rejects=rejects, mark_absent=mark_absent)
    with Workspace.open(ws) as w:
        try:
            got = repr(ingest(w, [catalog], options).as_dict() | {"rejects_file": None})
        except CatalogError as e:
            got = repr([(p.file, p.line, p.reason, p.item_id) for p in e.problems])
        except UsageError as e:
            got = e.message
    with open_state(ws) as state:
        dump = repr(
            [
                state.db.execute(
                    f"SELECT n, id, {item_path_sql('items')}, kind, popularity, size, mtime, extra, "
                    "removed, xk FROM items ORDER BY n"
                ).fetchall(),
                state.db.execute("SELECT * FROM catalog_totals ORDER BY kind").fetchall(),
                state.db.execute("SELECT * FROM planned_popularity ORDER BY item_rowid").fetchall(),
            ]
        )
        named = state.db.execute("SELECT COUNT(*) FROM items WHERE ph IS NULL").fetchone()[0]
    kept = rejects.read_text() if rejects.exists() else ""
    return tuple(s.replace(str(catalog), str(plain_name)).replace("~", "") for s in (got, dump, kept)), named


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.integers(0, 20), first=st.lists(edit_, max_size=4), steps=st.lists(step_, max_size=4))
def test_paths_named_by_their_ids_are_kept_unique_as_keyed_ones_are(
    make_workspace, archive, base, first, steps
):
    """A path named by its id (audio/r12.ogg for r12) has no key in the state: after any sequence of edits
    (paths taken from rows named by them, new rows named by a path another row holds, moves, repeats,
    plans), every ingest reports, refuses and stores what it does when no path is named by its id."""
    n = next(_fresh)
    named_ws, keyed_ws = make_workspace(f"named-{n}"), make_workspace(f"keyed-{n}")
    lines = [_line(_row(i, pop=float(i % 4))) for i in range(base)]
    for s, (edits, skip, mark_absent, then) in enumerate([(first, True, False, None), *steps]):
        lines = _edited(lines, edits)
        catalog = archive.base / f"named-{n}-{s}.jsonl"
        catalog.write_text("".join(line + "\n" for line in lines))
        other = archive.base / f"keyed-{n}-{s}.jsonl"
        other.write_text("".join(_unnamed(line) + "\n" for line in lines))
        seen, named = _seen(named_ws, catalog, skip, mark_absent, catalog)
        reference, keyed = _seen(keyed_ws, other, skip, mark_absent, catalog)
        assert seen == reference, (s, lines)
        assert keyed == 0
        if s == 0 and not first:  # r10 and up are named by their ids: no key is stored for them
            assert named == max(0, base - 10)
        if then:
            for ws in (named_ws, keyed_ws):
                with Workspace.open(ws) as w:
                    plan(w)
