"""`bench.py plan`: ingest and plan wall time and peak RSS on a generated catalog of N rows."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS_PER_MILLION = 6.0
TARGET_RSS_MB = 300


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def write_catalog(path: Path, rows: int, seed: int = 1) -> None:
    if (
        path.exists()
        and path.with_suffix(".rows").exists()
        and path.with_suffix(".rows").read_text() == str(rows)
    ):
        return
    rng = random.Random(seed)
    kinds = ["audio"] * 8 + ["art", "metadata"]
    tmp = path.with_suffix(".part")
    with open(tmp, "w") as f:
        for i in range(rows):
            kind = kinds[i % 10]
            f.write(
                json.dumps(
                    {
                        "id": f"{i:09d}",
                        "path": f"{kind}/{i % 997:03d}/{i:09d}.ogg",
                        "kind": kind,
                        "popularity": round(100 * rng.random() ** 4, 3),
                        "size": int(rng.lognormvariate(15, 0.6)),
                        "title": f"track {i}",
                    }
                )
                + "\n"
            )
    tmp.replace(path)
    path.with_suffix(".rows").write_text(str(rows))


def bench_plan(args) -> dict:
    """Ingest (--trust-sizes) and plan a generated catalog; wall time and peak RSS of each."""
    work = Path(args.workdir) / "plan"
    work.mkdir(parents=True, exist_ok=True)
    catalog = work / f"catalog-{args.rows}.jsonl"
    print(f"generating {args.rows:,} catalog rows ...", flush=True)
    write_catalog(catalog, args.rows)
    root = work / "archive"
    root.mkdir(exist_ok=True)
    ws = work / "ws"
    for name in ("release.toml", "state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
        (ws / name).unlink(missing_ok=True)
    exe = [sys.executable, "-m", "packager.cli"]
    subprocess.run(
        exe + ["init", str(ws), "--root", str(root), "--name", "bench"], check=True, stdout=subprocess.DEVNULL
    )
    ingest_s, ingest_mb = run_measured(exe + ["ingest", str(ws), str(catalog), "--trust-sizes"])
    plan_s, plan_mb = run_measured(exe + ["plan", str(ws)])
    target_s = TARGET_SECONDS_PER_MILLION * args.rows / 1e6
    print(f"rows            {args.rows:>12,}")
    print(
        f"ingest          {ingest_s:>10.2f} s  peak RSS {ingest_mb:6.0f} MB   (target < {target_s:.1f} s, "
        f"< {TARGET_RSS_MB} MB)"
    )
    print(
        f"plan            {plan_s:>10.2f} s  peak RSS {plan_mb:6.0f} MB   (target < {target_s:.1f} s, "
        f"< {TARGET_RSS_MB} MB)"
    )
    print(f"rows/s          ingest {args.rows / ingest_s:,.0f}   plan {args.rows / plan_s:,.0f}")
    return {
        "rows": args.rows,
        "ingest_s": ingest_s,
        "ingest_rss_mb": ingest_mb,
        "plan_s": plan_s,
        "plan_rss_mb": plan_mb,
    }


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--workdir", default="bench-data")
    bench_plan(p.parse_args())
