"""Commands for seeding: seed, push, tracker-whitelist."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..clients import client_password, url_has_password
from ..clients import push as run_push
from ..errors import UsageError
from ..seed.events import Listening, Notice, Stopped, TorrentFault, TorrentsLoaded
from ..seed.selection import published_torrents, whitelist_hashes, write_whitelist
from ..units import format_size, parse_size
from ..workspace import Workspace
from ._app import JsonOpt, WorkspaceArg, app, emit_json, err, out, say

PhaseOpt = Annotated[
    list[str] | None,
    typer.Option("--phase", "-p", help="Only this published phase (repeatable; default: all)."),
]


@app.command()
def seed(
    workspace: WorkspaceArg,
    phase: PhaseOpt = None,
    listen: Annotated[str | None, typer.Option(help="Listen interfaces, HOST:PORT[,HOST:PORT...].")] = None,
    upload_limit: Annotated[
        str | None, typer.Option(help="Upload limit per second, e.g. 50MB (0: none).")
    ] = None,
    connections: Annotated[int | None, typer.Option(help="Connection limit for the session.")] = None,
    upload_slots: Annotated[int | None, typer.Option(help="Peers unchoked at once (-1: all).")] = None,
    dht: Annotated[bool | None, typer.Option("--dht/--no-dht", help="Announce on the DHT.")] = None,
    lsd: Annotated[bool | None, typer.Option("--lsd/--no-lsd", help="Local service discovery.")] = None,
    choking: Annotated[
        str | None, typer.Option(help="Seed choking algorithm: round_robin, fastest_upload or anti_leech.")
    ] = None,
    lt_settings: Annotated[
        list[str] | None, typer.Option("--lt", help="A raw libtorrent setting NAME=VALUE (repeatable).")
    ] = None,
    status_port: Annotated[
        int | None,
        typer.Option(help="Serve the live status as JSON on http://127.0.0.1:PORT/ (0: any free port)."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: run until signalled).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Seed every published torrent from this workspace until SIGINT or SIGTERM.

    Disk reads go through libtorrent's pread back end; torrents resume from DIR/seed/*.fastresume or start in
    seed mode, so nothing is hashed at start. A torrent whose shard is missing or has the wrong size is
    reported and left out; a file error while seeding pauses only that torrent. Settings come from the [seed]
    table of release.toml, then from these flags. On SIGINT / SIGTERM resume data is saved and it exits 0.

    Example:
        packager seed music-release --listen 0.0.0.0:6881 --upload-limit 100MB --status-port 8181
    """
    from ..seed.seeder import seed as run_seed  # libtorrent (0.3 s to import): only for this command
    from ..seed.session import parse_libtorrent_flag  # libtorrent

    if duration is not None and not duration >= 0:  # -1 or nan stopped at once
        raise UsageError(
            f"--duration {duration:g}: expected a number of seconds, 0 or more",
            hint="leave it out to seed until SIGINT or SIGTERM",
        )
    try:
        limit = parse_size(upload_limit) if upload_limit is not None else None
    except ValueError:
        raise UsageError(
            f"--upload-limit {upload_limit!r}: not a size", hint="e.g. 50MB or 0 for none"
        ) from None
    with Workspace.open(workspace) as ws:
        settings = ws.config.seed.with_overrides(
            listen=listen,
            upload_limit=limit,
            connections_limit=connections,
            upload_slots=upload_slots,
            dht=dht,
            lsd=lsd,
            seed_choking=choking,
            libtorrent=tuple(parse_libtorrent_flag(s) for s in lt_settings) if lt_settings else None,
        )
        stop = threading.Event()
        # A signal only asks the loop to stop: resume data is then saved before the exit (status 0).
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with _SeedDisplay(quiet=as_json) as display:
                report = run_seed(
                    ws,
                    phase,
                    settings,
                    stop=stop,
                    duration=duration,
                    status_port=status_port,
                    on_event=display.on_event,
                    on_snapshot=display.on_snapshot,
                )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if as_json:
        emit_json(report)
        return
    out.print(
        f"seeded {report.torrents} torrents for {report.seconds:.0f} s, "
        f"{format_size(report.uploaded)} uploaded in all; resume data saved for {report.resume_saved}"
        + (f", {report.resume_failed} failed" if report.resume_failed else "")
    )
    for p in report.not_added:
        say(err, "not seeded:", f"{p.name}: {p.reason}")


