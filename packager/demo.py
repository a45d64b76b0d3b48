"""`packager demo`: a deterministic synthetic archive, run through every stage that exists.

The archive imitates the real one in miniature: incompressible "audio" (random bytes behind an OGG page
header), small "art" (random bytes behind a JPEG header), and one JSONL metadata file that compresses
well, with Zipf-like popularity so the tiers are uneven the way listening is.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from . import layout
from .build import build
from .catalog import IngestOptions, ingest
from .config import SeedSettings
from .container import ShardReader
from .errors import ShardBuildError
from .fetch import FetchOptions, SwarmSettings, Via, fetch
from .plan import plan
from .publish import publish
from .seed.events import Listening
from .seed.seeder import seed
from .seed.selection import whitelist_hashes
from .signing import generate_keypair, load_signing_key, public_key_path
from .units import format_size
from .verify import VerifyOptions, format_ranges, verify
from .workspace import Workspace

SEED = 20261125
DEMO_CONFIG = """\
# The demo release: the same shape as the real one, with shard sizes scaled down to megabytes.
[release]
name = "demo"
root = "{root}"
mtime = 1735689600

[torrents]
trackers = [["http://127.0.0.1:6969/announce"]]
web_seeds = []

[publish]
base_url = "https://example.org/demo/torrents/"
# Unencrypted, for the demo only: a real release key is made with a password by `packager keygen`.
signing_key = "../keys/demo.key"

[[phases]]
name = "metadata"
kinds = ["metadata"]
shard_size = "50GB"
level = 12
frame_size = "1MiB"

[[phases]]
name = "audio"
kinds = ["audio"]
shard_size = "4MB"
level = -1
frame_size = "1MiB"

  [[phases.tiers]]
  name = "t1"
  min_popularity = 60

  [[phases.tiers]]
  name = "t2"
  min_popularity = 30
  max_popularity = 60

  [[phases.tiers]]
  name = "t3"
  min_popularity = 10
  max_popularity = 30

  [[phases.tiers]]
  name = "t4"
  max_popularity = 10

[[phases]]
name = "art"
kinds = ["art"]
shard_size = "1MB"
level = -1
frame_size = "1MiB"
format = "hybrid"
"""

_WORDS = (
    "river",
    "night",
    "blue",
    "echo",
    "paper",
    "silver",
    "north",
    "glass",
    "ember",
    "tide",
    "lantern",
    "velvet",
    "orbit",
    "hollow",
    "cedar",
    "static",
    "harbor",
    "ivory",
    "signal",
    "meadow",
)


def _title(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS).capitalize() for _ in range(n))


def generate_archive(root: Path, audio_files: int = 240, seed: int = SEED) -> Path:
    """Write the synthetic archive under root and return the path of its JSONL catalog."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, tracks = [], []
    albums = max(1, audio_files // 8)
    for a in range(albums):
        artist = f"artist{a % 37:03d}"
        album = f"album{a:04d}"
        art = f"art/{artist}/{album}.jpg"
        body = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(rng.randint(3_000, 20_000))
        _write(root / art, body)
        rows.append(
            {
                "id": f"art-{a:05d}",
                "path": art,
                "kind": "art",
                "popularity": round(100 / (a + 1) ** 0.6, 3),
                "size": len(body),
                "album": album,
            }
        )
    for t in range(audio_files):
        a = t % albums
        artist, album = f"artist{a % 37:03d}", f"album{a:04d}"
        title = _title(rng, rng.randint(1, 3))
        path = f"audio/{artist}/{album}/{t:05d} {title}.ogg"
        # A quarter of the files are large, so some shards hold one file only.
        size = int(rng.lognormvariate(10.8, 0.7)) if t % 4 else rng.randint(60_000, 250_000)
        body = b"OggS\x00\x02" + rng.randbytes(max(0, size - 6))
        _write(root / path, body)
        popularity = round(100 / (t + 1) ** 0.55, 3)  # Zipf-like: a few tracks take most listens
        rows.append(
            {
                "id": f"trk-{t:06d}",
                "path": path,
                "kind": "audio",
                "popularity": popularity,
                "size": len(body),
                "title": title,
                "artist": artist,
            }
        )
        tracks.append(
            {
                "id": f"trk-{t:06d}",
                "title": title,
                "artist": artist,
                "album": album,
                "duration_ms": rng.randint(90_000, 420_000),
                "isrc": f"XX{rng.randint(0, 10**10):010d}",
                "popularity": popularity,
            }
        )
    meta = "".join(json.dumps(t, sort_keys=True) + "\n" for t in tracks * 20).encode()
    _write(root / "metadata/tracks.jsonl", meta)
    rows.append(
        {
            "id": "meta-tracks",
            "path": "metadata/tracks.jsonl",
            "kind": "metadata",
            "popularity": 1000,
            "size": len(meta),
        }
    )
    catalog = root.parent / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return catalog


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size != len(data):
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)


