"""The planner: greedy cuts in popularity order, tiers, and the append-only guarantee."""

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packager.catalog import IngestOptions, ingest
from packager.plan import plan
from packager.workspace import Workspace
from tests.helpers import shard_members


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


def test_any_popularity_is_ordered_exactly(workspace, archive):
    """The sort's first key scales and clamps the popularity into one integer: values it cannot tell apart
    (beyond the clamp, closer than 2^-20) are still ordered by their exact value, then by id."""
    pops = [
        -1e300,
        -1e20,
        -(2.0**40),
        1e-300,
        0.0,
        1e-7,
        1.0,
        1.0000000000000002,
        3.5,
        3.5,
        49.99999999,
        -1e20,
    ]
    rows = [audio(i, 10, pop) for i, pop in enumerate(pops)]
    load(workspace, archive, rows, trust_sizes=True)
    do_plan(workspace)
    expected = [f"a{i:03d}" for i in sorted(range(len(pops)), key=lambda i: (-pops[i], i))]
    assert shard_members(workspace) == {"t-audio-t2-00001": expected}


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


# ---- the plan after any sequence of operations equals the rules' own model ----------------------------


class Model:
    """Today's rules, written plainly in Python over dicts: the oracle for the bulk engine. Ingest refuses
    a catalog with a repeated id, a repeated new path, a path of another known id, or a change to an item
    in a built shard (or of its kind in a planned one) other than its popularity; plan cuts each phase and
    tier's present, unplanned items in (popularity desc, id asc) order; remove follows `packager remove`."""

    def __init__(self, config):
        self.config = config
        self.items: dict[str, dict] = {}
        self.shards: dict[str, dict] = {}  # name -> {"phase", "tier", "seq", "members": [...], "built"}

    def shard_of(self, item_id):
        return next((n for n, s in self.shards.items() if item_id in s["members"]), None)

    def ingest(self, rows) -> tuple[int, int, int] | None:
        seen, claimed = set(), set()
        for r in rows:
            if r["id"] in seen:
                return None
            seen.add(r["id"])
            old = self.items.get(r["id"])
            if old is None or old["path"] != r["path"]:
                owner = next((i for i, it in self.items.items() if it["path"] == r["path"]), None)
                if (owner is not None and owner != r["id"]) or r["path"] in claimed:
                    return None
                claimed.add(r["path"])
            shard = self.shard_of(r["id"]) if old else None
            if shard is not None:
                # A new popularity is recorded and the item stays; kind never changes in a shard, path
                # and size only while it is not built.
                diff = {k for k in ("path", "kind", "size") if old[k] != r[k]}
                if diff and (self.shards[shard]["built"] or "kind" in diff):
                    return None
        added = changed = 0
        for r in rows:
            old = self.items.get(r["id"])
            if old is None:
                added += 1
                self.items[r["id"]] = dict(r, removed=False)
            elif any(old[k] != r[k] for k in ("path", "kind", "popularity", "size")):
                changed += 1
                old.update(r)
        for s in self.shards.values():
            s["bytes"] = sum(self.items[m]["size"] for m in s["members"])
        return added, changed, len(rows) - added - changed

    def plan(self) -> None:
        from packager.plan import _bounds

        planned = {m for s in self.shards.values() for m in s["members"]}
        todo = [i for i, it in self.items.items() if not it["removed"] and i not in planned]
        for phase in self.config.phases:
            for tier in phase.tiers:
                lo, hi = _bounds(phase, tier)
                mine = [
                    i
                    for i in todo
                    if self.items[i]["kind"] in phase.kinds
                    and (lo is None or self.items[i]["popularity"] >= lo)
                    and (hi is None or self.items[i]["popularity"] < hi)
                ]
                todo = [i for i in todo if i not in mine]
                mine.sort(key=lambda i: (-self.items[i]["popularity"], i))
                seq = max((s["seq"] for s in self.shards.values() if (s["phase"], s["tier"]) ==
                           (phase.name, tier.name)), default=0)  # fmt: skip
                current = None
                for i in mine:
                    size = self.items[i]["size"]
                    if current is not None and current["bytes"] + size > phase.shard_size:
                        current = None
                    if current is None:
                        seq += 1
                        current = {"phase": phase.name, "tier": tier.name, "seq": seq, "members": [],
                                   "built": False, "bytes": 0}  # fmt: skip
                        self.shards[phase.shard_name(self.config.name, tier.name, seq)] = current
                    current["members"].append(i)
                    current["bytes"] += size
                    if size > phase.shard_size:
                        current = None

    def remove(self, ids) -> None:
        for i in ids:
            it = self.items[i]
            if it["removed"]:
                continue
            it["removed"] = True
            shard = self.shard_of(i)
            if shard is not None and not self.shards[shard]["built"]:
                self.shards[shard]["members"].remove(i)
                if not self.shards[shard]["members"]:
                    del self.shards[shard]

    def build(self, name) -> None:
        self.shards[name]["built"] = True

    def members(self) -> dict[str, list[str]]:
        return {n: s["members"] for n, s in self.shards.items()}


