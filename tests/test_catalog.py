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


def rejected(ws: Path, catalog: Path) -> CatalogError:
    with pytest.raises(CatalogError) as e:
        run(ws, catalog)
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
        extra = state.db.execute("SELECT extra FROM items").fetchone()[0]
    assert json.loads(extra) == {"title": "Blue Night"}


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
    rows[0]["popularity"] = 98
    cat = archive.jsonl(rows)
    with pytest.raises(CatalogError) as e:
        run(workspace, cat)
    assert_reported(
        e.value, cat, 1, "already in shard t-audio-t1-00001 and cannot change (popularity 99.0 -> 98.0)"
    )


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

    monkeypatch.setattr(packager.catalog, "PARALLEL_BYTES", 0)
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
