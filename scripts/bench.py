"""Benchmarks that check the design's performance claims on this machine.

    python scripts/bench.py plan [--rows 1000000]   catalog steps at 10^N rows: time, RSS, state size
    python scripts/bench.py index [--members 10^6]  member index: write, bytes a lookup reads, vs SQLite
    python scripts/bench.py build [--size-gb 1]     copy vs tar|zstd+mktorrent+sha256sum vs packager build
    python scripts/bench.py build --scheduler [ADDR]   Dask cluster path vs local pool (two local workers)
    python scripts/bench.py resume [--size-gb 4]    a shard killed at 75 % and restarted (<= 40 % of a build)
    python scripts/bench.py verify [--size 2GB]     verify --pieces/--deep vs libtorrent's recheck (>= 1.5x)
    python scripts/bench.py seed                    10 000 torrents from fast-resume; upload rate to aria2c
    python scripts/bench.py extract [--size 10GB]   random access to one member of a big shard (<= 100 ms)
    python scripts/bench.py compress                ratio and MB/s per zstd level and kind of data
    python scripts/bench.py speed [--size 512MiB]   the shard writer against a plain copy (build/copy <= 1.4)
    python scripts/bench.py swarm [--torrents 10000] health over UDP/HTTP vs one scrape per torrent; history

One function per subcommand, registered in COMMANDS with the function that adds its options. Each returns a
dict of its figures (printed as JSON with --json). Data goes under --workdir (default ./bench-data).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard
from bench_build import Cold, bench_build, bench_resume  # scripts/ is on sys.path when this file runs
from bench_fetch import add_index_args, bench_index
from bench_plan import add_plan_args, bench_plan
from bench_seed import add_seed_args, bench_seed
from bench_swarm import add_swarm_args, bench_swarm
from bench_verify import add_verify_args, bench_verify

from packager.container import DEFAULT_FRAME_SIZE, MemberSource, ShardReader, write_shard
from packager.hashing import ShardHasher

MB = 10**6
MiB = 2**20
EXTRACT_TARGET_S = 0.100
BUILD_COPY_TARGET = 1.4
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 10GB, 512MiB)")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def parse_levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def drop_cache(path: Path) -> None:
    """Evict a file's pages so the next read comes from disk (POSIX_FADV_DONTNEED needs no root)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def random_pool(directory: Path, total: int, sizes: Callable[[random.Random], int], seed: int) -> list[Path]:
    """Files of random bytes adding up to about `total`, reused across runs when already there."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files, made = [], 0
    while made < total:
        size = min(sizes(rng), total - made)
        path = directory / f"{len(files):05d}.bin"
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as f:
                left = size
                while left:
                    f.write(os.urandom(min(left, 4 * MiB)))
                    left -= min(left, 4 * MiB)
        files.append(path)
        made += size
    return files


def track_size(rng: random.Random) -> int:
    # OGG tracks at ~160 kbit/s: 3-6 minutes is 3.5-7 MB, with a tail of long ones.
    return max(64 * 1024, int(rng.lognormvariate(15.4, 0.5)))


# --- extract ------------------------------------------------------------------------------------------------


def add_extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=parse_size, default=parse_size("10GB"), help="shard content size (10GB)")
    p.add_argument("--pool", type=parse_size, default=parse_size("256MiB"), help="distinct source bytes")
    p.add_argument(
        "--fill",
        choices=("random", "sparse"),
        default="random",
        help="random: a shard as big as its content; sparse: zero files that compress to almost nothing",
    )
    p.add_argument("--level", type=int, default=-1)
    p.add_argument("--rebuild", action="store_true", help="write the shard again even if it is there")
    p.add_argument("--keep", action="store_true", help="keep the shard for the next run (it is big)")


def pool_members(pool: list[Path], total: int) -> Iterator[MemberSource]:
    """Members cycling through the pool until `total` bytes: a big shard from little source data.

    Repeats of a pool file are megabytes apart, far beyond zstd's window at fast levels, so they do not
    compress: the shard on disk is as large as its content.
    """
    sizes = [p.stat().st_size for p in pool]
    done, i = 0, 0
    while done < total:
        k = i % len(pool)
        yield MemberSource(
            id=f"trk-{i:07d}",
            path=f"audio/{i // 1000:04d}/{i:07d}.ogg",
            kind="audio",
            popularity=round(100 / (1 + i), 6),
            size=sizes[k],
            source=pool[k],
            mtime=1_735_689_600,
        )
        done += sizes[k]
        i += 1


def build_big_shard(args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    shard = work / f"big-{args.fill}-{args.size}-L{args.level}.tar.zst"
    if shard.exists() and not args.rebuild:
        return shard, {"reused": True}
    if args.fill == "sparse":
        pool_dir = work / "sparse-pool"
        pool_dir.mkdir(parents=True, exist_ok=True)
        pool = []
        for i in range(64):
            path = pool_dir / f"{i:03d}.bin"
            with open(path, "wb") as f:
                os.truncate(f.fileno(), track_size(random.Random(i)))
            pool.append(path)
    else:
        pool = random_pool(work / "pool", args.pool, track_size, seed=1)
    print(f"writing a {args.size / 1e9:.1f} GB shard ({args.fill} data, level {args.level}) ...", flush=True)
    hasher = ShardHasher(16 * MiB)
    part = shard.with_suffix(".part")
    start, cpu = time.perf_counter(), cpu_seconds()
    with open(part, "wb") as out:
        written = write_shard(
            out, pool_members(pool, args.size), level=args.level, manifest_mtime=0, sinks=hasher.sinks
        )
        out.flush()
        os.fsync(out.fileno())
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    hasher.finish()
    part.replace(shard)
    info = {
        "reused": False,
        "build_s": wall,
        "build_cpu_s": cpu,
        "build_mb_s": written.uncompressed_size / wall / MB,
        "members": len(written.records),
        "frames": written.frames,
    }
    print(
        f"  built in {wall:.1f} s ({info['build_mb_s']:.0f} MB/s, {cpu:.1f} s CPU), "
        f"{len(written.records)} members, {written.frames} frames"
    )
    return shard, info


def bench_extract(args: argparse.Namespace) -> dict:
    """Time extracting one member from the middle of a big shard (target <= 100 ms), cold and warm."""
    work = Path(args.workdir) / "extract"
    shard, info = build_big_shard(args, work)
    out = work / "out"
    with ShardReader(shard) as reader:
        records = reader.manifest()
    rec = records[len(records) // 2]
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]) -> None:
        shutil.rmtree(out, ignore_errors=True)
        drop_cache(shard)
        start = time.perf_counter()
        fn()
        timings[f"{name}_cold_s"] = time.perf_counter() - start
        start = time.perf_counter()
        fn()
        timings[f"{name}_warm_s"] = time.perf_counter() - start

    def open_and_manifest() -> None:
        with ShardReader(shard) as r:
            r.manifest()

    def library_extract() -> None:
        # What `packager extract SHARD KEY -o OUT` does, minus the interpreter start: open the shard, read
        # the manifest, find the key, decompress its frames, verify, rename into place.
        with ShardReader(shard) as r:
            r.extract([rec.id], out)

    def read_into_memory() -> None:
        with ShardReader(shard) as r:
            sum(len(b) for b in r.iter_member(r.find(rec.id)))

    def cli_extract() -> None:
        cmd = [sys.executable, "-m", "packager.cli", "extract", str(shard), rec.id, "-o", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    timed("open_manifest", open_and_manifest)
    timed("read_member", read_into_memory)
    timed("library_extract", library_extract)
    timed("cli_extract", cli_extract)

    size = shard.stat().st_size
    print(f"shard           {shard.name}: {size / 1e9:.2f} GB on disk, {len(records)} members")
    print(f"member          {rec.id} ({rec.size / MB:.1f} MB, frames {rec.first_frame}-{rec.last_frame})")
    for name, label in (
        ("open_manifest", "open + manifest"),
        ("read_member", "+ read member"),
        ("library_extract", "library extract"),
        ("cli_extract", "CLI extract"),
    ):
        cold, warm = timings[f"{name}_cold_s"], timings[f"{name}_warm_s"]
        print(f"{label:<16}{cold * 1000:8.1f} ms cold {warm * 1000:8.1f} ms warm")
    verdict = "ok" if timings["library_extract_cold_s"] <= EXTRACT_TARGET_S else "OVER TARGET"
    print(f"target          library extract <= {EXTRACT_TARGET_S * 1000:.0f} ms: {verdict}")
    if not args.keep:
        shard.unlink()
    shutil.rmtree(out, ignore_errors=True)
    return {"shard_bytes": size, "members": len(records), "member_bytes": rec.size, **info, **timings}


# --- compress -----------------------------------------------------------------------------------------------

_SYLLABLES = ("ka", "lo", "mi", "ra", "su", "ne", "to", "va", "shi", "dor", "an", "el", "ix", "um", "bre")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))).capitalize()


def _names(rng: random.Random, n: int) -> list[str]:
    return [" ".join(_word(rng) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def track_records(seed: int) -> Iterator[dict]:
    """Track metadata shaped like a real catalog: Zipf-ish artists and albums, ISRCs, genres, tags."""
    rng = random.Random(seed)
    artists, labels = _names(rng, 5000), _names(rng, 300)
    genres = ["rock", "pop", "jazz", "classical", "electronic", "hip-hop", "folk", "metal", "ambient", "soul"]
    i = 0
    while True:
        artist = artists[min(int(rng.paretovariate(1.1)) - 1, len(artists) - 1)]
        yield {
            "id": f"trk-{i:09d}",
            "title": " ".join(_word(rng) for _ in range(rng.randint(1, 6))),
            "artist": artist,
            "album": f"{_word(rng)} {_word(rng)}",
            "track_no": rng.randint(1, 18),
            "disc_no": 1,
            "duration_ms": rng.randint(90_000, 480_000),
            "isrc": f"{rng.choice(['US', 'GB', 'DE', 'FR', 'JP'])}{rng.randint(0, 36**3):04X}"
            f"{rng.randint(70, 99)}{rng.randint(0, 99999):05d}",
            "genres": rng.sample(genres, rng.randint(1, 3)),
            "release_date": f"{rng.randint(1955, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "label": rng.choice(labels),
            "popularity": round(100 * rng.random() ** 4, 3),
            "path": f"audio/{i % 997:03d}/{i:09d}.ogg",
            "size": int(rng.lognormvariate(15.4, 0.5)),
            "codec": "vorbis",
            "bitrate": rng.choice([128, 160, 192, 256, 320]),
            "sample_rate": 44100,
            "channels": 2,
        }
        i += 1


def jsonl_items(total: int) -> list[bytes]:
    """One big JSONL dump, cut into one item per frame as a metadata shard would hold a catalog export."""
    out, size = [], 0
    for rec in track_records(1):
        line = json.dumps(rec, ensure_ascii=False).encode() + b"\n"
        out.append(line)
        size += len(line)
        if size >= total:
            break
    return [b"".join(out)]


def json_small_items(total: int) -> list[bytes]:
    """One small JSON file per track, each its own member and so its own frame: no shared context."""
    out, size = [], 0
    for rec in track_records(2):
        item = json.dumps(rec, ensure_ascii=False, indent=1).encode()
        out.append(item)
        size += len(item)
        if size >= total:
            break
    return out


def jpeg_like_items(total: int) -> list[bytes]:
    """JFIF headers with quantisation and Huffman tables, then entropy-coded data with 0xFF byte stuffing."""
    rng, out, size = random.Random(3), [], 0
    header = (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x48\x00\x48\x00\x00"
        + b"\xff\xdb\x00\x43\x00"
        + bytes(range(1, 65))
        + b"\xff\xc0\x00\x11\x08\x04\xb0\x04\xb0\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
        + b"\xff\xc4\x00\x1f\x00"
        + bytes(28)
        + b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    )
    while size < total:
        body = os.urandom(int(rng.lognormvariate(12.5, 0.6))).replace(b"\xff", b"\xff\x00")
        item = header + body + b"\xff\xd9"
        out.append(item)
        size += len(item)
    return out


def audio_items(total: int) -> tuple[list[bytes], str]:
    """OGG Vorbis made by sox if it is installed, else random bytes (what Vorbis/Opus packets look like)."""
    sox = shutil.which("sox")
    if sox:
        out, size, i = [], 0, 0
        with_tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}.ogg"
        while size < total:
            freq = 220 + 110 * (i % 7)
            subprocess.run(
                [sox, "-n", "-r", "44100", "-c", "2", str(with_tmp), "synth", "20", "pluck", str(freq),
                 "synth", "20", "pinknoise", "mix"],
                check=True,
                capture_output=True,
            )  # fmt: skip
            item = with_tmp.read_bytes()
            out.append(item)
            size += len(item)
            i += 1
        with_tmp.unlink(missing_ok=True)
        return out, "OGG Vorbis (sox)"
    items, size = [], 0
    rng = random.Random(4)
    while size < total:
        items.append(os.urandom(track_size(rng)))
        size += len(items[-1])
    return items, "random bytes (no sox)"


def add_compress_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", type=parse_levels, default=[-1, 1, 3, 9, 19], help="e.g. -1,1,3,9,19")
    p.add_argument("--size", type=parse_size, default=parse_size("32MiB"), help="data per kind")
    p.add_argument("--frame-size", type=parse_size, default=DEFAULT_FRAME_SIZE)
    p.add_argument(
        "--kinds", default="audio,image,jsonl,json-small", help="any of audio,image,jsonl,json-small"
    )


def compress_items(items: list[bytes], level: int, frame_size: int) -> tuple[int, float]:
    """(compressed bytes, seconds) framed as in a shard: each item starts a frame, frames <= frame_size."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True, threads=0)
    compressed = 0
    start = time.perf_counter()
    for item in items:
        view = memoryview(item)
        for pos in range(0, len(item), frame_size):
            compressed += len(cctx.compress(view[pos : pos + frame_size]))
    return compressed, time.perf_counter() - start


