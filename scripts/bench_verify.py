"""bench verify: `packager verify --pieces` and `--deep` against libtorrent's own recheck of the same torrent.

    python scripts/bench_verify.py [--size 2GB] [--workdir ./bench-data] [--repeat 3] [--cold] [--json]

Builds (once; kept under --workdir) one shard of --size incompressible "audio" members with its v1 .torrent,
laid out as a downloader's mirror (release.json, SHA256SUMS, torrents/, shards/). Then, in one run, times:

- `packager verify MIRROR --pieces`: the whole command, as a user runs it, Python's start included: the
  .torrent checked against SHA256SUMS, then the SHA-1 of every piece, one thread per core;
- `packager verify MIRROR --deep`: the file's SHA-256 plus every frame decompressed and every member's
  xxh3-128 and SHA-256 checked, in one read;
- both again in this process (verify() alone, as libtorrent is timed inside its session);
- libtorrent's recheck: the torrent added with its data present (no resume data, so libtorrent hashes every
  piece) with default settings (hashing_threads as shipped), and again with one hashing thread per core.

Target: piece verify >= 1.5x faster than libtorrent's default recheck. Page cache warm by default (the
figures measure the checkers, not the disk); --cold evicts the shard's pages before every run.
`bench_verify(args)` prints the table and returns the figures as a dict; scripts/bench.py registers it as
`bench.py verify`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

MB = 10**6
MiB = 2**20
TARGET = 1.5
NAME = "bench-audio-00001"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1.5GB, 512MiB)")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def add_verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=parse_size, default=parse_size("2GB"), help="shard content size (2GB)")
    p.add_argument("--pool", type=parse_size, default=parse_size("256MiB"), help="distinct source bytes")
    p.add_argument("--repeat", type=int, default=3, help="runs of each contender; the median is reported")
    p.add_argument("--cold", action="store_true", help="evict the shard from the page cache before each run")
    p.add_argument("--rebuild", action="store_true", help="write the shard again even if it is there")


# --- the data ---------------------------------------------------------------------------------------------


def _pool(directory: Path, total: int, seed: int = 5) -> list[Path]:
    """Random files of OGG-like sizes (3.5-7 MB) adding up to `total`; reused when already there."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files, made = [], 0
    while made < total:
        size = min(max(64 * 1024, int(rng.lognormvariate(15.4, 0.5))), total - made)
        path = directory / f"{len(files):05d}.bin"
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as f:
                for left in range(size, 0, -4 * MiB):
                    f.write(os.urandom(min(left, 4 * MiB)))
        files.append(path)
        made += size
    return files


