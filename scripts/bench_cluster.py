"""`bench.py build --scheduler [ADDR]`: the Dask cluster path against the local pool, same files, one run.

Two workspaces over one corpus of incompressible audio-like files, cut into the same shards:
  local    `packager build --jobs W`                    W shards at a time in this machine's process pool
  cluster  `packager build --scheduler ADDR --jobs 1`   the same shards on W Dask workers of one thread
Without ADDR the bench starts a `dask scheduler` and two `dask worker --nthreads 1` on 127.0.0.1 (W = 2).
Both are timed as commands (Python start and imports included); the overhead is their difference, in total
and per shard. Two floors of it are measured on the cluster too: the round trip of an empty task, and the
cost of one progress event on a worker. The two builds' shards must have the same SHA-256.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_build import make_corpus, timed

from packager.state import open_state

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))  # the repository: tests/interop/harness.py
from tests.interop.harness import dask_cluster  # noqa: E402 - after the path it is found on

EXE = [sys.executable, "-m", "packager.cli"]


def _noop() -> None:
    return None


def _event_cost(n: int = 2000, dask_worker=None) -> float:
    start = time.perf_counter()
    for i in range(n):
        dask_worker.log_event("packager-bench", ["shard", "attempt", "bytes", i])
    return (time.perf_counter() - start) / n


def _workspace(ws: Path, corpus: Path, catalog: Path, shard: int) -> None:
    subprocess.run(EXE + ["init", str(ws), "--root", str(corpus), "--name", "bench"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    cfg = ws / "release.toml"
    cfg.write_text(cfg.read_text().replace('shard_size = "50GB"', f"shard_size = {shard}"))
    subprocess.run(EXE + ["ingest", str(ws), str(catalog)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(EXE + ["plan", str(ws)], check=True, stdout=subprocess.DEVNULL)


def _shard_hashes(ws: Path) -> dict[str, str]:
    with open_state(ws) as state:
        return {file: sha256 for file, _, sha256 in state.built_files()}


def _fixed_costs(address: str) -> tuple[float, float]:
    """What a cluster build pays once: importing distributed, and connecting plus checking the workers."""
    from distributed import Client

    from packager.cluster import worker_fingerprint

    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    imports = min(run("import packager.cluster, distributed") for _ in range(3))
    imports -= min(run("import packager.build") for _ in range(3))
    start = time.perf_counter()
    with Client(address, timeout=10, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=30)
        client.run(worker_fingerprint)
    return imports, time.perf_counter() - start


def _floors(address: str) -> tuple[float, float]:
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=30)
        trips = []
        for _ in range(30):
            start = time.perf_counter()
            client.submit(_noop, pure=False).result()
            trips.append(time.perf_counter() - start)
        event = statistics.median(client.run(_event_cost).values())
    return statistics.median(trips), event


def bench_cluster(args) -> dict:
    """Local pool vs Dask cluster (two local workers unless --scheduler ADDR): overhead per shard, total."""
    work = Path(args.workdir).resolve() / "cluster"
    corpus = work / "corpus"
    total = int(args.size_gb * 1e9)
    files = make_corpus(corpus, total)
    catalog = work / "catalog.jsonl"
    catalog.write_text(
        "".join(
            json.dumps({"id": rel, "path": rel, "kind": "audio", "popularity": 50, "size": n}) + "\n"
            for rel, n in files
        )
    )
    shards = args.shards
    shard = int(total / shards * 1.02)
    spaces = {}
    for name in ("local", "cluster"):
        ws = work / name
        subprocess.run(["rm", "-rf", str(ws)], check=True)
        _workspace(ws, corpus, catalog, shard)
        spaces[name] = ws
    with contextlib.ExitStack() as stack:
        address, expect = args.scheduler, 1
        if address == "local":
            # The workers import this file's probes (_noop, _event_cost) as the module bench_cluster.
            cluster = stack.enter_context(dask_cluster(work / "dask", workers=2, pythonpath=(str(SCRIPTS),)))
            address, expect = cluster.address, 2
        from distributed import Client

        with Client(address, timeout=10, set_as_default=False) as client:
            client.wait_for_workers(expect, timeout=60)
            threads = sum(client.nthreads().values())
        print(f"corpus: {total / 1e9:.1f} GB in {len(files)} files; {shards} shards of ~{shard / 1e6:.0f} "
              f"MB; cluster {address} with {threads} worker threads", flush=True)  # fmt: skip
        local_s = timed(EXE + ["build", str(spaces["local"]), "--jobs", str(threads)])
        cluster_s = timed(EXE + ["build", str(spaces["cluster"]), "--scheduler", address, "--jobs", "1"])
        imports, connect = _fixed_costs(address)
        try:
            trip, event = _floors(address)
        except Exception as e:  # noqa: BLE001 - another cluster's workers cannot import this script
            print(f"floors not measured on {address}: {type(e).__name__}: {e}".splitlines()[0])
            trip = event = float("nan")
    built = len(_shard_hashes(spaces["cluster"]))
    identical = _shard_hashes(spaces["local"]) == _shard_hashes(spaces["cluster"])
    overhead = cluster_s - local_s
    mb = total / 1e6
    print(f"{'contender':<10} {'wall s':>8} {'MB/s':>8}")
    for name, secs in (("local", local_s), ("cluster", cluster_s)):
        print(f"{name:<10} {secs:>8.2f} {mb / secs:>8.0f}")
    fixed = imports + connect
    per_shard = (overhead - fixed) / built
    print(f"overhead   {overhead:+.2f} s in total: {fixed:.2f} s once (import distributed {imports:.2f} s, "
          f"connect and check the workers {connect:.2f} s), {per_shard * 1000:+.0f} ms per shard "
          f"({built} shards)")  # fmt: skip
    print(f"floors     empty task round trip {trip * 1000:.1f} ms; one progress event {event * 1e6:.1f} us "
          "on a worker (one per 0.5 s per running shard)")  # fmt: skip
    print(f"shards byte-identical to the local pool's: {'yes' if identical else 'NO'}")
    for ws in spaces.values():
        subprocess.run(["rm", "-rf", str(ws / "shards")], check=True)
    return {
        "local_s": local_s,
        "cluster_s": cluster_s,
        "overhead_s": overhead,
        "fixed_s": fixed,
        "overhead_per_shard_s": per_shard,
        "shards": built,
        "task_round_trip_s": trip,
        "progress_event_s": event,
        "identical": identical,
    }
