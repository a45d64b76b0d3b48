"""The `packager` command line: parse, call one library function, render with rich.

Every error packager raises on purpose is a PackagerError; it is caught once, in PackagerGroup.invoke,
printed as `error: ...` / `hint: ...` and turned into the exit code (2 bad input, 3 environment, 1 damage).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from . import __version__
from .config import format_size, init_workspace, load_config
from .errors import PackagerError
from .state import open_state

# Piped output is read by people with wide terminals and by grep: do not wrap it at rich's default 80.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class PackagerGroup(TyperGroup):
    """Maps PackagerError to a two-line message and an exit code, for the real CLI and CliRunner alike."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PackagerError as e:
            err.print(f"[bold red]error:[/] {e.message}", markup=True, highlight=False)
            if e.hint:
                err.print(f"[bold]hint:[/] {e.hint}", markup=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=PackagerGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Turn a huge preservation archive into a phased public BitTorrent release.",
)

Workspace = Annotated[Path, typer.Argument(help="The release workspace folder (made by `packager init`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(f"packager {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Turn a huge preservation archive into a phased public BitTorrent release."""


@app.command()
def init(
    workspace: Workspace,
    root: Annotated[Path, typer.Option("--root", help="The archive root: catalog paths are relative to it.")],
    name: Annotated[str | None, typer.Option(help="Release name (default: the root folder's name).")] = None,
) -> None:
    """Create a release workspace: release.toml with commented defaults, and state.sqlite.

    Example:
        packager init music-release --root /srv/archive --name music
    """
    config = init_workspace(workspace, root, name)
    out.print(f"created {workspace}/release.toml (release {config.name!r}, root {config.root})")
    out.print(
        f"phases: {', '.join(p.name for p in config.phases)}; edit release.toml, then `packager ingest`"
    )


@app.command()
def ingest(
    workspace: Workspace,
    catalogs: Annotated[list[Path], typer.Argument(help="Catalog files: .jsonl, .csv or .sqlite.")],
    table: Annotated[str | None, typer.Option(help="Table to read from a SQLite catalog.")] = None,
    trust_sizes: Annotated[
        bool,
        typer.Option(
            "--trust-sizes",
            help="Take sizes from the catalog without a stat of every file (build still checks).",
        ),
    ] = False,
    skip_invalid: Annotated[
        bool,
        typer.Option("--skip-invalid", help="Load the good rows and write the bad ones to a rejects file."),
    ] = False,
    rejects: Annotated[Path | None, typer.Option(help="Where --skip-invalid writes bad rows.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load catalogs into the workspace, checking every row and file; all problems are reported at once.

    Example:
        packager ingest music-release catalog/tracks.jsonl catalog/art.csv
        packager ingest music-release catalog.sqlite --table tracks --trust-sizes
    """
    from .catalog import IngestOptions
    from .catalog import ingest as run_ingest

    config = load_config(workspace)
    rejects = rejects or (workspace / "rejects.jsonl")
    options = IngestOptions(table=table, trust_sizes=trust_sizes, skip_invalid=skip_invalid, rejects=rejects)
    with open_state(workspace) as state, _progress("rows read", as_json) as tick:
        report = run_ingest(state, config, catalogs, options, on_rows=tick)
    if as_json:
        emit_json(report.as_dict())
        return
    out.print(
        f"{report.rows} rows: {report.added} added, {report.changed} changed, "
        f"{report.unchanged} unchanged, {report.rejected} rejected"
    )
    if report.rejects_file:
        out.print(f"rejected rows written to {report.rejects_file}")
        for p in report.problems[:20]:
            out.print(f"  {p}")


@app.command()
def plan(
    workspace: Workspace,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; store nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Assign every unassigned item to a phase, tier and new shard; existing shards never change.

    Example:
        packager plan music-release --dry-run
    """
    from .plan import plan as run_plan

    config = load_config(workspace)
    with open_state(workspace) as state, _progress("items planned", as_json) as tick:
        report = run_plan(state, config, dry_run=dry_run, on_items=tick)
    if as_json:
        emit_json(report.as_dict())
        return
    verb = "would add" if dry_run else "added"
    out.print(
        f"{verb} {len(report.shards)} shards holding {report.items} items ({format_size(report.bytes)})"
    )
    if report.shards:
        table = Table("shard", "items", "size", "popularity", box=None)
        shown = report.shards if len(report.shards) <= 40 else report.shards[:20] + report.shards[-20:]
        for s in shown:
            table.add_row(s.name, str(s.items), format_size(s.bytes), f"{s.pop_max:g} .. {s.pop_min:g}")
        out.print(table)
    for u in report.unassigned:
        out.print(f"[yellow]{u[1]} {u[0]} items ({format_size(u[2])}) match no phase or tier[/]", markup=True)


@app.command()
def status(
    workspace: Workspace,
    shards: Annotated[bool, typer.Option("--shards", help="List every shard, not only the totals.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show phases, tiers and shards: counts, sizes, popularity ranges, build state, info-hashes.

    Example:
        packager status music-release --shards
        packager status music-release --json | jq '.shards[].magnet'
    """
    from .plan import release_status

    config = load_config(workspace)
    with open_state(workspace) as state:
        data = release_status(state, config)
    if as_json:
        emit_json(data)
        return
    render_status(data, shards)


def render_status(data: dict, show_shards: bool) -> None:
    table = Table(title=f"release {data['release']} · {data['items']} items", title_justify="left")
    for col in ("phase", "tier", "popularity", "shards", "items", "size", "state"):
        table.add_column(col, justify="right" if col in ("shards", "items", "size") else "left")
    for phase in data["phases"]:
        for tier in phase["tiers"]:
            states = ", ".join(f"{n} {s}" for s, n in sorted(tier["states"].items())) or "-"
            if phase["published"]:
                states += " · published"
            table.add_row(
                phase["name"],
                tier["name"] or "-",
                tier["popularity"],
                str(tier["shards"]),
                str(tier["items"]),
                format_size(tier["bytes"]),
                states,
            )
    out.print(table)
    for u in data["unassigned"]:
        out.print(f"unplanned: {u['items']} {u['kind']} items ({format_size(u['bytes'])})")
    if show_shards and data["shards"]:
        st = Table("shard", "items", "size", "popularity", "state", "info-hash (v1)", box=None)
        for s in data["shards"]:
            st.add_row(
                s["name"],
                str(s["items"]),
                format_size(s["bytes"]),
                f"{s['pop_max']:g} .. {s['pop_min']:g}",
                s["state"] + (f": {s['error']}" if s["error"] else ""),
                s.get("info_hash_v1") or "-",
            )
        out.print(st)


@app.command()
def demo(
    workspace: Annotated[
        Path, typer.Argument(help="Folder for the demo (archive, catalog, workspace).")
    ] = Path("packager-demo"),
    files: Annotated[int, typer.Option(help="Number of audio files to generate.")] = 240,
) -> None:
    """Generate a small synthetic archive and run every stage of the pipeline on it.

    Example:
        packager demo /tmp/packager-demo
    """
    from .demo import run_demo

    run_demo(workspace, audio_files=files, say=lambda text: out.print(text, markup=True))


@app.command()
def build(
    workspace: Workspace,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Shards built at once (0: one per core).")] = 0,
    phase: Annotated[str | None, typer.Option(help="Build this phase only.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write every planned shard as a seekable .tar.zst with its .torrent, in one pass over the bytes.

    Interrupted builds resume: finished shards are kept, partial ones are started again.

    Example:
        packager build music-release --jobs 8 --phase metadata
    """
    from .build import build as run_build

    config = load_config(workspace)
    with open_state(workspace) as state, _BuildProgress(as_json) as on_event:
        report = run_build(state, config, workspace, jobs_count=jobs, phase=phase, on_event=on_event)
    if as_json:
        emit_json(report.as_dict())
    else:
        for name in report.recovered:
            out.print(f"completed the interrupted rename of {name}")
        out.print(f"built {len(report.built)} shards; {report.skipped} already built; {len(report.failed)} failed")
        for name, reason in report.failed:
            err.print(f"[bold red]failed:[/] {name}: {reason}", markup=True)
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
    from .container import ShardReader

    with ShardReader(shard) as reader:
        if list_members or not keys:
            records = reader.manifest()
            if as_json:
                emit_json([vars(r) for r in records])
                return
            table = Table("id", "path", "size", "popularity", "frames", box=None)
            for r in records:
                table.add_row(r.id, r.path, str(r.size), f"{r.popularity:g}", f"{r.first_frame}-{r.last_frame}")
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
    workspace: Workspace,
    phase: Annotated[str | None, typer.Option(help="Only this phase's torrents.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-create the .torrent files of built shards from the hashes recorded at build time.

    Use it after changing trackers or web seeds in release.toml: the shards are not read again, and the
    info-hashes do not change (a changed format, private flag or source tag does change them).

    Example:
        packager torrent music-release --phase audio
    """
    from .build import remake_torrents

    config = load_config(workspace)
    with open_state(workspace) as state:
        made = remake_torrents(state, config, workspace, phase)
    if as_json:
        emit_json(made)
        return
    for t in made:
        out.print(f"{t['shard']}  {t['info_hash_v1'] or t['info_hash_v2']}")
    out.print(f"wrote {len(made)} torrents")


@app.command()
def show(
    torrent_file: Annotated[Path, typer.Argument(help="A .torrent file.")],
    as_json: JsonOpt = False,
) -> None:
    """Print a torrent's name, size, piece size, files, info-hashes, trackers, web seeds and magnet.

    Example:
        packager show torrents/music-audio-t1-00001.tar.zst.torrent --json
    """
    from dataclasses import asdict

    from .torrent import read_torrent

    info = read_torrent(torrent_file)
    if as_json:
        emit_json(asdict(info))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # a magnet must stay whole to be copied
    rows = [
        ("name", info.name), ("format", info.format),
        ("size", f"{info.size:,} bytes ({format_size(info.size)})"),
        ("pieces", f"{info.piece_count:,} x {info.piece_size:,} bytes"),
        ("info-hash v1", info.info_hash_v1 or "-"), ("info-hash v2", info.info_hash_v2 or "-"),
        ("trackers", "\n".join(" | ".join(tier) for tier in info.trackers) or "-"),
        ("web seeds", "\n".join(info.web_seeds) or "-"), ("private", "yes" if info.private else "no"),
        ("source", info.source or "-"), ("created by", info.created_by or "-"),
        ("files", "\n".join(f"{p}  ({n:,} bytes)" for p, n in info.files)), ("magnet", info.magnet),
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
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=err)
        self.progress.start()
        self.overall = self.progress.add_task("all shards", total=0)
        return self.on_event

    def on_event(self, event) -> None:
        from .build import BytesDone, ShardFailed, ShardFinished, ShardStarted

        p = self.progress
        if isinstance(event, ShardStarted):
            self.tasks[event.name] = p.add_task(event.name, total=event.total)
            p.update(self.overall, total=(p.tasks[self.overall].total or 0) + event.total)
        elif isinstance(event, BytesDone):
            p.advance(self.tasks[event.name], event.n)
            p.advance(self.overall, event.n)
        elif isinstance(event, ShardFinished | ShardFailed):
            task = self.tasks.pop(event.name, None)
            if task is not None:
                p.remove_task(task)
            if isinstance(event, ShardFailed):
                p.console.print(f"[red]failed[/] {event.name}: {event.reason}", markup=True)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


class _progress:
    """A transient rich progress line fed by a count callback; silent for --json or a non-terminal."""

    def __init__(self, label: str, quiet: bool):
        self.label, self.quiet = label, quiet or not err.is_terminal
        self.progress = None

    def __enter__(self) -> Callable[[int], None]:
        if self.quiet:
            return lambda n: None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.completed:,} " + self.label),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self.progress.start()
        task = self.progress.add_task(self.label, total=None)
        return lambda n: self.progress.update(task, completed=n)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
