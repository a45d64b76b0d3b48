"""Ingest: every kind of bad input is reported with its file and line, and nothing is half-committed."""

import json
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from packager.catalog import IngestOptions, ingest
from packager.errors import CatalogError, UsageError
from packager.plan import plan
from packager.state import open_state
from packager.state_schema import item_path_sql
from packager.workspace import Workspace


def run(ws: Path, *catalogs: Path, **opts):
    with Workspace.open(ws) as w:
        return ingest(w, list(catalogs), IngestOptions(**opts))


def count(ws: Path) -> int:
    with open_state(ws) as state:
        return state.item_count()


def good_rows(archive, n=3):
    rows = []
    for i in range(n):
        size = archive.add(f"audio/a{i}.ogg", 100 + i)
        rows.append(
            {"id": f"a{i}", "path": f"audio/a{i}.ogg", "kind": "audio", "popularity": 10 * i, "size": size}
        )
    return rows


def rejected(ws: Path, catalog: Path, **opts) -> CatalogError:
    with pytest.raises(CatalogError) as e:
        run(ws, catalog, **opts)
    assert count(ws) == 0, "nothing may be committed when a row is bad"
    return e.value


def assert_reported(err: CatalogError, catalog: Path, line: int, words: str):
    assert any(p.file == str(catalog) and p.line == line and words in p.reason for p in err.problems), (
        err.message
    )
    assert f"{catalog}:{line}" in err.message


def test_good_catalog_loads_and_reingest_is_a_noop(workspace, archive):
    cat = archive.jsonl(
        good_rows(archive) + [{"id": "x", "path": "audio/a0.ogg", "kind": "audio", "popularity": 1}][:0]
    )
    report = run(workspace, cat)
    assert (report.rows, report.added) == (3, 3)
    again = run(workspace, cat)
    assert (again.added, again.changed, again.unchanged) == (0, 0, 3)


def test_extra_fields_are_kept(workspace, archive):
    rows = good_rows(archive, 1)
    rows[0]["title"] = "Blue Night"
    run(workspace, archive.jsonl(rows))
    with open_state(workspace) as state:
        extra = state.item_extra(state.db.execute("SELECT id FROM items").fetchone()[0])
    assert extra == {"title": "Blue Night"}


def test_size_is_taken_from_the_file_when_absent(workspace, archive):
    rows = good_rows(archive, 1)
    del rows[0]["size"]
    run(workspace, archive.jsonl(rows))
    with open_state(workspace) as state:
        assert state.db.execute("SELECT size FROM items").fetchone()[0] == 100


def test_duplicate_id(workspace, archive):
    rows = good_rows(archive, 2)
    rows[1]["id"] = "a0"
    cat = archive.jsonl(rows)
    err = rejected(workspace, cat)
    assert_reported(err, cat, 2, "duplicate id 'a0', first seen at")


def test_duplicate_id_across_two_catalogs(workspace, archive):
    rows = good_rows(archive, 2)
    c1 = archive.jsonl(rows[:1], "one.jsonl")
    c2 = archive.jsonl([dict(rows[1], id="a0")], "two.jsonl")
    with pytest.raises(CatalogError) as e:
        run(workspace, c1, c2)
    assert_reported(e.value, c2, 1, f"first seen at {c1}:1")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "id is missing or empty"),
        ("  ", "id is missing or empty"),
        (4.5, "id must be text or a whole number, not the number 4.5"),
        (True, "id must be text or a whole number, not true"),
        ({"a": 1}, "id must be text or a whole number, not an object"),
        ([1], "id must be text or a whole number, not a list"),
    ],
)
def test_an_id_of_the_wrong_type_is_named_as_such(workspace, archive, value, words):
    # A present id of the wrong type was reported as "missing or empty", which sends the user looking for a
    # row that has one.
    rows = good_rows(archive)
    rows[1]["id"] = value
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 2, words)


def test_missing_file(workspace, archive):
    rows = good_rows(archive)
    rows[2]["path"] = "audio/gone.ogg"
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 3, "missing")


def test_not_a_regular_file(workspace, archive):
    rows = good_rows(archive)
    (archive.root / "audio/dir.ogg").mkdir()
    rows[0]["path"] = "audio/dir.ogg"
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 1, "not a regular file")


def test_symlink(workspace, archive):
    rows = good_rows(archive)
    os.symlink(archive.root / "audio/a1.ogg", archive.root / "audio/link.ogg")
    rows[0]["path"] = "audio/link.ogg"
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 1, "symlink")


@pytest.mark.parametrize(
    "path, words",
    [
        ("../outside.ogg", "escapes the archive root"),
        ("audio/../../x.ogg", "escapes the archive root"),
        ("/etc/passwd", "absolute"),
        ("audio//a0.ogg", "not normalized"),
        (".packager/manifest.jsonl", "reserved"),
    ],
)
def test_path_leaving_the_root(workspace, archive, path, words):
    rows = good_rows(archive)
    rows[1]["path"] = path
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 2, words)


def test_path_through_symlinked_folder(workspace, archive, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.ogg").write_bytes(b"x")
    os.symlink(outside, archive.root / "sneaky")
    rows = good_rows(archive)
    rows.append({"id": "s", "path": "sneaky/x.ogg", "kind": "audio", "popularity": 1})
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 4, "leaves the archive root")


def test_size_mismatch(workspace, archive):
    rows = good_rows(archive)
    rows[1]["size"] = 5
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 2, "size mismatch")


@pytest.mark.parametrize(
    "value, words",
    [
        ("", "popularity is empty"),
        (None, "popularity is empty"),
        ("lots", "not a number"),
        ("nan", "not a number"),
    ],
)
def test_bad_popularity(workspace, archive, value, words):
    rows = good_rows(archive)
    rows[2]["popularity"] = value
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 3, words)


def test_unknown_kind(workspace, archive):
    rows = good_rows(archive)
    rows[0]["kind"] = "video"
    cat = archive.jsonl(rows)
    err = rejected(workspace, cat)
    assert_reported(err, cat, 1, "unknown kind 'video'")
    assert "metadata, audio, art" in err.message


def test_non_utf8_path(workspace, archive):
    rows = good_rows(archive)
    cat = archive.jsonl(rows)
    lines = cat.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"a1.ogg", b"a\xff1.ogg")
    cat.write_bytes(b"\n".join(lines))
    assert_reported(rejected(workspace, cat), cat, 2, "not valid UTF-8")


def test_control_characters_in_path(workspace, archive):
    rows = good_rows(archive)
    rows[1]["path"] = "audio/a\x1b[31m1.ogg"
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 2, "control characters")


def test_empty_catalog(workspace, archive):
    cat = archive.base / "empty.jsonl"
    cat.write_text("")
    err = rejected(workspace, cat)
    assert "empty catalog" in err.message and str(cat) in err.message


def test_broken_json_line(workspace, archive):
    cat = archive.jsonl(good_rows(archive))
    cat.write_text(cat.read_text() + "{not json\n")
    assert_reported(rejected(workspace, cat), cat, 4, "not a JSON object")


def test_all_problems_are_reported_together(workspace, archive):
    rows = good_rows(archive, 3)
    rows[0]["kind"] = "video"
    rows[1]["popularity"] = "x"
    rows[2]["path"] = "audio/none.ogg"
    cat = archive.jsonl(rows)
    err = rejected(workspace, cat)
    assert sorted(p.line for p in err.problems) == [1, 2, 3]


def test_skip_invalid_loads_good_rows_and_writes_rejects(workspace, archive):
    rows = good_rows(archive, 3)
    rows[1]["popularity"] = "x"
    cat = archive.jsonl(rows)
    rejects = workspace / "rejects.jsonl"
    report = run(workspace, cat, skip_invalid=True, rejects=rejects)
    assert (report.added, report.rejected) == (2, 1)
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert lines == [
        {"file": str(cat), "line": 2, "reason": "popularity 'x' is not a number", "row": rows[1]}
    ]
    assert not rejects.with_name("rejects.jsonl.part").exists()


def test_changed_row_is_fine_before_planning_and_refused_after(workspace, archive):
    rows = good_rows(archive, 2)
    run(workspace, archive.jsonl(rows))
    rows[0]["popularity"] = 99
    assert run(workspace, archive.jsonl(rows)).changed == 1
    with Workspace.open(workspace) as w:
        plan(w)
    rows[0]["kind"] = "art"
    cat = archive.jsonl(rows)
    with pytest.raises(CatalogError) as e:
        run(workspace, cat)
    assert_reported(
        e.value, cat, 1, "already in shard t-audio-t1-00001 and cannot change (kind 'audio' -> 'art')"
    )


def test_new_popularity_of_a_planned_or_built_item_is_recorded_and_the_item_stays(workspace, archive):
    """The monthly refresh brings new listening figures for items already in shards: they are taken (they
    steer the planning of items not planned yet), while each item stays in its shard and the shard is
    built from the popularity it was planned with. A size change of a built item is still refused."""
    from tests.helpers import shard_members

    rows = [trusted(i, pop=90.0 - i) for i in range(4)]
    run(workspace, archive.jsonl(rows), trust_sizes=True)
    with Workspace.open(workspace) as w:
        plan(w)
    before = shard_members(workspace)
    with open_state(workspace) as state:
        state.db.execute("UPDATE shards SET state = 'built' WHERE name = 't-audio-t1-00001'")
    rows[0]["popularity"] = 1.0  # would now sort last, and belong to another tier
    rows[1] |= {"popularity": 99.0, "title": "an extra field, new"}
    rows.append(trusted(9, pop=89.5))
    report = run(workspace, archive.jsonl(rows, "refresh.jsonl"), trust_sizes=True)
    assert (report.added, report.changed, report.unchanged) == (1, 2, 2)
    with Workspace.open(workspace) as w:
        plan(w)
        shard = w.state.shard("t-audio-t1-00001")
        members = list(w.state.iter_members(shard.id))
        popularity = dict(w.state.db.execute("SELECT id, popularity FROM items"))
    assert shard_members(workspace)["t-audio-t1-00001"] == before["t-audio-t1-00001"]
    assert shard_members(workspace)["t-audio-t1-00002"] == ["t009"]
    assert (popularity["t000"], popularity["t001"]) == (1.0, 99.0)  # recorded
    assert [m.popularity for m in members] == [90.0, 89.0, 88.0, 87.0]  # what the shard is built from
    assert (shard.pop_min, shard.pop_max) == (87.0, 90.0)
    totals_agree(workspace)
    rows[2]["size"] = 11
    cat = archive.jsonl(rows, "refresh.jsonl")
    with pytest.raises(CatalogError) as e:
        run(workspace, cat, trust_sizes=True)
    assert_reported(e.value, cat, 3, "already in shard t-audio-t1-00001 and cannot change (size 10 -> 11)")


def test_csv_catalog(workspace, archive):
    rows = good_rows(archive, 2)
    cat = archive.base / "c.csv"
    cat.write_text(
        "id,path,kind,popularity,size,title\n"
        + "".join(
            f'{r["id"]},{r["path"]},{r["kind"]},{r["popularity"]},{r["size"]},"T, {r["id"]}"\n' for r in rows
        )
    )
    assert run(workspace, cat).added == 2
    cat.write_text("id,path,kind,popularity\nz,audio/a0.ogg,audio,\n")
    with pytest.raises(CatalogError) as e:
        run(workspace, cat)
    assert_reported(e.value, cat, 2, "popularity is empty")


