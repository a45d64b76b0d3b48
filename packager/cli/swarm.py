"""Commands for the swarm around a release: health, pick."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import UsageError
from ..swarm.health import health as run_health
from ..swarm.model import BUCKET_NAMES
from ..swarm.pick import FORMATS, aria2_input, write_torrents
from ..swarm.pick import pick as run_pick
from ..units import format_size, parse_size
from ..workspace import Workspace
from ._app import JsonOpt, WorkspaceArg, app, emit_json, err, out, say


@app.command()
def health(
    workspace: WorkspaceArg,
    tracker: Annotated[
        list[str] | None,
        typer.Option("--tracker", help="Scrape this tracker instead of release.toml's (repeatable)."),
    ] = None,
    status_port: Annotated[
        int | None, typer.Option(help="Count our own `packager seed` too, from its status port on 127.0.0.1.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each tracker gets, all of them at once.")] = 15.0,
    top: Annotated[int, typer.Option(help="Torrents listed, those with the fewest seeders first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Scrape the trackers for every published torrent and show how well each phase and tier is seeded.

    UDP (BEP 15) and HTTP (BEP 48) scrapes, many info-hashes a request, all trackers at once, each bounded
    by --timeout; a tracker that fails or is slow is reported, never fatal (exit 0). The counts are kept in
    the state with their time (history included), and published/swarm.json and swarm.html are rewritten:
    live, unsigned files beside the signed publication, which never changes because of them.

    Example:
        packager health music-release --status-port 8181
        packager health music-release --tracker udp://tracker.example.org:1337/announce --json
    """
    with Workspace.open(workspace) as ws:
        report = run_health(ws, tracker, status_port, timeout)
    if as_json:
        emit_json(report)
        return
    view = report.view
    out.print(f"swarm health of {view.release} at {view.at} ({report.seconds:.1f} s)")
    sources = Table("source", "protocol", "torrents answered", "took", "error", box=None)
    for s in view.sources:
        sources.add_row(
            s.source,
            s.protocol,
            f"{s.answered}/{len(view.torrents) + (view.index is not None)}",
            f"{s.seconds:.1f} s",
            s.error or "-",
            style="red" if s.error else None,
        )
    out.print(sources)
    out.print(summary_table(view))
    s = view.release_summary
    out.print(
        f"{s.share_4_or_more:.0%} of {format_size(s.bytes)} in at least 4 places, "
        f"{s.share_over_10:.0%} in more than 10"
    )
    if view.index is not None:
        t = view.index
        leechers = "" if t.leechers is None else f", {t.leechers} leechers"
        counts = (
            "seeders unknown (no source answered)" if t.seeders is None else f"{t.seeders} seeders{leechers}"
        )
        out.print(f"member index ({t.name}, {format_size(t.size)}): {counts}")
    if top > 0:
        out.print(neediest_table(view, top))
    for f in report.live_files:
        err.print(f"wrote {f}")
    for s in view.sources:
        if s.error:
            say(err, "warning:", f"{s.source}: {s.error}", "yellow")


def summary_table(view) -> Table:
    buckets = (f"{n} seeders" for n in BUCKET_NAMES)
    table = Table("phase / tier", "torrents", *buckets, "bytes in ≥ 4", "> 10", box=None)
    for s in view.summaries:
        label = "all" if s.phase is None else s.phase if s.tier is None else f"  {s.tier}"
        cells = [f"{s.buckets[n].torrents} ({format_size(s.buckets[n].bytes)})" for n in BUCKET_NAMES]
        table.add_row(
            label, str(s.torrents), *cells, f"{s.share_4_or_more:.0%}", f"{s.share_over_10:.0%}",
            style="bold" if s.phase is None else None,
        )  # fmt: skip
    return table


