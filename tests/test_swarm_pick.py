"""`packager pick`: Anna's Archive's ranking, the greedy fill and its edges, and the three kinds of source
(a workspace, a published folder, a mirror over HTTP, hostile or not)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import random
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.swarm import pick as pick_module
from packager.swarm.pick import SPREAD, Candidate, fill, pick, rank
from packager.torrent import identity
from tests.fake_tracker import FakeUdpTracker, SilentTcpServer
from tests.helpers import published_entries, run_health

TB = 10**12


def cand(name, size, seeders=0, leechers=0, phase="audio", rank_=1, **kw) -> Candidate:
    btih = hashlib.sha1(name.encode()).hexdigest()
    magnet = f"magnet:?xt=urn:btih:{btih}"
    return Candidate(
        name, phase, rank_, size, btih, None, magnet, "", name + ".torrent", seeders, leechers, **kw
    )


def names(picked) -> list[str]:
    return [p.candidate.name for p in picked]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---- the rule and the fill ------------------------------------------------------------------------------


def test_fewest_seeders_per_byte_first():
    # mean size 2: a's score (1 + 0.1 x 0) x 2/1 = 2; b's (1 + 0.1 x 10) x 2/3 = 1.33; c's (0 + 0.1 x 5) x 1.
    ranked = rank([cand("a", 1, 1), cand("b", 3, 1, 10), cand("c", 2, 0, 5)], random.Random(1), spread=0)
    assert names(ranked) == ["c", "b", "a"]
    assert [round(p.score, 3) for p in ranked] == [0.5, 1.333, 2]


def test_greedy_fill_skips_what_does_not_fit_and_goes_on():
    ranked = rank([cand("big", 8, 0), cand("mid", 5, 1), cand("small", 2, 2)], random.Random(1), spread=0)
    picked, skipped = fill(ranked, 10)
    assert names(picked) == ["big", "small"] and skipped == 1


def test_nothing_fits():
    picked, skipped = fill(rank([cand("a", 5), cand("b", 7)], random.Random(1)), 4)
    assert picked == [] and skipped == 2


def test_exact_fit_takes_everything():
    ranked = rank([cand("a", 3, 1), cand("b", 5, 2), cand("c", 2, 0)], random.Random(1))
    picked, skipped = fill(ranked, 10)
    assert sorted(names(picked)) == ["a", "b", "c"] and skipped == 0


def test_ties_go_by_phase_order_then_name():
    same = [cand("z", 4, 2, phase="audio", rank_=1), cand("a", 4, 2, phase="audio", rank_=1),
            cand("m", 4, 2, phase="metadata", rank_=0), cand("b", 4, 2, phase="art", rank_=2)]  # fmt: skip
    assert names(rank(same, random.Random(9), spread=0)) == ["m", "a", "z", "b"]


@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(1, 10**13), min_size=1, max_size=30),
    spread=st.floats(0, 1),
)
def test_the_random_term_is_bounded_and_reproducible(seed, sizes, spread):
    cands = [cand(f"t{i}", s, seeders=i % 4, leechers=i % 3) for i, s in enumerate(sizes)]
    mean = sum(sizes) / len(sizes)
    ranked = rank(cands, random.Random(seed), spread)
    for p in ranked:
        assert 0 <= p.score - p.candidate.score(mean) <= spread
    shuffled = cands[:]
    random.Random(seed + 1).shuffle(shuffled)
    again = rank(shuffled, random.Random(seed), spread)
    assert names(again) == names(ranked) and [p.score for p in again] == [p.score for p in ranked]


def test_the_random_term_spreads_equal_torrents_between_volunteers():
    cands = [cand(f"t{i:02d}", 10) for i in range(20)]
    firsts = {names(rank(cands, random.Random(seed)))[0] for seed in range(30)}
    assert len(firsts) > 5
    # ... but never lifts a torrent over one that is a whole seeder better off.
    ranked = rank([cand("seeded", 10, seeders=1)] + cands, random.Random(3))
    assert names(ranked)[-1] == "seeded" and SPREAD < 1


# ---- sources --------------------------------------------------------------------------------------------


@pytest.fixture
def scraped(published):
    """The published workspace after one health run: the first torrent well seeded, the second with 2."""
    torrents = published_entries(published)
    counts = {torrents[0][1]["info_hash_v1"]: (20, 0, 0), torrents[1][1]["info_hash_v1"]: (2, 0, 5)}
    tracker = FakeUdpTracker(counts)
    try:
        run_health(published, [tracker.url], timeout=3, now="2026-01-02T00:00:00Z")
    finally:
        tracker.close()
    return published


def test_pick_from_a_workspace_uses_its_newest_health_run(scraped):
    torrents = published_entries(scraped)
    everything = sum(e["files"][0]["size"] for _, e in torrents)
    index = (scraped / layout.PUBLISHED / layout.MEMBER_INDEX_PACK).stat().st_size
    result = pick(str(scraped), everything + index, seed=1)
    picked = names(result.picked)
    # The member index's torrent first (nobody seeds it yet), then every shard's.
    assert picked[0] == layout.MEMBER_INDEX_PACK_NAME and result.picked[0].candidate.phase == "member index"
    assert len(picked) == len(torrents) + 1 and result.counts_known == len(torrents) + 1
    assert picked[-2:] == [torrents[1][1]["name"], torrents[0][1]["name"]]  # the seeded ones last
    only_audio = pick(str(scraped), everything, phases=["audio"], seed=1)
    assert {p.candidate.phase for p in only_audio.picked} == {"audio"}


def test_pick_from_a_published_folder_reads_swarm_json(scraped, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(scraped / layout.PUBLISHED, mirror)
    via_folder = pick(str(mirror), TB, seed=4)
    via_workspace = pick(str(scraped), TB, seed=4)
    assert names(via_folder.picked) == names(via_workspace.picked)
    seeders = [p.candidate.seeders for p in via_folder.picked]
    assert seeders == [p.candidate.seeders for p in via_workspace.picked]
    assert via_folder.picked[0].candidate.torrent.startswith(str(mirror / "torrents"))
    (mirror / "swarm.json").unlink()
    result = pick(str(mirror / "torrents.json"), TB, seed=4)
    assert result.counts_known == 0 and len(result.picked) == len(published_entries(scraped)) + 1


@pytest.mark.parametrize(("seeders", "first"), [(None, True), (0, True), (10, True), (11, False)])
def test_the_member_index_torrent_is_picked_first_while_it_needs_seeders(scraped, tmp_path, seeders, first):
    """pick never offered the member index's torrent, which every lookup and one-item fetch reads."""
    mirror = tmp_path / "mirror"
    shutil.copytree(scraped / layout.PUBLISHED, mirror)
    swarm = json.loads((mirror / layout.SWARM_JSON).read_text())
    swarm["member_index"]["seeders"] = seeders
    (mirror / layout.SWARM_JSON).write_text(json.dumps(swarm))
    result = pick(str(mirror), TB, seed=2)
    index = [p.candidate for p in result.picked if p.candidate.name == layout.MEMBER_INDEX_PACK_NAME]
    assert (names(result.picked)[0] == layout.MEMBER_INDEX_PACK_NAME) == first and len(index) == first
    if first:
        torrent = (mirror / layout.MEMBER_INDEX_TORRENT).read_bytes()
        assert index[0].btih == identity(torrent).info_hash_v1
        assert index[0].torrent == str(mirror / layout.MEMBER_INDEX_TORRENT)
        assert index[0].seeders == seeders
    only_audio = pick(str(mirror), TB, phases=["audio"], seed=2)  # it is in no phase
    assert layout.MEMBER_INDEX_PACK_NAME not in names(only_audio.picked)


