"""Commands of the release workspace: init, ingest, plan, status, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..config import format_size, init_workspace, load_config
from ..state import open_state
from ._app import JsonOpt, Workspace, app, count_progress, emit_json, out


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
    from ..catalog import IngestOptions
    from ..catalog import ingest as run_ingest

    config = load_config(workspace)
    rejects = rejects or (workspace / "rejects.jsonl")
    options = IngestOptions(table=table, trust_sizes=trust_sizes, skip_invalid=skip_invalid, rejects=rejects)
    with open_state(workspace) as state, count_progress("rows read", as_json) as tick:
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
    from ..plan import plan as run_plan

    config = load_config(workspace)
    with open_state(workspace) as state, count_progress("items planned", as_json) as tick:
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
    magnets: Annotated[bool, typer.Option("--magnets", help="Print each built shard's magnet link.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show phases, tiers and shards: counts, sizes, popularity ranges, build state, info-hashes, magnets.

    Example:
        packager status music-release --shards
        packager status music-release --magnets
        packager status music-release --json | jq '.shards[].magnet'
    """
    from ..plan import release_status

    config = load_config(workspace)
    with open_state(workspace) as state:
        data = release_status(state, config)
    if as_json:
        emit_json(data)
        return
    if magnets:
        for s in data["shards"]:
            if s.get("magnet"):
                out.print(f"{s['name']}  {s['magnet']}", soft_wrap=True)
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
def remove(
    workspace: Workspace,
    ids: Annotated[list[str], typer.Argument(help="Ids of items no longer in the archive.")],
    as_json: JsonOpt = False,
) -> None:
    """Mark items removed: unplanned ones are never packaged, ones in an unbuilt shard leave it, ones in a
    built shard stay there (a built shard never changes) and are marked in the state.

    Example:
        packager remove music-release trk-000042 trk-000043
    """
    from ..plan import remove_items

    with open_state(workspace) as state:
        done = remove_items(state, ids)
    if as_json:
        emit_json([vars(r) for r in done])
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
    from ..demo import run_demo

    run_demo(workspace, audio_files=files, say=lambda text: out.print(text, markup=True))