def run_demo(folder: Path, audio_files: int = 240, say: Callable[[str], None] = print) -> Path:
    """Generate the archive (once) and run every stage on it; returns the workspace path."""
    folder = Path(folder).resolve()
    root, workspace = folder / "archive", folder / "release"
    say(f"[bold]1. archive[/]  generating {audio_files} audio files, art and metadata under {root}")
    catalog = generate_archive(root, audio_files)
    if not (workspace / layout.CONFIG).exists():
        Workspace.init(workspace, root, "demo").close()
        (workspace / layout.CONFIG).write_text(DEMO_CONFIG.replace("{root}", str(root)), encoding="utf-8")
    with Workspace.open(workspace) as ws:
        config, state = ws.config, ws.state
        report = ingest(ws, [catalog], IngestOptions())
        say(
            f"[bold]2. ingest[/]   {report.rows} catalog rows: {report.added} added, "
            f"{report.unchanged} unchanged"
        )
        planned = plan(ws)
        say(f"[bold]3. plan[/]     {len(planned.shards)} new shards for {planned.items} items")
        built = build(ws, jobs_count=0)
        if built.failed:
            raise ShardBuildError(*built.failed[0])
        say(
            f"[bold]4. build[/]    {len(built.built)} shards built, {built.skipped} already built, "
            f"in {ws.shards_dir}"
        )
        _show_extract(ws, folder, say)
        say("[bold]5. torrents[/] one per shard, in " + str(ws.torrents_dir))
        for row in state.shards():
            say(f"   {state.shard_extras(row.id)['magnet']}")
        if not config.signing_key.exists():
            generate_keypair(config.signing_key, password=None)
        key = lambda: load_signing_key(config.signing_key)  # noqa: E731
        published = [publish(ws, p.name, key=key) for p in config.phases if state.shards(phase=p.name)]
        last = published[-1]
        say(
            f"[bold]6. publish[/]  {last.torrents} torrents of {len(published)} phases in {last.folder}: "
            "release.json, torrents.json, SHA256SUMS, feed.xml, the member index (members/)"
        )
        say(
            f"   signed with {config.signing_key} (check: minisign -Vm SHA256SUMS -p "
            f"{public_key_path(config.signing_key)})"
        )
        say(f"   open {last.index_html}")
        _show_verify(ws, folder, say)
        seeded = seed(ws, settings=SeedSettings(listen="127.0.0.1:0", dht=False), duration=2)
        say(
            f"[bold]8. seed[/]     {seeded.torrents} torrents seeded for {seeded.seconds:.0f} s with pread "
            f"disk I/O; resume data in {ws.resume_dir}; {len(whitelist_hashes(ws))} info-hashes "
            "for the tracker"
        )
        say(f"   seed for real: packager seed {workspace} --status-port 8181")
        _show_fetch(ws, folder, say)
    say(f"workspace: {workspace}  (try `packager status {workspace} --shards`)")
    return workspace


def _show_extract(ws: Workspace, folder: Path, say) -> None:
    """Random access: pull the most popular track out of its shard without unpacking the rest."""
    shard = next(s for s in ws.state.shards(phase="audio"))
    first = next(ws.state.iter_members(shard.id))
    path = ws.shard_path(shard.name)
    with ShardReader(path) as reader:
        rec = reader.find(first.id)
        (out,) = reader.extract([first.id], folder / "extracted")
        frames = rec.last_frame - rec.first_frame + 1
        say(
            f"   extract: {first.id} from {path.name}: {frames} of {len(reader.frames)} frames read, "
            f"checked, written to {out}"
        )