def test_sqlite_catalog_with_table_option(workspace, archive):
    rows = good_rows(archive, 2)
    db_path = archive.base / "c.sqlite"
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE tracks (id TEXT, path TEXT, kind TEXT, popularity REAL, size INTEGER)")
    db.executemany("INSERT INTO tracks VALUES (?,?,?,?,?)", [tuple(r.values()) for r in rows])
    db.commit()
    db.close()
    assert run(workspace, db_path, table="tracks").added == 2
    with pytest.raises(UsageError, match="no such table") as e:
        run(workspace, db_path, table="nope")
    assert "--table" in e.value.hint


def test_trust_sizes_skips_the_stat_but_needs_sizes(workspace, archive):
    rows = [{"id": "v", "path": "audio/virtual.ogg", "kind": "audio", "popularity": 1, "size": 10}]
    assert run(workspace, archive.jsonl(rows), trust_sizes=True).added == 1
    del rows[0]["size"]
    rows[0]["id"] = "w"
    cat = archive.jsonl(rows)
    with pytest.raises(CatalogError) as e:
        run(workspace, cat, trust_sizes=True)
    assert_reported(e.value, cat, 1, "size is required with --trust-sizes")


def test_duplicate_path_in_one_catalog(workspace, archive):
    rows = good_rows(archive, 2)
    rows[1]["path"] = rows[0]["path"]
    rows[1]["size"] = rows[0]["size"]
    cat = archive.jsonl(rows)
    assert_reported(rejected(workspace, cat), cat, 2, "duplicate path 'audio/a0.ogg', first seen at")


def test_path_of_a_known_id_is_refused(workspace, archive):
    rows = good_rows(archive, 1)
    run(workspace, archive.jsonl(rows))
    cat = archive.jsonl([dict(rows[0], id="other")], "more.jsonl")
    with pytest.raises(CatalogError) as e:
        run(workspace, cat)
    assert_reported(e.value, cat, 1, "path 'audio/a0.ogg' already belongs to id 'a0'")


def test_repeated_known_id_in_one_reingest(workspace, archive):
    rows = good_rows(archive, 1)
    run(workspace, archive.jsonl(rows))
    cat = archive.jsonl([rows[0], rows[0]], "again.jsonl")
    with pytest.raises(CatalogError) as e:
        run(workspace, cat)
    assert_reported(e.value, cat, 2, "duplicate id 'a0', first seen at")


def test_big_catalogs_are_parsed_in_a_second_process_with_the_same_results(workspace, archive, monkeypatch):
    import packager.catalog

    monkeypatch.setattr(packager.catalog.load, "PARALLEL_BYTES", 0)
    rows = good_rows(archive, 3)
    rows[2]["popularity"] = "x"
    cat = archive.jsonl(rows)
    err = rejected(workspace, cat)
    assert_reported(err, cat, 3, "popularity 'x' is not a number")
    report = run(workspace, cat, skip_invalid=True, rejects=workspace / "rejects.jsonl")
    assert (report.rows, report.added, report.rejected) == (3, 2, 1)
    db_path = archive.base / "c.sqlite"
    sqlite3.connect(db_path).close()
    with pytest.raises(UsageError, match="no such table"):
        run(workspace, db_path, table="nope")


def test_tsv_catalog(workspace, archive):
    rows = good_rows(archive, 2)
    cat = archive.base / "c.tsv"
    cat.write_text(
        "id\tpath\tkind\tpopularity\n"
        + "".join(f"{r['id']}\t{r['path']}\t{r['kind']}\t{r['popularity']}\n" for r in rows)
    )
    assert run(workspace, cat).added == 2


def test_table_option_on_a_non_sqlite_catalog_is_refused(workspace, archive):
    cat = archive.jsonl(good_rows(archive, 1))
    with pytest.raises(UsageError, match="SQLite catalogs only"):
        run(workspace, cat, table="tracks")
    assert count(workspace) == 0


def test_csv_with_a_byte_order_mark(workspace, archive):
    rows = good_rows(archive, 1)
    cat = archive.base / "excel.csv"
    r = rows[0]
    cat.write_bytes(
        b"\xef\xbb\xbfid,path,kind,popularity\r\n" + f"{r['id']},{r['path']},audio,3\r\n".encode()
    )
    assert run(workspace, cat).added == 1


def test_moved_archive_root_is_one_clear_error(workspace, archive, tmp_path):
    from packager.errors import WorkspaceError

    cat = archive.jsonl(good_rows(archive, 2))
    archive.root.rename(tmp_path / "moved")
    with pytest.raises(WorkspaceError, match="archive root is not there"):
        run(workspace, cat)


def _reference_path_ok(p: str) -> bool:
    """The path rules written plainly, to check the fast path of check_path against."""
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in p):
        return False
    if p.startswith("/") or p[1:2] == ":":
        return False
    parts = p.split("/")
    return not any(x in ("", ".", "..") for x in parts) and parts[0] != ".packager"


@settings(max_examples=400)
@given(
    st.one_of(
        st.text(alphabet="ab/.", min_size=1, max_size=8),  # dense in '.', '..' and empty components
        st.text(alphabet="ab/.:\x00\x1f\x7f \u00a0é\u2028\ud800packger", min_size=1, max_size=12),
    )
)
@example("a/./b")
@example("a/..")
@example("a/.")
@example("a//b")
@example(".packager/x")
@example("x/.hidden")
def test_check_path_agrees_with_the_plain_rules(p):
    from packager.catalog import check_path

    assert (check_path(p) is None) == _reference_path_ok(p)


# ---- re-ingest: the report, absent rows, --mark-absent ----------------------------------------------


def trusted(i, pop=1.0, kind="audio", **more):
    return {"id": f"t{i:03d}", "path": f"{kind}/t{i}.ogg", "kind": kind, "popularity": pop, "size": 10} | more


def totals_agree(ws: Path) -> None:
    with open_state(ws) as state:
        assert state.stored_totals() == state.counted_totals()


def test_reingest_reports_new_changed_unchanged_and_absent(workspace, archive):
    run(workspace, archive.jsonl([trusted(i) for i in range(10)]), trust_sizes=True)
    refresh = [trusted(i) for i in range(10) if i not in (3, 7)]  # two gone
    refresh[0]["popularity"] = 5.0  # one changed
    refresh[1]["title"] = "new extra field"  # one changed through its extra fields
    refresh += [trusted(20), trusted(21)]  # two new
    report = run(workspace, archive.jsonl(refresh, "refresh.jsonl"), trust_sizes=True)
    assert (report.rows, report.added, report.changed, report.unchanged) == (10, 2, 2, 6)
    assert (report.absent, report.absent_ids) == (2, ["t003", "t007"])
    assert report.marked_absent == {}
    assert count(workspace) == 12  # reported, not removed
    totals_agree(workspace)
    again = run(workspace, archive.jsonl(refresh, "refresh.jsonl"), trust_sizes=True)
    assert (again.added, again.changed, again.unchanged, again.absent) == (0, 0, 10, 2)