ids_ = st.integers(0, 14)
row_ = st.tuples(
    ids_,
    st.one_of(st.none(), st.none(), st.integers(0, 3)),  # the id's own path, or one of a few shared ones
    st.sampled_from(["audio", "audio", "audio", "art", "metadata"]),
    st.sampled_from([1.0, 20.0, 50.0, 80.0]),  # few values: ties are broken by id
    st.sampled_from([10, 30_000, 60_000, 150_000]),
)
op_ = st.one_of(
    st.tuples(st.just("ingest"), st.lists(row_, max_size=12)),
    st.tuples(  # the monthly refresh: every known row again, one of them changed or left out
        st.just("refresh"),
        st.tuples(st.integers(0, 99), st.sampled_from(["popularity", "size", "path", "gone", None])),
    ),
    st.tuples(st.just("plan"), st.none()),
    st.tuples(st.just("remove"), st.lists(ids_, min_size=1, max_size=3)),
    st.tuples(st.just("build"), st.integers(0, 5)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_, min_size=1, max_size=12))
def test_any_sequence_of_ingest_remove_and_plan_matches_the_rules(make_workspace, archive, ops):
    """Plans, ingest outcomes and report counts equal the plain model's after any sequence of ingests
    (first ones, refreshes with changes, repeats and clashes), removals, builds and plans; the totals that
    status reads equal a full count; a shard once planned keeps its members unless it is unbuilt and loses
    them to a removal (append-only)."""
    from packager.errors import CatalogError
    from packager.plan import remove_items
    from packager.state import open_state

    ws = make_workspace(f"ws-{next(_fresh)}")
    with Workspace.open(ws) as w:
        model = Model(w.config)
    for n, (op, arg) in enumerate(ops):
        if op in ("ingest", "refresh"):
            if op == "ingest":
                rows = [{"id": f"i{i:02d}", "path": f"{kind}/{i if p is None else f'p{p}'}.x", "kind": kind,
                         "popularity": pop, "size": size} for i, p, kind, pop, size in arg]  # fmt: skip
            else:
                rows = [{k: it[k] for k in ("id", "path", "kind", "popularity", "size")}
                        for it in model.items.values()]  # fmt: skip
                k, what = arg
                if rows and what == "gone":
                    del rows[k % len(rows)]
                elif rows and what:
                    row = rows[k % len(rows)]
                    row[what] = {"popularity": row["popularity"] + 1, "size": row["size"] + 1,
                                 "path": row["path"] + ".moved"}[what]  # fmt: skip
            expected = model.ingest(rows) if rows else None
            if not rows:
                continue
            try:
                report = load(ws, archive, rows, name=f"c{n}.jsonl", trust_sizes=True)
                got = (report.added, report.changed, report.unchanged)
            except CatalogError:
                got = None
            assert got == expected, rows
        elif op == "plan":
            do_plan(ws)
            model.plan()
        elif op == "remove":
            known = [f"i{i:02d}" for i in arg if f"i{i:02d}" in model.items]
            if known:
                with Workspace.open(ws) as w:
                    remove_items(w, known)
                model.remove(known)
        else:
            names = sorted(model.shards)
            if names:
                name = names[arg % len(names)]
                with open_state(ws) as state:
                    state.db.execute("UPDATE shards SET state = 'built' WHERE name = ?", (name,))
                model.build(name)
        assert shard_members(ws) == model.members(), ops[: n + 1]
        with open_state(ws) as state:
            assert state.stored_totals() == state.counted_totals()
            assert {s.name: s.items for s in state.shards()} == {
                k: len(v) for k, v in model.members().items()
            }


