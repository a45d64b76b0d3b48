"""The planner: greedy cuts in popularity order, tiers, and the append-only guarantee."""

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packager.catalog import IngestOptions, ingest
from packager.plan import plan
from packager.workspace import Workspace
from tests.conftest import shard_members


def load(ws, archive, rows, name="c.jsonl", **opts):
    with Workspace.open(ws) as w:
        return ingest(w, [archive.jsonl(rows, name)], IngestOptions(**opts))


def do_plan(ws, dry_run=False):
    with Workspace.open(ws) as w:
        return plan(w, dry_run=dry_run)


def audio(i, size, pop):
    return {"id": f"a{i:03d}", "path": f"audio/{i}.ogg", "kind": "audio", "popularity": pop, "size": size}


def test_greedy_cut_in_popularity_order(workspace, archive):
    rows = [audio(i, 30_000, pop) for i, pop in enumerate([10, 40, 20, 30, 49, 5])]
    load(workspace, archive, rows, trust_sizes=True)
    report = do_plan(workspace)
    # tier t2 (< 50) holds all six; 100 kB shards take three 30 kB files each.
    assert shard_members(workspace) == {
        "t-audio-t2-00001": ["a004", "a001", "a003"],
        "t-audio-t2-00002": ["a002", "a000", "a005"],
    }
    assert [s.items for s in report.shards] == [3, 3]
    assert report.shards[0].pop_max == 49 and report.shards[0].pop_min == 30


def test_ties_break_by_id(workspace, archive):
    rows = [audio(i, 10, 7) for i in (5, 3, 9, 1)]
    load(workspace, archive, rows, trust_sizes=True)
    do_plan(workspace)
    assert shard_members(workspace) == {"t-audio-t2-00001": ["a001", "a003", "a005", "a009"]}


def test_big_file_gets_its_own_shard(workspace, archive):
    rows = [audio(0, 20_000, 9), audio(1, 500_000, 8), audio(2, 20_000, 7)]
    load(workspace, archive, rows, trust_sizes=True)
    do_plan(workspace)
    assert list(shard_members(workspace).values()) == [["a000"], ["a001"], ["a002"]]


def test_tiers_and_phases(workspace, archive):
    rows = [
        audio(0, 10, 90),
        audio(1, 10, 10),
        {"id": "m", "path": "meta.jsonl", "kind": "metadata", "popularity": 0, "size": 5},
        {"id": "p", "path": "art/p.jpg", "kind": "art", "popularity": 3, "size": 5},
    ]
    load(workspace, archive, rows, trust_sizes=True)
    do_plan(workspace)
    assert shard_members(workspace) == {
        "t-metadata-00001": ["m"],
        "t-audio-t1-00001": ["a000"],
        "t-audio-t2-00001": ["a001"],
        "t-art-00001": ["p"],
    }


def test_dry_run_stores_nothing(workspace, archive):
    load(workspace, archive, [audio(0, 10, 1)], trust_sizes=True)
    report = do_plan(workspace, dry_run=True)
    assert len(report.shards) == 1 and report.dry_run
    assert shard_members(workspace) == {}
    assert len(do_plan(workspace).shards) == 1


def test_new_items_go_to_new_shards(workspace, archive):
    load(workspace, archive, [audio(0, 10, 1), audio(1, 10, 2)], trust_sizes=True)
    do_plan(workspace)
    load(workspace, archive, [audio(2, 10, 99 - 50), audio(3, 10, 1.5)], name="more.jsonl", trust_sizes=True)
    do_plan(workspace)
    assert shard_members(workspace) == {
        "t-audio-t2-00001": ["a001", "a000"],
        "t-audio-t2-00002": ["a002", "a003"],
    }
    assert do_plan(workspace).shards == []


def test_same_catalog_in_shuffled_order_gives_the_same_plan(make_workspace, archive):
    rng = random.Random(7)
    rows = [audio(i, rng.randint(1, 60_000), rng.choice([1, 2, 3, 55, 60, 70.5])) for i in range(120)]
    plans = []
    for n in range(3):
        ws = make_workspace(f"ws{n}")
        shuffled = rows[:]
        rng.shuffle(shuffled)
        load(ws, archive, shuffled, name=f"c{n}.jsonl", trust_sizes=True)
        do_plan(ws)
        plans.append(shard_members(ws))
    assert plans[0] == plans[1] == plans[2]
    assert len(plans[0]) > 3


_fresh = itertools.count()
batches = st.lists(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 150_000), st.sampled_from([1, 20, 49.5, 50, 80])),
        min_size=0,
        max_size=12,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches)
def test_append_only_under_any_sequence_of_ingest_and_plan(make_workspace, archive, batches):
    """Whatever is ingested and planned later, a shard once planned keeps exactly its members."""
    ws = make_workspace(f"ws-{next(_fresh)}")
    seen_ids: set[int] = set()
    frozen: dict[str, list[str]] = {}
    for n, batch in enumerate(batches):
        rows = []
        for i, size, pop in batch:
            if i in seen_ids:  # an id keeps its row once planned (changing it is refused elsewhere)
                continue
            seen_ids.add(i)
            rows.append(audio(i, size, pop))
        if rows:
            load(ws, archive, rows, name=f"b{n}.jsonl", trust_sizes=True)
        do_plan(ws)
        current = shard_members(ws)
        for name, members in frozen.items():
            assert current[name] == members
        all_members = [m for ms in current.values() for m in ms]
        assert len(all_members) == len(set(all_members)) == len(seen_ids)
        for members in current.values():  # every shard respects the size rule
            sizes = [next(s for i, s, _ in sum(batches, []) if f"a{i:03d}" == m) for m in members]
            assert sum(sizes) <= 100_000 or len(members) == 1
        frozen = current


def test_removed_items_are_never_planned(workspace, archive):
    from packager.plan import remove_items

    load(workspace, archive, [audio(0, 10, 1), audio(1, 10, 2)], trust_sizes=True)
    with Workspace.open(workspace) as w:
        assert remove_items(w, ["a001"])[0].outcome == "will not be planned"
    do_plan(workspace)
    assert shard_members(workspace) == {"t-audio-t2-00001": ["a000"]}
