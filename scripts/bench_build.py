"""`bench.py build`: packager build against the disk's write limit and the naive peer pipeline, same files.

Three timings on one corpus of incompressible audio-like files, in one run:
  copy      `cat` of every file into one output file, then fsync: what the disk can write at best
  pipeline  `tar -cf - | zstd -3 -T0`, then `mktorrent` (v1) of the result, then `sha256sum`: three passes
  build     `packager build --jobs N`: shards + torrents + all hashes in one pass
Targets: build/copy <= 1.4, pipeline/build >= 2.5.

`bench.py resume`: one shard of --size-gb (4) built whole, then built again but killed (SIGKILL) once 75 %
of it is written, and restarted: the restart's wall time against the whole build's (target <= 40 %), and
the two shards compared byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TARGET_BUILD_OVER_COPY = 1.4
TARGET_PIPELINE_OVER_BUILD = 2.5
TARGET_RESUME_SHARE = 0.40


def make_corpus(folder: Path, total: int, seed: int = 7) -> list[tuple[str, int]]:
    """Files of random bytes (like OGG/MP3: nothing to compress), 1-8 MB each, reused across runs."""
    marker = folder / ".complete"
    if marker.exists() and json.loads(marker.read_text())["total"] == total:
        return [tuple(x) for x in json.loads(marker.read_text())["files"]]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    files, done, n = [], 0, 0
    while done < total:
        size = min(rng.randint(1_000_000, 8_000_000), total - done)
        rel = f"audio/{n % 16:02d}/{n:05d}.ogg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(folder / rel, "wb") as f:
            f.write(os.urandom(size))
        files.append((rel, size))
        done += size
        n += 1
    marker.write_text(json.dumps({"total": total, "files": files}))
    return files


def drop_caches() -> bool:
    """Evict the page cache so every contender reads from disk; needs root, else all read from memory."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(cmd: str | list[str], cwd: Path | None = None, shell: bool = False) -> float:
    drop_caches()
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, shell=shell, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _corpus_and_out(work: Path, size_gb: float) -> tuple[Path, int, list[tuple[str, int]], Path]:
    """The corpus under work/corpus (made once, reused) and an empty work/out for this run."""
    corpus = work / "corpus"
    total = int(size_gb * 1e9)
    print(f"corpus: {total / 1e9:.1f} GB of incompressible files under {corpus}", flush=True)
    files = make_corpus(corpus, total)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return corpus, total, files, out