def test_a_reingest_says_how_many_absent_items_it_does_not_name(workspace, archive):
    run(workspace, archive.jsonl([trusted(i) for i in range(26)]), trust_sizes=True)
    kept = archive.jsonl([trusted(25)], "kept.jsonl")
    result = ingest_cli(workspace, str(kept), "--trust-sizes", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["absent"] == 25 and report["absent_unlisted"] == 5
    assert report["absent_ids"] == [f"t{i:03d}" for i in range(20)]
    result = ingest_cli(workspace, str(kept), "--trust-sizes")
    assert "25 known items are absent from the catalog (t000, t001, t002, t003, t004 and 20 more)" in (
        result.output
    )
    result = ingest_cli(workspace, str(kept), "--trust-sizes", "--mark-absent")
    assert (
        "marked removed (25 will not be planned): t000, t001, t002, t003, t004 and 20 more" in result.output
    )
    assert count(workspace) == 26


def test_mark_absent_follows_the_rules_of_remove(workspace, archive):
    from tests.helpers import shard_members

    run(workspace, archive.jsonl([trusted(i, pop=60.0 - i) for i in range(6)]), trust_sizes=True)
    with Workspace.open(workspace) as w:
        plan(w)
    shards = shard_members(workspace)
    assert shards == {"t-audio-t1-00001": ["t000", "t001", "t002", "t003", "t004", "t005"]}
    # Build the plan's shard (its state is all that the rules read), then plan two more items.
    with open_state(workspace) as state:
        state.db.execute("UPDATE shards SET state = 'built'")
    run(workspace, archive.jsonl([trusted(i, pop=60.0 - i) for i in range(9)]), trust_sizes=True)
    with Workspace.open(workspace) as w:
        plan(w)
    run(workspace, archive.jsonl([trusted(i, pop=60.0 - i) for i in range(10)]), trust_sizes=True)
    # t009 is unplanned, t006-t008 sit in an unbuilt shard, t000-t005 in the built one.
    keep = [trusted(i, pop=60.0 - i) for i in (0, 2, 3, 4, 5, 7)]
    report = run(workspace, archive.jsonl(keep, "keep.jsonl"), trust_sizes=True, mark_absent=True)
    assert report.absent == 4 and report.absent_ids == ["t001", "t006", "t008", "t009"]
    assert report.marked_absent == {"stays": 1, "dropped": 2, "unplanned": 1}
    after = shard_members(workspace)
    assert after["t-audio-t1-00001"] == shards["t-audio-t1-00001"]  # a built shard never changes
    assert after["t-audio-t1-00002"] == ["t007"]
    with open_state(workspace) as state:
        assert state.unassigned_counts() == []
        assert state.shard("t-audio-t1-00002").items == 1
        removed = [r[0] for r in state.db.execute("SELECT id FROM items WHERE removed = 1 ORDER BY id")]
    assert removed == ["t001", "t006", "t008", "t009"]
    totals_agree(workspace)
    again = run(workspace, archive.jsonl(keep, "keep.jsonl"), trust_sizes=True, mark_absent=True)
    assert again.absent == 0 and again.marked_absent == {}


def test_mark_absent_is_refused_when_a_row_has_no_readable_id(workspace, archive):
    run(workspace, archive.jsonl([trusted(i) for i in range(3)]), trust_sizes=True)
    cat = archive.jsonl([trusted(0), trusted(1)], "refresh.jsonl")
    cat.write_text(cat.read_text() + "{broken\n")
    with pytest.raises(UsageError, match="no readable id"):
        run(workspace, cat, trust_sizes=True, skip_invalid=True, mark_absent=True, rejects=archive.base / "r")
    with open_state(workspace) as state:
        assert state.db.execute("SELECT COUNT(*) FROM items WHERE removed = 1").fetchone()[0] == 0


def test_a_rejected_row_keeps_its_item_from_being_absent(workspace, archive):
    run(workspace, archive.jsonl([trusted(i) for i in range(3)]), trust_sizes=True)
    rows = [trusted(0), trusted(1), trusted(2, kind="video")]  # t002's row is refused, not missing
    report = run(
        workspace,
        archive.jsonl(rows, "r.jsonl"),
        trust_sizes=True,
        skip_invalid=True,
        mark_absent=True,
        rejects=archive.base / "rejects.jsonl",
    )
    assert (report.rejected, report.absent, report.marked_absent) == (1, 0, {})


def test_changes_apply_and_duplicates_are_refused_on_reingest(workspace, archive):
    run(workspace, archive.jsonl([trusted(i) for i in range(3)]), trust_sizes=True)
    rows = [trusted(0, pop=9.0), trusted(1), trusted(5), trusted(5), trusted(6, path="audio/t1.ogg")]
    cat = archive.jsonl(rows, "r.jsonl")
    with pytest.raises(CatalogError) as e:
        run(workspace, cat, trust_sizes=True)
    assert_reported(e.value, cat, 4, f"duplicate id 't005', first seen at {cat}:3")
    assert_reported(e.value, cat, 5, "path 'audio/t1.ogg' already belongs to id 't001'")
    assert len(e.value.problems) == 2
    with open_state(workspace) as state:
        assert state.db.execute("SELECT popularity FROM items WHERE id = 't000'").fetchone()[0] == 1.0
    moved = [
        trusted(0, path="audio/moved.ogg"),
        trusted(7, path="audio/new.ogg"),
        trusted(8, path="audio/new.ogg"),
    ]
    cat = archive.jsonl(moved, "m.jsonl")
    with pytest.raises(CatalogError) as e:
        run(workspace, cat, trust_sizes=True)
    assert_reported(e.value, cat, 3, f"duplicate path 'audio/new.ogg', first seen at {cat}:2")
    report = run(workspace, archive.jsonl(moved[:2], "m.jsonl"), trust_sizes=True)
    assert (report.added, report.changed, report.unchanged) == (1, 1, 0)
    totals_agree(workspace)


# ---- Parquet -----------------------------------------------------------------------------------------


def write_parquet(path: Path, rows: list[dict], schema=None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=2)
    return path


def test_parquet_catalog_loads_with_row_numbers(workspace, archive):
    rows = [trusted(i) | {"album": f"A{i}", "tags": ["x", "y"]} for i in range(5)]
    cat = write_parquet(archive.base / "c.parquet", rows)
    report = run(workspace, cat, trust_sizes=True)
    assert (report.rows, report.added) == (5, 5)
    with open_state(workspace) as state:
        extra = state.item_extra("t003")
    assert extra == {"album": "A3", "tags": ["x", "y"]}  # row numbers: the test below
    assert run(workspace, cat, trust_sizes=True).unchanged == 5


@pytest.mark.parametrize(
    "change, words",
    [
        ({"kind": "video"}, "unknown kind 'video'"),
        ({"popularity": float("nan")}, "popularity nan is not a number (NaN cannot be ordered)"),
        ({"popularity": float("inf")}, "popularity inf is not a finite number"),
        ({"path": "/etc/passwd"}, "is absolute"),
        ({"path": "audio/../../x"}, "escapes the archive root"),
        ({"id": "t\x1b[31m"}, "contains control characters"),
        ({"size": None}, "size is required with --trust-sizes"),
        ({"id": "t000"}, "duplicate id 't000', first seen at"),
    ],
)
def test_parquet_bad_rows_are_reported_at_their_row(workspace, archive, change, words):
    rows = [trusted(i) for i in range(3)]
    rows[2] = rows[2] | change
    cat = write_parquet(archive.base / "c.parquet", rows)
    assert_reported(rejected(workspace, cat, trust_sizes=True), cat, 3, words)


def test_parquet_binary_column_that_is_not_utf8(workspace, archive):
    import pyarrow as pa

    schema = pa.schema([("id", pa.binary()), ("path", pa.string()), ("kind", pa.string()),
                        ("popularity", pa.float64()), ("size", pa.int64())])  # fmt: skip
    rows = [trusted(0) | {"id": b"t0"}, trusted(1) | {"id": b"\xff\xfe"}]
    cat = write_parquet(archive.base / "c.parquet", rows, schema)
    assert_reported(rejected(workspace, cat, trust_sizes=True), cat, 2, "column id: not valid UTF-8")


def test_parquet_that_is_not_parquet_is_one_clear_error(workspace, archive):
    cat = archive.base / "c.parquet"
    cat.write_bytes(b"PAR1 not really")
    with pytest.raises(UsageError, match="not a readable Parquet file"):
        run(workspace, cat, trust_sizes=True)


def test_parquet_size_beyond_sqlite_and_a_bad_mtime(workspace, archive):
    import pyarrow as pa

    columns = [("id", pa.string()), ("path", pa.string()), ("kind", pa.string())]
    columns += [("popularity", pa.float64()), ("size", pa.uint64()), ("mtime", pa.int64())]
    schema = pa.schema(columns)
    rows = [
        trusted(0) | {"mtime": 5},
        trusted(1) | {"size": 2**64 - 1, "mtime": 5},
        trusted(2) | {"mtime": -1},
    ]
    cat = write_parquet(archive.base / "c.parquet", rows, schema)
    err = rejected(workspace, cat, trust_sizes=True)
    assert_reported(err, cat, 2, "size 18446744073709551615 is too large for one file (at most 2^40 bytes")
    assert_reported(err, cat, 3, "mtime -1 is not Unix seconds")


@pytest.mark.parametrize("unit, tz", [("s", None), ("ms", "Europe/Berlin"), ("ns", "UTC")])
def test_a_parquet_timestamp_mtime_is_read_as_unix_seconds(workspace, archive, unit, tz):
    import datetime

    import pyarrow as pa

    columns = [("id", pa.string()), ("path", pa.string()), ("kind", pa.string())]
    columns += [("popularity", pa.float64()), ("size", pa.int64()), ("mtime", pa.timestamp(unit, tz))]
    utc = datetime.UTC
    when = datetime.datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=utc)
    rows = [trusted(0) | {"mtime": when if tz else when.replace(tzinfo=None)}, trusted(1) | {"mtime": None}]
    cat = write_parquet(archive.base / "c.parquet", rows, pa.schema(columns))
    assert run(workspace, cat, trust_sizes=True).added == 2
    with open_state(workspace) as state:
        mtimes = state.db.execute("SELECT id, mtime FROM items ORDER BY id").fetchall()
    assert mtimes == [("t000", 1577934245), ("t001", None)]


# ---- rough edges (issue 13) --------------------------------------------------------------------------


def test_size_too_large_for_sqlite_is_exit_2_with_the_line(workspace, archive):
    from typer.testing import CliRunner

    from packager.cli import app

    cat = archive.jsonl([trusted(0), trusted(1) | {"size": 2**63}])
    result = CliRunner().invoke(app, ["ingest", str(workspace), str(cat), "--trust-sizes"])
    assert result.exit_code == 2, result.output
    assert f"{cat}:2" in result.output and "too large" in result.output
    assert count(workspace) == 0


def ingest_cli(workspace: Path, *args: str):
    from typer.testing import CliRunner

    from packager.cli import app

    return CliRunner().invoke(app, ["ingest", str(workspace), *args])


def test_a_size_beyond_one_tebibyte_is_a_problem_at_its_line_that_skip_invalid_skips(workspace, archive):
    cat = archive.jsonl([trusted(0), trusted(1) | {"size": 2**40 + 1}, trusted(2) | {"size": 2**63 - 1}])
    result = ingest_cli(workspace, str(cat), "--trust-sizes")
    assert result.exit_code == 2, result.output
    assert f"{cat}:2 (id t001): size 1099511627777 is too large for one file" in result.output
    assert f"{cat}:3 (id t002): size 9223372036854775807 is too large" in result.output
    assert "Traceback" not in result.output and count(workspace) == 0
    rejects = archive.base / "rejects.jsonl"
    result = ingest_cli(workspace, str(cat), "--trust-sizes", "--skip-invalid", "--rejects", str(rejects))
    assert result.exit_code == 0, result.output
    assert count(workspace) == 1
    assert [json.loads(x)["line"] for x in rejects.read_text().splitlines()] == [2, 3]
    totals_agree(workspace)


def test_a_size_beyond_one_tebibyte_sends_an_arrow_block_back_to_its_problem(workspace, archive):
    rows = [trusted(i) for i in range(12_000)]  # over 1 MiB: one block for arrow_jsonl (ARROW_MIN_BLOCK)
    rows[7_000]["size"] = 2**40 + 1
    cat = archive.jsonl(rows)
    assert cat.stat().st_size > 2**20
    result = ingest_cli(workspace, str(cat), "--trust-sizes")
    assert result.exit_code == 2, result.output
    assert f"{cat}:7001 (id t7000): size 1099511627777 is too large for one file" in result.output
    assert count(workspace) == 0


def test_a_sparse_file_beyond_one_tebibyte_is_a_problem(workspace, archive):
    archive.add("audio/big.ogg", 0)
    try:
        os.truncate(archive.root / "audio/big.ogg", 2**40 + 1)
    except OSError as e:
        pytest.skip(f"no sparse file of 1 TiB here: {e.strerror}")
    cat = archive.jsonl([{"id": "big", "path": "audio/big.ogg", "kind": "audio", "popularity": 1}])
    err = rejected(workspace, cat)
    assert_reported(err, cat, 1, "file 'audio/big.ogg' has 1099511627777 bytes, too many for one file")


@pytest.fixture
def unbounded_sizes(monkeypatch):
    """Sizes up to 2^63-1, as before MAX_FILE_SIZE: a total beyond SQLite's integers without 2^23 rows."""
    from packager.catalog import arrow_jsonl, checks

    monkeypatch.setattr(checks, "MAX_FILE_SIZE", 2**63 - 1)
    monkeypatch.setattr(arrow_jsonl, "MAX_FILE_SIZE", 2**63 - 1)


def assert_totals_refused(result, workspace: Path, before: list) -> None:
    assert result.exit_code == 2, result.output
    assert "add up to more than 2^63-1 bytes" in result.output and "nothing was changed" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    with open_state(workspace) as state:
        assert state.stored_totals() == before
        assert all(type(v) is int for row in before for v in row[1:])
    totals_agree(workspace)


def test_totals_beyond_sqlite_integers_are_refused_on_a_first_ingest(workspace, archive, unbounded_sizes):
    cat = archive.jsonl([trusted(0, size=2**62 + 1), trusted(1, size=2**62)])
    result = ingest_cli(workspace, str(cat), "--trust-sizes")
    assert "the sizes of the 'audio' items add up" in result.output
    assert_totals_refused(result, workspace, [])
    assert count(workspace) == 0


@pytest.mark.parametrize("new", [[2**62], [2**62, 2**62]], ids=["one-more", "summed-by-sqlite"])
def test_totals_beyond_sqlite_integers_are_refused_on_a_reingest(workspace, archive, unbounded_sizes, new):
    first = [trusted(0, size=2**62 + 1)]
    assert ingest_cli(workspace, str(archive.jsonl(first)), "--trust-sizes").exit_code == 0
    with open_state(workspace) as state:
        before = state.stored_totals()
    more = [trusted(1 + k, size=size) for k, size in enumerate(new)]
    result = ingest_cli(workspace, str(archive.jsonl(first + more, "c2.jsonl")), "--trust-sizes")
    assert_totals_refused(result, workspace, before)
    assert count(workspace) == 1


