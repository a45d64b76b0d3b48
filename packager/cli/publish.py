"""Commands for publication: keygen, publish, locate."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import layout, trust
from ..errors import UsageError
from ..member_index import MemberIndex, published_folder
from ..publish import publish as run_publish
from ..units import format_size
from ..workspace import Workspace
from ._app import JsonOpt, TrustFileOpt, WorkspaceArg, app, emit_json, out, pubkey_given

PASSWORD_ENV = "PACKAGER_KEY_PASSWORD"

PasswordFile = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help=f"Read the key's password from this file's first line (else ${PASSWORD_ENV}, else a prompt).",
    ),
]


def _read_password_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot read the password file: {e.strerror}") from None
    return text.splitlines()[0] if text else ""


def _password_source(password_file: Path | None) -> Callable[[], str] | None:
    """--password-file, then $PACKAGER_KEY_PASSWORD, then a prompt on a terminal; else None."""
    if password_file is not None:
        return lambda: _read_password_file(password_file)
    if os.environ.get(PASSWORD_ENV):
        return lambda: os.environ[PASSWORD_ENV]
    if sys.stdin.isatty():
        return lambda: typer.prompt("password for the signing key", hide_input=True)
    return None


@app.command()
def keygen(
    keyfile: Annotated[
        Path, typer.Argument(help="Where to write the secret key; the public key goes beside it.")
    ],
    unencrypted: Annotated[
        bool, typer.Option("--unencrypted", help="Store the secret key without a password (for automation).")
    ] = False,
    password_file: PasswordFile = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing key pair.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a minisign (Ed25519) key pair to sign SHA256SUMS and release.json.

    The secret key is protected by a password unless --unencrypted; KEYFILE.key pairs with KEYFILE.pub.
    Users check signatures with the stock tool: `minisign -Vm SHA256SUMS -p KEYFILE.pub`.

    Example:
        packager keygen music-release/keys/release.key
        packager keygen ci/release.key --unencrypted
    """
    from ..signing import generate_keypair  # minisign (75 ms to import): only for keygen and publish

    password = None
    if not unencrypted:
        if password_file is not None:
            password = _read_password_file(password_file)
        elif os.environ.get(PASSWORD_ENV):
            password = os.environ[PASSWORD_ENV]
        elif sys.stdin.isatty():
            password = typer.prompt("password for the new key", hide_input=True, confirmation_prompt=True)
        else:
            raise UsageError(
                "no password for the new key and no terminal to ask on",
                hint=f"pass --password-file FILE, set {PASSWORD_ENV}, or pass --unencrypted",
            )
    pair = generate_keypair(keyfile, password, force=force)
    if as_json:
        emit_json(pair)
        return
    out.print(
        f"secret key: {pair.secret} ({'encrypted' if pair.encrypted else 'NOT encrypted'}; keep it private)"
    )
    out.print(f"public key: {pair.public}  (id {pair.key_id})")
    out.print(pair.public_key)
    # Written so that both work as printed: release.toml takes a relative path from its own folder, so the
    # config line gets the absolute path; --key takes one from the current folder, as given here.
    out.print(
        f'sign with it: in release.toml, [publish] signing_key = "{pair.secret.resolve()}"'
        " (a relative path there is taken from release.toml's folder)",
        markup=False,
        soft_wrap=True,
    )
    out.print(
        f"          or: packager publish DIR --phase PHASE --key {pair.secret}"
        " (a relative --key is taken from the current folder)",
        markup=False,
        soft_wrap=True,
    )


