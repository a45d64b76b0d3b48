"""bench seed: the seeder at scale and at speed.

    python scripts/bench_seed.py [--torrents 10000] [--size 2GB] [--workdir ./bench-data] [--json]

1. **Start from fast-resume.** A workspace of --torrents small published shards (--small-size each, one
   .torrent each announcing to an opentracker on 127.0.0.1 whose whitelist holds them all) is seeded once from
   scratch (seed mode; resume data written at shutdown), then started again in a fresh process: the time until
   every torrent is added, is seeding, and has had a tracker reply, and the process's RSS then. Targets:
   <= 60 s and <= 1 GB.
2. **Upload rate.** One shard of --size random bytes: its disk read rate (page cache evicted, 1 MiB reads),
   then `packager seed` (resumed, cache evicted again) uploading it to aria2c over loopback through the
   tracker; aria2c writes to /dev/shm so the disk serves only the seeder. Target: upload >= 80 % of the disk
   read rate.

Each seeding run is its own process. Without opentracker the start runs without announces; without aria2c
or opentracker the upload part is skipped. `bench_seed(args)` prints the table and returns the figures
as a dict; scripts/bench.py registers it as `bench.py seed`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/interop/harness.py
from tests.interop.harness import (  # noqa: E402 - after the path it is found on
    LOOPBACK,
    LT_SETTINGS,
    aria2c_command,
    free_port,
    loopback_settings,
    start_opentracker,
    start_seeder,
    stop,
    wait_until,
)

MB = 10**6
MiB = 2**20
START_TARGET_S = 60.0
RSS_TARGET_MB = 1000.0
UPLOAD_TARGET = 0.80
PHASE = "bench"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2GB, 32KiB)")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def add_seed_args(p: argparse.ArgumentParser, standalone: bool = False) -> None:
    p.add_argument("--torrents", type=int, default=10_000, help="small torrents for the start test (10000)")
    p.add_argument(
        "--small-size", type=parse_size, default=parse_size("32KiB"), help="each small shard (32KiB)"
    )
    p.add_argument(
        "--size", type=parse_size, default=parse_size("2GB"), help="bytes the upload test serves (2GB)"
    )
    p.add_argument(
        "--piece-size",
        type=parse_size,
        default=parse_size("16MiB"),
        help="pieces of the upload test's torrents (16MiB: what a 50 GB shard gets)",
    )
    p.add_argument("--clients", type=int, default=4, help="aria2c clients, each fetching its own shard (4)")
    p.add_argument("--skip-start", action="store_true", help="skip the start-from-resume test")
    p.add_argument("--skip-upload", action="store_true", help="skip the upload-rate test")
    if standalone:  # under scripts/bench.py these two belong to the main parser
        p.add_argument(
            "--workdir", type=Path, default=Path("bench-data"), help="where data goes (./bench-data)"
        )
        p.add_argument("--json", action="store_true", help="print the figures as JSON")


# --- helpers ----------------------------------------------------------------------------------------------


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (POSIX_FADV_DONTNEED needs no root)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    got = {k: int(v.split()[0]) * 1024 / MB for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", text, re.M)}
    return round(got.get("VmRSS", 0.0), 1), round(got.get("VmHWM", 0.0), 1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- a synthetic published workspace ------------------------------------------------------------------------


def write_shard(path: Path, size: int, seed: int, piece_size: int | None = None):
    """Random bytes hashed as they are written, as the shard writer does."""
    from packager.hashing import ShardHasher
    from packager.torrent import piece_size_for

    hasher = ShardHasher(piece_size or piece_size_for(size))
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 4 * MiB))
            hasher.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return hasher.finish()


def publish_workspace(ws: Path, shards: list[tuple[str, object]], tracker_url: str | None) -> list[str]:
    """state.sqlite and torrents/ for shards already in ws/shards: built, with a .torrent, published. Returns
    the v1 info-hashes. Only State methods touch the database."""
    from packager import layout
    from packager.state import State
    from packager.torrent import TorrentSpec, build_metainfo, identity

    (ws / layout.TORRENTS).mkdir(parents=True, exist_ok=True)
    (ws / layout.CONFIG).write_text(
        f'[release]\nname = "bench"\nroot = "{ws}"\n\n[[phases]]\nname = "{PHASE}"\nkinds = ["audio"]\n'
        'shard_size = "50GB"\n'
    )
    for stale in (ws / layout.STATE, ws / f"{layout.STATE}-wal", ws / f"{layout.STATE}-shm"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(ws / layout.RESUME, ignore_errors=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    hashes, published = [], []
    with State(ws / layout.STATE, create=True) as state, state.transaction():
        for seq, (name, h) in enumerate(shards, 1):
            sid = state.add_shard(name, PHASE, "", seq, 1, h.length, 0.0, 0.0, now)
            state.record_build(sid, layout.shard_file(name), h, 1, h.length, now, [])
            trackers = ((tracker_url,),) if tracker_url else ()
            spec = TorrentSpec(layout.shard_file_name(name), h, "v1", trackers=trackers)
            metainfo = build_metainfo(spec)
            rel = layout.torrent_file(name)
            (ws / rel).write_bytes(metainfo)  # no fsync: bench data
            ident = identity(spec)
            state.record_torrent(
                sid,
                rel,
                "v1",
                ident.info_hash_v1,
                None,
                ident.magnet,
                hashlib.sha256(metainfo).hexdigest(),
                len(metainfo),
                now,
            )
            hashes.append(ident.info_hash_v1)
            published.append((sid, PHASE, "{}"))
        state.record_publication(PHASE, now, published)
    return hashes


def small_shards(ws: Path, count: int, size: int) -> list[tuple[str, object]]:
    """count shard files of `size` random bytes; their hashes cached in hashes.json between runs."""
    from packager.hashing import ShardHashes

    folder = ws / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    cache = ws / "hashes.json"
    if cache.exists():
        known = json.loads(cache.read_text())
        if known.get("count") == count and known.get("size") == size:
            return [
                (n, ShardHashes(size, bytes.fromhex(s), p, bytes.fromhex(v)))
                for n, s, p, v in known["shards"]
            ]
    shards = []
    for i in range(count):
        name = f"bench-small-{i:05d}"
        shards.append((name, write_shard(folder / f"{name}.tar.zst", size, seed=i)))
    rows = [(n, h.sha256.hex(), h.piece_size, h.v1_pieces.hex()) for n, h in shards]
    cache.write_text(json.dumps({"count": count, "size": size, "shards": rows}))
    return shards


# --- the child process: one seeding run ---------------------------------------------------------------------


def child_start(ws: Path, expect: int, announce: bool, limit: float) -> dict:
    """Seed until every torrent seeds (and has a tracker reply when `announce`), then stop; the figures."""
    from packager.config import SeedSettings
    from packager.seed.events import Stopped, TorrentsLoaded
    from packager.seed.seeder import seed
    from packager.workspace import Workspace

    t0 = time.monotonic()
    stop = threading.Event()
    figures: dict = {}

    def on_event(e) -> None:
        if isinstance(e, TorrentsLoaded):
            figures.update(
                added=e.added,
                resumed=e.resumed,
                fresh=e.fresh,
                not_added=len(e.not_added),
                loaded_s=round(time.monotonic() - t0, 2),
                add_s=round(e.seconds, 2),
            )
        elif isinstance(e, Stopped):
            figures.update(close_s=round(e.seconds, 2), resume_saved=e.resume_saved)

    def on_snapshot(snap) -> None:
        seeding = sum(t.state == "seeding" for t in snap.torrents)
        if seeding == expect and "all_seeding_s" not in figures:
            figures["all_seeding_s"] = round(time.monotonic() - t0, 2)
            figures["rechecked"] = snap.rechecked
        announced = sum(bool(t.tracker) and "peers from" in t.tracker for t in snap.torrents)
        figures["announced"] = announced
        if "all_seeding_s" in figures and (not announce or announced == expect):
            figures["ready_s"] = round(time.monotonic() - t0, 2)
            figures["rss_mb"], figures["peak_rss_mb"] = rss_mb()
            stop.set()

    settings = SeedSettings(listen=f"{LOOPBACK}:0", dht=False, libtorrent=LT_SETTINGS, shutdown_timeout=120)
    with Workspace.open(ws) as w:
        seed(w, settings=settings, stop=stop, duration=limit, on_event=on_event, on_snapshot=on_snapshot)
    figures["total_s"] = round(time.monotonic() - t0, 2)
    return figures


def child_leech(ws: Path, seeder: str, out: Path) -> dict:
    """Download every torrent of ws from the seeder at `seeder` (HOST:PORT) with libtorrent; the rate."""
    import libtorrent as lt

    session = lt.session(loopback_settings())
    host, port = seeder.rsplit(":", 1)
    handles, total = [], 0
    for torrent in sorted((ws / "torrents").glob("*.torrent")):
        params = lt.load_torrent_file(str(torrent))
        params.trackers = []
        params.save_path = str(out)
        handles.append(session.add_torrent(params))
        total += params.ti.total_size()
    t0 = time.monotonic()
    for h in handles:
        h.connect_peer((host, int(port)))
    first = None
    while time.monotonic() - t0 < 600:
        statuses = [h.status() for h in handles]
        if first is None and any(st.total_done for st in statuses):
            first = time.monotonic()
        if all(st.is_seeding for st in statuses):
            break
        time.sleep(0.01)
    end = time.monotonic()
    return {
        "bytes": total,
        "seconds": round(end - (first or t0), 2),
        "MB_s": round(total / (end - (first or t0)) / MB, 1),
        "complete": all(h.status().is_seeding for h in handles),
    }


def run_child(ws: Path, expect: int, announce: bool, limit: float) -> dict:
    command = [sys.executable, __file__, "--child", str(ws), "--expect", str(expect), "--limit", str(limit)]
    if announce:
        command.append("--announce")
    t0 = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=limit + 300)
    if result.returncode != 0:
        raise RuntimeError(f"seeding run failed: {result.stderr[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["process_s"] = round(time.monotonic() - t0, 2)
    return figures


def bench_start(args: argparse.Namespace) -> dict:
    ws = (args.workdir / "seed-start").resolve()
    t0 = time.monotonic()
    shards = small_shards(ws, args.torrents, args.small_size)
    made_s = time.monotonic() - t0
    tracker = None
    have_tracker = shutil.which("opentracker") is not None
    port = free_port()
    try:
        hashes = publish_workspace(ws, shards, f"http://{LOOPBACK}:{port}/announce" if have_tracker else None)
        if have_tracker:
            tracker = start_opentracker(hashes, port, seconds=30)
        fresh = run_child(ws, len(shards), announce=tracker is not None, limit=600)
        resumed = run_child(ws, len(shards), announce=tracker is not None, limit=600)
    finally:
        if tracker is not None:
            tracker.close()
    ready = resumed.get("ready_s", float("inf"))
    return {
        "torrents": len(shards),
        "small_size": args.small_size,
        "setup_s": round(made_s, 1),
        "announced_to": "opentracker" if tracker is not None else None,
        "fresh": fresh,
        "resumed": resumed,
        "start_s": ready,
        "rss_mb": resumed.get("rss_mb"),
        "start_target_met": ready <= START_TARGET_S,
        "rss_target_met": (resumed.get("rss_mb") or 1e9) <= RSS_TARGET_MB,
    }


# --- upload rate ------------------------------------------------------------------------------------------


def big_shards(ws: Path, count: int, total: int, piece_size: int) -> list[tuple[str, object]]:
    """count shards of total/count random bytes each; hashes cached in hashes.json between runs."""
    from packager.hashing import ShardHashes

    folder = ws / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    size = total // count
    cache = ws / "hashes.json"
    names = [f"bench-big-{i:05d}" for i in range(count)]
    if cache.exists():
        known = json.loads(cache.read_text())
        same = known.get("size") == size and known.get("piece_size") == piece_size
        same = same and [r[0] for r in known["shards"]] == names
        if same and all((folder / f"{n}.tar.zst").exists() for n in names):
            return [
                (n, ShardHashes(size, bytes.fromhex(s), p, bytes.fromhex(v)))
                for n, s, p, v in known["shards"]
            ]
    shards = [
        (n, write_shard(folder / f"{n}.tar.zst", size, 1000 + i, piece_size)) for i, n in enumerate(names)
    ]
    rows = [(n, h.sha256.hex(), h.piece_size, h.v1_pieces.hex()) for n, h in shards]
    cache.write_text(json.dumps({"size": size, "piece_size": piece_size, "shards": rows}))
    return shards


def disk_read_rate(paths: list[Path]) -> float:
    """Sequential 1 MiB reads of each file in turn, page cache evicted first."""
    buf = bytearray(MiB)
    view = memoryview(buf)
    for path in paths:
        evict(path)
    total = 0
    t0 = time.monotonic()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total / (time.monotonic() - t0)


def bench_upload(args: argparse.Namespace) -> dict:
    aria2c, opentracker = shutil.which("aria2c"), shutil.which("opentracker")
    if not aria2c or not opentracker:
        return {"skipped": f"needs aria2c and opentracker (found aria2c={aria2c}, opentracker={opentracker})"}
    from packager.seed.status import read_status

    ws = (args.workdir / "seed-upload").resolve()
    shards = big_shards(ws, args.clients, args.size, args.piece_size)
    files = [ws / "shards" / f"{n}.tar.zst" for n, _ in shards]
    disk = max(disk_read_rate(files) for _ in range(2))
    down = Path(
        tempfile.mkdtemp(prefix="bench-aria2-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    tracker = seeder = None
    clients: list[subprocess.Popen] = []
    try:
        tracker_port = free_port()
        hashes = publish_workspace(ws, shards, f"http://{LOOPBACK}:{tracker_port}/announce")
        tracker = start_opentracker(hashes, tracker_port, seconds=30)
        # Once from scratch so that the measured run resumes, as a long-running seeder does.
        port = free_port()
        seeder = start_seeder(ws, port, ws / "seed-prime.log")
        wait_until(lambda: (read_status(port) or {}).get("states", {}).get("seeding") == len(shards), 60, 0.2)
        stop(seeder, 60)
        port = free_port()
        seeder = start_seeder(ws, port, ws / "seed.log")

        def announced() -> bool:
            body = read_status(port)
            return bool(body) and all("peers from" in (t["tracker"] or "") for t in body["torrents"])

        if not wait_until(announced, 60, 0.2):
            raise RuntimeError(
                f"seeder not announced: {read_status(port)}; {(ws / 'seed.log').read_text()[-1000:]}"
            )
        for path in files:
            evict(path)
        cpu0 = cpu_seconds(seeder.pid)
        targets = [down / path.name for path in files]
        t_start = time.monotonic()
        # One aria2c per shard: a single aria2c 1.36 takes about 80 MB/s from any peer over loopback here
        # (measured against libtorrent with default settings too), using 15 % of a core: its own ceiling.
        clients = [
            subprocess.Popen(
                aria2c_command(ws / "torrents" / f"{n}.tar.zst.torrent", down, free_port(), 120),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for n, _ in shards
        ]
        first = None
        client_cpu = [0.0] * len(clients)
        while any(c.poll() is None for c in clients) and time.monotonic() - t_start < 600:
            if first is None and any(t.exists() and t.stat().st_size > 0 for t in targets):
                first = time.monotonic()
            with contextlib.suppress(OSError):
                client_cpu = [cpu_seconds(c.pid) for c in clients]
            time.sleep(0.01)
        end = time.monotonic()
        cpu = cpu_seconds(seeder.pid) - cpu0
        codes = [c.returncode for c in clients]
        complete = all(
            t.exists() and t.stat().st_size == h.length for t, (_, h) in zip(targets, shards, strict=True)
        )
        for t in targets:
            t.unlink(missing_ok=True)
        # The same shards to one libtorrent leecher: what the seeder gives a peer that is not the bottleneck.
        for path in files:
            evict(path)
        listen = read_status(port)["listen"][0]
        cpu1 = cpu_seconds(seeder.pid)
        leech = subprocess.run(
            [sys.executable, __file__, "--leech", str(ws), "--seeder", listen, "--out", str(down)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        lt_leech = (
            json.loads(leech.stdout.strip().splitlines()[-1])
            if leech.returncode == 0
            else {"error": leech.stderr[-500:]}
        )
        lt_leech["seeder_cpu_s"] = round(cpu_seconds(seeder.pid) - cpu1, 2)
        transfer_s = end - (first or t_start)
        total = sum(h.length for _, h in shards)
        upload = total / transfer_s
        return {
            "shard_bytes": total,
            "shards": len(shards),
            "aria2c_clients": len(clients),
            "piece_size": shards[0][1].piece_size,
            "disk_read_MB_s": round(disk / MB, 1),
            "upload_MB_s": round(upload / MB, 1),
            "ratio": round(upload / disk, 3),
            "transfer_s": round(transfer_s, 2),
            "seeder_cpu_s": round(cpu, 2),
            "aria2c_cpu_s": round(sum(client_cpu), 2),
            "aria2c_exit_codes": codes,
            "seeder_MB_per_cpu_s": round(total / cpu / MB, 1) if cpu else None,
            "libtorrent_leecher": lt_leech,
            "complete": complete,
            "target_met": complete and upload / disk >= UPLOAD_TARGET,
        }
    finally:
        for c in clients:
            stop(c, 10)
        if seeder is not None:
            stop(seeder, 60)
        if tracker is not None:
            tracker.close()
        shutil.rmtree(down, ignore_errors=True)


# --- entry points -----------------------------------------------------------------------------------------


def bench_seed(args: argparse.Namespace) -> dict:
    """10 000 torrents started from fast-resume (time, RSS); upload rate to aria2c against the disk's."""
    import libtorrent as lt

    figures: dict = {"cpus": os.cpu_count(), "libtorrent": lt.__version__}
    args.workdir = Path(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.skip_start:
        figures["start"] = bench_start(args)
    if not args.skip_upload:
        figures["upload"] = bench_upload(args)
    figures["targets_met"] = print_seed_table(figures)
    return figures


def print_seed_table(figures: dict) -> bool:
    """Print the figures as a table; whether every target measured was met."""
    ok = True
    print(f"{figures['cpus']} CPUs, libtorrent {figures['libtorrent']}")
    if "start" in figures:
        s = figures["start"]
        r, f = s["resumed"], s["fresh"]
        print(
            f"start: {s['torrents']} torrents of {s['small_size']} bytes, announcing to {s['announced_to']}"
        )
        print(
            f"  first run (seed mode): all seeding in {f.get('all_seeding_s')} s, "
            f"ready in {f.get('ready_s')} s, "
            f"resume data of {f.get('resume_saved')} saved in {f.get('close_s')} s"
        )
        print(
            f"  from fast-resume: added in {r.get('add_s')} s, all seeding in {r.get('all_seeding_s')} s, "
            f"all announced in {r.get('ready_s')} s; rechecked {r.get('rechecked')}; "
            f"RSS {r.get('rss_mb')} MB "
            f"(peak {r.get('peak_rss_mb')} MB); process {r.get('process_s')} s"
        )
        met = s["start_target_met"] and s["rss_target_met"]
        ok &= met
        print(
            f"  targets <= {START_TARGET_S:.0f} s and <= {RSS_TARGET_MB:.0f} MB: "
            f"{'met' if met else 'NOT met'}"
        )
    if "upload" in figures:
        u = figures["upload"]
        if "skipped" in u:
            print(f"upload: skipped ({u['skipped']})")
        else:
            print(
                f"upload: {u['shard_bytes'] / MB:,.0f} MB in {u['shards']} shards of "
                f"{u['piece_size'] // 1024} KiB "
                f"pieces: disk reads {u['disk_read_MB_s']} MB/s, seeder to {u['aria2c_clients']} aria2c "
                f"{u['upload_MB_s']} MB/s = {u['ratio']:.0%} "
                f"(seeder CPU {u['seeder_cpu_s']} s, aria2c {u['aria2c_cpu_s']} s, "
                f"over {u['transfer_s']} s on "
                f"{figures['cpus']} CPUs)"
            )
            lt_leech = u.get("libtorrent_leecher", {})
            if "MB_s" in lt_leech:
                print(
                    f"  the same to one libtorrent leecher: {lt_leech['MB_s']} MB/s "
                    f"= {lt_leech['MB_s'] / u['disk_read_MB_s']:.0%} of the disk read rate; "
                    f"seeder {u['seeder_MB_per_cpu_s']} MB per CPU second with aria2c"
                )
            ok &= u["target_met"]
            print(f"  target >= {UPLOAD_TARGET:.0%}: {'met' if u['target_met'] else 'NOT met'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    add_seed_args(p, standalone=True)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    p.add_argument("--announce", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=600, help=argparse.SUPPRESS)
    p.add_argument("--leech", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seeder", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.leech:
        print(json.dumps(child_leech(args.leech, args.seeder, args.out)))
        return 0
    if args.child:
        print(json.dumps(child_start(args.child, args.expect, args.announce, args.limit)))
        return 0
    figures = bench_seed(args)
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0 if figures["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