def bench_compress(args: argparse.Namespace) -> dict:
    """Compression ratio and single-thread MB/s per zstd level on audio-, image- and metadata-like data."""
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    makers: dict[str, Callable[[int], tuple[list[bytes], str]]] = {
        "audio": audio_items,
        "image": lambda n: (jpeg_like_items(n), "JPEG-like: JFIF header + stuffed random scan"),
        "jsonl": lambda n: (jsonl_items(n), "one JSONL catalog dump"),
        "json-small": lambda n: (json_small_items(n), "one small JSON per track, a frame each"),
    }
    results: dict[str, dict] = {}
    print(f"{'kind':<12}{'level':>6}{'ratio':>8}{'saved':>9}{'MB/s':>9}")
    for kind in kinds:
        items, what = makers[kind](args.size)
        total = sum(len(i) for i in items)
        results[kind] = {"data": what, "bytes": total, "items": len(items), "levels": {}}
        for level in args.levels:
            compressed, seconds = compress_items(items, level, args.frame_size)
            ratio = total / compressed
            results[kind]["levels"][level] = {"ratio": ratio, "mb_s": total / seconds / MB}
            print(
                f"{kind:<12}{level:>6}{ratio:>8.2f}{100 * (1 - compressed / total):>8.2f}%"
                f"{total / seconds / MB:>9.0f}"
            )
    print()
    for kind, r in results.items():
        print(f"{kind}: {r['data']}, {r['items']} items, {r['bytes'] / MB:.1f} MB")
    return results