def build_mirror(args: argparse.Namespace) -> Path:
    """mirror/ with one shard of about --size, its .torrent, SHA256SUMS and release.json."""
    from packager.container import MemberSource, write_shard
    from packager.hashing import ShardHasher
    from packager.manifest import FileEntry, TorrentEntry, release_json, sha256sums
    from packager.torrent import TorrentSpec, build_metainfo, identity, piece_size_for

    mirror = Path(args.workdir) / "verify" / f"mirror-{args.size}"
    shard = mirror / "shards" / f"{NAME}.tar.zst"
    if shard.exists() and _readable(mirror / "release.json") and not args.rebuild:
        return mirror
    (mirror / "shards").mkdir(parents=True, exist_ok=True)
    (mirror / "torrents").mkdir(exist_ok=True)
    pool = _pool(Path(args.workdir) / "verify" / "pool", min(args.pool, args.size))
    sizes = [p.stat().st_size for p in pool]

    def members():
        done = i = 0
        while done < args.size:
            k = i % len(pool)
            yield MemberSource(
                f"trk-{i:07d}",
                f"audio/{i // 1000:04d}/{i:07d}.ogg",
                "audio",
                100 / (1 + i),
                sizes[k],
                pool[k],
                1_735_689_600,
            )
            done += sizes[k]
            i += 1

    hasher = ShardHasher(piece_size_for(args.size))
    with open(shard, "wb") as out:
        write_shard(out, members(), level=-1, manifest_mtime=1_735_689_600, sinks=hasher.sinks)
    hashes = hasher.finish()
    spec = TorrentSpec(name=shard.name, hashes=hashes, format="v1")
    metainfo = build_metainfo(spec)
    torrent = mirror / "torrents" / f"{shard.name}.torrent"
    torrent.write_bytes(metainfo)
    ident = identity(spec)
    entry = TorrentEntry(
        name=NAME,
        phase="audio",
        tier=None,
        popularity_min=0,
        popularity_max=100,
        items=0,
        data_size=args.size,
        format="v1",
        piece_size=hashes.piece_size,
        info_hash_v1=ident.info_hash_v1,
        info_hash_v2=None,
        magnet=ident.magnet,
        files=(
            FileEntry(f"shards/{shard.name}", hashes.length, hashes.sha256.hex()),
            FileEntry(f"torrents/{torrent.name}", len(metainfo), hashlib.sha256(metainfo).hexdigest()),
        ),
        added="2025-01-01T00:00:00Z",
    )
    # Through the manifest module's own writers, so the mirror follows the published format as it changes.
    (mirror / "release.json").write_bytes(release_json("bench", "bench", [], [entry]))
    (mirror / "SHA256SUMS").write_bytes(sha256sums([entry]))
    return mirror


def _readable(release: Path) -> bool:
    """Whether a kept mirror's release.json is one this packager reads (else the mirror is made again)."""
    from packager.errors import PackagerError
    from packager.manifest import read_release_json

    try:
        read_release_json(release.read_bytes(), release)
    except (OSError, PackagerError):
        return False
    return True


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (POSIX_FADV_DONTNEED needs no root)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


# --- the contenders ---------------------------------------------------------------------------------------