@pytest.mark.parametrize("item_id", ["a\x1b[2Jb", "tab\there", "nul\x00", "del\x7f", "\ud800x"])
def test_ids_with_control_characters_are_refused(workspace, archive, item_id):
    cat = archive.base / "c.jsonl"
    cat.write_text(json.dumps(trusted(0) | {"id": item_id}) + "\n")
    err = rejected(workspace, cat, trust_sizes=True)
    assert "contains control characters" in err.message or "not valid UTF-8" in err.message
    assert "\x1b" not in err.message and "\x00" not in err.message


def test_rejects_to_an_unwritable_path_commits_nothing(workspace, archive):
    rows = [trusted(0), trusted(1, kind="video")]
    rejects = archive.base / "no-such-folder" / "rejects.jsonl"
    with pytest.raises(UsageError, match="cannot write the rejects file"):
        run(workspace, archive.jsonl(rows), trust_sizes=True, skip_invalid=True, rejects=rejects)
    assert count(workspace) == 0


def test_rejects_that_cannot_be_put_in_place_commit_nothing(workspace, archive, monkeypatch):
    import packager.ingest

    rows = [trusted(0), trusted(1, kind="video")]
    rejects = archive.base / "rejects.jsonl"
    check = packager.ingest.Loader.check

    def then_a_folder(self, add):  # the .part is written, but renaming it onto a folder made meanwhile fails
        check(self, add)
        rejects.mkdir()

    monkeypatch.setattr(packager.ingest.Loader, "check", then_a_folder)
    with pytest.raises(Exception, match="cannot write the rejects file"):
        run(workspace, archive.jsonl(rows), trust_sizes=True, skip_invalid=True, rejects=rejects)
    assert count(workspace) == 0
    assert not (archive.base / "rejects.jsonl.part").exists()


