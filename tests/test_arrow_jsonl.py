"""The Arrow path of --trust-sizes JSON Lines (catalog/arrow_jsonl.py) gives what the Python path gives:
the same rows staged, the same problems, whichever blocks it takes; hostile lines send their block back."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from packager.catalog import IngestOptions, arrow_jsonl, ingest, jsonl, parse
from packager.catalog.checks import Checker
from packager.errors import CatalogError
from packager.state import open_state
from packager.workspace import Workspace

KINDS = ("audio", "art", "metadata")
CONFIG = SimpleNamespace(root=Path("/nonexistent"), kinds=KINDS)  # what the Checker reads of a config
TRUSTED = IngestOptions(trust_sizes=True)


def events(catalog: Path, arrow: bool, block: int = 256) -> tuple[list, list, dict, int]:
    """(rows staged, problems, extra names, rows counted) of parse.parsed() over one catalog, with Arrow
    offered every block (arrow) or none, in blocks of about `block` bytes. Rows are padded to the stage
    tuple's 11 values: a row staged without mtime and path key stores them NULL."""
    rows, bad, names, count = [], [], {}, 0
    with (
        patch.object(parse, "ARROW_MIN_BLOCK", 0 if arrow else 2**62),
        patch.object(jsonl, "BLOCK_BYTES", block),
    ):
        for kind, payload in parse.parsed(CONFIG, [catalog], TRUSTED, {str(catalog): 1}):
            if kind == "rows":
                rows += [(payload[0], *row, *(None,) * (11 - len(row))) for row in payload[1]]
            elif kind == "bad":
                bad += payload
            elif kind == "names":
                names |= payload
            elif kind == "count":
                count += payload
    return rows, bad, names, count


def good(n: int, **more) -> dict:
    item_id = f"id{n:05d}x"
    path, title = f"audio/{n % 7}/{item_id}.ogg", f'Track "{n}" \\ {n}'
    row = {"id": item_id, "path": path, "kind": "audio", "popularity": n / 3.0, "size": 1000 + n}
    return row | {"title": title, "n": n, "explicit": n % 2 == 0} | more


# Lines that the Python path refuses or reads in a way Arrow would not: each must send its block back.
HOSTILE = [
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1,"id":"b"}',  # repeated key
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1,"\\u0069d":"b"}',
    b'{"id":"\xff","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1}',  # invalid UTF-8
    b'{"id":"a","path":"audio/\xc3(.ogg","kind":"audio","popularity":1,"size":1}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":NaN,"size":1}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":Infinity,"size":1}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1e400,"size":1}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":123456789012345678901234567890}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":-1}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1099511627777}',  # over 2^40
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":3.0}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":"2.5","size":"3"}',
    b'{"id":7,"path":"audio/7.ogg","kind":"audio","popularity":1,"size":1}',
    b'{"id":"\\ud800","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1}',  # lone surrogate
    b'{"id":"a\\u0001","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1}',
    b'{"id":" \\u3000","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1}',
    orjson.dumps(good(51, id="   ")),  # an id of spaces only, in an otherwise plain row
    orjson.dumps(good(52, id="\u3000 ")),  # of U+3000 and a space, unescaped
    b'{"id":"a","path":"../a.ogg","kind":"audio","popularity":1,"size":1}',
    b'{"id":"a","path":".packager/a","kind":"audio","popularity":1,"size":1}',
    b'{"id":"a","path":"audio//a.ogg","kind":"video","popularity":1,"size":1}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1,"mtime":99999999999}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1,"x":null}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1,"x":1.5}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1,"x":{"y":[1]}}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1,"x":"tab\\there"}',
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1} {"id":"b"}',  # two on a line
    b'{"id":"b","path":"audio/b.ogg","kind":"audio","popularity":1,"size":null}',
    b'{"id":"b","path":"audio/b.ogg","kind":"audio","popularity":1,"size":1}\r',
    b"   ",
    b"",
    b"[1, 2]",
    b'"just text"',
    b"{}",
    b'{"a":' * 1000 + b"1" + b"}" * 1000,
    # deeper than orjson writes and json.dumps can: both were tracebacks
    b'{"id":"a","path":"audio/a.ogg","kind":"audio","popularity":1,"size":1,"x":'
    + b"[" * 1000
    + b"]" * 1000
    + b"}",
    b"[" * 2000 + b"]" * 2000,
]

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_value = st.one_of(
    _text,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(_text, st.integers(), max_size=2),
)


@st.composite
def rows(draw) -> dict:
    n = draw(st.integers(0, 10**5))
    row = good(n)
    for field in draw(st.sets(st.sampled_from(sorted(row) + ["mtime", "extra"]), max_size=3)):
        if field == "extra":
            row[draw(_text)] = draw(_value)
        elif field == "path":
            row["path"] = draw(st.sampled_from([f"art/{n}.jpg", "a/./b", "/abs", "x", ".x", "a/x.", "a.b/c"]))
        elif field == "kind":
            row["kind"] = draw(st.sampled_from(["art", "metadata", "video", ""]))
        else:
            row[field] = draw(_value)
    return row


