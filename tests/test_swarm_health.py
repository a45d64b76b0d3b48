"""`packager health` on a published workspace against scripted trackers: the counts, the history in the
state, the buckets, swarm.json (schema-checked) and swarm.html, the signed files untouched, failing trackers
named."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.state import open_state
from packager.state_scrapes import daily_history
from packager.swarm.model import HISTORY_DAYS, bucket_of
from tests.fake_tracker import FakeHttpTracker, FakeUdpTracker, SilentTcpServer, unused_port
from tests.helpers import (
    catalog,
    do_publish,
    folder_digests,
    prepare,
    published_entries,
    run_build,
    run_health,
    validate,
)

LIVE = {"swarm.json", "swarm.html"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def trackers():
    started = []

    def start(kind, counts=None):
        started.append(kind(counts))
        return started[-1]

    yield start
    for t in started:
        t.close()


def signed_digests(ws):
    """Everything of the publication except the live files."""
    return {k: v for k, v in folder_digests(ws / layout.PUBLISHED).items() if k not in LIVE}


def test_health_combines_trackers_and_writes_history_buckets_and_live_files(published, trackers):
    torrents = published_entries(published)
    hashes = [e["info_hash_v1"] for _, e in torrents]
    # UDP: (seeders, completed, leechers); HTTP: (complete, downloaded, incomplete).
    udp = trackers(FakeUdpTracker, {hashes[0]: (2, 9, 1), hashes[1]: (12, 40, 0), hashes[2]: (5, 1, 3)})
    web = trackers(FakeHttpTracker, {hashes[0]: (3, 8, 0), hashes[2]: (1, 2, 7)})
    before = signed_digests(published)
    report = run_health(published, [udp.url, web.url], timeout=5, now="2026-01-02T03:04:05Z")
    view = report.view
    assert [(s.source, s.error) for s in view.sources] == sorted([(udp.url, None), (web.url, None)])
    by_name = {t.name: t for t in view.torrents}
    first, second, third = (by_name[e["name"]] for _, e in torrents[:3])
    # The highest count any tracker gave, field by field: a peer announces to both.
    assert (first.seeders, first.leechers, first.completed) == (3, 1, 9)
    assert (second.seeders, second.leechers, second.completed) == (12, 0, 40)
    assert (third.seeders, third.leechers, third.completed) == (5, 7, 2)
    assert all(t.seeders == 0 for t in view.torrents[3:])
    assert {t.scraped_at for t in view.torrents} == {"2026-01-02T03:04:05Z"}

    whole = view.release_summary
    sizes = {t.name: t.size for t in view.torrents}
    assert whole.torrents == len(torrents) and whole.bytes == sum(sizes.values())
    assert whole.buckets["1-3"].torrents == 1 and whole.buckets["1-3"].bytes == first.size
    assert whole.buckets["4-10"].bytes == third.size and whole.buckets[">10"].bytes == second.size
    assert whole.buckets["0"].torrents == len(torrents) - 3 and whole.buckets["unknown"].torrents == 0
    assert whole.share_4_or_more == pytest.approx((third.size + second.size) / whole.bytes)
    assert whole.share_over_10 == pytest.approx(second.size / whole.bytes)
    phases = [(s.phase, s.tier) for s in view.summaries]
    assert phases[:3] == [(None, None), ("metadata", None), ("audio", None)]
    assert ("audio", "t1") in phases and ("audio", "t2") in phases

    pub = published / layout.PUBLISHED
    live = json.loads((pub / "swarm.json").read_text())
    validate(live, "swarm")
    assert live["generated_at"] == "2026-01-02T03:04:05Z"
    assert [t["name"] for t in live["torrents"]] == [e["name"] for _, e in torrents]
    assert live["torrents"][0]["history"] == [["2026-01-02", 3, 1, 9]]
    assert "seeders per phase and tier" in (pub / "swarm.html").read_text().lower()
    assert signed_digests(published) == before  # the publication never changes because of health

    # A second run the next day: history kept per run and per day.
    udp.counts[hashes[0]] = (6, 10, 0)
    run_health(published, [udp.url, web.url], timeout=5, now="2026-01-03T00:00:00Z")
    with open_state(published) as state:
        days = daily_history(state, "2026-01-01")
        runs = state.db.execute("SELECT COUNT(*) FROM scrape_runs").fetchone()[0]
    assert runs == 2
    assert [(d.day, d.seeders) for d in days[torrents[0][0]]] == [("2026-01-02", 3), ("2026-01-03", 6)]


def test_failing_trackers_are_named_and_never_fatal_within_the_bound(published, trackers):
    hashes = [e["info_hash_v1"] for _, e in published_entries(published)]
    good = trackers(FakeHttpTracker, {hashes[0]: (4, 0, 0)})
    silent_udp = trackers(FakeUdpTracker)
    silent_udp.silent = True
    hanging = SilentTcpServer()
    try:
        dead = f"udp://127.0.0.1:{unused_port(2)}/announce"
        urls = [good.url, silent_udp.url, f"http://127.0.0.1:{hanging.port}/announce", dead]
        started = time.monotonic()
        result = invoke("health", published, *[f"--tracker={u}" for u in urls], "--timeout", "2")
        seconds = time.monotonic() - started
    finally:
        hanging.close()
    assert result.exit_code == 0, result.output
    assert seconds < 2 + 1 + 2  # the bound, the grace, and the command's own start
    for url in urls[1:]:
        assert f"warning: {url}:" in result.output
    assert "no reply within 2 s" in result.output and "no complete reply within 2 s" in result.output
    assert "nothing listens there" in result.output
    data = json.loads(invoke("health", published, f"--tracker={good.url}", "--json").stdout)
    assert data["torrents"][0]["seeders"] == 4 and data["sources"][0]["error"] is None


def test_a_run_where_every_tracker_fails_keeps_the_previous_counts(published, trackers):
    hashes = [e["info_hash_v1"] for _, e in published_entries(published)]
    udp = trackers(FakeUdpTracker, {hashes[0]: (7, 0, 2)})
    run_health(published, [udp.url], timeout=3, now="2026-01-02T00:00:00Z")
    udp.silent = True
    view = run_health(published, [udp.url], timeout=1, now="2026-01-03T00:00:00Z").view
    assert view.sources[0].error and view.at == "2026-01-03T00:00:00Z"
    assert (view.torrents[0].seeders, view.torrents[0].scraped_at) == (7, "2026-01-02T00:00:00Z")


def test_our_seeders_status_port_counts_as_one_seeder(published, trackers, tmp_path):
    from packager.seed.events import SeedSnapshot, TorrentView
    from packager.seed.status import StatusServer

    torrents = published_entries(published)
    views = tuple(
        TorrentView(e["name"], e["phase"], e["info_hash_v1"], "seeding" if i else "paused", 3, 0, 0)
        for i, (_, e) in enumerate(torrents)
    )
    snap = SeedSnapshot(time.time(), 1.0, ("127.0.0.1:1",), views, (), 0)
    server = StatusServer(0, lambda: snap)
    try:
        dead = f"udp://127.0.0.1:{unused_port(2)}/announce"
        report = run_health(published, [dead], status_port=server.port, timeout=2)
    finally:
        server.close()
    view = report.view
    ours = next(s for s in view.sources if s.protocol == "seeder")
    assert ours.source == f"seeder 127.0.0.1:{server.port}" and ours.error is None
    assert [t.seeders for t in view.torrents] == [0] + [1] * (len(torrents) - 1)
    assert {t.leechers for t in view.torrents} == {None}  # our seeder sees its peers, not the swarm
    assert view.release_summary.buckets["1-3"].torrents == len(torrents) - 1


def test_status_port_that_is_closed_or_something_else_is_reported(published, trackers):
    web = trackers(FakeHttpTracker)

    def ours(report):
        return next(s for s in report.view.sources if s.protocol == "seeder")

    assert (
        "connection refused" in ours(run_health(published, None, status_port=unused_port(), timeout=2)).error
    )
    assert "HTTP 404" in ours(run_health(published, None, status_port=web.port, timeout=2)).error


def test_publish_after_health_keeps_the_live_files_and_adds_new_torrents_as_unknown(
    workspace, archive, trackers
):
    prepare(workspace, archive, catalog(archive))
    assert not run_build(workspace).failed
    do_publish(workspace, "metadata")
    first = published_entries(workspace)[0][1]["info_hash_v1"]
    udp = trackers(FakeUdpTracker, {first: (11, 3, 1)})
    run_health(workspace, [udp.url], timeout=3, now="2026-01-02T00:00:00Z")
    do_publish(workspace, "audio")
    live = json.loads((workspace / layout.PUBLISHED / "swarm.json").read_text())
    validate(live, "swarm")
    assert live["torrents"][0]["seeders"] == 11 and live["torrents"][0]["bucket"] == ">10"
    assert {t["bucket"] for t in live["torrents"][1:]} == {"unknown"}
    index = (workspace / layout.PUBLISHED / "index.html").read_text()
    assert 'href="swarm.html"' in index and "11" not in index.split("swarm.html")[1][:200]


def test_health_refusals(workspace, published):
    result = invoke("health", published, "--tracker", "wss://x.example/announce")
    assert result.exit_code == 2 and "not a udp://, http:// or https://" in result.output
    config = published / "release.toml"
    config.write_text(config.read_text().replace('trackers = [["http://127.0.0.1:6969/announce"]]', ""))
    result = invoke("health", published)
    assert result.exit_code == 2 and "no tracker to scrape" in result.output


def test_health_refuses_an_unpublished_workspace(workspace):
    result = invoke("health", workspace)
    assert result.exit_code == 2 and "nothing is published yet" in result.output


@pytest.mark.parametrize(("seeders", "bucket"), [(None, "unknown"), (0, "0"), (1, "1-3"), (3, "1-3"),
                                                 (4, "4-10"), (10, "4-10"), (11, ">10")])  # fmt: skip
def test_bucket_edges(seeders, bucket):
    assert bucket_of(seeders) == bucket


def test_daily_history_keeps_the_days_highest_counts_and_fills_in_older_runs(published):
    from packager.state_scrapes import CountRow, SourceRow, record_run

    sid = published_entries(published)[0][0]
    tracker, seeder = SourceRow("udp://t/a", "udp", 1, None, 0.1), SourceRow("seeder x", "seeder", 1, None, 0)
    with open_state(published) as state:
        record_run(state, "2026-01-01T01:00:00Z", [tracker], [CountRow(sid, "udp://t/a", 2, 5, 7)])
        record_run(state, "2026-01-01T02:00:00Z", [seeder], [CountRow(sid, "seeder x", 3, None, None)])
        record_run(state, "2026-01-01T03:00:00Z", [tracker], [CountRow(sid, "udp://t/a", 1, 6, 7)])
        assert [
            (d.day, d.seeders, d.leechers, d.completed) for d in daily_history(state, "2026-01-01")[sid]
        ] == [("2026-01-01", 3, 6, 7)]
        # A state whose runs predate the per-day table: the next run fills it in from every run.
        state.db.execute("DELETE FROM scrape_days")
        record_run(state, "2026-01-02T00:00:00Z", [tracker], [CountRow(sid, "udp://t/a", 9, 0, 8)])
        days = [(d.day, d.seeders) for d in daily_history(state, "2026-01-01")[sid]]
    assert days == [("2026-01-01", 3), ("2026-01-02", 9)]


def test_the_member_index_swarm_is_scraped_and_kept_apart_from_the_buckets(published, trackers):
    """The index's own torrent is asked about with the shards': its counts are in swarm.json's member_index
    (and swarm.html), kept by a publish that follows, and in no bucket (the buckets are the shards')."""
    index = json.loads((published / layout.PUBLISHED / "members" / "index.json").read_text())["torrent"]
    udp = trackers(FakeUdpTracker, {index["info_hash_v1"]: (7, 30, 2)})
    view = run_health(published, [udp.url], timeout=5, now="2026-01-02T03:04:05Z").view
    assert (view.index.name, view.index.seeders, view.index.leechers, view.index.completed) == (
        "members.pack", 7, 2, 30)  # fmt: skip
    assert view.index.size == (published / layout.PUBLISHED / "members" / "members.pack").stat().st_size
    assert view.sources[0].answered == len(published_entries(published)) + 1  # the shards and the index
    whole = view.release_summary
    assert whole.torrents == len(published_entries(published)) and whole.buckets["4-10"].torrents == 0
    live = json.loads((published / layout.PUBLISHED / "swarm.json").read_text())
    validate(live, "swarm")
    assert live["member_index"]["btih"] == index["info_hash_v1"] and live["member_index"]["seeders"] == 7
    assert index["info_hash_v1"] not in {t["btih"] for t in live["torrents"]}
    assert "The member index" in (published / layout.PUBLISHED / "swarm.html").read_text()
    result = invoke("health", published, "--tracker", udp.url, "--timeout", "5")
    assert result.exit_code == 0 and "member index (members.pack" in result.stdout, result.output
    assert "7 seeders, 2 leechers" in result.stdout
    do_publish(published, "audio")  # nothing new: the live files are rendered again from the state
    assert (
        json.loads((published / layout.PUBLISHED / "swarm.json").read_text())["member_index"]["seeders"] == 7
    )


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(published, value):
    """--timeout inf was a traceback (OverflowError in Thread.join); nan reported every tracker silent."""
    result = invoke("health", published, "--tracker", "udp://127.0.0.1:1/announce", "--timeout", value)
    assert result.exit_code == 2 and f"--timeout {value}" in result.output, result.output


def test_the_member_index_line_reads_as_a_sentence_when_no_tracker_answered(published):
    """It read 'member index (members.pack, 26.2 kB): ? (no source answered) seeders'."""
    result = invoke(
        "health", published, "--tracker", f"udp://127.0.0.1:{unused_port(2)}/announce", "--timeout", "1"
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("member index ("))
    assert line.endswith("seeders unknown (no source answered)"), line


def test_a_tracker_url_with_a_broken_ipv6_host_is_a_usage_error(published):
    result = invoke("health", published, "--tracker", "udp://[::1:80/announce", "--timeout", "1")
    assert result.exit_code == 2 and "udp://[::1:80/announce" in result.output, result.output


def test_the_scrape_history_is_bounded_by_count_and_age(published):
    """Every run's rows were kept for ever: a health run every minute at 10^4 torrents added ~10^7 rows a
    day. Now the newest RUNS_KEPT runs keep their rows (and each torrent its newest counts, however old),
    and day rows older than DAYS_KEPT days go; what health, publish and pick show is unchanged."""
    from packager.state_scrapes import DAYS_KEPT, RUNS_KEPT, CountRow, SourceRow, latest_counts, record_run

    a, b = (sid for sid, _ in published_entries(published)[:2])
    tracker = SourceRow("udp://t/a", "udp", 1, None, 0.1)
    runs = RUNS_KEPT + 20
    with open_state(published) as state:
        # b answered only in the first run: its counts must stand, dated, after that run is long gone.
        record_run(state, "2025-01-01T00:00:00Z", [tracker], [CountRow(b, "udp://t/a", 4, 1, 0)])
        for n in range(runs):
            at = (datetime(2025, 1, 2, tzinfo=UTC) + timedelta(days=n * 4)).strftime("%Y-%m-%dT%H:%M:%SZ")
            record_run(state, at, [tracker], [CountRow(a, "udp://t/a", n, 0, n)])
        kept = [r[0] for r in state.db.execute("SELECT at FROM scrape_runs ORDER BY id")]
        assert len(kept) == RUNS_KEPT + 1 and kept[0] == "2025-01-01T00:00:00Z"
        sources = state.db.execute("SELECT COUNT(DISTINCT run_id) FROM scrape_sources").fetchone()[0]
        assert sources == len(kept)
        latest = latest_counts(state)
        assert latest[b] == ("2025-01-01T00:00:00Z", [CountRow(b, "udp://t/a", 4, 1, 0)])
        assert latest[a][1] == [CountRow(a, "udp://t/a", runs - 1, 0, runs - 1)]
        days = sorted(r[0] for r in state.db.execute("SELECT day FROM scrape_days WHERE shard_id = ?", (a,)))
        newest = datetime.strptime(at[:10], "%Y-%m-%d")
        assert days[-1] == at[:10] and days[0] >= (newest - timedelta(days=DAYS_KEPT)).strftime("%Y-%m-%d")
        assert len(days) == DAYS_KEPT // 4 + 1  # a run every four days
        assert HISTORY_DAYS <= DAYS_KEPT  # what swarm.json shows is all still there


def test_recording_a_run_reads_the_scrapes_of_that_run_only(published):
    """The scrapes table is keyed by torrent first: finding one run's rows (its day counts, the prune of
    runs past RUNS_KEPT) scanned every row of every kept run. Each statement recording a run, once the
    history is there, reaches the scrapes by an index search, never a full scan."""
    import re

    from packager.state_scrapes import RUNS_KEPT, CountRow, SourceRow, record_run

    sids = [sid for sid, _ in published_entries(published)]
    tracker = SourceRow("udp://t/a", "udp", 1, None, 0.1)

    def run(n):
        at = (datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=n)).strftime("%Y-%m-%dT%H:%M:%SZ")
        record_run(state, at, [tracker], [CountRow(s, "udp://t/a", n, 0, n) for s in sids])

    with open_state(published) as state:
        for n in range(RUNS_KEPT + 2):
            run(n)
        statements: list[str] = []
        state.db.set_trace_callback(statements.append)
        run(RUNS_KEPT + 2)
        state.db.set_trace_callback(None)
        scans = []
        for sql in statements:
            if "scrapes" not in sql or not re.match(r"\s*(INSERT|DELETE|SELECT|UPDATE)", sql):
                continue
            for row in state.db.execute("EXPLAIN QUERY PLAN " + sql):
                if re.match(r"SCAN (scrapes|s|n)\b", row[3]):
                    scans.append((sql, row[3]))
    assert statements and not scans, scans
