"""Commands of the release workspace: init, ingest, plan, status, demo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import layout
from ..catalog import IngestOptions
from ..catalog import ingest as run_ingest
from ..errors import UsageError
from ..plan import ReleaseStatus, release_status, remove_items
from ..plan import plan as run_plan
from ..units import format_size
from ..workspace import Workspace
from ._app import JsonOpt, WorkspaceArg, app, count_progress, emit_json, out


@app.command()
def init(
    workspace: WorkspaceArg,
    root: Annotated[Path, typer.Option("--root", help="The archive root: catalog paths are relative to it.")],
    name: Annotated[str | None, typer.Option(help="Release name (default: the root folder's name).")] = None,
) -> None:
    """Create a release workspace: release.toml with commented defaults, and state.sqlite.

    Example:
        packager init music-release --root /srv/archive --name music
    """
    with Workspace.init(workspace, root, name) as ws:
        config = ws.config
    out.print(f"created {workspace}/release.toml (release {config.name!r}, root {config.root})")
    out.print(
        f"phases: {', '.join(p.name for p in config.phases)}; edit release.toml, then `packager ingest`"
    )


@app.command()
def ingest(
    workspace: WorkspaceArg,
    catalogs: Annotated[
        list[Path],
        typer.Argument(
            help="Catalog files: .jsonl, .csv, .tsv (each also compressed: .zst, .gz, .bz2), .parquet, "
            ".sqlite."
        ),
    ],
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
    mark_absent: Annotated[
        bool,
        typer.Option(
            "--mark-absent",
            help="Mark known items that no catalog row names as removed, as `packager remove` does.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Load catalogs into the workspace, checking every row and file; all problems are reported at once.

    Example:
        packager ingest music-release catalog/tracks.jsonl catalog/art.csv
        packager ingest music-release catalog.sqlite --table tracks --trust-sizes
        packager ingest music-release dump-2026-12.parquet --trust-sizes --mark-absent
    """
    with Workspace.open(workspace) as ws, count_progress("rows read", as_json) as tick:
        rejects = rejects or ws.rejects_file
        options = IngestOptions(
            table=table,
            trust_sizes=trust_sizes,
            skip_invalid=skip_invalid,
            rejects=rejects,
            mark_absent=mark_absent,
        )
        report = run_ingest(ws, catalogs, options, on_rows=tick)
    if as_json:
        emit_json(report)
        return
    out.print(
        f"{report.rows} rows: {report.added} added, {report.changed} changed, "
        f"{report.unchanged} unchanged, {report.rejected} rejected"
    )
    if report.absent:
        shown = ", ".join(report.absent_ids[:5])
        if report.absent > 5:
            shown += f" and {report.absent - 5} more"
        if report.marked_absent:
            outcomes = {"unplanned": "will not be planned", "dropped": "left unbuilt shards",
                        "stays": "stay in built shards, marked"}  # fmt: skip
            done = "; ".join(f"{n} {outcomes.get(k, k)}" for k, n in sorted(report.marked_absent.items()))
            out.print(
                f"{report.absent} known items absent from the catalog, marked removed ({done}): {shown}"
            )
        else:
            out.print(
                f"{report.absent} known items are absent from the catalog ({shown}); "
                "`--mark-absent` marks them removed"
            )
    if report.rejects_file:
        out.print(f"rejected rows written to {report.rejects_file}")
        for p in report.problems[:20]:
            out.print(f"  {p}")


@app.command()
def plan(
    workspace: WorkspaceArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; store nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Assign every unassigned item to a phase, tier and new shard; existing shards never change.

    Example:
        packager plan music-release --dry-run
    """
    with Workspace.open(workspace) as ws, count_progress("items planned", as_json) as tick:
        report = run_plan(ws, dry_run=dry_run, on_items=tick)
    if as_json:
        emit_json(report)
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
        out.print(f"{u[1]} {u[0]} items ({format_size(u[2])}) match no phase or tier", style="yellow")
    if report.collision_count:
        out.print(
            f"warning: {report.collision_count} pair(s) of paths in one shard differ only by case or "
            "Unicode normalization; extracting such a shard on macOS or Windows keeps one file of "
            "each pair:",
            style="yellow",
        )
        for c in report.collisions[:20]:
            out.print(f"  {c}", markup=False)


@app.command()
def status(
    workspace: WorkspaceArg,
    shards: Annotated[bool, typer.Option("--shards", help="List every shard, not only the totals.")] = False,
    magnets: Annotated[bool, typer.Option("--magnets", help="Print each built shard's magnet link.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show phases, tiers and shards: counts, sizes, popularity ranges, build state, info-hashes, magnets.

    Example:
        packager status music-release --shards
        packager status music-release --magnets
        packager status music-release --json | jq '.shards[].magnet'
    """
    # A workspace we may not write (a mirror's copy, a read-only mount) is read without a write lock.
    writable = os.access(workspace, os.W_OK) and os.access(workspace / layout.STATE, os.W_OK)
    with Workspace.open(workspace, readonly=not writable) as ws:
        status = release_status(ws)
    if as_json:
        emit_json(status)
        return
    if magnets:
        for s in status.shards:
            if s.magnet:
                out.print(f"{s.row.name}  {s.magnet}", soft_wrap=True)
        return
    render_status(status, shards)


def render_status(status: ReleaseStatus, show_shards: bool) -> None:
    table = Table(title=f"release {status.release} · {status.items} items", title_justify="left")
    for col in ("phase", "tier", "popularity", "shards", "items", "size", "state"):
        table.add_column(col, justify="right" if col in ("shards", "items", "size") else "left")
    for phase in status.phases:
        for tier in phase.tiers:
            states = ", ".join(f"{n} {s}" for s, n in sorted(tier.states.items())) or "-"
            if phase.published:
                states += " · published"
            table.add_row(
                phase.name,
                tier.name or "-",
                tier.popularity,
                str(tier.shards),
                str(tier.items),
                format_size(tier.bytes),
                states,
            )
    out.print(table)
    for kind, items, size in status.unassigned:
        out.print(f"unplanned: {items} {kind} items ({format_size(size)})")
    if show_shards and status.shards:
        st = Table("shard", "items", "size", "popularity", "state", "info-hash (v1)", box=None)
        for s in status.shards:
            r = s.row
            st.add_row(
                r.name,
                str(r.items),
                format_size(r.bytes),
                f"{r.pop_max:g} .. {r.pop_min:g}",
                r.state + (f": {r.error}" if r.error else ""),
                s.info_hash_v1 or "-",
            )
        out.print(st)


@app.command()
def remove(
    workspace: WorkspaceArg,
    ids: Annotated[list[str], typer.Argument(help="Ids of items no longer in the archive.")],
    as_json: JsonOpt = False,
) -> None:
    """Mark items removed: unplanned ones are never packaged, ones in an unbuilt shard leave it, ones in a
    built shard stay there (a built shard never changes) and are marked in the state.

    Example:
        packager remove music-release trk-000042 trk-000043
    """
    with Workspace.open(workspace, config=False) as ws:
        done = remove_items(ws, ids)
    if as_json:
        emit_json(done)
        return
    for r in done:
        out.print(f"{r.id}: {r.outcome}")


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
    if files < 2:  # the demo extracts one audio member and damages another
        raise UsageError(f"--files {files}: at least 2 audio files", hint="the default is 240")
    from ..demo import run_demo  # it seeds, so it imports libtorrent (0.3 s): only for this command

    run_demo(workspace, audio_files=files, say=lambda text: out.print(text, markup=True))