def test_status_reads_a_workspace_it_may_not_write(workspace, archive):
    """A folder nobody may write (root included: chattr +i), as a read-only mount or a mirror's copy."""
    import shutil
    import subprocess

    from typer.testing import CliRunner

    from packager.cli import app

    run(workspace, archive.jsonl([trusted(i) for i in range(3)]), trust_sizes=True)
    with Workspace.open(workspace) as w:
        plan(w)
    frozen = [workspace, *workspace.glob("state.sqlite*")]
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", *map(str, frozen)]).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        assert not os.access(workspace, os.W_OK)
        result = CliRunner().invoke(app, ["status", str(workspace), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["items"] == 3
        result = CliRunner().invoke(app, ["plan", str(workspace)])
        assert result.exit_code == 2 and str(workspace / "state.sqlite") in result.output, result.output
    finally:
        subprocess.run(["chattr", "-i", *map(str, frozen)], check=True)


def test_status_of_a_damaged_state_names_the_file(workspace):
    (workspace / "state.sqlite").write_bytes(b"not a database at all" * 100)
    from typer.testing import CliRunner

    from packager.cli import app

    result = CliRunner().invoke(app, ["status", str(workspace)])
    assert result.exit_code == 2 and str(workspace / "state.sqlite") in result.output, result.output


def test_duplicate_csv_columns_are_one_error(workspace, archive):
    cat = archive.base / "c.csv"
    cat.write_text("id,path,kind,popularity,size,path\nt0,audio/t0.ogg,audio,1,10,x\n")
    err = rejected(workspace, cat, trust_sizes=True)
    assert [p.reason for p in err.problems] == ["column 'path' appears twice in the header"]


def test_duplicate_json_keys_are_errors(workspace, archive):
    cat = archive.base / "c.jsonl"
    cat.write_text(
        '{"id":"t0","path":"audio/t0.ogg","kind":"audio","popularity":1,"size":10}\n'
        '{"id":"t1","path":"audio/t1.ogg","kind":"audio","popularity":1,"size":10,"kind":"art"}\n'
        '{"id" : "t2", "path":"audio/t2.ogg","kind":"audio","popularity":1,"size":10,"id" : "t3"}\n'
        '{"id":"t4","path":"audio/t4.ogg","kind":"audio","popularity":1,"size":10,"x":{"a":1,"a":2}}\n'
    )
    err = rejected(workspace, cat, trust_sizes=True)
    assert_reported(err, cat, 2, "key 'kind' appears twice")
    assert_reported(err, cat, 3, "key 'id' appears twice")
    assert_reported(err, cat, 4, "key 'a' appears twice")
    assert len(err.problems) == 3


@pytest.mark.parametrize(
    "header, words",
    [
        ("id;path;kind;popularity;size", "this file seems to use ';'"),
        ("ID,Path,Kind,Popularity,Size", "'ID', 'Path', 'Kind', 'Popularity' must be lowercase"),
        ("ident,path,kind,popularity,size", "has no 'id' column"),
    ],
)
def test_a_wrong_csv_header_is_named_once(workspace, archive, header, words):
    cat = archive.base / "c.csv"
    sep = ";" if ";" in header else ","
    body = "".join(sep.join([f"t{i}", f"audio/t{i}.ogg", "audio", "1", "10"]) + "\n" for i in range(50))
    cat.write_text(header + "\n" + body)
    err = rejected(workspace, cat, trust_sizes=True)
    assert len(err.problems) == 1 and err.problems[0].line == 1, err.message
    assert words in err.problems[0].reason


@pytest.mark.parametrize(
    "text, words",
    [
        ("NaN", "popularity NaN is not a finite number"),
        ("Infinity", "popularity Infinity is not a finite number"),
        ("-Infinity", "popularity -Infinity is not a finite number"),
        ("1e400", "popularity 1e400 is not a finite number"),
        ('"NaN"', "popularity 'NaN' is not a number (NaN cannot be ordered)"),
        ('"1e400"', "popularity '1e400' is not a finite number"),
    ],
)
def test_non_finite_popularity_says_what_is_wrong(workspace, archive, text, words):
    cat = archive.base / "c.jsonl"
    cat.write_text(f'{{"id":"t0","path":"audio/t0.ogg","kind":"audio","popularity":{text},"size":1}}\n')
    assert_reported(rejected(workspace, cat, trust_sizes=True), cat, 1, words)


def test_non_finite_popularity_in_csv(workspace, archive):
    cat = archive.base / "c.csv"
    cat.write_text(
        "id,path,kind,popularity,size\nt0,audio/t0.ogg,audio,nan,1\nt1,audio/t1.ogg,audio,1e400,1\n"
    )
    err = rejected(workspace, cat, trust_sizes=True)
    assert_reported(err, cat, 2, "not a number (NaN cannot be ordered)")
    assert_reported(err, cat, 3, "is not a finite number")


# ---- crash safety ------------------------------------------------------------------------------------


def state_dump(ws: Path) -> list:
    with open_state(ws) as state:
        return [
            state.db.execute("SELECT * FROM items ORDER BY n").fetchall(),
            state.db.execute("SELECT * FROM catalog_totals ORDER BY kind").fetchall(),
            state.db.execute("SELECT * FROM catalog_files ORDER BY n").fetchall(),
            sorted(state.db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()),
        ]


@pytest.mark.slow
def test_a_killed_ingest_leaves_the_state_as_it_was(workspace, archive):
    import signal
    import subprocess
    import sys
    import time

    rows = [trusted(i) | {"path": f"audio/{i % 97}/{i}.ogg"} for i in range(150_000)]
    first = archive.jsonl(rows[:100_000], "first.jsonl")
    refresh = archive.jsonl(rows[1000:], "refresh.jsonl")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    kills = 0
    for catalog, before_run in ((first, None), (refresh, first)):
        if before_run is not None:
            run(workspace, before_run, trust_sizes=True)
        before = state_dump(workspace)
        for delay in (0.3, 0.8, 1.5, 2.5):
            cmd = [
                sys.executable,
                "-m",
                "packager.cli",
                "ingest",
                str(workspace),
                str(catalog),
                "--trust-sizes",
            ]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=60)
            if proc.returncode == 0 or state_dump(workspace) != before:
                # It committed first (perhaps killed on its way out): the state is then the whole ingest.
                again = run(workspace, catalog, trust_sizes=True)
                assert (again.added, again.changed, again.rows) == (0, 0, again.unchanged)
                break
    assert kills >= 4, "every ingest finished before it could be killed; make the catalog bigger"
    report = run(workspace, refresh, trust_sizes=True)
    assert report.absent == 1000 and count(workspace) == 150_000
    totals_agree(workspace)
    assert not list(workspace.glob(".refresh-*")), "a killed refresh's bucket files are cleaned up"


@pytest.mark.parametrize("block", [64, 1000, 10**6])
def test_two_parser_processes_give_the_same_rows_lines_and_problems(
    make_workspace, archive, monkeypatch, block
):
    """Big catalogs are parsed by two processes taking blocks of lines in turns: rows arrive in file order,
    with their own line numbers, across catalogs and formats, as from one process."""
    import packager.catalog

    rows = [trusted(i) for i in range(300)]
    rows[17]["kind"] = "video"
    rows[250]["id"] = rows[3]["id"]  # a repeat, first seen earlier in the file
    first = archive.jsonl(rows[:200], "a.jsonl")
    first.write_text(first.read_text().replace("\n", "\n\n", 5))  # blank lines count as lines
    csv_cat = archive.base / "b.csv"
    lines = [f"{r['id']},{r['path']},{r['kind']},{r['popularity']},{r['size']}\n" for r in rows[200:260]]
    csv_cat.write_text("id,path,kind,popularity,size\n" + "".join(lines))
    third = compressed(archive.jsonl(rows[260:], "c.jsonl"), "zstd")
    outcomes = []
    for name, split in (("one", 10**12), ("two", 0)):
        ws = make_workspace(name)
        monkeypatch.setattr(packager.catalog.load, "PARALLEL_BYTES", 0)
        monkeypatch.setattr(packager.catalog.load, "SPLIT_BYTES", split)
        monkeypatch.setattr(packager.catalog.jsonl, "BLOCK_BYTES", block)
        report = run(ws, first, csv_cat, third, trust_sizes=True, skip_invalid=True, rejects=ws / "r.jsonl")
        with open_state(ws) as state:
            items = state.db.execute("SELECT n, id FROM items ORDER BY n").fetchall()
        outcomes.append((report.rows, report.added, [str(p) for p in report.problems], items))
    assert outcomes[0][2] == outcomes[1][2], (outcomes[0][2], outcomes[1][2])
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == 298 and len(outcomes[0][2]) == 2
    assert f"{csv_cat}:52 (id t003): duplicate id 't003', first seen at {first}:7" in outcomes[0][2]


# ---- compressed catalogs -------------------------------------------------------------------------------


def compressed(path: Path, how: str, data: bytes | None = None) -> Path:
    import bz2
    import gzip

    import zstandard

    data = path.read_bytes() if data is None else data
    suffix = {"zstd": ".zst", "gzip": ".gz", "bzip2": ".bz2"}[how]
    out = path.with_name(path.name + suffix)
    if how == "zstd":  # in several frames, as multi-threaded or appended dumps are
        cctx = zstandard.ZstdCompressor(level=3)
        out.write_bytes(b"".join(cctx.compress(data[i : i + 100]) for i in range(0, len(data), 100)))
    else:
        out.write_bytes(gzip.compress(data) if how == "gzip" else bz2.compress(data))
    path.unlink()
    return out


@pytest.mark.parametrize("how", ["zstd", "gzip", "bzip2"])
def test_compressed_catalogs_read_as_their_plain_selves(make_workspace, archive, how):
    """.jsonl.zst, .csv.gz, .tsv.bz2 ...: the same rows, line numbers and problems as uncompressed."""

    def csv_text(rows, sep):
        lines = [sep.join(str(r[k]) for k in ("id", "path", "kind", "popularity", "size")) for r in rows]
        return sep.join(("id", "path", "kind", "popularity", "size")) + "\n" + "\n".join(lines) + "\n"

    rows = [trusted(i) for i in range(12)]
    for bad in (2, 5, 9):
        rows[bad]["kind"] = "video"
    outcomes = []
    for packed in (False, True):
        ws = make_workspace(f"{how}-{packed}")
        folder = archive.base / f"cat-{how}-{packed}"
        folder.mkdir()
        cats = [folder / "a.jsonl", folder / "b.csv", folder / "c.tsv"]
        cats[0].write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
        cats[1].write_text(csv_text(rows[4:8], ","))
        cats[2].write_text(csv_text(rows[8:], "\t"))
        if packed:
            cats = [compressed(c, how) for c in cats]
        with pytest.raises(CatalogError) as e:
            run(ws, *cats, trust_sizes=True)
        assert count(ws) == 0
        outcomes.append([(Path(p.file).name[:5], p.line, p.reason) for p in e.value.problems])
        report = run(ws, *cats, trust_sizes=True, skip_invalid=True, rejects=ws / "r.jsonl")
        outcomes.append((report.rows, report.added))
    assert outcomes[0] == outcomes[2]
    assert outcomes[1] == outcomes[3] == (12, 9)
    assert [(name, line) for name, line, _ in outcomes[2]] == [("a.jso", 3), ("b.csv", 3), ("c.tsv", 3)]


@pytest.mark.parametrize("how", ["zstd", "gzip", "bzip2"])
def test_a_cut_or_damaged_compressed_catalog_is_refused_at_its_line(workspace, archive, how):
    rows = [trusted(i) for i in range(400)]
    packed = compressed(archive.jsonl(rows, "cut.jsonl"), how)
    data = packed.read_bytes()
    packed.write_bytes(data[: len(data) - 7])
    with pytest.raises(CatalogError) as e:
        run(workspace, packed, trust_sizes=True)
    assert count(workspace) == 0
    last = e.value.problems[-1]
    assert "cut short" in last.reason or "damaged" in last.reason, last
    assert last.line > 1 and str(packed) in e.value.message


def test_a_decompression_bomb_costs_bounded_time_and_memory(workspace, archive, monkeypatch):
    """A small file that expands without end (one line that never ends, or a huge number of lines) is
    refused once it has expanded past MAX_EXPANSION times its size, and a long line within that bound is
    refused as any line over MAX_LINE is, with bounded memory."""
    import zstandard

    import packager.catalog

    monkeypatch.setattr(packager.catalog.compression, "MIN_EXPANDED", 8 * 2**20)
    monkeypatch.setattr(packager.catalog.rows, "MAX_LINE", 2**20)
    monkeypatch.setattr(packager.catalog.jsonl, "BLOCK_BYTES", 2**18)
    cctx = zstandard.ZstdCompressor(level=19)
    good = (json.dumps(trusted(0)) + "\n").encode()
    bomb = archive.base / "bomb.jsonl.zst"
    with open(bomb, "wb") as f, cctx.stream_writer(f) as w:
        w.write(good)
        for _ in range(64):
            w.write(b" " * 2**20)  # 64 MiB of one line, in a few kB
    assert bomb.stat().st_size * packager.catalog.compression.MAX_EXPANSION < 8 * 2**20
    with pytest.raises(CatalogError) as e:
        run(workspace, bomb, trust_sizes=True)
    assert [(p.line, p.reason.split(":")[0]) for p in e.value.problems] == [
        (2, "line longer than 1 MiB"),
        (2, f"decompresses to more than {packager.catalog.compression.MAX_EXPANSION} times its size"),
    ]
    assert "decompression bomb" in e.value.problems[-1].reason


def test_compressed_parquet_or_sqlite_is_one_clear_error(workspace, archive):
    cat = archive.base / "c.parquet.zst"
    cat.write_bytes(b"x")
    with pytest.raises(UsageError, match="unknown catalog format '.parquet.zst'") as e:
        run(workspace, cat, trust_sizes=True)
    assert "compressed catalogs are JSON Lines, CSV or TSV" in e.value.hint


@pytest.mark.parametrize("how", ["zstd", "gzip", "bzip2"])
@pytest.mark.parametrize("name", ["cat.jsonl", "cat.csv", "cat.jsonl.gz", "cat.tsv.zst"])
def test_a_compressed_catalog_under_a_name_that_says_otherwise_is_named_so(workspace, archive, how, name):
    """A dump saved without its .zst (or as .gz when it is zstd) gave a wall of 'not valid UTF-8' or 'bad
    CSV header' problems, one per line: its first bytes say what it is, and the error says how to name it."""
    packed = compressed(archive.jsonl([trusted(0)], "x.jsonl"), how)
    target = archive.base / name
    suffix = {"zstd": ".zst", "gzip": ".gz", "bzip2": ".bz2"}[how]
    if target.name.endswith(suffix):
        return  # the right name: read as such elsewhere
    packed.rename(target)
    with pytest.raises(UsageError, match=f"is a {how} stream") as e:
        run(workspace, target, trust_sizes=True)
    assert suffix in e.value.hint and count(workspace) == 0


# ---- the fast refresh: unchanged lines are matched by fingerprint and never parsed -----------------------


def parsed_lines(monkeypatch) -> list:
    """The (file, line) of every row the checker sees from now on."""
    import packager.catalog

    seen = []
    check = packager.catalog.checks.Checker.check

    def counting(self, row):
        seen.append((Path(row.source).name, row.line))
        return check(self, row)

    monkeypatch.setattr(packager.catalog.checks.Checker, "check", counting)
    return seen


def test_a_refresh_parses_only_the_lines_that_changed(workspace, archive, monkeypatch):
    rows = [trusted(i) | {"title": f"song {i}"} for i in range(50)]
    run(workspace, archive.jsonl(rows), trust_sizes=True)
    refresh = [dict(r) for r in rows if r["id"] != "t010"]  # one gone
    refresh[3]["popularity"] = 7.5  # t003 changed
    refresh.insert(20, trusted(99))  # a new one, in the middle: the lines after it move
    seen = parsed_lines(monkeypatch)
    report = run(workspace, archive.jsonl(refresh, "refresh.jsonl"), trust_sizes=True)
    assert sorted(seen) == [("refresh.jsonl", 4), ("refresh.jsonl", 21)]
    assert (report.rows, report.added, report.changed, report.unchanged) == (50, 1, 1, 48)
    assert (report.absent, report.absent_ids) == (1, ["t010"])
    totals_agree(workspace)
    # The same content written another way (key order, spacing) is unchanged: parsed once, then matched.
    text = "".join(json.dumps(dict(reversed(list(r.items()))), indent=None) + " \n" for r in refresh)
    (archive.base / "reordered.jsonl").write_text(text)
    seen.clear()
    again = run(workspace, archive.base / "reordered.jsonl", trust_sizes=True)
    assert (again.added, again.changed, again.unchanged, len(seen)) == (0, 0, 50, 50)
    seen.clear()
    again = run(workspace, archive.base / "reordered.jsonl", trust_sizes=True)
    assert (again.added, again.changed, again.unchanged, len(seen)) == (0, 0, 50, 0)


def test_a_refresh_with_repeated_lines_or_ids_is_reported_as_by_the_plain_path(workspace, archive):
    """A repeated line, or an id both on an unchanged line and on a changed one, needs the order of the
    whole catalog: the ingest then parses every row, and reports each repeat at its line."""
    rows = [trusted(i) for i in range(6)]
    run(workspace, archive.jsonl(rows), trust_sizes=True)
    cat = archive.jsonl(rows + [rows[2]], "repeat.jsonl")
    with pytest.raises(CatalogError) as e:
        run(workspace, cat, trust_sizes=True)
    assert [(p.line, p.reason) for p in e.value.problems] == [
        (7, f"duplicate id 't002', first seen at {cat}:3")
    ]
    changed_first = [trusted(1, pop=9.0)] + rows
    cat = archive.jsonl(changed_first, "changed-first.jsonl")
    with pytest.raises(CatalogError) as e:
        run(workspace, cat, trust_sizes=True)
    assert [(p.line, p.reason) for p in e.value.problems] == [
        (3, f"duplicate id 't001', first seen at {cat}:1")
    ]
    report = run(workspace, cat, trust_sizes=True, skip_invalid=True, rejects=archive.base / "r.jsonl")
    assert (report.changed, report.unchanged, report.rejected) == (1, 5, 1)
    with open_state(workspace) as state:
        assert state.db.execute("SELECT popularity FROM items WHERE id = 't001'").fetchone()[0] == 9.0
    totals_agree(workspace)


@pytest.mark.parametrize("block", [64, 10**6])
def test_a_refresh_in_two_processes_finds_what_one_does(make_workspace, archive, monkeypatch, block):
    import packager.catalog

    rows = [trusted(i) | {"path": f"audio/{i % 7}/{i}.ogg"} for i in range(400)]
    refresh = [dict(r) for r in rows[5:]] + [trusted(i) for i in range(500, 520)]
    for r in refresh[::37]:
        r["popularity"] += 1.0
    refresh[100]["kind"] = "video"  # refused, so not absent
    cat = compressed(archive.jsonl(refresh, "refresh.jsonl"), "zstd")
    outcomes = []
    for name, split in (("one", 10**12), ("two", 0)):
        ws = make_workspace(name)
        run(ws, archive.jsonl(rows, f"{name}.jsonl"), trust_sizes=True)
        monkeypatch.setattr(packager.catalog.load, "SPLIT_BYTES", split)
        monkeypatch.setattr(packager.catalog.load, "PARALLEL_BYTES", split)
        monkeypatch.setattr(packager.catalog.jsonl, "BLOCK_BYTES", block)
        report = run(ws, cat, trust_sizes=True, skip_invalid=True, rejects=ws / "r.jsonl", mark_absent=True)
        with open_state(ws) as state:
            items = state.db.execute(
                "SELECT id, path, popularity, removed, fp FROM items ORDER BY id"
            ).fetchall()
        outcomes.append((report.as_dict() | {"rejects_file": None}, items))
        totals_agree(ws)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0]["absent"] == 5 and outcomes[0][0]["added"] == 20 and outcomes[0][0]["rejected"] == 1


def test_a_schema_2_state_gets_its_extra_fields_as_names_once_and_values(workspace, archive):
    rows = [trusted(i) | {"title": f"song {i}", "tags": ["a", i]} for i in range(3)] + [trusted(3)]
    cat = archive.jsonl(rows)
    run(workspace, cat, trust_sizes=True)
    with open_state(workspace) as state:  # back to schema 2: extra fields as one JSON object per row
        db = state.db
        back_to_schema_4(db)
        for item_id, extra in [(r["id"], {k: r[k] for k in ("title", "tags")}) for r in rows[:3]]:
            db.execute("UPDATE items SET extra = ? WHERE id = ?", (json.dumps(extra), item_id))
        db.execute("ALTER TABLE items DROP COLUMN xk")
        db.execute("DROP TABLE extra_names")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with open_state(workspace) as state:
        assert state.item_extra("t001") == {"title": "song 1", "tags": ["a", 1]}
        assert state.item_extra("t003") == {}
        assert state.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "7"
    assert run(workspace, cat, trust_sizes=True).unchanged == 4


