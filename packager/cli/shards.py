"""Commands for shards and torrents: build, extract, torrent, show."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import layout
from ..build import BuildPlanned, BytesDone, ShardFailed, ShardFinished, ShardStarted, remake_torrents
from ..build import build as run_build
from ..config import check_scheduler_address
from ..container import ShardReader
from ..errors import UsageError
from ..torrent import piece_count, piece_size_for, piece_size_table, read_torrent
from ..units import format_binary, format_size, parse_size
from ..workspace import Workspace
from ._app import JsonOpt, WorkspaceArg, app, emit_json, err, out, say


@app.command()
def build(
    workspace: WorkspaceArg,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Shards built at once (0: one per two cores).")
    ] = 0,
    phase: Annotated[str | None, typer.Option(help="Build this phase only.")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Build on the Dask cluster of this scheduler, tcp://HOST:PORT (default: [build] scheduler); "
            "--jobs is then shards per worker thread (0: two).",
            show_default=False,
        ),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Build on this machine even if release.toml names a scheduler.")
    ] = False,
    check_kept: Annotated[
        bool,
        typer.Option(
            "--check-kept",
            help="Resuming a shard, read its kept bytes again and check them against the checkpoint even "
            "where its seal says nothing touched them since the build stopped.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write every planned shard as a seekable .tar.zst with its .torrent, in one pass over the bytes.

    Interrupted builds resume: finished shards are kept, and a shard cut short goes on from its last
    checkpoint (saved every 128 MiB or so), checked against what was written; identical bytes either way.
    Its kept bytes are read again and checked only if the .part changed since the build stopped (its seal
    tells), or with --check-kept.
    With a Dask scheduler the shards are built by its workers, which see the archive and the workspace at the
    same paths.

    Example:
        packager build music-release --jobs 8 --phase metadata
        packager build music-release --scheduler tcp://10.0.0.1:8786
    """
    if scheduler is not None:
        if local:
            raise UsageError("--scheduler and --local exclude each other", hint="give one of them")
        try:
            check_scheduler_address(scheduler)
        except ValueError as e:
            raise UsageError(f"--scheduler: {e}", hint="give the address as tcp://HOST:PORT") from None
    with Workspace.open(workspace) as ws, _BuildProgress(as_json) as on_event:
        address = None if local else scheduler or ws.config.build.scheduler
        report = run_build(
            ws, jobs_count=jobs, phase=phase, on_event=on_event, scheduler=address, check_kept=check_kept
        )
    if as_json:
        emit_json(report)
    else:
        for name in report.recovered:
            out.print(f"completed the interrupted rename of {name}")
        for r in report.resumed:
            how = "read again and checked" if r.read_again else "not read again"
            out.print(
                f"resumed {r.shard} from byte {r.from_byte:,} (the kept {format_size(r.from_byte)} "
                f"{r.why}: {how})",
                markup=False,
            )
        for name, why in report.restarted:
            say(err, "rebuilt from byte 0:", f"{name}: its checkpoint was refused: {why}", "bold")
        out.print(
            f"built {len(report.built)} shards; {report.skipped} already built; {len(report.failed)} failed"
        )
        for name, reason in report.failed:
            say(err, "failed:", f"{name}: {reason}")
        if report.unplanned[0]:
            items, size = report.unplanned
            err.print(
                f"note: {items} ingested items ({format_size(size)}) are in no shard yet: run "
                f"`packager plan {workspace}` to plan them, then build again",
                markup=False,
            )
        if len(report.failed) > len(report.in_the_way):  # those say what to move themselves
            say(
                err,
                "hint:",
                "restore those files, or ingest their corrected catalog rows, then run "
                "build again: it retries the failed shards and keeps the built ones",
                "bold",
            )
    if report.failed:
        raise typer.Exit(2)