def bench_build(args) -> dict:
    """Plain copy vs tar|zstd + mktorrent + sha256sum vs packager build, on the same corpus."""
    work = Path(args.workdir).resolve() / "build"
    corpus, total, files, out = _corpus_and_out(work, args.size_gb)
    cached = not drop_caches()
    if cached:
        print("note: cannot drop the page cache (not root?): inputs are read from memory by every contender")

    file_list = " ".join(f"'{corpus / rel}'" for rel, _ in files)
    copy_s = timed(f"cat {file_list} > '{out}/copy.bin' && sync '{out}/copy.bin'", shell=True)
    (out / "copy.bin").unlink()

    piece_exp = 18  # 256 KiB pieces: what our piece-size rule picks for 1 GB
    pipeline_s = timed(
        f"tar -cf - -C '{corpus}' audio | zstd -q -3 -T0 -o '{out}/x.tar.zst' && "
        f"mktorrent -l {piece_exp} -a http://127.0.0.1:6969/announce -o '{out}/x.torrent' "
        f"'{out}/x.tar.zst' && "
        f"sha256sum '{out}/x.tar.zst' > '{out}/x.sha256' && sync '{out}/x.tar.zst'",
        shell=True,
    )
    (out / "x.tar.zst").unlink()

    ws = out / "ws"
    exe = [sys.executable, "-m", "packager.cli"]
    subprocess.run(
        exe + ["init", str(ws), "--root", str(corpus), "--name", "bench"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cfg = ws / "release.toml"
    # Four shards per worker, so the pool stays busy to the end as it would over a real phase's thousands.
    from packager.build import default_jobs

    jobs = args.jobs or default_jobs()
    shard = max(16_000_000, int(total / (4 * jobs) * 1.04))
    cfg.write_text(cfg.read_text().replace('shard_size = "50GB"', f"shard_size = {shard}"))
    catalog = out / "catalog.jsonl"
    catalog.write_text(
        "".join(
            json.dumps({"id": rel, "path": rel, "kind": "audio", "popularity": 50, "size": n}) + "\n"
            for rel, n in files
        )
    )
    subprocess.run(exe + ["ingest", str(ws), str(catalog)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(exe + ["plan", str(ws)], check=True, stdout=subprocess.DEVNULL)
    build_s = timed(exe + ["build", str(ws), "--jobs", str(args.jobs)])
    shards = sorted((ws / "shards").iterdir())
    written = sum(p.stat().st_size for p in shards)

    mb = total / 1e6
    print(f"{'contender':<10} {'wall s':>8} {'MB/s':>8}")
    for name, secs in (("copy", copy_s), ("pipeline", pipeline_s), ("build", build_s)):
        print(f"{name:<10} {secs:>8.2f} {mb / secs:>8.0f}")
    print(f"build: {len(shards)} shards, {written / 1e9:.2f} GB written, --jobs {args.jobs or jobs}")
    r1, r2 = build_s / copy_s, pipeline_s / build_s
    ok1 = "ok" if r1 <= TARGET_BUILD_OVER_COPY else "MISSED"
    ok2 = "ok" if r2 >= TARGET_PIPELINE_OVER_BUILD else "MISSED"
    print(f"build/copy     {r1:5.2f}  (target <= {TARGET_BUILD_OVER_COPY})  {ok1}")
    print(f"pipeline/build {r2:5.2f}  (target >= {TARGET_PIPELINE_OVER_BUILD})  {ok2}")
    shutil.rmtree(ws / "shards", ignore_errors=True)
    return {
        "copy_s": copy_s,
        "pipeline_s": pipeline_s,
        "build_s": build_s,
        "build_over_copy": r1,
        "pipeline_over_build": r2,
        "page_cache_dropped": not cached,
    }


def _workspace(out: Path, name: str, corpus: Path, files: list[tuple[str, int]], shard: int) -> Path:
    """A workspace over `corpus` whose shards are `shard` bytes, ingested and planned."""
    ws = out / name
    exe = [sys.executable, "-m", "packager.cli"]
    init = ["init", str(ws), "--root", str(corpus), "--name", "bench"]
    subprocess.run(exe + init, check=True, stdout=subprocess.DEVNULL)
    cfg = ws / "release.toml"
    cfg.write_text(cfg.read_text().replace('shard_size = "50GB"', f"shard_size = {shard}"))
    catalog = out / f"{name}.jsonl"
    catalog.write_text(
        "".join(
            json.dumps({"id": rel, "path": rel, "kind": "audio", "popularity": 50, "size": n}) + "\n"
            for rel, n in files
        )
    )
    subprocess.run(exe + ["ingest", str(ws), str(catalog)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(exe + ["plan", str(ws)], check=True, stdout=subprocess.DEVNULL)
    return ws


def bench_resume(args) -> dict:
    """One shard built whole, then killed at 75 % and restarted: restart time / whole build (<= 40 %)."""
    work = Path(args.workdir).resolve() / "resume"
    corpus, total, files, out = _corpus_and_out(work, args.size_gb)
    from packager.fsutil import file_sha256

    exe = [sys.executable, "-m", "packager.cli"]
    whole_ws = _workspace(out, "whole", corpus, files, 2 * total)
    whole_s = timed(exe + ["build", str(whole_ws)])
    [whole] = sorted((whole_ws / "shards").iterdir())
    expected = whole.stat().st_size

    killed_ws = _workspace(out, "killed", corpus, files, 2 * total)
    part = killed_ws / "shards" / (whole.name + ".part")
    drop_caches()
    started = time.perf_counter()
    proc = subprocess.Popen(exe + ["build", str(killed_ws)], stdout=subprocess.DEVNULL)
    while proc.poll() is None and not (part.exists() and part.stat().st_size >= args.kill_at * expected):
        time.sleep(0.005)
    killed_after = time.perf_counter() - started
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = part.stat().st_size if part.exists() else expected

    drop_caches()
    start = time.perf_counter()
    command = exe + ["build", str(killed_ws), "--json"]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    restart_s = time.perf_counter() - start
    report = json.loads(done.stdout)
    kept = report["resumed"][0]["from_byte"] if report["resumed"] else 0
    [again] = sorted((killed_ws / "shards").iterdir())
    identical = again.name == whole.name and file_sha256(again) == file_sha256(whole)

    share = restart_s / whole_s
    print(f"{'whole build':<34} {whole_s:>7.2f} s   one shard of {expected / 1e9:.2f} GB")
    print(f"{'killed (SIGKILL) at':<34} {killed_at / expected:>7.0%}     after {killed_after:.2f} s")
    print(f"{'restart':<34} {restart_s:>7.2f} s   resumed from byte {kept:,} ({kept / expected:.0%})")
    verdict = "ok" if share <= TARGET_RESUME_SHARE and identical else "MISSED"
    print(f"restart/whole  {share:5.2f}  (target <= {TARGET_RESUME_SHARE})  {verdict}")
    print(f"byte-identical {'yes' if identical else 'NO'}")
    if report["restarted"]:
        print(f"checkpoint refused: {report['restarted']}")
    shutil.rmtree(out, ignore_errors=True)
    return {
        "whole_s": whole_s,
        "killed_at_fraction": killed_at / expected,
        "restart_s": restart_s,
        "resumed_from_byte": kept,
        "restart_over_whole": share,
        "identical": identical,
    }


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--jobs", type=int, default=0, help="packager build --jobs (0: its default)")
    p.add_argument("--workdir", default="bench-data")
    bench_build(p.parse_args())