def test_paths_stay_unique_when_their_keys_collide(workspace, archive, monkeypatch):
    """Paths are kept unique through an index of 64-bit keys: paths whose keys are equal are told apart by
    the paths themselves (every key equal here)."""
    import packager.catalog

    monkeypatch.setattr(packager.catalog.checks, "_path_hash", lambda path: 7)
    rows = [trusted(i) for i in range(4)]
    run(workspace, archive.jsonl(rows), trust_sizes=True)
    cat = archive.jsonl(rows + [trusted(9, path="audio/t2.ogg")], "clash.jsonl")
    err = rejected_later(workspace, cat)
    assert [(p.line, p.reason) for p in err.problems] == [
        (5, "path 'audio/t2.ogg' already belongs to id 't002'")
    ]
    report = run(workspace, archive.jsonl(rows + [trusted(9)], "new.jsonl"), trust_sizes=True)
    assert (report.added, report.unchanged) == (1, 4)
    ws2 = workspace.parent / "ws2"
    Workspace.init(ws2, archive.root, "t").close()
    twice = archive.jsonl(rows + [trusted(8, path="audio/t1.ogg")], "twice.jsonl")
    with pytest.raises(CatalogError) as e:
        run(ws2, twice, trust_sizes=True)
    assert [(p.line, p.reason) for p in e.value.problems] == [
        (5, f"duplicate path 'audio/t1.ogg', first seen at {twice}:2")
    ]


@pytest.mark.parametrize("named_first", [True, False])
def test_a_path_named_by_its_id_clashes_with_the_same_path_under_another_id(workspace, archive, named_first):
    """audio/ab/<id>.ogg, the real shape, is stored without a path key; another id's row naming the same
    path is still a duplicate path, whichever comes first, and in a refresh the path still belongs to its
    item, whichever way either is named."""
    named = trusted(0, id="abc", path="audio/ab/abc.ogg")
    keyed = trusted(1, path="audio/ab/abc.ogg")
    rows = [named, keyed] if named_first else [keyed, named]
    cat = archive.jsonl([trusted(5), *rows])
    with pytest.raises(CatalogError) as e:
        run(workspace, cat, trust_sizes=True)
    assert [(p.line, p.reason) for p in e.value.problems] == [
        (3, f"duplicate path 'audio/ab/abc.ogg', first seen at {cat}:2")
    ]
    run(workspace, archive.jsonl([named, trusted(2, path="audio/x/kk.ogg")], "ok.jsonl"), trust_sizes=True)
    with open_state(workspace) as state:
        assert state.db.execute("SELECT id FROM items WHERE ph IS NULL").fetchall() == [("abc",)]
    steal = archive.jsonl(
        [named, trusted(2, path="audio/x/kk.ogg"), keyed, trusted(3, id="kk", path="audio/x/kk.ogg")],
        "s.jsonl",
    )
    err = rejected_later(workspace, steal)
    assert [(p.line, p.reason) for p in err.problems] == [
        (3, "path 'audio/ab/abc.ogg' already belongs to id 'abc'"),
        (4, "path 'audio/x/kk.ogg' already belongs to id 't002'"),
    ]


def test_a_schema_3_state_drops_the_keys_of_paths_named_by_their_ids(workspace, archive):
    rows = [trusted(0, id="abc", path="audio/ab/abc.ogg"), trusted(1)]
    cat = archive.jsonl(rows)
    run(workspace, cat, trust_sizes=True)
    with open_state(workspace) as state:  # back to schema 3: every path keyed, every key indexed
        db = state.db
        back_to_schema_4(db)
        db.execute("DROP INDEX items_ph")
        db.execute("UPDATE items SET ph = 1 WHERE id = 'abc'")
        db.execute("CREATE INDEX items_ph ON items (ph)")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with open_state(workspace) as state:
        db = state.db
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "7"
        assert db.execute("SELECT id, ph IS NULL FROM items ORDER BY id").fetchall() == [
            ("abc", 1),
            ("t001", 0),
        ]
        index = db.execute("SELECT sql FROM sqlite_master WHERE name = 'items_ph'").fetchone()[0]
        assert index.endswith("WHERE ph IS NOT NULL")
    assert run(workspace, cat, trust_sizes=True).unchanged == 2
    err = rejected_later(workspace, archive.jsonl(rows + [trusted(2, path="audio/ab/abc.ogg")], "c.jsonl"))
    assert [p.reason for p in err.problems] == ["path 'audio/ab/abc.ogg' already belongs to id 'abc'"]


SCHEMA_5_ITEMS = """CREATE TABLE items (
    n INTEGER PRIMARY KEY, id TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, popularity REAL NOT NULL,
    size INTEGER NOT NULL, mtime INTEGER, extra TEXT, source INTEGER NOT NULL, line INTEGER NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0, fp INTEGER NOT NULL, xk INTEGER, ph INTEGER)"""


def back_to_schema_5(db) -> None:
    """Kinds by name, extra names by their key: a state as schema 5 wrote it."""
    kinds = dict(db.execute("SELECT code, name FROM kinds"))
    db.create_function("kind_name", 1, kinds.get)
    db.execute("ALTER TABLE items RENAME TO items_v6")
    for index in ("items_id", "items_ph", "items_removed"):
        db.execute(f"DROP INDEX {index}")
    db.execute(SCHEMA_5_ITEMS)
    db.execute(
        "INSERT INTO items SELECT i.n, i.id, i.path, kind_name(i.kind), i.popularity, i.size, i.mtime, "
        "i.extra, 1, i.n, i.removed, i.fp, x.h, i.ph FROM items_v6 i "
        "LEFT JOIN extra_names x ON x.n = i.xk"
    )
    db.execute("DROP TABLE items_v6")
    db.execute("CREATE INDEX items_id ON items (id, fp)")
    db.execute("CREATE INDEX items_ph ON items (ph) WHERE ph IS NOT NULL")
    db.execute("CREATE INDEX items_removed ON items (id) WHERE removed = 1")
    db.execute("CREATE TABLE extra_names_v5 (h INTEGER PRIMARY KEY, names TEXT NOT NULL)")
    db.execute("INSERT INTO extra_names_v5 SELECT h, names FROM extra_names")
    db.execute("DROP TABLE extra_names")
    db.execute("ALTER TABLE extra_names_v5 RENAME TO extra_names")
    db.execute("DROP TABLE kinds")
    db.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")


def back_to_schema_4(db) -> None:
    """Every path stored whole: a state as schema 4 wrote it."""
    back_to_schema_5(db)
    db.execute(f"UPDATE items SET path = {item_path_sql('items')}")
    db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")


def test_a_schema_4_state_stores_paths_named_by_their_ids_without_their_ids(workspace, archive):
    """Schema 4 -> 5, in one transaction: the same items, paths, plan, re-ingest and refusals; the paths
    named by their ids are stored with a mark for the id."""
    rows = [trusted(i, id=f"x{i}", path=f"audio/{i % 2}/x{i}.ogg") for i in range(6)] + [trusted(7)]
    rows += [trusted(8, id="noext", path="art/noext"), trusted(9, id="a.b", path="art/a.b.jpg")]
    cat = archive.jsonl(rows)
    run(workspace, cat, trust_sizes=True)
    with Workspace.open(workspace) as w:
        plan(w)
        before = [list(w.state.iter_members(s.id)) for s in w.state.shards()]
        assert sorted(m.path for shard in before for m in shard) == sorted(r["path"] for r in rows)
        back_to_schema_4(w.state.db)
        assert w.state.db.execute("SELECT COUNT(*) FROM items WHERE instr(path, char(1))").fetchone()[0] == 0
    with Workspace.open(workspace) as w:
        db = w.state.db
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "7"
        assert db.execute("SELECT path FROM items WHERE ph IS NULL ORDER BY n").fetchall() == [
            (f"audio/{i % 2}/\x01.ogg",) for i in range(6)
        ] + [("art/\x01",), ("art/\x01.jpg",)]
        assert [list(w.state.iter_members(s.id)) for s in w.state.shards()] == before
    assert run(workspace, cat, trust_sizes=True).unchanged == len(rows)
    err = rejected_later(workspace, archive.jsonl(rows + [trusted(2, path="audio/1/x3.ogg")], "c.jsonl"))
    assert [p.reason for p in err.problems] == ["path 'audio/1/x3.ogg' already belongs to id 'x3'"]