@st.composite
def lines(draw) -> list[bytes]:
    out = []
    for row in draw(st.lists(rows(), max_size=40)):
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(st.sampled_from(HOSTILE)))
            continue
        try:
            if draw(st.booleans()):
                out.append(orjson.dumps(row))
            else:  # other spacing, other escapes: the same row, another line
                out.append(json.dumps(row, ensure_ascii=draw(st.booleans())).encode())
        except (TypeError, ValueError, OverflowError):
            out.append(json.dumps(row).encode())
    return out


@settings(max_examples=300)
@given(lines())
@example([orjson.dumps(good(n)) for n in range(30)])
@example([orjson.dumps(good(n)) for n in range(30)] + HOSTILE[:3] + [b'{"a":' * 10**5 + b"1" + b"}" * 10**5])
@example([orjson.dumps(good(n, path=f"audio/x{n}.ogg", mtime=n)) for n in range(30)])
def test_both_paths_stage_the_same_rows_and_report_the_same_problems(lines):
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.jsonl"
        catalog.write_bytes(b"".join(line + b"\n" for line in lines))
        assert events(catalog, arrow=True) == events(catalog, arrow=False)


def test_plain_blocks_are_taken_whole_and_hostile_ones_sent_back(tmp_path):
    """The comparison above would pass with Arrow never taking a block: these blocks must be taken."""
    checker = Checker(CONFIG, trust_sizes=True)
    plain = b"".join(orjson.dumps(good(n, title=f"Track {n}")) + b"\n" for n in range(50))
    staged = arrow_jsonl.checked_block(plain, 1, checker)
    assert staged is not None and len(staged) == 50
    assert [row[6] for row in staged] == list(range(1, 51))  # line numbers
    named = b"".join(orjson.dumps(good(n, path=f"a/{n}.ogg", mtime=n)) + b"\n" for n in range(5))
    assert arrow_jsonl.checked_block(named, 7, checker) is not None
    for hostile in HOSTILE:
        assert arrow_jsonl.checked_block(plain + hostile + b"\n", 1, checker) is None, hostile


def test_a_block_nested_a_million_deep_never_reaches_arrow(tmp_path):
    """Deeply nested JSON crashes Arrow's parser (a segfault, not an exception): the comparison runs in a
    child, so that a crash fails this test instead of the run."""
    catalog = tmp_path / "deep.jsonl"
    good_lines = b"".join(orjson.dumps(good(n)) + b"\n" for n in range(100))
    for deep in (
        b"[" * 10**6 + b"]" * 10**6,
        b'{"a":' * 10**5 + b"1" + b"}" * 10**5,  # crashes pyarrow 26 from 10^5 (fits its 1 MiB chunks)
        b'{"id":"a","x":' + b"[" * 10**5 + b"]" * 10**5 + b"}",
    ):
        catalog.write_bytes(good_lines + deep + b"\n" + good_lines)
        code = textwrap.dedent(f"""
            from pathlib import Path
            from tests.test_arrow_jsonl import events
            catalog = Path({str(catalog)!r})
            arrow, plain = events(catalog, True, 2**30), events(catalog, False, 2**30)
            assert arrow == plain
            print(plain[1][0][:3])
        """)
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "nested more than 1024 levels deep" in done.stdout


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_ingest_by_either_path_leaves_the_same_state(make_workspace, tmp_path, skip_invalid):
    rows = [orjson.dumps(good(n)) for n in range(200)] + HOSTILE[::4] + HOSTILE[-2:] + [orjson.dumps(good(7))]
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(b"".join(line + b"\n" for line in rows))
    outcome = []
    for arrow in (True, False):
        ws = make_workspace(f"ws-{arrow}")
        rejects = tmp_path / f"rejects-{arrow}.jsonl"
        options = IngestOptions(trust_sizes=True, skip_invalid=skip_invalid, rejects=rejects)
        with (
            patch.object(parse, "ARROW_MIN_BLOCK", 0 if arrow else 2**62),
            patch.object(jsonl, "BLOCK_BYTES", 2048),
            Workspace.open(ws) as w,
        ):
            try:
                report = ingest(w, [catalog], options)
                problems = [(p.file, p.line, p.reason, p.item_id) for p in report.problems]
            except CatalogError as e:
                problems = [(p.file, p.line, p.reason, p.item_id) for p in e.problems]
        with open_state(ws) as state:
            items = state.db.execute("SELECT * FROM items ORDER BY rowid").fetchall()
            names = state.db.execute("SELECT * FROM extra_names ORDER BY h").fetchall()
        outcome.append((problems, items, names, rejects.read_text() if rejects.exists() else None))
    assert outcome[0] == outcome[1]
    assert outcome[0][0]  # the hostile rows are reported
    assert bool(outcome[0][1]) == skip_invalid