def test_paths_that_collide_on_macos_or_windows_are_reported_per_shard(workspace, archive):
    from typer.testing import CliRunner

    from packager.cli import app

    def row(i, path, pop):
        return {"id": f"c{i}", "path": path, "kind": "audio", "popularity": pop, "size": 10}

    nfc, nfd = "audio/caf\u00e9.ogg", "audio/cafe\u0301.ogg"
    rows = [row(1, "audio/Song.ogg", 9), row(2, "audio/song.ogg", 9), row(3, nfc, 9), row(4, nfd, 9)]
    rows += [row(5, "audio/X.ogg", 70), row(6, "audio/x.ogg", 9)]  # different tiers: different shards
    load(workspace, archive, rows, trust_sizes=True)
    result = CliRunner().invoke(app, ["plan", str(workspace), "--dry-run", "--json"])
    assert result.exit_code == 0
    report = __import__("json").loads(result.output)
    assert report["path_collisions"] == 2
    pairs = {(c["path"], c["other_path"], c["id"], c["other_id"]) for c in report["path_collision_examples"]}
    assert pairs == {("audio/song.ogg", "audio/Song.ogg", "c2", "c1"), (nfd, nfc, "c4", "c3")}
    result = CliRunner().invoke(app, ["plan", str(workspace)])
    assert result.exit_code == 0 and "2 pair(s) of paths in one shard differ only by case" in result.output
    assert len(shard_members(workspace)["t-audio-t2-00001"]) == 5  # a warning: the plan is made


# ---- status: the popularity range each tier takes ------------------------------------------------------

REVIEW_CONFIG = """\
[release]
name = "t"
root = "{root}"

[[phases]]
name = "audio"
kinds = ["audio"]
shard_size = "1MB"
min_popularity = 20
max_popularity = 150

  [[phases.tiers]]
  name = "hi"
  min_popularity = 100

  [[phases.tiers]]
  name = "lo"
"""


def test_status_gives_the_range_a_tier_takes_within_its_phase_and_after_earlier_tiers(workspace, archive):
    """A tier takes its own bounds within its phase's, less what an earlier tier takes first: here hi takes
    [100, 150) and lo [20, 100). status gave each tier's own bounds ({100, null} and {null, null})."""
    from packager.plan import release_status

    (workspace / "release.toml").write_text(REVIEW_CONFIG.replace("{root}", str(archive.root)))
    pops = [-10, 0, 20.9, 50, 99.99, 100, 149.8, 150, 210]
    load(workspace, archive, [audio(i, 10, p) for i, p in enumerate(pops)], trust_sizes=True)
    do_plan(workspace)
    with Workspace.open(workspace) as w:
        status = release_status(w)
    hi, lo = (t.as_dict() for t in status.phases[0].tiers)
    assert hi["popularity"] == {"min": 100, "max": 150} and lo["popularity"] == {"min": 20, "max": 100}
    assert hi["popularity_ranges"] == [{"min": 100, "max": 150}]
    assert (hi["pop_min"], hi["pop_max"], lo["pop_min"], lo["pop_max"]) == (100, 149.8, 20.9, 99.99)
    assert [t.popularity for t in status.phases[0].tiers] == ["[100, 150)", "[20, 100)"]


def test_status_names_a_range_with_a_hole_and_a_tier_that_takes_nothing(make_workspace, archive):
    from packager.config import load_config
    from packager.plan import taken_ranges

    ws = make_workspace()
    toml = (REVIEW_CONFIG.replace("min_popularity = 20\nmax_popularity = 150\n", "")
            .replace('name = "hi"\n  min_popularity = 100', 'name = "hi"\n  min_popularity = 50\n'
                     "  max_popularity = 60")
            + '\n  [[phases.tiers]]\n  name = "never"\n  min_popularity = 55\n')  # fmt: skip
    (ws / "release.toml").write_text(toml.replace("{root}", str(archive.root)))
    taken = taken_ranges(load_config(ws).phases)
    assert taken == {
        ("audio", "hi"): ((50, 60),),
        ("audio", "lo"): ((None, 50), (60, None)),
        ("audio", "never"): (),
    }


bound_ = st.one_of(st.none(), st.sampled_from([0.0, 10.0, 20.0, 30.0, 40.0]))
tier_ = st.tuples(bound_, bound_)
phase_ = st.tuples(
    st.sampled_from([("audio",), ("art",), ("audio", "art")]), tier_, st.lists(tier_, min_size=1, max_size=3)
)