def time_packager(mirror: Path, flag: str) -> float:
    """Wall time of the real command, interpreter start included; it must report the shard good."""
    cmd = [sys.executable, "-m", "packager.cli", "verify", str(mirror), flag, "--json"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"packager verify {flag} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def time_libtorrent(mirror: Path, hashing_threads: int | None) -> float:
    """From add_torrent to torrent_checked_alert: libtorrent hashing every piece of the data it finds."""
    import libtorrent as lt

    settings = {
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "listen_interfaces": "127.0.0.1:0",
        "alert_mask": lt.alert.category_t.status_notification,
    }
    if hashing_threads is not None:
        settings["hashing_threads"] = hashing_threads
    session = lt.session(settings)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(str(mirror / "torrents" / f"{NAME}.tar.zst.torrent"))
    params.save_path = str(mirror / "shards")
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    start = time.perf_counter()
    handle = session.add_torrent(params)
    while True:
        session.wait_for_alert(1000)
        if any(isinstance(a, lt.torrent_checked_alert) for a in session.pop_alerts()):
            break
    elapsed = time.perf_counter() - start
    status = handle.status()
    if status.num_pieces != params.ti.num_pieces():
        raise SystemExit(f"libtorrent found {status.num_pieces} of {params.ti.num_pieces()} pieces good")
    session.remove_torrent(handle)
    return elapsed


def time_library(mirror: Path, **options) -> float:
    """The same check in this process: verify()'s own time, without the interpreter start and imports."""
    from packager.verify import VerifyOptions, verify

    start = time.perf_counter()
    report = verify([mirror], VerifyOptions(**options))
    elapsed = time.perf_counter() - start
    if report.exit_code() != 0:
        raise SystemExit(f"verify({options}) found problems: {[f.message for f in report.all_findings()]}")
    return elapsed


def bench_verify(args: argparse.Namespace) -> dict:
    """packager verify --pieces / --deep against libtorrent's recheck of the same torrent (>= 1.5x)."""
    import libtorrent as lt

    import packager.verify  # (imported before timing, as a resident tool would have it)

    mirror = build_mirror(args)
    shard = mirror / "shards" / f"{NAME}.tar.zst"
    # pip byte-compiles an installed packager; a checkout run with PYTHONDONTWRITEBYTECODE set (as on this
    # machine) would compile every module at every start (0.27 s here), which no installed user waits for.
    source = Path(packager.verify.__file__).parent.parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(source)], check=True)
    size = shard.stat().st_size
    cpus = os.cpu_count() or 1
    lt_default, lt_all = "libtorrent recheck, default settings", f"libtorrent recheck, hashing_threads={cpus}"
    contenders = {
        "packager verify --pieces (command)": lambda: time_packager(mirror, "--pieces"),
        "packager verify --deep (command)": lambda: time_packager(mirror, "--deep"),
        "verify(pieces=True) (in process)": lambda: time_library(mirror, pieces=True),
        "verify(deep=True) (in process)": lambda: time_library(mirror, deep=True),
        lt_default: lambda: time_libtorrent(mirror, None),
        lt_all: lambda: time_libtorrent(mirror, cpus),
    }
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeat):  # interleaved, so that a slow moment of the machine hits every contender
        for name, run in contenders.items():
            evict(shard) if args.cold else warm(shard)
            runs.setdefault(name, []).append(run())
    median = {name: statistics.median(times) for name, times in runs.items()}
    command = median[lt_default] / median["packager verify --pieces (command)"]
    in_process = median[lt_default] / median["verify(pieces=True) (in process)"]
    figures = {
        "shard_bytes": size,
        "piece_size": json.loads((mirror / "release.json").read_text())["torrents"][0]["piece_size"],
        "cache": "cold" if args.cold else "warm",
        "cpus": cpus,
        "libtorrent": lt.__version__,
        "libtorrent_default_hashing_threads": lt.default_settings()["hashing_threads"],
        "seconds": {name: round(t, 3) for name, t in median.items()},
        "runs": {name: [round(t, 3) for t in times] for name, times in runs.items()},
        "MB_per_s": {name: round(size / t / MB, 1) for name, t in median.items()},
        # libtorrent's figure is its check alone, inside a running session; the command's includes starting
        # Python and importing packager, a constant that the in-process figure leaves out.
        "pieces_speedup_command": round(command, 2),
        "pieces_speedup_in_process": round(in_process, 2),
        "pieces_speedup_vs_all_cores": round(median[lt_all] / median["verify(pieces=True) (in process)"], 2),
        "deep_MB_per_s": round(size / median["packager verify --deep (command)"] / MB, 1),
        "target": TARGET,
        "target_met": command >= TARGET,
    }
    print_verify_table(figures)
    return figures


def print_verify_table(figures: dict) -> None:
    print(
        f"one shard of {figures['shard_bytes'] / MB:,.0f} MB, pieces of {figures['piece_size'] // 1024} KiB, "
        f"{figures['cache']} page cache, {figures['cpus']} CPUs, libtorrent {figures['libtorrent']}"
    )
    for name, seconds in figures["seconds"].items():
        print(f"  {name:44s} {seconds:7.2f} s  {figures['MB_per_s'][name]:8.1f} MB/s")
    print(
        f"piece verify vs libtorrent's default recheck: {figures['pieces_speedup_command']}x as a command, "
        f"{figures['pieces_speedup_in_process']}x in process (target {TARGET}x: "
        f"{'met' if figures['target_met'] else 'NOT met'} by the command); "
        f"{figures['pieces_speedup_vs_all_cores']}x libtorrent on all cores; "
        f"deep verify {figures['deep_MB_per_s']} MB/s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="bench-data", help="where generated data goes (./bench-data)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON after the table")
    add_verify_args(p)
    args = p.parse_args(argv)
    figures = bench_verify(args)
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0 if figures["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
