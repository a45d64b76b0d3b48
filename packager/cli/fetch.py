"""Command: fetch single items of a release from the swarm or a mirror, without their shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from ..units import format_size
from ._app import JsonOpt, TrustFileOpt, app, emit_json, err, out, pubkey_given


@app.command()
def fetch(
    source: Annotated[
        str,
        typer.Argument(
            help="A mirror's published URL (http/https), a published folder, a workspace, or a torrents.json."
        ),
    ],
    ids: Annotated[list[str], typer.Argument(help="Item ids to fetch.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Write the items under this folder.")] = Path(
        "."
    ),
    via: Annotated[
        str,
        typer.Option(help="bittorrent, http (the mirror and web seeds) or auto: HTTP when a source answers."),
    ] = "auto",
    pubkey: Annotated[
        str | None,
        typer.Option(
            callback=pubkey_given,
            help="The publisher's minisign public key (.pub file or its base64 line): every byte used is "
            "checked against the signed publication.",
        ),
    ] = None,
    trust_file: TrustFileOpt = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the swarm to send the pieces (then exit 3).")
    ] = 300.0,
    listen: Annotated[
        str, typer.Option(help="libtorrent listen_interfaces for the swarm.")
    ] = "0.0.0.0:0,[::]:0",
    dht: Annotated[bool, typer.Option("--dht/--no-dht", help="Find peers on the DHT too.")] = True,
    peers: Annotated[
        list[str] | None, typer.Option("--peer", help="Also dial this peer, HOST:PORT (repeatable).")
    ] = None,
    lt_flags: Annotated[
        list[str] | None, typer.Option("--lt", help="A raw libtorrent setting NAME=VALUE (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch items by id: only the pieces (or HTTP ranges) holding their frames, checked, written by path.

    The member index is read in parts (about 100-200 kB a lookup). Each item is checked for size, xxh3-128
    and SHA-256 and written atomically under --out by its path; a damaged piece or range is refused and
    fetched again elsewhere. Exit 2 for an id not in the index, 3 when no peer or mirror delivered in time.

    Example:
        packager fetch https://mirror.example.org/music/ 4uLU6hMCjMI75M1A2tKUQC -o tracks --pubkey music.pub
        packager fetch ~/mirror/torrents.json 4uLU6hMCjMI75M1A2tKUQC --via bittorrent --json
        packager fetch music-release trk-000042 -o /tmp/one
    """
    # libtorrent (0.3 s to import): only for this command
    from ..fetch import FetchOptions, SwarmSettings, Via
    from ..fetch import fetch as run_fetch
    from ..fetch.bittorrent import parse_peer
    from ..seed.session import parse_libtorrent_flag

    try:
        chosen = Via(via)
    except ValueError:
        raise UsageError(f"--via {via!r}: expected bittorrent, http or auto") from None
    if not 0 < timeout < float("inf"):  # nan, inf: a deadline never reached
        raise UsageError(f"--timeout {timeout:g}: expected a number of seconds above 0")
    swarm = SwarmSettings(
        listen,
        dht,
        timeout,
        tuple(parse_libtorrent_flag(f) for f in lt_flags or ()),
        tuple(parse_peer(p) for p in peers or ()),
    )
    options = FetchOptions(chosen, pubkey, trust_file, swarm=swarm)
    quiet = as_json or not err.is_terminal

    def note(text: str) -> None:
        if not as_json:
            err.print(f"note: {escape(text)}")

    if quiet:
        report = run_fetch(source, ids, out_dir, options, note)
    else:
        with err.status(f"fetching {len(ids)} item(s) from {escape(source)} ..."):
            report = run_fetch(source, ids, out_dir, options, note)
    if as_json:
        emit_json(report)
        return
    table = Table("id", "file", "size", "torrent", "via", "fetched", box=None)
    for d in report.items:
        table.add_row(
            d.location.id,
            str(d.file),
            format_size(d.location.size),
            d.location.torrent.name,
            d.via,
            format_size(d.bytes_fetched),
        )
    out.print(table)
    for t in report.torrents:
        pieces = f", {len(t.pieces)} of its pieces" if t.pieces else ""
        failed = f", {t.hash_failures} bad pieces refused" if t.hash_failures else ""
        shard = format_size(t.torrent.shard_size)
        out.print(
            f"{t.torrent.name}: {format_size(t.bytes_fetched)} downloaded of a {shard} shard{pieces}{failed}"
        )
    out.print(f"member index: {format_size(report.index_bytes)} read")
    out.print(
        f"authenticated: {report.authenticated}"
        if report.authenticated
        else "not authenticated: pass --pubkey to check everything against the signed publication"
    )
