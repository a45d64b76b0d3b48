"""`bench.py plan`: the catalog path at the real catalog's shape, step by step.

Generates a catalog shaped like the real one (random 22-character base62 ids as Spotify's, hashed folders
`audio/ab/cd/<id>.ogg`, a few extra fields) and a monthly refresh of it (1 % of the rows changed or new,
0.1 % gone), then measures, each as its own process: first ingest, re-ingest of the refresh, plan, status,
and the member-index write for every planned member, with wall time, peak RSS and the state's size on disk.
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
import zlib
from pathlib import Path

import orjson

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The targets at 10^8 rows, scaled linearly to the rows measured (status: flat).
TARGET_S_PER_1E8 = {"ingest": 600, "re-ingest": 300, "plan": 600, "member index": 600}
TARGET_RSS_MB = 2000
TARGET_STATUS_S = 5.0


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000, help="catalog rows to generate (1000000)")
    p.add_argument("--keep", action="store_true", help="keep the generated catalogs for the next run")
    p.add_argument(
        "--steps",
        default="ingest,re-ingest,plan,status,member index,locate",
        help="comma-separated steps to run (later steps need the earlier ones)",
    )
    p.add_argument(
        "--from-state",
        metavar="FILE",
        help="start from a copy of this state.sqlite (e.g. one saved after ingest) instead of a new "
        "workspace; the catalogs are then generated only for the ingest steps",
    )
    p.add_argument("--save-state", metavar="FILE", help="copy the state here once the steps are done")
    p.add_argument(
        "--reuse", action="store_true", help="run the steps on the workspace the last run left (no copy)"
    )
    p.add_argument(
        "--index-read",
        choices=("publish", "join"),
        default="publish",
        help="how the member index step reads the members' rows: as publish reads them (index_rows: two "
        "ordered passes, by shard, then by item rowid range), or joined with their items shard by shard "
        "in the index's workers (member_rows, the plain read publish's is checked against)",
    )


def _here_first() -> dict[str, str]:
    """The environment for a child that runs this file as a script: the tree bench.py runs from first on
    its path. A script's own folder replaces the current one on sys.path, so without it the child imported
    packager from wherever it is installed (an editable install: another worktree), not the tree measured."""
    return os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    }


def run_measured(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one child process and the children it waited for.
    CPU time is the steadier figure on a machine shared with other work."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=_here_first())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _row(rng: random.Random, n: int) -> dict:
    item_id = "".join(rng.choices(BASE62, k=22))
    r = rng.random()
    kind, ext = ("audio", "ogg") if r < 0.9 else ("art", "jpg") if r < 0.99 else ("metadata", "jsonl")
    folder = format(zlib.crc32(item_id.encode()) & 0xFFFF, "04x")  # hashed folders, as real archives use
    return {
        "id": item_id,
        "path": f"{kind}/{folder[:2]}/{folder[2:]}/{item_id}.{ext}",
        "kind": kind,
        "popularity": round(100 * rng.random() ** 4, 3),
        "size": int(rng.lognormvariate(15.4, 0.5)) if kind == "audio" else int(rng.lognormvariate(11, 1)),
        "title": f"Track {n} of album {n // 12}",
        "artist_id": "".join(rng.choices(BASE62, k=22)),
        "duration_ms": rng.randint(30_000, 600_000),
        "explicit": rng.random() < 0.1,
    }


def write_catalogs(work: Path, rows: int, seed: int = 1, refresh_too: bool = True) -> tuple[Path, Path]:
    """The first catalog, and its refresh: 0.5 % changed, 0.5 % new, 0.1 % gone (same order otherwise)."""
    base, refresh = work / f"catalog-{rows}.jsonl", work / f"refresh-{rows}.jsonl"
    done = work / f"catalog-{rows}.done"
    if done.exists() and base.exists() and (refresh.exists() or not refresh_too):
        return base, refresh
    if not refresh_too:
        refresh = Path(os.devnull)
    rng, change = random.Random(seed), random.Random(seed + 1)
    refresh_part = refresh.with_suffix(".part") if refresh_too else refresh
    with open(base.with_suffix(".part"), "wb") as b, open(refresh_part, "wb") as r:
        for n in range(rows):
            row = _row(rng, n)
            line = orjson.dumps(row) + b"\n"
            b.write(line)
            x = change.random()
            if x < 0.001:
                continue  # gone
            if x < 0.006:
                row["popularity"] = round(row["popularity"] * 1.1 + 0.01, 3)
                row["title"] += " (remastered)"
                line = orjson.dumps(row) + b"\n"
            r.write(line)
            if x > 0.995:
                r.write(orjson.dumps(_row(change, rows + n)) + b"\n")
    base.with_suffix(".part").replace(base)
    if refresh_too:
        refresh.with_suffix(".part").replace(refresh)
    done.write_text(str(rows))
    return base, refresh


def state_size(ws: Path) -> int:
    return sum(p.stat().st_size for p in ws.glob("state.sqlite*"))


def bench_plan(args) -> dict:
    """Ingest, re-ingest of a refresh, plan, status and member-index write of a real-shaped catalog."""
    work = Path(args.workdir) / "plan"
    work.mkdir(parents=True, exist_ok=True)
    steps = [s.strip() for s in args.steps.split(",")]
    base = refresh = None
    if not (args.from_state or args.reuse) or {"ingest", "re-ingest"} & set(steps):
        print(f"generating {args.rows:,} catalog rows and their refresh ...", flush=True)
        t0 = time.perf_counter()
        base, refresh = write_catalogs(work, args.rows, refresh_too="re-ingest" in steps)
        print(f"  ({time.perf_counter() - t0:.0f} s; {base.stat().st_size / 1e9:.2f} GB)", flush=True)
    root = work / "archive"
    root.mkdir(exist_ok=True)
    ws = work / "ws"
    exe = [sys.executable, "-m", "packager.cli"]
    if not args.reuse:
        shutil.rmtree(ws / "member-index", ignore_errors=True)
        for name in ("release.toml", "state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
            (ws / name).unlink(missing_ok=True)
        subprocess.run(
            exe + ["init", str(ws), "--root", str(root), "--name", "bench"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if args.from_state:
        shutil.copyfile(args.from_state, ws / "state.sqlite")
    commands = {
        "ingest": exe + ["ingest", str(ws), str(base), "--trust-sizes"],
        "re-ingest": exe + ["ingest", str(ws), str(refresh), "--trust-sizes"],
        "plan": exe + ["plan", str(ws)],
        "status": exe + ["status", str(ws)],
        "member index": [
            sys.executable,
            __file__,
            "_index",
            str(ws),
            str(ws / "member-index"),
            args.index_read,
        ],  # fmt: skip
        "fake builds": [sys.executable, __file__, "_builds", str(ws)],
    }
    figures: dict = {"rows": args.rows, "steps": {}}
    print(f"{'rows':<14}{args.rows:>14,}")
    print(f"{'step':<14}{'wall s':>10}{'µs/row':>9}{'cpu s':>9}{'peak RSS MB':>13}{'state GB':>10}   target")
    for step in steps:
        if step == "locate":
            out = subprocess.run(
                [sys.executable, __file__, "_locate", str(ws / "member-index"), str(ws)],
                check=True,
                capture_output=True,
                text=True,
                env=_here_first(),
            ).stdout
            ms = json.loads(out)["ms_per_lookup"]
            figures["steps"]["locate"] = {"ms_per_lookup": ms}
            print(f"{'locate':<14}{ms:>10.3f} ms per id (cold process, 100 random ids)")
            continue
        if step == "member index":  # as if every shard were built: not measured
            subprocess.run(commands["fake builds"], check=True, env=_here_first())
        wall, cpu, rss = run_measured(commands[step])
        size = state_size(ws)
        figures["steps"][step] = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "state_bytes": size}
        if step == "status":
            target = f"<= {TARGET_STATUS_S:g} s"
        else:
            target = f"<= {TARGET_S_PER_1E8[step] * args.rows / 1e8:.1f} s, {TARGET_RSS_MB} MB"
        per_row = wall / args.rows * 1e6
        print(
            f"{step:<14}{wall:>10.2f}{per_row:>9.2f}{cpu:>9.1f}{rss:>13.0f}{size / 1e9:>10.2f}   {target}",
            flush=True,
        )
    if args.save_state:
        shutil.copyfile(ws / "state.sqlite", args.save_state)
    if not args.keep and base is not None:
        for p in (base, refresh, work / f"catalog-{args.rows}.done"):
            if p != Path(os.devnull):
                p.unlink(missing_ok=True)
    return figures


FRAME_BYTES = 1500  # the synthetic seek table: one frame a member


def _fake_builds(ws: Path) -> None:
    """Record every planned shard as built, as `packager build` would: each member's hashes, its offset
    and its frame (random hashes: real ones do not compress either). The hashes come from a seeded generator
    in batches, written in key order: one INSERT ... SELECT randomblob() took over 19 minutes at 3*10^7;
    seeded, every read path gives the same index bytes."""
    import sqlite3

    db = sqlite3.connect(ws / "state.sqlite", isolation_level=None)
    db.execute("PRAGMA cache_size=-262144")
    reader = sqlite3.connect(f"file:{ws / 'state.sqlite'}?mode=ro", uri=True, isolation_level=None)
    db.execute("BEGIN")
    db.execute("DELETE FROM member_builds")
    members = reader.execute("SELECT shard_id, ord FROM members ORDER BY shard_id, ord")
    insert = (
        "INSERT INTO member_builds (shard_id, ord, xxh3_128, sha256, offset, first_frame, last_frame) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    rng = random.Random(12)
    while batch := members.fetchmany(100_000):
        hexes = rng.randbytes(48 * len(batch)).hex()
        rows = []
        for i, (shard, k) in enumerate(batch):
            at = 96 * i
            rows.append((shard, k, hexes[at : at + 32], hexes[at + 32 : at + 96], k * 2048 + 1024, k, k))
        db.executemany(insert, rows)
    reader.close()
    db.execute("UPDATE shards SET state = 'built'")
    db.execute("COMMIT")
    db.close()


def _bench_frames(items: int) -> list[tuple[int, int, int]]:
    """A synthetic seek table of one frame a member, as container.read_frame_spans gives a shard's
    (publish reads each shard's: a few kB). Module level: the index's workers run it."""
    return [(k * FRAME_BYTES, FRAME_BYTES, k * 2048) for k in range(items)]


def _bench_rows(source: tuple, n: int):
    """packager before the two-pass reader: the rows of one shard as it read them (for before/after)."""
    from packager.member_index import member_rows
    from packager.state import State

    state_path, shard_id, items = source
    state = State(Path(state_path), readonly=True)
    try:
        yield from member_rows(state.iter_member_records(shard_id), _bench_frames(items), n)
    finally:
        state.close()


def _join_rows(job: tuple):
    """The rows of one shard joined with their items (--index-read join; module level: workers run it)."""
    state_path, shard_id, items, n = job
    yield from _bench_rows((state_path, shard_id, items), n)


def _write_index(ws: Path, target: Path, read: str = "publish") -> None:
    """The member index of every built shard, as publish writes it (or, with read="join", from rows joined
    shard by shard)."""
    from packager import layout
    from packager.manifest import FileEntry, TorrentEntry
    from packager.member_index import MemberIndexWriter
    from packager.state import State

    state = State(ws / "state.sqlite", readonly=True)
    piece = 16 * 2**20
    torrents = []
    for n, s in enumerate(state.shards(), 1):
        entry = TorrentEntry(
            s.name, s.phase, s.tier, s.pop_min, s.pop_max, s.items, s.bytes, "v1", piece, "0" * 40, None,
            f"magnet:?xt=urn:btih:{'0' * 40}",
            (FileEntry(f"shards/{s.name}.tar.zst", s.items * FRAME_BYTES + 1000, "0" * 64),
             FileEntry(f"torrents/{s.name}.tar.zst.torrent", 1000, "0" * 64)),
            "2026-01-01T00:00:00Z",
        )  # fmt: skip
        torrents.append((n, entry, s.id, s.items))
    state.close()
    shutil.rmtree(target, ignore_errors=True)
    with MemberIndexWriter(target / layout.MEMBER_INDEX_DIR, "bench") as index:
        try:
            from packager.index_rows import add_built_members
        except (
            ImportError
        ):  # packager before it (for before/after figures): one process, rows joined at random
            index.add_torrents((n, e, _bench_rows((str(state.path), i, k), n)) for n, e, i, k in torrents)
        else:
            if read == "join":
                index.add_rows_in_workers(
                    [(n, e) for n, e, _, _ in torrents],
                    [((str(state.path), i, k, n), k) for n, _, i, k in torrents],
                    _join_rows,
                )
            else:
                add_built_members(index, state.path, torrents, _bench_frames)
        index.finish()


def _locate(index: Path, ws: Path) -> None:
    """100 ids at random from the state, looked up one by one."""
    import sqlite3

    from packager.member_index import MemberIndex

    db = sqlite3.connect(f"file:{ws / 'state.sqlite'}?mode=ro", uri=True)
    top = db.execute("SELECT MAX(n) FROM items").fetchone()[0]
    rng, ids = random.Random(5), []
    while len(ids) < 100:
        row = db.execute(
            "SELECT i.id FROM items i JOIN members m ON m.item_rowid = i.n WHERE i.n = ?",
            (rng.randint(1, top),),
        ).fetchone()
        if row:
            ids.append(row[0])
    start = time.perf_counter()
    with MemberIndex.open(index) as idx:
        for i in ids:
            (loc,), _ = idx.locate([i])
            assert loc.id == i
    print(json.dumps({"ms_per_lookup": (time.perf_counter() - start) * 1000 / len(ids)}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_index"]:
        _write_index(Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:5])
    elif sys.argv[1:2] == ["_builds"]:
        _fake_builds(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["_locate"]:
        _locate(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        p = argparse.ArgumentParser()
        p.add_argument("--workdir", default="bench-data")
        add_plan_args(p)
        bench_plan(p.parse_args())