def neediest_table(view, top: int) -> Table:
    table = Table("torrent", "size", "seeders", "leechers", "completed", "scraped", box=None)
    needy = sorted(
        (t for t in view.torrents if not t.obsolete),
        key=lambda t: (t.seeders if t.seeders is not None else -1, -t.size, t.name),
    )
    for t in needy[:top]:
        table.add_row(
            t.name,
            format_size(t.size),
            "?" if t.seeders is None else str(t.seeders),
            "?" if t.leechers is None else str(t.leechers),
            "?" if t.completed is None else str(t.completed),
            t.scraped_at or "never",
            style="red" if not t.seeders else None,
        )
    if len(needy) > top:
        table.add_row(f"... and {len(needy) - top} more (--top N, or --json)", "", "", "", "", "")
    return table


@app.command()
def pick(
    source: Annotated[
        str, typer.Argument(help="A workspace, a published folder, or a mirror's URL of torrents.json.")
    ],
    max_size: Annotated[str, typer.Option("--max-size", help="The disk space to fill, e.g. 2TB.")],
    phase: Annotated[
        list[str] | None, typer.Option("--phase", "-p", help="Only this phase (repeatable).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="magnet, torrent (into --output), json or aria2.")
    ] = "magnet",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="With --format torrent: the folder to write to.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the random term, to repeat a list.")] = None,
    spread: Annotated[
        float, typer.Option(help="Size of the random term (0: none; ties go by phase order, then name).")
    ] = 0.1,
) -> None:
    """List the torrents a volunteer should seed within --max-size: fewest seeders per byte first.

    Anna's Archive's rule: ascending (seeders + 0.1 x leechers) x (mean size / size) plus a small random
    term, so volunteers asking at once spread out; obsolete and embargoed torrents are skipped; a torrent
    that does not fit is skipped and the fill goes on. Counts come from the newest `packager health` run
    (swarm.json on a mirror). --format torrent writes the .torrent files into a folder a client watches,
    each checked against the list's info-hash.

    Example:
        packager pick https://mirror.example.org/music/ --max-size 2TB --format torrent -o ~/watch
        packager pick music-release --max-size 500GB --phase audio --format aria2 > list.txt
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: not one of {', '.join(FORMATS)}")
    if fmt == "torrent" and output is None:
        raise UsageError("--format torrent writes .torrent files: name the folder with --output DIR")
    try:
        budget = parse_size(max_size)
    except ValueError:
        raise UsageError(f"--max-size {max_size!r}: not a size", hint="e.g. 2TB or 500GB") from None
    result = run_pick(source, budget, phase or (), seed, spread)
    if fmt == "json":
        emit_json(result)
    elif fmt == "aria2":
        sys.stdout.write(aria2_input(result))
    elif fmt == "magnet":
        sys.stdout.write("".join(f"{p.candidate.magnet}\n" for p in result.picked))
    else:
        for path in write_torrents(result, output):
            out.print(str(path))
    _explain(result)


def _explain(result) -> None:
    err.print(
        f"picked {len(result.picked)} of {result.considered} torrents: {format_size(result.total)} of "
        f"{format_size(result.budget)} (seed {result.seed})"
    )
    if result.considered and not result.picked:
        say(
            err,
            "note:",
            f"nothing fits in {format_size(result.budget)}: the smallest torrent is "
            f"{format_size(result.smallest)}",
            "yellow",
        )
    if result.well_seeded:
        say(err, "note:", "every torrent already has more than 10 seeders", "yellow")
    for note in result.notes:
        say(err, "note:", note, "yellow")
    if result.counts_known < result.considered:
        err.print(
            f"note: {result.considered - result.counts_known} torrents have no seeder count yet "
            "(counted as none: run `packager health`, or the mirror has no swarm.json)"
        )
    skipped = [
        (result.obsolete, "obsolete"),
        (result.embargoed, "embargoed"),
        (result.malformed, "malformed in the list"),
    ]
    for n, why in skipped:
        if n:
            err.print(f"skipped {n} {why}")