def test_obsolete_and_embargoed_torrents_are_skipped(scraped, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(scraped / layout.PUBLISHED, mirror)
    listing = json.loads((mirror / "torrents.json").read_text())
    listing[0]["obsolete"] = True
    listing[1]["embargo"] = True
    listing.append({"data_size": -1})  # malformed: ignored and counted
    (mirror / "torrents.json").write_text(json.dumps(listing))
    result = pick(str(mirror), TB, seed=1)
    assert (result.obsolete, result.embargoed, result.malformed) == (1, 1, 1)
    assert {listing[0]["name"], listing[1]["name"]}.isdisjoint(names(result.picked))


def test_all_torrents_well_seeded_are_still_listed_with_a_note(tmp_path):
    listing = [
        {"display_name": f"x{i}.torrent", "btih": hashlib.sha1(bytes([i])).hexdigest(), "data_size": 10 + i,
         "magnet_link": "magnet:?xt=urn:btih:x", "group_name": "books", "seeders": 11 + i, "leechers": 0}
        for i in range(3)
    ]  # fmt: skip
    (tmp_path / "torrents.json").write_text(json.dumps(listing))
    result = invoke("pick", tmp_path, "--max-size", "1KB", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["well_seeded"] and len(data["torrents"]) == 3
    assert "every torrent already has more than 10 seeders" in result.stderr


def test_nothing_fits_says_so(scraped):
    result = invoke("pick", scraped, "--max-size", "10B")
    assert result.exit_code == 0 and result.stdout == ""
    assert "nothing fits in 10 B: the smallest torrent is" in result.stderr


# ---- the CLI and its formats ----------------------------------------------------------------------------


def test_cli_formats(scraped, tmp_path):
    torrents = published_entries(scraped)
    magnets = invoke("pick", scraped, "--max-size", "1TB", "--seed", "7").stdout.split()
    index = identity((scraped / layout.PUBLISHED / layout.MEMBER_INDEX_TORRENT).read_bytes())
    assert magnets[0].startswith(f"magnet:?xt=urn:btih:{index.info_hash_v1}&")
    # the index's magnet names the trackers its .torrent has: without them a pasted magnet finds no peers
    assert _trackers(magnets[0]) == _trackers(index.magnet) != []
    published = invoke("pick", scraped / layout.PUBLISHED, "--max-size", "1TB", "--seed", "7").stdout.split()
    assert published[0] == magnets[0]
    assert sorted(magnets[1:]) == sorted(e["magnet"] for _, e in torrents)
    aria2 = invoke("pick", scraped, "--max-size", "1TB", "--seed", "7", "--format", "aria2").stdout.split()
    assert all(Path(line).is_file() and line.endswith(".torrent") for line in aria2)
    data = json.loads(invoke("pick", scraped, "--max-size", "1TB", "--seed", "7", "-f", "json").stdout)
    assert [t["magnet_link"] for t in data["torrents"]] == magnets and data["seed"] == 7
    watch = tmp_path / "watch"
    result = invoke("pick", scraped, "--max-size", "1TB", "--format", "torrent", "-o", watch)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in watch.iterdir())
    assert written == sorted([Path(e["torrent_file"]).name for _, e in torrents] + ["members.torrent"])


def _trackers(magnet: str) -> list[str]:
    return [v for k, v in parse_qsl(urlsplit(magnet).query) if k == "tr"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-size", "lots"], "not a size"),
        (["--max-size", "0"], "give the disk space"),
        (["--max-size", "1TB", "--format", "torrent"], "--output DIR"),
        (["--max-size", "1TB", "--format", "csv"], "not one of"),
        (["--max-size", "1TB", "--phase", "nope"], "no such phase"),
        (["--max-size", "1TB", "--spread", "5"], "between 0 and 1"),
    ],
)
def test_cli_refusals(scraped, args, message):
    result = invoke("pick", scraped, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_folder_that_is_not_a_source(tmp_path):
    result = invoke("pick", tmp_path, "--max-size", "1TB")
    assert result.exit_code == 2 and "neither a workspace" in result.output


# ---- a mirror over HTTP ---------------------------------------------------------------------------------


class Mirror:
    """http.server on 127.0.0.1 serving a folder; `tamper` serves other bytes for one path."""

    def __init__(self, root: Path):
        self.tamper: dict[str, bytes] = {}
        self.refuse: dict[str, int] = {}  # path -> the HTTP error status it answers with
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path in mirror.refuse:
                    return self.send_error(mirror.refuse[self.path])
                body = mirror.tamper.get(self.path)
                if body is None:
                    return super().do_GET()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/music/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(scraped, tmp_path):
    root = tmp_path / "www"
    shutil.copytree(scraped / layout.PUBLISHED, root / "music")
    # As a mirror publishes it: the .torrent URLs under the mirror's own base.
    listing = json.loads((root / "music" / "torrents.json").read_text())
    (root / "music" / "torrents.json").write_text(json.dumps(listing))
    served = Mirror(root)
    yield served, root / "music"
    served.close()


def test_pick_from_a_mirror_url_writes_checked_torrents(mirror, scraped, tmp_path):
    served, folder = mirror
    local = pick(str(scraped), TB, seed=3)
    remote = pick(served.url, TB, seed=3)
    assert names(remote.picked) == names(local.picked)
    assert remote.picked[0].candidate.torrent.startswith(served.url + "torrents/")
    watch = tmp_path / "watch"
    result = invoke("pick", served.url + "torrents.json", "--max-size", "1TB", "-f", "torrent", "-o", watch)
    assert result.exit_code == 0, result.output
    for p in watch.iterdir():
        assert p.read_bytes() == (folder / "torrents" / p.name).read_bytes()
    assert not [p for p in watch.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("status", [403, 500])
def test_a_mirror_refusing_its_member_index_still_gives_its_shards(mirror, scraped, status):
    """members/index.json is optional: a mirror that refuses it loses the index's torrent from the pick,
    with a note naming why, never the pick (it was exit 3)."""
    served, _ = mirror
    served.refuse["/music/" + layout.MEMBER_INDEX] = status
    result = invoke("pick", served.url, "--max-size", "1TB", "--seed", "3", "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    local = pick(str(scraped), TB, seed=3)
    shards = [p.candidate.name for p in local.picked if not p.candidate.member_index]
    assert [t["name"] for t in data["torrents"]] == shards
    assert len(data["notes"]) == 1 and f"HTTP {status}" in data["notes"][0], data
    assert f"HTTP {status}" in result.stderr and "member index" in result.stderr


def test_a_tampered_torrent_from_a_mirror_is_refused(mirror, tmp_path):
    served, folder = mirror
    first, second = sorted((folder / "torrents").glob("*.tar.zst.torrent"))[:2]  # shards' torrents
    served.tamper[f"/music/torrents/{first.name}"] = second.read_bytes()
    watch = tmp_path / "watch"
    result = invoke("pick", served.url, "--max-size", "1TB", "-f", "torrent", "-o", watch, "--seed", "1")
    assert result.exit_code == 3 and "but the list says" in result.output
    assert not (watch / first.name).exists()


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 2, "not JSON"),
        (b'{"a": 1}', 2, "not a list of torrents"),
        (b"[1, 2, 3]", 0, "skipped 3 malformed"),
    ],
)
def test_hostile_mirror_lists(mirror, body, code, message):
    served, _ = mirror
    served.tamper["/music/torrents.json"] = body
    result = invoke("pick", served.url, "--max-size", "1TB")
    assert result.exit_code == code and message in result.output