@app.command()
def extract(
    shard: Annotated[Path, typer.Argument(help="A shard file (.tar.zst) made by packager.")],
    keys: Annotated[list[str] | None, typer.Argument(help="Member ids or paths to extract.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to extract into.")] = Path("."),
    list_members: Annotated[bool, typer.Option("--list", help="List the members instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Extract single members by random access, checked against the shard's own manifest.

    Only the frames holding the members are read and decompressed, whatever the shard's size.

    Example:
        packager extract music-audio-t1-00001.tar.zst trk-000042 -o out/
        packager extract music-audio-t1-00001.tar.zst --list
    """
    with ShardReader(shard) as reader:
        if list_members or not keys:
            records = reader.manifest()
            if as_json:
                emit_json(records)
                return
            table = Table("id", "path", "size", "popularity", "frames", box=None)
            for r in records:
                table.add_row(
                    r.id, r.path, str(r.size), f"{r.popularity:g}", f"{r.first_frame}-{r.last_frame}"
                )
            out.print(table)
            return
        paths = reader.extract(keys, output)
    if as_json:
        emit_json([str(p) for p in paths])
        return
    for p in paths:
        out.print(f"extracted {p} (size, xxh3-128 and SHA-256 checked)")


@app.command()
def torrent(
    workspace: WorkspaceArg,
    phase: Annotated[str | None, typer.Option(help="Only this phase's torrents.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-create the .torrent files of built shards from the hashes recorded at build time.

    Use it after changing trackers or web seeds in release.toml: the shards are not read again, and the
    info-hashes do not change (a changed format, private flag or source tag does change them).

    Example:
        packager torrent music-release --phase audio
    """
    # publish.py (35 ms to import: the member index, the pages, trust): of the shard commands only this one
    from ..publish import remake_index_torrent

    with Workspace.open(workspace) as ws:
        made = remake_torrents(ws, phase)
        # The member index's torrent announces with the shards' (it has no phase: re-made with every phase).
        index = remake_index_torrent(ws.config, ws.path) if phase is None else None
    if as_json:
        emit_json([*made, *([_index_dict(index)] if index is not None else [])])
        return
    for t in made:
        out.print(f"{t.shard}  {t.info_hash_v1 or t.info_hash_v2}")
    if index is not None:
        out.print(f"{layout.MEMBER_INDEX_PACK_NAME}  {index.info_hash_v1}  {index.reason}".rstrip())
    out.print(f"wrote {len(made) + bool(index and index.written)} torrents")


def _index_dict(index) -> dict:
    return {
        "shard": None,
        "member_index": True,
        "format": "v1",
        "info_hash_v1": index.info_hash_v1,
        "info_hash_v2": None,
        "written": index.written is not None,
        "reason": index.reason or None,
    }


@app.command()
def show(
    torrent_file: Annotated[Path, typer.Argument(help="A .torrent file.")],
    as_json: JsonOpt = False,
) -> None:
    """Print a torrent's name, size, piece size, files, info-hashes, trackers, web seeds and magnet.

    Example:
        packager show torrents/music-audio-t1-00001.tar.zst.torrent --json
    """
    info = read_torrent(torrent_file)
    if as_json:
        emit_json(info)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # a magnet must stay whole to be copied
    rows = [
        ("name", info.name),
        ("format", info.format),
        ("size", f"{info.size:,} bytes ({format_size(info.size)})"),
        ("pieces", f"{info.piece_count:,} x {info.piece_size:,} bytes"),
        ("info-hash v1", info.info_hash_v1 or "-"),
        ("info-hash v2", info.info_hash_v2 or "-"),
        ("trackers", "\n".join(" | ".join(tier) for tier in info.trackers) or "-"),
        ("web seeds", "\n".join(info.web_seeds) or "-"),
        ("private", "yes" if info.private else "no"),
        ("source", info.source or "-"),
        ("created by", info.created_by or "-"),
        ("files", "\n".join(f"{p}  ({n:,} bytes)" for p, n in info.files)),
        ("magnet", info.magnet),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


class _BuildProgress:
    """Rich bars fed by build events: one per running shard (bytes, rate, ETA) and one overall."""

    def __init__(self, quiet: bool):
        self.quiet = quiet or not err.is_terminal
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if self.quiet:
            return lambda event: None
        # rich.progress (14 ms to import): only a terminal gets a bar
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err.console,
        )
        self.progress.start()
        self.overall = self.progress.add_task("all shards", total=0)
        return self.on_event

    def on_event(self, event) -> None:
        p = self.progress
        if isinstance(event, BuildPlanned):
            p.update(self.overall, total=event.total, description=f"all {event.shards} shards")
        elif isinstance(event, ShardStarted):
            again = self.tasks.pop(event.name, None)
            if again is not None:  # retried on another worker: its bytes come again from the start
                done = next(t for t in p.tasks if t.id == again).completed
                p.advance(self.overall, -done)
                p.remove_task(again)
            self.tasks[event.name] = p.add_task(event.name, total=event.total)
        elif isinstance(event, BytesDone):
            p.advance(self.tasks[event.name], event.n)
            p.advance(self.overall, event.n)
        elif isinstance(event, ShardFinished | ShardFailed):
            task = self.tasks.pop(event.name, None)
            if task is not None:
                if isinstance(event, ShardFailed):  # its bytes will not come: keep the overall ETA honest
                    shard, overall = (next(t for t in p.tasks if t.id == i) for i in (task, self.overall))
                    left = (shard.total or 0) - shard.completed
                    p.update(self.overall, total=max(0, (overall.total or 0) - left))
                p.remove_task(task)
            if isinstance(event, ShardFailed):
                say(p.console, "failed", f"{event.name}: {event.reason}", "red")

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


@app.command("piece-size")
def piece_size(
    sizes: Annotated[
        list[str] | None, typer.Argument(help="Torrent sizes to explain, e.g. 50GB 700MiB.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Explain the automatic piece-size rule: size -> piece size x count = .torrent size.

    The rule picks the smallest power of two that cuts a shard into at most 4096 pieces, from 16 KiB to
    64 MiB; a phase's `piece_size` overrides it.

    Example:
        packager piece-size
        packager piece-size 50GB 120MB
    """
    if sizes:
        try:
            values = [parse_size(s) for s in sizes]
        except ValueError as e:
            raise UsageError(str(e), hint="give sizes like 50GB, 700MiB or 1048576") from None
        rows = [(n, piece_size_for(n), piece_count(n, piece_size_for(n))) for n in values]
    else:
        rows = piece_size_table()
    data = [{"size": n, "piece_size": p, "pieces": c, "metainfo_bytes": c * 20 + 300} for n, p, c in rows]
    if as_json:
        emit_json(data)
        return
    table = Table("content size", "piece size", "pieces", "≈ .torrent size (v1)", box=None)
    for d in data:
        table.add_row(
            format_size(d["size"]),
            format_binary(d["piece_size"]),
            f"{d['pieces']:,}",
            format_size(d["metainfo_bytes"]),
        )
    out.print(table)