def test_a_killed_schema_4_migration_leaves_schema_4(workspace, archive, monkeypatch):
    import packager.state_migrate

    run(workspace, archive.jsonl([trusted(0, id="x0", path="audio/x0.ogg")]), trust_sizes=True)
    with open_state(workspace) as state:
        back_to_schema_4(state.db)

    def killed(path, item_id):
        raise RuntimeError("killed")

    monkeypatch.setattr(packager.state_migrate, "stored_path", killed)
    with pytest.raises(sqlite3.OperationalError):
        open_state(workspace)
    db = sqlite3.connect(workspace / "state.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "4"
    assert db.execute("SELECT path FROM items").fetchall() == [("audio/x0.ogg",)]
    db.close()
    monkeypatch.undo()
    with open_state(workspace) as state:
        assert state.item_facts(1) == (1, "x0", "audio/x0.ogg", 10)
        assert state.db.execute("SELECT path FROM items").fetchall() == [("audio/\x01.ogg",)]


def rejected_later(ws: Path, catalog: Path) -> CatalogError:
    with pytest.raises(CatalogError) as e:
        run(ws, catalog, trust_sizes=True)
    return e.value


@pytest.mark.parametrize("first_ingest", [True, False])
def test_rejects_of_repeated_ids_and_paths_carry_their_rows(workspace, archive, first_ingest):
    """A rejects file is for fixing rows and loading them again: a row refused as a repeat (of an id, of a
    path, or of a known item's path) is written with its fields, as every other rejected row."""
    rows = good_rows(archive, 3)
    for r in rows:
        r["title"] = f"t {r['id']}"
    if not first_ingest:
        run(workspace, archive.jsonl([dict(rows[0], id="known", path="audio/a2.ogg", size=102)], "k.jsonl"))
    repeated_id = dict(rows[1], path="audio/a0.ogg", size=100, id="a0", mtime=5)
    repeated_path = dict(rows[2], id="z9", path="audio/a1.ogg", size=101)
    cat = archive.jsonl([rows[0], rows[1], repeated_id, repeated_path, rows[2]])
    rejects = workspace / "rejects.jsonl"
    run(workspace, cat, trust_sizes=True, skip_invalid=True, rejects=rejects)
    written = {r["line"]: r for r in map(json.loads, rejects.read_text().splitlines())}
    assert written[3]["row"] == repeated_id
    assert written[4]["row"] == repeated_path
    if not first_ingest:  # rows[2] claims the known item's path
        assert "already belongs to id 'known'" in written[5]["reason"]
        assert written[5]["row"] == rows[2]
    else:
        assert set(written) == {3, 4}


@pytest.mark.parametrize("keyed_inserts", [0, 1, 10**6])
def test_a_first_ingest_finds_repeated_paths_whether_it_builds_the_path_keys_before_or_after(
    workspace, archive, monkeypatch, keyed_inserts
):
    """A first ingest keeps the index of path keys while it inserts few keyed rows, and builds it after
    the inserts beyond KEYED_INSERTS: the same refusals either way."""
    import packager.ingest

    monkeypatch.setattr(packager.ingest, "KEYED_INSERTS", keyed_inserts)
    rows = [trusted(i) for i in range(5)] + [
        trusted(9, path="audio/t2.ogg"),
        trusted(8, id="ab", path="a/ab"),
    ]
    rows.append(trusted(7, path="a/ab"))
    cat = archive.jsonl(rows)
    with pytest.raises(CatalogError) as e:
        run(workspace, cat, trust_sizes=True)
    assert [(p.line, p.reason) for p in e.value.problems] == [
        (6, f"duplicate path 'audio/t2.ogg', first seen at {cat}:3"),
        (8, f"duplicate path 'a/ab', first seen at {cat}:7"),
    ]
    report = run(workspace, cat, trust_sizes=True, skip_invalid=True, rejects=archive.base / "r.jsonl")
    assert (report.added, report.rejected) == (6, 2)
    with open_state(workspace) as state:
        assert (
            state.db.execute(
                "SELECT COUNT(*) FROM items INDEXED BY items_ph WHERE ph IS NOT NULL"
            ).fetchone()[0]
            == 5
        )


def _user_view(ws: Path) -> dict:
    """What a user and the later stages read of the items: status, the plan's members, extra fields, totals,
    fingerprints."""
    from typer.testing import CliRunner

    from packager.cli import app

    status = CliRunner().invoke(app, ["status", str(ws), "--json"])
    assert status.exit_code == 0, status.output
    with open_state(ws) as state:
        ids = [r[0] for r in state.db.execute("SELECT id FROM items ORDER BY id")]
        return {
            "status": json.loads(status.output),
            "members": {s.name: list(state.iter_members(s.id)) for s in state.shards()},
            "extra": {i: state.item_extra(i) for i in ids},
            "totals": (state.stored_totals(), state.counted_totals()),
            "fp": state.db.execute("SELECT id, fp FROM items ORDER BY id").fetchall(),
            "stored extra": state.db.execute("SELECT id, extra FROM items ORDER BY id").fetchall(),
        }


EXTRAS = [
    {"title": "song", "n": 3, "live": False, "mood": None, "bpm": 120.5},
    {"title": "tags", "tags": ["a", 1, {"z": 1, "a": [2]}]},
    {"big": 2**70, "neg": -(2**63), "u64": 2**64 - 1, "uni": "é\u2028𝄞"},
    {"obj": {"b": 1, "a": 2}},
    {},
]


def test_a_schema_5_state_keeps_what_every_reader_sees_and_a_refresh_changes_nothing(workspace, archive):
    """Schema 5 -> 6 (kinds and extra names by number) changes no answer: status, the
    plan's members, the extra fields, the totals and the fingerprints are the same after the migration, and
    re-ingesting the same catalogs (a JSON Lines one and a CSV one) finds every row unchanged."""
    rows = [
        trusted(i, kind=("audio", "art", "metadata")[i % 3], pop=i / 3) | EXTRAS[i % 5] for i in range(15)
    ]
    cat = archive.jsonl(rows)
    csv = archive.base / "more.csv"
    csv.write_text(
        "id,path,kind,popularity,size,title,year\n"
        + "".join(f"c{i},art/c{i}.jpg,art,{i},5,t{i},{1990 + i}\n" for i in range(4))
    )
    run(workspace, cat, csv, trust_sizes=True)
    with Workspace.open(workspace) as w:
        plan(w)
    before = _user_view(workspace)
    with open_state(workspace) as state:
        back_to_schema_5(state.db)
    with open_state(workspace) as state:
        db = state.db
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "7"
        assert db.execute("SELECT typeof(kind), COUNT(*) FROM items GROUP BY 1").fetchall() == [
            ("integer", 19)
        ]
        assert db.execute("SELECT COUNT(*) FROM kinds").fetchone()[0] == 3
        assert db.execute("SELECT DISTINCT xk FROM items ORDER BY xk").fetchall() == [
            (None,),
            *((n,) for n in range(1, 6)),
        ]
    assert _user_view(workspace) == before
    report = run(workspace, cat, csv, trust_sizes=True)
    assert (report.added, report.changed, report.unchanged, report.absent) == (0, 0, 19, 0)
    assert _user_view(workspace) == before


def test_a_schema_6_state_drops_its_items_catalog_lines(workspace, archive, capsys):
    """Schema 6 -> 7: the items' catalog file and line go; nothing else changes, and a refresh finds every
    row unchanged. The migration says what it does while it runs (minutes at 10^8 items), and only then."""
    rows = [trusted(i, kind=("audio", "art")[i % 2]) | EXTRAS[i % 5] for i in range(10)]
    cat = archive.jsonl(rows)
    run(workspace, cat, trust_sizes=True)
    with Workspace.open(workspace) as w:
        plan(w)
    before = _user_view(workspace)
    with open_state(workspace) as state:  # back to schema 6: each item with its catalog file and line
        db = state.db
        db.execute("ALTER TABLE items ADD COLUMN source INTEGER NOT NULL DEFAULT 1")
        db.execute("ALTER TABLE items ADD COLUMN line INTEGER NOT NULL DEFAULT 0")
        db.execute("UPDATE items SET line = n")
        db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    capsys.readouterr()
    with open_state(workspace) as state:
        db = state.db
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "7"
        assert {r[1] for r in db.execute("PRAGMA table_info(items)")} & {"source", "line"} == set()
    said = capsys.readouterr().err
    assert "migrating from schema 6 to 7 (10 items)" in said and "migrated in" in said
    with open_state(workspace):
        pass
    assert capsys.readouterr().err == ""
    assert _user_view(workspace) == before
    report = run(workspace, cat, trust_sizes=True)
    assert (report.added, report.changed, report.unchanged) == (0, 0, 10)


def test_a_killed_schema_5_migration_leaves_schema_5(workspace, archive, monkeypatch):
    import packager.state_migrate

    run(workspace, archive.jsonl([trusted(0, title="x")]), trust_sizes=True)
    with open_state(workspace) as state:
        back_to_schema_5(state.db)

    def killed():
        raise RuntimeError("killed")

    monkeypatch.setattr(packager.state_migrate, "schema_statements", killed)  # after items is renamed
    with pytest.raises(RuntimeError):
        open_state(workspace)
    db = sqlite3.connect(workspace / "state.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "5"
    assert db.execute("SELECT kind, extra FROM items").fetchall() == [("audio", '["x"]')]
    db.close()
    monkeypatch.undo()
    with open_state(workspace) as state:
        assert state.item_extra("t000") == {"title": "x"}


def test_row_fingerprints_keep_their_meaning(tmp_path, archive):
    """The fingerprints a re-ingest compares are those schema 5 stored (pinned from packager before
    schema 6): a kind by its name and a set of extra field names by its 47-bit key, whatever numbers items
    stores for them, so a refresh after the migration finds its rows unchanged."""
    (tmp_path / "c.csv").write_text(
        "id,path,kind,popularity,size,title,year\n"
        'c0,art/c0.jpg,art,0.5,5,t0,1990\nc1,audio/c1.ogg,audio,2,7,"x, y",\n'
    )
    (tmp_path / "j.jsonl").write_text(
        '{"id":"j0","path":"audio/j0.ogg","kind":"audio","popularity":1.5,"size":3,"tags":["a",1],"n":2}\n'
    )
    Workspace.init(tmp_path / "ws", archive.root, "t").close()
    run(tmp_path / "ws", tmp_path / "c.csv", tmp_path / "j.jsonl", trust_sizes=True)
    with open_state(tmp_path / "ws") as state:
        assert state.db.execute("SELECT id, fp FROM items ORDER BY id").fetchall() == [
            ("c0", 1293415009345912051),
            ("c1", -6988972810357491797),
            ("j0", -3568979997803828078),
        ]


def test_read_ahead_gives_every_block_raises_the_readers_error_and_stops_when_closed():
    import threading

    from packager.catalog.jsonl import read_ahead

    closed = threading.Event()

    def blocks(fail_at: int | None):
        try:
            for n in range(10):
                if n == fail_at:
                    raise OSError(5, "Input/output error")
                yield n
        finally:
            closed.set()

    assert list(read_ahead(blocks(None))) == list(range(10)) and closed.is_set()
    closed.clear()
    with pytest.raises(OSError, match="Input/output"):
        list(read_ahead(blocks(4)))
    assert closed.is_set()
    closed.clear()
    first = read_ahead(blocks(None), depth=1)
    assert next(first) == 0
    first.close()  # the reader, blocked on a full queue, stops and closes the file
    assert closed.wait(5)
    assert not any(t.name == "catalog read-ahead" for t in threading.enumerate())


@pytest.mark.parametrize("chunk", [1, 2, 100_000])  # deferred rows read again a chunk at a time
def test_rejects_hold_the_rows_as_the_catalog_gave_them_in_catalog_order(
    workspace, archive, monkeypatch, chunk
):
    """A repeat is found after every row is checked; its rejects record is still the catalog's row (no
    statted size added, 3 not 3.0) and in its place among the others."""
    import packager.catalog.problems

    monkeypatch.setattr(packager.catalog.problems, "DEFER_CHUNK", chunk)
    archive.add("audio/a0.ogg", 100)
    archive.add("audio/a1.ogg", 101)
    first = {"id": "a0", "path": "audio/a0.ogg", "kind": "audio", "popularity": 3}
    lines = [
        first,
        {"id": "a1", "path": "audio/a1.ogg", "kind": "audio", "popularity": 4, "note": "x"},
        dict(first, note="again"),  # a repeated id: refused by the loader's check
        {"id": "a2", "path": "audio/a1.ogg", "kind": "video", "popularity": 1},  # refused as read
        {"id": "a1", "path": "audio/a1.ogg", "kind": "audio", "popularity": 5, "size": 101},
        dict(first, note="thrice"),
    ]
    cat = archive.jsonl(lines)
    other = archive.jsonl([dict(first, note="in another catalog")], "other.jsonl")
    rejects = workspace / "rejects.jsonl"
    report = run(workspace, other, cat, skip_invalid=True, rejects=rejects)
    assert (report.added, report.rejected) == (2, 5)  # a0 from the other catalog, given first; a1
    written = [json.loads(r) for r in rejects.read_text().splitlines()]
    assert [(Path(r["file"]).name, r["line"]) for r in written] == [
        ("catalog.jsonl", n) for n in (1, 3, 4, 5, 6)
    ]
    assert [r["row"] for r in written] == [lines[0], *lines[2:]]
    first_line = rejects.read_text().splitlines()[0]
    assert '"popularity": 3}' in first_line and '"size"' not in first_line


@pytest.mark.parametrize("fails", [False, True])
def test_a_parser_child_whose_reader_is_gone_ends_quietly(workspace, archive, capsys, fails):
    """The inserting process killed, or stopped reading after an error: its parser child's sends fail with
    a broken pipe, and it ends without a traceback (it printed two after ingest had stopped)."""
    import multiprocessing

    from packager.catalog import parse

    cat = archive.jsonl([trusted(i) for i in range(3)])
    if fails:  # the parser's error (a catalog gone) is then what cannot be handed on
        cat.unlink()
    ours, theirs = multiprocessing.Pipe(duplex=False)
    ours.close()
    with Workspace.open(workspace) as w:
        parse._parse_child(
            theirs, w.config, [cat], IngestOptions(trust_sizes=True), {str(cat): 1}, None, None
        )
    assert capsys.readouterr().err == ""


# ---- a catalog replaced or written while it is read --------------------------------------------------------


def _replaced_during(monkeypatch, target, name: str, catalog: Path, new_text: str) -> None:
    """Replace catalog by a file of new_text (written beside, renamed over it: how a new dump lands) right
    after target.name runs."""
    original = getattr(target, name)

    def then_replace(*args, **kwargs):
        result = original(*args, **kwargs)
        beside = catalog.with_name(catalog.name + ".new")
        beside.write_text(new_text)
        os.replace(beside, catalog)
        return result

    monkeypatch.setattr(target, name, then_replace)


def _popularities(ws: Path) -> dict:
    with open_state(ws) as state:
        return dict(state.db.execute("SELECT id, popularity FROM items"))


def test_a_refresh_whose_catalog_is_replaced_while_read_is_refused(workspace, archive, monkeypatch):
    import packager.refresh

    rows = [trusted(i) | {"title": f"song {i}"} for i in range(50)]
    run(workspace, archive.jsonl(rows), trust_sizes=True)
    before = _popularities(workspace)
    refresh = [dict(r) for r in rows]
    refresh[3]["popularity"] = 7.5
    catalog = archive.jsonl(refresh, "refresh.jsonl")
    # The new file: other lines at the byte offsets the fingerprint pass found in the old one.
    newer = "".join(json.dumps(r | {"title": "x" * (i % 7)}) + "\n" for i, r in enumerate(refresh))
    _replaced_during(monkeypatch, packager.refresh, "match_catalogs", catalog, newer)
    for skip in (False, True):
        with pytest.raises(UsageError, match="changed while it was read"):
            run(workspace, catalog, trust_sizes=True, skip_invalid=skip, rejects=archive.base / "rej.jsonl")
        assert _popularities(workspace) == before, "nothing may be committed"
        assert not (archive.base / "rej.jsonl").exists()
        catalog.write_text("".join(json.dumps(r) + "\n" for r in refresh))


def test_a_first_ingest_whose_catalog_is_written_while_read_is_refused(workspace, archive, monkeypatch):
    import packager.ingest

    catalog = archive.jsonl([trusted(i) for i in range(20)])
    more = catalog.read_text() + json.dumps(trusted(99)) + "\n"
    _replaced_during(monkeypatch, packager.ingest.Loader, "check", catalog, more)
    with pytest.raises(UsageError, match="changed while it was read"):
        run(workspace, catalog, trust_sizes=True)
    assert count(workspace) == 0
    monkeypatch.undo()
    assert run(workspace, catalog, trust_sizes=True).added == 21


def test_a_number_of_thousands_of_digits_is_a_problem_with_its_line(workspace, archive):
    catalog = archive.base / "big.jsonl"
    catalog.write_text(json.dumps(trusted(1))[:-1] + ', "big": ' + "9" * 5000 + "}\n")
    err = rejected(workspace, catalog, trust_sizes=True)
    assert_reported(err, catalog, 1, "a number too long to read")


@pytest.mark.parametrize("sets", [3, 20])  # the INSERT's few literal keys, and the lookup beyond 16 sets
def test_sets_of_extra_names_first_met_batches_later_keep_their_names(workspace, archive, monkeypatch, sets):
    import packager.catalog.parse

    monkeypatch.setattr(packager.catalog.parse, "BATCH", 7)  # each set of names first seen batches later
    rows = [trusted(i) | {f"field{i * sets // 100}": i} for i in range(100)]
    run(workspace, archive.jsonl(rows), trust_sizes=True)
    refresh = [r | {f"late{i * sets // 100}": "x"} if i % 2 else r for i, r in enumerate(rows)]
    report = run(workspace, archive.jsonl(refresh, "refresh.jsonl"), trust_sizes=True)
    assert (report.changed, report.unchanged) == (50, 50)
    with open_state(workspace) as state:
        for row in refresh:
            extra = {k: v for k, v in row.items() if k not in trusted(0)}
            assert state.item_extra(row["id"]) == extra, row["id"]


def test_a_migration_that_rewrites_the_items_keeps_no_second_copy_of_them_in_a_log(workspace, archive):
    """Schema 5 -> 7 rewrites the items table: through a rollback journal, not the write-ahead log, which
    would hold a copy of every page written beside the state (at 10^8 rows, tens of GB more disk)."""
    run(workspace, archive.jsonl([trusted(i) | EXTRAS[i % 5] for i in range(3000)]), trust_sizes=True)
    with open_state(workspace) as state:
        back_to_schema_5(state.db)
        state.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = workspace / "state.sqlite-wal"
    with open_state(workspace) as state:
        assert state.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "7"
        items = state.db.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = 'items'").fetchone()[0]
        logged = wal.stat().st_size if wal.exists() else 0
        assert logged < items / 4, (logged, items)


@pytest.mark.parametrize("size", ["²", "①", "١٢٣", "9" * 5000])
def test_a_csv_size_of_other_digits_than_ascii_is_a_problem_with_its_line(workspace, archive, size):
    catalog = archive.base / "c.csv"
    catalog.write_text(f"id,path,kind,popularity,size\nu1,audio/u1.ogg,audio,1,{size}\n", encoding="utf-8")
    err = rejected(workspace, catalog, trust_sizes=True)
    assert_reported(err, catalog, 2, "is not a whole number of bytes")


@pytest.mark.parametrize(
    "column, words",
    [
        ("decimal", "holds decimal128(5, 2) values"),
        ("durations", "duration[s]> values"),
        ("twice", "column 'id' appears twice"),
    ],
)
def test_parquet_columns_no_row_can_hold_are_refused_once(workspace, archive, column, words):
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    base = {"id": ["p1"], "path": ["audio/p1.ogg"], "kind": ["audio"], "popularity": [1.0], "size": [3]}
    if column == "decimal":
        table = pa.table(base | {"price": pa.array([decimal.Decimal("1.25")], pa.decimal128(5, 2))})
    elif column == "durations":
        table = pa.table(
            base | {"d": pa.array([[datetime.timedelta(seconds=3)]], pa.list_(pa.duration("s")))}
        )
    else:
        table = pa.Table.from_arrays([*map(pa.array, base.values()), pa.array(["p2"])], [*base, "id"])
    path = archive.base / "c.parquet"
    pq.write_table(table, path)
    with pytest.raises(UsageError) as e:
        run(workspace, path, trust_sizes=True)
    assert words in e.value.message
    assert count(workspace) == 0


def test_parquet_nan_in_an_extra_column_is_a_problem_at_its_row_as_in_json_lines(workspace, archive):
    rows = [trusted(i) | {"score": s} for i, s in enumerate([1.5, float("nan"), float("inf")])]
    cat = write_parquet(archive.base / "c.parquet", rows)
    err = rejected(workspace, cat, trust_sizes=True)
    assert_reported(err, cat, 2, "column score: nan is not a finite number")
    assert_reported(err, cat, 3, "column score: inf is not a finite number")


def test_sqlite_catalog_from_a_view_and_a_quoted_table_name(workspace, archive, make_workspace):
    db_path = archive.base / "c.sqlite"
    db = sqlite3.connect(db_path)
    db.execute('CREATE TABLE "tra""cks" (id, path, kind, popularity, size)')
    db.executemany(
        'INSERT INTO "tra""cks" VALUES (?, ?, ?, ?, ?)',
        [(f"s{i}", f"audio/s{i}.ogg", "audio", i, 3) for i in range(3)],
    )
    db.execute('CREATE VIEW tracks AS SELECT * FROM "tra""cks" WHERE popularity > 0')
    db.commit()
    db.close()
    assert run(workspace, db_path, trust_sizes=True, table='tra"cks').added == 3
    other = make_workspace("other")
    assert run(other, db_path, trust_sizes=True, table="tracks").added == 2


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder"])
def test_a_rejects_path_that_is_not_a_regular_file_is_refused_and_left_as_it_is(workspace, archive, kind):
    """The rejects file is put in place by a rename: as root, `--rejects /dev/null` replaced the device."""
    rejects = archive.base / "rejects"
    target = archive.base / "target.txt"
    target.write_text("kept\n")
    if kind == "fifo":
        os.mkfifo(rejects)
    elif kind == "symlink":
        rejects.symlink_to(target)
    else:
        rejects.mkdir()
    cat = archive.jsonl([trusted(1), {"id": "bad"}])
    with pytest.raises(UsageError, match="not a regular file"):
        run(workspace, cat, trust_sizes=True, skip_invalid=True, rejects=rejects)
    assert count(workspace) == 0
    assert {"fifo": rejects.is_fifo, "symlink": rejects.is_symlink, "folder": rejects.is_dir}[kind]()
    assert target.read_text() == "kept\n"
    assert not list(archive.base.glob("rejects?*"))


def test_an_atomic_write_refuses_to_replace_what_is_not_a_regular_file(tmp_path):
    from packager.fsutil import NotRegularFile, write_atomic

    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="is a pipe"):
        write_atomic(fifo, b"x")
    assert fifo.is_fifo() and os.listdir(tmp_path) == ["out"]
    plain = tmp_path / "plain"
    write_atomic(plain, b"1")
    write_atomic(plain, b"2")
    assert plain.read_bytes() == b"2"


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_catalog_that_is_not_a_regular_file_says_what_it_is_and_is_never_opened(workspace, archive, kind):
    import threading

    cat = archive.base / "c.jsonl"
    if kind == "fifo":
        os.mkfifo(cat)  # an open for reading would block until a writer comes
    elif kind == "device":
        cat.symlink_to(os.devnull)  # a symlink to a catalog is one: it is followed
    else:
        cat.mkdir()
    results = []
    ingesting = threading.Thread(
        target=lambda: results.append(ingest_cli(workspace, str(cat), "--trust-sizes"))
    )
    ingesting.start()
    ingesting.join(20)
    if ingesting.is_alive():  # blocked in an open of the FIFO: a writer that closes at once ends it
        os.close(os.open(cat, os.O_WRONLY | os.O_NONBLOCK))
        ingesting.join()
        pytest.fail("the ingest opened the FIFO")
    what = {"fifo": "a pipe", "device": "a device", "folder": "a folder"}[kind]
    assert results[0].exit_code == 2, results[0].output
    assert f"{cat}: is {what}, not a regular file" in results[0].output
    assert "not found" not in results[0].output and count(workspace) == 0


def test_a_catalog_through_a_symlink_is_read_and_a_missing_one_not_found(workspace, archive):
    link = archive.base / "link.jsonl"
    link.symlink_to(archive.jsonl([trusted(0)]))
    assert ingest_cli(workspace, str(link), "--trust-sizes").exit_code == 0
    assert count(workspace) == 1
    result = ingest_cli(workspace, str(archive.base / "gone.jsonl"), "--trust-sizes")
    assert result.exit_code == 2 and "gone.jsonl: catalog not found" in result.output
