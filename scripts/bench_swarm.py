"""bench swarm: `packager health` and `packager pick` at the release's real scale.

    python scripts/bench_swarm.py [--torrents 10000] [--peers 3000] [--days 60] [--workdir DIR] [--json]

1. **Scrape.** A workspace of --torrents published torrents (synthetic entries with random info-hashes: health
   and pick read the state, not the shards) and Debian's opentracker on 127.0.0.1 whitelisting them, with
   --peers announces spread over them. `packager health` (the command, Python start included) scrapes them
   all over UDP (74 hashes a packet) and over HTTP (50 a request), against the peer way: one HTTP scrape per
   torrent, as a script calling a client library per torrent does. Counts are checked against the announces.
2. **History.** --days of history at 4 runs a day are added to the state (record_run, as health writes it);
   then the cost of rendering swarm.json / swarm.html from it (what health and publish do after scraping),
   their sizes, the state's growth, and `packager pick --max-size 2TB` on that workspace.

`bench_swarm(args)` prints the table and returns the figures; scripts/bench.py registers it as `bench.py
swarm`. Needs opentracker (scripts/dev.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/interop/harness.py
from tests.interop.harness import LOOPBACK, free_port, start_opentracker  # noqa: E402 - after the path

PHASES = ("metadata", "audio", "art")


def add_swarm_args(p: argparse.ArgumentParser, standalone: bool = False) -> None:
    p.add_argument("--torrents", type=int, default=10_000, help="published torrents (10000)")
    p.add_argument("--peers", type=int, default=3000, help="announces spread over the torrents (3000)")
    p.add_argument("--days", type=int, default=60, help="days of history added to the state (60)")
    if standalone:
        p.add_argument("--workdir", default="bench-data", help="where generated data goes (./bench-data)")
        p.add_argument("--json", action="store_true", help="print the figures as JSON at the end")


def synthetic_workspace(ws: Path, count: int, tracker_url: str) -> list[str]:
    """A workspace whose state lists `count` published torrents (phases in turn); returns their v1 hashes."""
    from packager import layout
    from packager.manifest import FileEntry, TorrentEntry
    from packager.state import State

    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    phases = "".join(f'[[phases]]\nname = "{p}"\nkinds = ["{p}"]\nshard_size = "50GB"\n\n' for p in PHASES)
    (ws / layout.CONFIG).write_text(
        f'[release]\nname = "bench"\nroot = "{ws}"\n\n[torrents]\ntrackers = [["{tracker_url}"]]\n\n{phases}'
    )
    rng = random.Random(7)
    now = "2026-01-01T00:00:00Z"
    hashes = []
    with State(ws / layout.STATE, create=True) as state, state.transaction():
        for phase in PHASES:
            state.record_publication(phase, now, [])
        for i in range(count):
            phase = PHASES[i % 3]
            name = f"bench-{phase}-{i:05d}"
            v1 = rng.randbytes(20).hex()
            size = rng.randint(10, 100) * 10**9
            sid = state.add_shard(name, phase, "", i + 1, 1, size, 0.0, 0.0, now)
            entry = TorrentEntry(
                name=name, phase=phase, tier=None, popularity_min=0, popularity_max=0, items=1,
                data_size=size, format="v1", piece_size=16 * 2**20, info_hash_v1=v1, info_hash_v2=None,
                magnet=f"magnet:?xt=urn:btih:{v1}&dn={name}", added=now,
                files=(FileEntry(layout.shard_file(name), size, "0" * 64),
                       FileEntry(layout.torrent_file(name), 60_000, "0" * 64)),
            )  # fmt: skip
            state.db.execute(
                "INSERT INTO published_torrents (shard_id, phase, entry) VALUES (?,?,?)",
                (sid, phase, entry.to_json()),
            )
            hashes.append(v1)
    (ws / layout.PUBLISHED).mkdir()
    return hashes


def run_health(ws: Path, tracker: str) -> tuple[float, dict]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "packager.cli", "health", str(ws), "--tracker", tracker, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.monotonic() - started, json.loads(out.stdout)


def one_by_one(tracker_url: str, hashes: list[str]) -> float:
    """The peer way: one HTTP scrape request per torrent."""
    from packager.swarm.scrape import scrape

    started = time.monotonic()
    for h in hashes:
        assert scrape(tracker_url, [h], 10).ok
    return time.monotonic() - started


def add_history(ws: Path, days: int, hashes: list[str]) -> float:
    from packager import layout
    from packager.state import State
    from packager.state_scrapes import CountRow, SourceRow, record_run

    rng = random.Random(3)
    started = time.monotonic()
    with State(ws / layout.STATE) as state:
        shard_ids = [r[0] for r in state.db.execute("SELECT shard_id FROM published_torrents ORDER BY n")]
        for day in range(days):
            for hour in (0, 6, 12, 18):
                at = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + day * 86400 + hour * 3600)
                )
                rows = [CountRow(sid, "udp://t/announce", rng.randint(0, 14), rng.randint(0, 3), 0)
                        for sid in shard_ids]  # fmt: skip
                record_run(state, at, [SourceRow("udp://t/announce", "udp", len(rows), None, 1.0)], rows)
    return time.monotonic() - started


def render(ws: Path) -> dict:
    from packager.swarm.live import swarm_html, swarm_json
    from packager.swarm.model import swarm_view
    from packager.workspace import Workspace

    with Workspace.open(ws) as w:
        started = time.monotonic()
        view = swarm_view(w.state, w.config.name, [p.name for p in w.config.phases])
        viewed = time.monotonic()
        data, page = swarm_json(view), swarm_html(view)
        done = time.monotonic()
    return {"view_s": viewed - started, "render_s": done - viewed, "json_mb": len(data) / 1e6,
            "html_kb": len(page) / 1e3}  # fmt: skip


def bench_swarm(args: argparse.Namespace) -> dict:
    """health over UDP and HTTP against one request per torrent; history rendering; pick at scale."""
    if shutil.which("opentracker") is None:
        print("opentracker is not installed: nothing to measure (scripts/dev.sh setup installs it)")
        return {}
    ws = Path(args.workdir) / "swarm" / "ws"
    port = free_port()
    hashes = synthetic_workspace(ws, args.torrents, f"http://{LOOPBACK}:{port}/announce")
    tracker = start_opentracker(hashes, port, seconds=30)
    figures: dict = {"torrents": args.torrents}
    try:
        rng = random.Random(1)
        expected: dict[str, list[int]] = {}
        started = time.monotonic()
        for i in range(args.peers):
            h = rng.choice(hashes)
            left = rng.choice([0, 0, 1000])
            tracker.announce(h, 10_000 + i, left=left)
            counts = expected.setdefault(h, [0, 0])
            counts[0 if left == 0 else 1] += 1
        figures["announce_s"] = time.monotonic() - started
        for proto, url in (("udp", tracker.udp_url), ("http", tracker.announce_url)):
            seconds, data = run_health(ws, url)
            got = {t["btih"]: [t["seeders"], t["leechers"]] for t in data["torrents"]}
            wrong = sum(got[h] != expected.get(h, [0, 0]) for h in hashes)
            figures[f"health_{proto}_s"] = seconds
            figures[f"health_{proto}_wrong"] = wrong
            figures[f"health_{proto}_requests"] = data["sources"][0]
        sample = hashes[: min(1000, len(hashes))]
        per_torrent = one_by_one(tracker.announce_url, sample)
        figures["one_by_one_s_per_1000"] = per_torrent * 1000 / len(sample)
        figures["one_by_one_s"] = per_torrent * len(hashes) / len(sample)
    finally:
        tracker.close()
    state = ws / "state.sqlite"
    before = state.stat().st_size
    figures["history_write_s"] = add_history(ws, args.days, hashes)
    figures["state_growth_mb"] = (state.stat().st_size - before) / 1e6
    figures.update(render(ws))
    started = time.monotonic()
    pick = [sys.executable, "-m", "packager.cli", "pick", str(ws), "--max-size", "2TB", "--seed", "1"]
    subprocess.run(pick, capture_output=True, check=True)
    figures["pick_s"] = time.monotonic() - started
    print_swarm_table(figures, args)
    return figures


def print_swarm_table(f: dict, args: argparse.Namespace) -> None:
    n = f["torrents"]
    print(f"swarm: {n} published torrents, {args.peers} announces into opentracker on 127.0.0.1")
    for proto in ("udp", "http"):
        print(f"  packager health over {proto:4}: {f[f'health_{proto}_s']:.2f} s (command, Python start "
              f"included), {f[f'health_{proto}_wrong']} counts wrong")  # fmt: skip
    print(f"  one HTTP scrape per torrent: {f['one_by_one_s']:.1f} s for {n} (measured on 1000)")
    http, udp = f["one_by_one_s"] / f["health_http_s"], f["one_by_one_s"] / f["health_udp_s"]
    print(f"  one-by-one / health: {http:.1f}x over http, {udp:.1f}x over udp on loopback")
    print(
        f"  requests: {n} one by one, {-(-n // 50)} over http, {-(-n // 74) + 1} over udp (what an RTT costs)"
    )
    print(f"  {args.days} days x 4 runs of history: written in {f['history_write_s']:.1f} s, "
          f"state +{f['state_growth_mb']:.0f} MB")  # fmt: skip
    print(f"  swarm view from the state {f['view_s']:.2f} s, rendering {f['render_s']:.2f} s: "
          f"swarm.json {f['json_mb']:.1f} MB, swarm.html {f['html_kb']:.0f} kB")  # fmt: skip
    print(f"  packager pick --max-size 2TB: {f['pick_s']:.2f} s (command)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_swarm_args(parser, standalone=True)
    args = parser.parse_args(argv)
    figures = bench_swarm(args)
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).parent.parent))
    sys.exit(main())