# --- speed --------------------------------------------------------------------------------------------------


def add_speed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=parse_size, default=parse_size("512MiB"), help="random source data")
    p.add_argument("--levels", type=parse_levels, default=[-1, 1, 3])
    p.add_argument("--repeat", type=int, default=3, help="best of N runs (shared machines are noisy)")
    p.add_argument("--v2", action="store_true", help="also hash the BEP 52 merkle tree (hybrid/v2)")
    p.add_argument(
        "--cold",
        action="store_true",
        help="every run reads its sources from the disk (page cache dropped or the files evicted first), "
        "as a build of an archive does; without, from the page cache",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="then one run per level with per-thread figures (and, with py-spy installed, each thread's "
        "share of the GIL)",
    )


def bench_speed(args: argparse.Namespace) -> dict:
    """Shard writer throughput (real sinks, fsynced) against a plain copy of the same files.

    Both read the sources from the page cache after the first pass, so the figure compares the writer's
    CPU cost with the cost of the bytes themselves; on a disk slower than the writer the ratio nears 1.
    With --cold each run starts with its sources out of the cache, as in `bench.py build`.
    """
    work = Path(args.workdir) / "speed"
    pool = random_pool(work / "src", args.size, track_size, seed=5)
    members = [
        MemberSource(f"t{i}", f"audio/{i:05d}.ogg", "audio", 1.0, p.stat().st_size, p, 0)
        for i, p in enumerate(pool)
    ]
    total = sum(m.size for m in members)
    target = work / "out.bin"

    def copy() -> None:
        with open(target, "wb") as out:
            for p in pool:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, MiB)
            out.flush()
            os.fsync(out.fileno())

    def build(level: int, profile: dict | None = None) -> None:
        hasher = ShardHasher(4 * MiB, v2=args.v2)
        with open(target, "wb") as out:
            write_shard(out, members, level=level, manifest_mtime=0, sinks=hasher.sinks, profile=profile)
            out.flush()
            os.fsync(out.fileno())
        hasher.finish()

    cold = Cold([work / "src", target]) if args.cold else lambda: None

    def best(fn: Callable[[], None]) -> tuple[float, float]:
        runs = []
        for _ in range(args.repeat):
            cold()
            start, cpu = time.perf_counter(), cpu_seconds()
            fn()
            runs.append((time.perf_counter() - start, cpu_seconds() - cpu))
        return min(runs)

    copy_s, copy_cpu = best(copy)
    print(f"{total / MB:.0f} MB of random data in {len(pool)} files, best of {args.repeat}")
    print(f"cache: {cold.how}" if args.cold else "cache: sources read from the page cache (warm)")
    print(f"{'':<12}{'MB/s':>8}{'CPU s':>8}{'wall s':>8}{'build/copy':>12}")
    print(f"{'copy':<12}{total / copy_s / MB:>8.0f}{copy_cpu:>8.2f}{copy_s:>8.2f}")
    results = {"bytes": total, "copy_mb_s": total / copy_s / MB, "levels": {}}
    for level in args.levels:
        wall, cpu = best(lambda level=level: build(level))
        results["levels"][level] = {"mb_s": total / wall / MB, "cpu_s": cpu, "build_over_copy": wall / copy_s}
        name = f"level {level}"
        print(f"{name:<12}{total / wall / MB:>8.0f}{cpu:>8.2f}{wall:>8.2f}{wall / copy_s:>12.2f}")
    print(f"target          build/copy <= {BUILD_COPY_TARGET} (with v2={args.v2}, {os.cpu_count()} cores)")
    for level in args.levels if args.profile else ():
        profile: dict = {}
        cold()
        gil = gil_shares(lambda level=level, profile=profile: build(level, profile), work)
        print(
            f"level {level}: per thread, seconds (O_DIRECT {profile['O_DIRECT']}, zero-copy zstd "
            f"{profile['zero_copy_zstd']})" + ("; GIL: share of the wall time holding it" if gil else "")
        )
        for name, figures in profile["threads"].items():
            thread = "MainThread" if name == "main" else f"shard-{name}"
            held = f"  GIL {gil.get(thread, 0.0):.0%}" if gil else ""
            print(f"  {name:<9}" + "  ".join(f"{k} {v:.2f}" for k, v in sorted(figures.items())) + held)
        if gil is None:
            print("  (install py-spy to see each thread's share of the GIL)")
        results["levels"][level]["profile"] = profile
        results["levels"][level]["gil_share"] = gil
    target.unlink(missing_ok=True)
    return results