class _SeedDisplay:
    """A rich live table on a terminal; on a pipe or a log, event lines and a summary line each minute."""

    top = 20  # torrents shown: the busiest first, then any in trouble
    summary_every = 60.0

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.live = None
        self.next_summary = 0.0

    def __enter__(self) -> _SeedDisplay:
        if not self.quiet and out.is_terminal:
            self.live = Live(console=out.console, auto_refresh=False, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def on_event(self, event) -> None:
        if self.quiet:
            return
        console = self.live.console if self.live is not None else err
        if isinstance(event, Listening):
            console.print(f"listening on {', '.join(event.endpoints)}")
            if event.status_url:
                console.print(f"status as JSON at {event.status_url}")
            for failure in event.failed:
                say(console, "warning:", f"cannot listen on {failure}", "yellow")
        elif isinstance(event, TorrentsLoaded):
            console.print(
                f"added {event.added} torrents in {event.seconds:.1f} s ({event.resumed} from resume "
                f"data, {event.fresh} in seed mode); {len(event.not_added)} not added"
            )
            for p in event.not_added:
                say(console, "not added:", f"{p.name}: {p.reason}")
        elif isinstance(event, TorrentFault):
            say(console, "error:", f"{event.name}: {event.reason} (paused; the others seed on)")
        elif isinstance(event, Notice):
            say(console, "note:", event.text, "yellow")
        elif isinstance(event, Stopped):
            console.print(
                f"stopped: resume data of {event.resume_saved} torrents saved in {event.seconds:.1f} s"
            )

    def on_snapshot(self, snap) -> None:
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(snapshot_view(snap, self.top), refresh=True)
        elif time.monotonic() >= self.next_summary:
            self.next_summary = time.monotonic() + self.summary_every
            err.print(summary_line(snap))


def summary_line(snap) -> str:
    states = ", ".join(f"{n} {s}" for s, n in sorted(snap.counts().items()))
    return (
        f"{len(snap.torrents)} torrents ({states}); {snap.peers} peers; "
        f"up {format_size(snap.upload_rate)}/s; "
        f"{format_size(snap.uploaded)} uploaded"
    )


def snapshot_view(snap, top: int):
    """The live view: a summary line, the busiest torrents (those in error first), and where to look."""
    busy = sorted(snap.torrents, key=lambda t: (t.state != "error", -t.upload_rate, -t.peers, t.name))
    table = Table("torrent", "peers", "upload rate", "uploaded", "state", "tracker", box=None)
    for t in busy[:top]:
        table.add_row(
            t.name,
            str(t.peers),
            f"{format_size(t.upload_rate)}/s",
            format_size(t.uploaded),
            t.state if not t.error else f"{t.state}: {t.error}",
            t.tracker or "-",
            style="red" if t.state == "error" else None,
        )
    if len(busy) > top:
        table.add_row(f"... and {len(busy) - top} more", "", "", "", "", "")
    where = f"listening on {', '.join(snap.listen)}" + (
        f"; status at {snap.status_url}" if snap.status_url else ""
    )
    footer = f"{where}; up {snap.uptime:.0f} s; Ctrl-C saves resume data and stops"
    return Group(Text(summary_line(snap), style="bold"), table, Text(footer, style="dim"))


@app.command()
def push(
    workspace: WorkspaceArg,
    client: Annotated[
        str,
        typer.Option(
            "--client",
            help="qbittorrent+http://USER@HOST:PORT or transmission+http://[USER@]HOST:PORT; the password "
            "from --password-file or $PACKAGER_CLIENT_PASSWORD.",
        ),
    ],
    data_path: Annotated[
        str,
        typer.Option(
            "--data-path", help="The folder holding the shard files, as the client's machine sees it."
        ),
    ],
    index_path: Annotated[
        str | None,
        typer.Option(
            "--index-path",
            help="The folder holding members/members.pack (the member index's torrent), as the client's "
            "machine sees it. Default: members/ beside a --data-path named shards/ (a mirror's layout), "
            "this workspace's published/members/ when --data-path is its own shards/, else --data-path.",
        ),
    ] = None,
    phase: PhaseOpt = None,
    category: Annotated[str | None, typer.Option(help="qBittorrent category (made if missing).")] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", help="qBittorrent tag / Transmission label (repeatable).")
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            "--password-file",
            help="Read the client's password from this file's first line (else $PACKAGER_CLIENT_PASSWORD). "
            "A password in --client is visible to every user of the machine.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Hand the published torrents to a qBittorrent or Transmission seedbox that already has the shards.

    qBittorrent skips its hash check (the files are trusted and each piece is checked when first served);
    Transmission verifies every torrent first. Torrents the client already has are skipped. The member
    index's torrent (all phases only) is given --index-path as its folder. Exit 3 if the client cannot be
    reached or refused a torrent.

    Example:
        packager push music-release --client qbittorrent+http://admin@seedbox:8080 \\
            --password-file ~/.seedbox-pw --data-path /srv/music
    """
    with Workspace.open(workspace, config=False) as ws:
        torrents = published_torrents(ws, phase)
    password = client_password(password_file, dict(os.environ))
    if password is None and url_has_password(client):
        say(
            err,
            "warning:",
            "the password in --client is visible to every user of this machine (ps); "
            "use --password-file or $PACKAGER_CLIENT_PASSWORD",
            "yellow",
        )
    results = run_push(
        torrents,
        client,
        data_path,
        category=category,
        tags=tags or (),
        password=password,
        index_path=index_path,
    )
    if as_json:
        emit_json(results)
    else:
        table = Table("torrent", "info-hash", "result", "detail", box=None)
        for r in results:
            style = {"failed": "red", "added": "green"}.get(r.result)
            table.add_row(r.name, r.info_hash, r.result, r.detail, style=style)
        out.print(table)
        for r in results:
            if r.save_path != data_path:  # the member index's torrent: its pack is in members/
                out.print(f"{r.name}: its data folder is {r.save_path}")
        counts = {k: sum(r.result == k for r in results) for k in ("added", "present", "failed")}
        out.print(f"{counts['added']} added, {counts['present']} already there, {counts['failed']} failed")
    if any(r.result == "failed" for r in results):
        raise typer.Exit(3)


@app.command("tracker-whitelist")
def tracker_whitelist(
    workspace: WorkspaceArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (atomically).")
    ] = None,
    phase: PhaseOpt = None,
) -> None:
    """Print the tracker whitelist of published torrents: v1 info-hashes and truncated v2 hashes, one a line.

    The same list as published/whitelist.txt. Point opentracker's `access.whitelist` at the file and send it
    SIGHUP after each new phase.

    Example:
        packager tracker-whitelist music-release -o /etc/opentracker/whitelist.txt
        kill -HUP "$(pidof opentracker)"
    """
    with Workspace.open(workspace, config=False) as ws:
        hashes = whitelist_hashes(ws, phase)
    if output is None:
        sys.stdout.write("".join(f"{h}\n" for h in hashes))
        return
    count = write_whitelist(output, hashes)
    err.print(f"wrote {count} info-hashes to {output}")
