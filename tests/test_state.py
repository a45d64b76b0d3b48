"""state.sqlite on its own: opening and refusing, transactions, and the build, publish and seed records
that the stages keep in it."""

from __future__ import annotations

import sqlite3

import pytest

from packager import layout
from packager.errors import WorkspaceError
from packager.hashing import ShardHashes
from packager.state import SCHEMA_VERSION, SeedStatusRow, State, open_state

NOW = "2026-01-01T00:00:00Z"


@pytest.fixture
def state(tmp_path):
    with State(tmp_path / layout.STATE, create=True) as s:
        yield s


def a_shard(state: State, name: str = "r-audio-00001") -> int:
    with state.transaction():
        return state.add_shard(name, "audio", "", int(name[-5:]), 0, 0, 1.0, 2.0, NOW)


def test_a_new_state_has_the_current_schema_and_reopens(tmp_path, state):
    row = state.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(SCHEMA_VERSION),)
    assert state.db.execute("PRAGMA page_size").fetchone() == (8192,)
    a_shard(state)
    state.close()
    with open_state(tmp_path) as again, open_state(tmp_path, readonly=True) as reader:
        assert [s.name for s in again.shards()] == [s.name for s in reader.shards()] == ["r-audio-00001"]


def test_what_is_not_a_state_database_is_refused_naming_it(tmp_path):
    with pytest.raises(WorkspaceError, match="no state database"):
        open_state(tmp_path)
    (tmp_path / layout.STATE).write_bytes(b"not sqlite" * 100)
    with pytest.raises(WorkspaceError, match="not a packager state database"):
        open_state(tmp_path)
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    other.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    other.commit()
    other.close()
    with pytest.raises(WorkspaceError, match="unknown state schema version 99"):
        State(tmp_path / "other.sqlite")


def test_a_failed_transaction_leaves_nothing(state):
    with pytest.raises(RuntimeError), state.transaction():
        state.add_shard("r-audio-00001", "audio", "", 1, 0, 0, 1.0, 2.0, NOW)
        raise RuntimeError("killed halfway")
    assert state.shards() == []


def test_build_hashes_read_back_what_was_recorded_and_unbuilt_forgets_them(state):
    sid = a_shard(state)
    hashes = ShardHashes(1000, bytes(range(32)), 16384, b"\x01" * 20, b"\x02" * 32, b"")
    with state.transaction():
        state.record_build(sid, layout.shard_file("r-audio-00001"), hashes, 1, 900, NOW, [])
    assert state.build_hashes(sid) == hashes
    assert state.built_files() == [(layout.shard_file("r-audio-00001"), 1000, bytes(range(32)).hex())]
    assert state.shards()[0].state == "built"
    state.mark_unbuilt(layout.shard_file("r-audio-00001"))
    assert state.build_hashes(sid) is None and state.shards()[0].state == "planned"


def test_publications_keep_their_first_date_and_release_order(state):
    first, second = a_shard(state, "r-audio-00001"), a_shard(state, "r-audio-00002")
    with state.transaction():
        state.record_publication("audio", NOW, [(first, "audio", '{"n": 1}')])
    with state.transaction():
        state.record_publication("audio", "2027-01-01T00:00:00Z", [(second, "audio", '{"n": 2}')])
    assert state.publications() == [("audio", NOW)]
    assert state.published_entries() == [(first, "audio", '{"n": 1}'), (second, "audio", '{"n": 2}')]
    assert state.is_published("audio") and not state.is_published("art")


def test_seed_status_upload_only_grows_replies_add_up_and_a_reply_clears_the_tracker_error(state):
    sid = a_shard(state)

    def record(**kw) -> SeedStatusRow:
        row = SeedStatusRow(info_hash="a" * 40, shard_id=sid, state="seeding", peers=1, updated_at=NOW, **kw)
        with state.transaction():
            state.record_seed_status([row])
        return state.seed_status()[0]

    assert record(uploaded=100, tracker_replies=2).tracker_replies == 2
    failed = record(uploaded=50, tracker_error="t: refused", tracker_error_at=NOW)
    assert failed.uploaded == 100 and failed.tracker_error == "t: refused"
    answered = record(uploaded=200, tracker_replies=1, last_reply_at=NOW, last_reply_peers=3)
    assert (answered.uploaded, answered.tracker_replies, answered.tracker_error) == (200, 3, None)
    assert state.seed_uploaded() == {"a" * 40: 200}
