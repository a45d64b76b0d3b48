"""Command: verify downloaded shards at file, piece and member level."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from ..units import format_size
from ..verify import BytesRead, Level, PassStarted, Severity, Status, VerifyOptions, format_ranges
from ..verify import verify as run_verify
from ._app import JsonOpt, TrustFileOpt, app, emit_json, err, out, pubkey_given

_SHOWN = 20  # damaged members listed per file before "... and N more"


@app.command()
def verify(
    paths: Annotated[
        list[Path], typer.Argument(help="A release folder, its shards/ folder, or downloaded shard files.")
    ],
    pubkey: Annotated[
        str | None,
        typer.Option(
            callback=pubkey_given,
            help="The publisher's minisign public key (.pub file or its base64 line): check the signed "
            "publication statement, every file against it, and refuse an older or mixed publication.",
        ),
    ] = None,
    trust_file: TrustFileOpt = None,
    pieces: Annotated[
        bool,
        typer.Option("--pieces", help="Check every piece (automatic for a file whose SHA-256 is wrong)."),
    ] = False,
    deep: Annotated[
        bool, typer.Option("--deep", help="Decompress every frame; check and name every damaged member.")
    ] = False,
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Exit 0 when every file present is good, even if some are missing."),
    ] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Files checked at once (0: one per core).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Check downloaded shards against publication.json, release.json, SHA256SUMS, the .torrent files and
    their own manifests.

    With --pubkey, the signed publication statement must verify, every published file must be the one it
    lists, and its publication number must not be older than the one last trusted (the trust file, updated
    only when everything checks out). Files not downloaded are reported as missing, not as damage. A damaged
    file gets the pieces to fetch again and the members they hold. Exit 0 all good; 1 damage or missing
    files; 2 bad input (a bad signature, an older or mixed publication, a file that is not a shard).

    Example:
        packager verify ~/mirror --pubkey music.pub
        packager verify ~/mirror/shards/music-audio-t1-00001.tar.zst --deep
        packager verify ~/mirror --pieces --partial --json
    """
    options = VerifyOptions(
        pieces=pieces, deep=deep, jobs=jobs, pubkey=pubkey, trust_file=trust_file, partial=partial
    )
    with _VerifyProgress(as_json) as on_event:
        report = run_verify(paths, options, on_event)
    if as_json:
        emit_json(report.as_dict(partial))
    else:
        _render(report, partial)
    raise typer.Exit(report.exit_code(partial))


def _render(report, partial: bool) -> None:
    # With the console (LazyConsole): a --json run, as scripts and bench.py verify use it, needs neither.
    from rich.table import Table
    from rich.text import Text

    table = Table("file", "size", "status", "checked", "details", box=None)
    style = {
        Status.OK: "green",
        Status.DAMAGED: "bold red",
        Status.MISSING: "yellow",
        Status.NOT_A_SHARD: "bold red",
    }
    for r in report.files:
        details = []
        if r.bad_pieces:
            details.append(f"bad pieces {format_ranges(r.bad_pieces)} of {r.pieces}")
        container = [
            f
            for f in r.findings
            if f.level == Level.MEMBER and f.severity == Severity.DAMAGE and not f.member_path
        ]
        if r.damaged_members:
            details.append(f"{len(r.damaged_members)} damaged member(s)")
        if container:
            details.append("container damaged")
        elif r.members is not None and not r.damaged_members:
            details.append(f"{r.members} members good")
        size = format_size(r.size) if r.size is not None else "-"
        status = Text(str(r.status), style=style.get(r.status, ""))
        table.add_row(r.path, size, status, ", ".join(r.levels) or "-", "; ".join(details))
    out.print(table)
    for r in report.files:
        problems = [
            f for f in r.findings if f.severity in (Severity.DAMAGE, Severity.BAD_INPUT) and not f.member_path
        ]
        members = [f for f in r.findings if f.member_path]
        if not problems and not members:
            continue
        out.print(f"\n{r.path}", style="bold")
        for f in problems + members[:_SHOWN]:
            out.print(f"  {f.message}", markup=False)
        if len(members) > _SHOWN:
            out.print(f"  ... and {len(members) - _SHOWN} more damaged members (see --json)")
    for f in report.findings:
        if f.severity != Severity.NOTE:
            out.print(f"\n{f.file}: {f.message}", markup=False)
    for p in report.publications:
        signed = f"signed by key {p.key_id}" if p.key_id else "not authenticated"
        until = f", valid until {p.valid_until}" if p.valid_until else ""
        out.print(
            f"\n{p.release}: publication {p.publication} of {p.published_at}{until}, {signed}; "
            f"trust file: {p.trust}" + (f" ({p.trust_file})" if p.trust_file else ""),
            markup=False,
        )
    notes = [f for f in report.all_findings() if f.severity == Severity.NOTE]
    seen = set()
    for f in notes:
        key = f.message if f.level == Level.RELEASE else (f.file, f.message)
        if key not in seen and f.level in (Level.RELEASE, Level.FILE):
            seen.add(key)
            err.print(
                f"note: {f.file}: {f.message}" if f.level != Level.RELEASE else f"note: {f.message}",
                markup=False,
            )
    counts = {s: report.count(s) for s in Status}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    code = report.exit_code(partial)
    verdict = {
        0: ("all good", "green"),
        1: ("damage or missing files", "bold red"),
        2: ("bad input", "bold red"),
    }
    out.print(Text.assemble(f"\n{len(report.files)} files: {summary or 'none'} -> ", verdict[code]))
    if code == 0 and counts[Status.MISSING]:
        out.print("(--partial: missing files are not counted)")


class _VerifyProgress:
    """A rich bar over every byte verify reads; silent for --json or a non-terminal.

    Events only add to counters; a timer hands them to rich ten times a second. Updating rich from the
    reading threads themselves, once per 4 MiB chunk, contended for its lock and halved the throughput.
    """

    def __init__(self, quiet: bool):
        self.quiet = quiet or not err.is_terminal
        self.progress = None
        self.total = self.done = 0
        self.current = ""
        self.stop = threading.Event()

    def __enter__(self):
        if self.quiet:
            return lambda event: None
        # rich.progress (14 ms to import): only a terminal gets a bar
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(
            TextColumn("verify {task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("", total=0)
        self.timer = threading.Thread(target=self._refresh, daemon=True)
        self.timer.start()
        return self.on_event

    def on_event(self, event) -> None:
        if isinstance(event, BytesRead):
            self.done += event.n
        elif isinstance(event, PassStarted):
            self.total += event.total
            self.current = event.path

    def _refresh(self) -> None:
        while not self.stop.wait(0.1):
            self.progress.update(self.task, total=self.total, completed=self.done, description=self.current)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.stop.set()
            self.timer.join()
            self.progress.stop()