def gil_shares(run: Callable[[], None], work: Path) -> dict[str, float] | None:
    """run(), sampled by py-spy with --gil (only the thread holding the GIL is recorded): each thread's
    share of the samples, by thread name; None without py-spy."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        run()
        return None
    raw = work / "gil.txt"
    rate = 250
    cmd = [spy, "record", "--pid", str(os.getpid()), "--gil", "--nonblocking", "--threads"]
    cmd += ["-r", str(rate), "--format", "raw", "-o", str(raw)]
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached and sampling
    start = time.perf_counter()
    try:
        run()
    finally:
        wall = time.perf_counter() - start
        spy_proc.send_signal(signal.SIGINT)
        spy_proc.wait()
    samples: dict[str, int] = {}
    for line in raw.read_text().splitlines() if raw.exists() else ():
        stack, _, count = line.rpartition(" ")
        name = stack.split(";", 1)[0].partition("): ")[2] or "?"
        samples[name] = samples.get(name, 0) + int(count)
    raw.unlink(missing_ok=True)
    # Samples before and after run() (the sleep above, the wait) are the main thread's; a share is of
    # run()'s wall time, so that one is an upper bound.
    return {name: n / (wall * rate) for name, n in samples.items()}


# --- dispatch -----------------------------------------------------------------------------------------------


def add_resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size-gb", type=float, default=4.0, help="the shard's content in GB (4)")
    p.add_argument("--kill-at", type=float, default=0.75, help="fraction of the shard written at the kill")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["sealed", "touched"],
        default=["sealed", "touched"],
        help="restarts to time: with the seal holding, and with the .part touched first (both)",
    )


def add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size-gb", type=float, default=1.0, help="corpus size in GB (1)")
    p.add_argument("--jobs", type=int, default=0, help="packager build --jobs (0: its default)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three contenders; medians (3)")
    p.add_argument(
        "--scheduler",
        nargs="?",
        const="local",
        help="compare the Dask cluster path with the local pool instead: on this scheduler, or without an "
        "address on a scheduler and two workers started on 127.0.0.1",
    )
    p.add_argument("--shards", type=int, default=16, help="with --scheduler: shards to cut the corpus into")


def build_or_cluster(args: argparse.Namespace) -> dict:
    if args.scheduler:
        from bench_cluster import bench_cluster  # needs the cluster extra

        return bench_cluster(args)
    return bench_build(args)


COMMANDS: dict[
    str, tuple[Callable[[argparse.Namespace], dict], Callable[[argparse.ArgumentParser], None]]
] = {
    "plan": (bench_plan, add_plan_args),
    "index": (bench_index, add_index_args),
    "build": (build_or_cluster, add_build_args),
    "resume": (bench_resume, add_resume_args),
    "verify": (bench_verify, add_verify_args),
    "seed": (bench_seed, add_seed_args),
    "extract": (bench_extract, add_extract_args),
    "compress": (bench_compress, add_compress_args),
    "speed": (bench_speed, add_speed_args),
    "swarm": (bench_swarm, add_swarm_args),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="bench-data", help="where generated data goes (./bench-data)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, add_args) in COMMANDS.items():
        summary = (fn.__doc__ or "").strip().splitlines()[:1]
        # argparse %-formats a help string: a literal "75 %" must be doubled
        help_text = summary[0].replace("%", "%%") if summary else None
        add_args(sub.add_parser(name, help=help_text, description=fn.__doc__))
    args = parser.parse_args(argv)
    figures = COMMANDS[args.command][0](args)
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