def _show_fetch(ws: Workspace, folder: Path, say) -> None:
    """One track through the swarm without its shard: this process seeds the release while a downloader
    that has the published files only (no shard) fetches the track's pieces from it, checked by the signed
    publication. The demo's tracker does not run, so the downloader dials the seeder itself (--peer)."""

    shard = max(ws.state.shards(phase="audio"), key=lambda s: (s.bytes, s.name))
    member = list(ws.state.iter_members(shard.id))[shard.items // 2]
    downloader = folder / "fetcher"  # what a downloader has: the published files, no shard
    shutil.rmtree(downloader, ignore_errors=True)
    shutil.copytree(ws.published_dir, downloader)
    stop, listening, result = threading.Event(), threading.Event(), {}
    endpoints: list[str] = []

    def on_event(event) -> None:
        if isinstance(event, Listening):
            endpoints.extend(event.endpoints)
            listening.set()

    def download() -> None:
        try:
            if listening.wait(30) and endpoints:
                host, _, port = endpoints[0].rpartition(":")
                swarm = SwarmSettings("127.0.0.1:0", False, 60.0, (), ((host.strip("[]"), int(port)),))
                options = FetchOptions(
                    Via.BITTORRENT, str(public_key_path(ws.config.signing_key)), swarm=swarm
                )
                result["report"] = fetch(str(downloader), [member.id], folder / "fetched", options)
        except Exception as e:  # shown below; the seeder must stop either way
            result["error"] = e
        finally:
            stop.set()

    thread = threading.Thread(target=download)
    thread.start()
    seed(
        ws, settings=SeedSettings(listen="127.0.0.1:0", dht=False), stop=stop, on_event=on_event, duration=90
    )
    thread.join()
    if "report" not in result:
        raise result.get("error") or RuntimeError("the demo's fetch did not start")
    report = result["report"]
    (item,) = report.items
    (t,) = report.torrents
    pieces = -(-t.torrent.shard_size // t.torrent.piece_size)
    say(
        f"[bold]9. fetch[/]    {member.id} ({format_size(member.size)}) through the swarm, without its "
        f"shard: {format_size(t.payload_download or 0)} downloaded ({len(t.pieces)} of {pieces} pieces) of "
        f"the {format_size(t.torrent.shard_size)} shard {shard.name}; member index: "
        f"{format_size(report.index_bytes)} read; {report.authenticated}; written to {item.file}"
    )


def _show_verify(ws: Workspace, folder: Path, say) -> None:
    """A downloader's check: the release verifies clean against its signatures; a copy of one shard with
    one byte flipped is caught, down to the member it damaged and the piece to fetch again."""
    pub = str(public_key_path(ws.config.signing_key))
    report = verify([ws.path], VerifyOptions(pubkey=pub))
    say(
        f"[bold]7. verify[/]   {report.count('ok')} files good, signatures checked with {pub} "
        f"(exit {report.exit_code()})"
    )
    mirror = folder / "downloaded"  # a downloader's folder: the published files, and shards/
    shutil.rmtree(mirror, ignore_errors=True)
    shutil.copytree(ws.published_dir, mirror)
    shard = next(s for s in ws.state.shards(phase="audio"))
    copy = mirror / layout.shard_file(shard.name)
    copy.parent.mkdir()
    shutil.copyfile(ws.shard_path(shard.name), copy)
    with ShardReader(copy) as reader:
        victim = reader.manifest()[1]
        frame = reader.frames[victim.last_frame]
    with open(copy, "r+b") as f:
        f.seek(frame.compressed_offset + frame.compressed_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 0xFF]))
    damaged = verify([copy], VerifyOptions(deep=True, pubkey=pub)).files[0]
    found = ", ".join(f"{m.id} ({m.path})" for m in damaged.damaged_members)
    say(
        f"   flipped one byte of member {victim.id} in a copy of {copy.name}: "
        f"`packager verify {copy} --deep --pubkey {pub}` finds {damaged.status}, "
        f"bad piece {format_ranges(damaged.bad_pieces)}, damaged member {found}"
    )