@app.command()
def publish(
    workspace: WorkspaceArg,
    phase: Annotated[
        str, typer.Option("--phase", help="The phase to publish; all its shards must be built.")
    ],
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="minisign secret key, relative to the current folder "
            "(default: release.toml [publish] signing_key, relative to release.toml).",
        ),
    ] = None,
    password_file: PasswordFile = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Write a new publication statement (next number, new valid_until) even if no file changed.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Publish a phase: release.json, torrents.json, signed SHA256SUMS, feed.xml, index.html, member index.

    Writes DIR/published/ atomically. Entries of published torrents never change, and publishing again
    changes nothing; a phase with an unbuilt or failed shard is refused (exit 2) with the list.

    Example:
        packager publish music-release --phase metadata
        packager publish music-release --phase audio --key keys/release.key --password-file pw.txt
    """
    from ..signing import load_signing_key  # minisign (75 ms to import): only for keygen and publish

    with Workspace.open(workspace) as ws:
        key_path = key or ws.config.signing_key
        if password_file is not None and not password_file.is_file():
            raise UsageError(
                f"{password_file}: no such password file", hint="give the file whose first line is it"
            )
        loader = (lambda: load_signing_key(key_path, _password_source(password_file))) if key_path else None
        report = run_publish(ws, phase, key=loader, refresh=refresh)
    if as_json:
        emit_json(report)
        return
    what = f"{len(report.added)} new torrents" if report.added else "no new torrents (already published)"
    out.print(
        f"published phase {report.phase} ({report.published_at}): {what}; {report.torrents} in the release; "
        f"publication {report.publication}"
    )
    out.print(
        f"signed by minisign key {report.signed_by}" if report.signed_by else "not signed (no signing_key)"
    )
    out.print(f"folder: {report.folder}")
    out.print(f"index:  {report.index_html}")


@app.command()
def locate(
    index: Annotated[
        Path, typer.Argument(help="A published folder (or its members/index.json), or a workspace.")
    ],
    ids: Annotated[list[str], typer.Argument(help="Item ids to look up.")],
    pubkey: Annotated[
        str | None,
        typer.Option(
            callback=pubkey_given,
            help="The publisher's minisign public key: authenticate the index first (see verify).",
        ),
    ] = None,
    trust_file: TrustFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find which torrent holds each item, where in its shard, and which pieces to fetch for it alone.

    Answers from the published member index, reading only the parts that hold the ids (each checked
    against the SHA-256 the index's root gives; the root against the folder's publication statement, signed
    and not older than the trust file's with --pubkey). Unknown ids exit 2, as does an index the statement
    does not list. To fetch the item itself from the
    swarm or a mirror: `packager fetch`.

    Example:
        packager locate music-release/published trk-000042 trk-000043
        packager locate mirror-copy/ trk-000042 --pubkey music.pub --json
    """
    trusted = trust.TrustFile(trust_file)
    folder = published_folder(index)
    fs = trust.check_published_file(folder, layout.MEMBER_INDEX, pubkey, trusted)
    # The root as read must be the one just checked, before it is parsed (the parts are checked against it).
    root = fs.statement.digest(layout.MEMBER_INDEX).sha256 if fs is not None else None
    with MemberIndex.open(folder, root) as idx:
        found, missing = idx.locate(ids)
    if fs is not None:
        trusted.accept(fs.statement)
    if as_json:
        emit_json({"found": [loc.as_dict() for loc in found], "missing": missing})
    else:
        for loc in found:
            table = Table(show_header=False, box=None, title=loc.id, title_justify="left")
            table.add_column(style="bold", no_wrap=True)
            table.add_column(overflow="fold")
            t = loc.torrent
            for k, v in (
                ("torrent", f"{t.name}  ({t.torrent_file})"),
                ("info-hash", t.info_hash_v1 or t.info_hash_v2 or "-"),
                ("path", loc.path),
                ("member", f"{loc.size:,} bytes ({format_size(loc.size)}) at tar offset {loc.offset:,}"),
                ("sha256", loc.sha256),
                (
                    "frames",
                    f"{loc.first_frame}-{loc.last_frame}: shard bytes {loc.frames_offset:,}-"
                    f"{loc.frames_offset + loc.frames_size - 1:,} of {t.shard_file}",
                ),
                ("pieces", f"{loc.first_piece}-{loc.last_piece} ({loc.pieces} of {t.piece_size:,} bytes)"),
                ("magnet", t.magnet),
            ):
                table.add_row(k, v)
            out.print(table)
    if missing:
        raise UsageError(
            f"{index}: not in the member index: {', '.join(missing)}",
            hint="ids are the catalog's; only published phases are indexed",
        )