def test_oversized_and_slow_mirrors_are_cut(mirror, monkeypatch):
    served, _ = mirror
    monkeypatch.setattr(pick_module, "LIST_MAX_BYTES", 1000)
    result = invoke("pick", served.url, "--max-size", "1TB")
    assert result.exit_code == 3 and "over 1,000" in result.output
    monkeypatch.setattr(pick_module, "LIST_MAX_BYTES", 64 * 2**20)
    served.tamper["/music/swarm.json"] = b'{"format": 2}'
    result = invoke("pick", served.url, "--max-size", "1TB")
    assert result.exit_code == 2 and "not a packager swarm.json" in result.output
    monkeypatch.setattr(pick_module, "FETCH_TIMEOUT", 1.0)
    silent = SilentTcpServer()
    try:
        started = time.monotonic()
        result = invoke("pick", f"http://127.0.0.1:{silent.port}/music/", "--max-size", "1TB")
        assert time.monotonic() - started < 3
    finally:
        silent.close()
    assert result.exit_code == 3 and "no complete reply within 1 s" in result.output


def test_a_mirror_url_with_a_broken_ipv6_host_is_a_usage_error():
    result = invoke("pick", "http://[::1:80/", "--max-size", "1GB")
    assert result.exit_code == 2 and "not a valid URL" in result.output, result.output