@given(
    phases=st.lists(phase_, min_size=1, max_size=3),
    pop=st.sampled_from([-5.0, 0.0, 5.0, 10.0, 19.5, 20.0, 35.0, 40.0, 99.0]),
    kind=st.sampled_from(["audio", "art"]),
)
def test_an_item_goes_to_the_tier_whose_taken_ranges_hold_its_popularity(phases, pop, kind):
    """The plan's own rule (the first (phase, tier) whose kinds and bounds admit the item) picks a tier
    whose taken ranges hold the item's popularity, and no other single-kind tier's ranges hold it."""
    from packager.config import Phase, Tier
    from packager.plan import _bounds, taken_ranges

    config = tuple(
        Phase(f"p{i}", kinds, tuple(Tier(f"t{j}", *b) for j, b in enumerate(tiers)), 10**6, 1, 2**16,
              min_popularity=lo, max_popularity=hi)
        for i, (kinds, (lo, hi), tiers) in enumerate(phases)
    )  # fmt: skip
    taken = taken_ranges(config)

    def holds(ranges):
        return any((a is None or pop >= a) and (b is None or pop < b) for a, b in ranges)

    groups = [(p, t) for p in config for t in p.tiers]
    first = next(
        ((p.name, t.name) for p, t in groups if kind in p.kinds
         and all(f(b) for f, b in zip((lambda b: b is None or pop >= b, lambda b: b is None or pop < b),
                                      _bounds(p, t), strict=True))),
        None,
    )  # fmt: skip
    if first is not None:
        assert holds(taken[first])
    for p, t in groups:
        if p.kinds == (kind,) and (p.name, t.name) != first:
            assert not holds(taken[(p.name, t.name)])


MIXED_CONFIG = """\
[release]
name = "t"
root = "{root}"

[[phases]]
name = "media"
kinds = ["audio", "art", "video"]
shard_size = "100kB"

  [[phases.tiers]]
  name = "hi"
  min_popularity = 50

  [[phases.tiers]]
  name = "lo"

[[phases]]
name = "meta"
kinds = ["metadata"]
shard_size = "1MB"
min_popularity = 100
"""


def test_a_phase_of_several_kinds_cuts_them_together_and_counts_each(workspace, archive):
    """The kinds of one phase are ordered together (popularity desc, id asc, whatever the kind) and cut
    greedily; the totals status reads count each kind's planned items and bytes (the planner tallies a kind
    only where the candidates' kind changes), and an item no phase takes stays unplanned."""
    from packager.state import open_state

    (workspace / "release.toml").write_text(MIXED_CONFIG.replace("{root}", str(archive.root)))
    kinds = ["audio", "art", "art", "video", "audio", "metadata", "art", "audio", "audio", "video"]
    pops = [90, 80, 70, 60, 55, 45, 40, 30, 20, 10]
    sizes = [40_000, 30_000, 20_000, 50_000, 1000, 7, 70_000, 200_000, 5000, 3000]
    rows = [{"id": f"m{i}", "path": f"{k}/{i}.x", "kind": k, "popularity": p, "size": s}
            for i, (k, p, s) in enumerate(zip(kinds, pops, sizes, strict=True))]  # fmt: skip
    load(workspace, archive, rows, trust_sizes=True)
    report = do_plan(workspace)
    assert shard_members(workspace) == {
        "t-media-hi-00001": ["m0", "m1", "m2"],
        "t-media-hi-00002": ["m3", "m4"],
        "t-media-lo-00001": ["m6"],
        "t-media-lo-00002": ["m7"],
        "t-media-lo-00003": ["m8", "m9"],
    }
    assert report.unassigned == [("metadata", 1, 7)]
    with open_state(workspace) as state:
        assert state.stored_totals() == state.counted_totals()
        assert [(k, n, b) for k, _, _, n, b in state.stored_totals()] == [
            ("art", 0, 0), ("audio", 0, 0), ("metadata", 1, 7), ("video", 0, 0)
        ]  # fmt: skip


def test_a_first_plan_that_fails_leaves_no_member_and_the_state_in_wal_mode(workspace, archive, monkeypatch):
    """A first plan writes under a rollback journal (its pages once, not to the log and again), all or
    nothing like any plan, and gives the write-ahead log back, failed or not: builds read while it writes."""
    from packager.state import open_state

    load(workspace, archive, [audio(i, 10, i) for i in range(5)], trust_sizes=True)

    def fail() -> None:
        raise RuntimeError("stopped")

    with Workspace.open(workspace) as w:
        with monkeypatch.context() as m:
            m.setattr(w.state, "restore_member_index", fail)
            with pytest.raises(RuntimeError):
                plan(w)
        assert w.state.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with open_state(workspace, readonly=True) as state:
            assert state.member_count() == 0 and state.shards() == []
        assert plan(w).items == 5
        assert w.state.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert w.state.member_count() == 5
