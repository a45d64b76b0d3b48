"""The app, its error handling and the output helpers every command module shares.

Every error packager raises on purpose is a PackagerError; it is caught once, in PackagerGroup.invoke,
printed as `error: ...` / `hint: ...` and turned into the exit code (2 bad input, 3 environment, 1 damage).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import PackagerError

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A rich Console made at its first use: importing rich.console and rich.text is a fifth of a command's
    start-up (35 ms of 0.17 s), and a --json command, or a quiet one, prints nothing through it. Attributes
    are the Console's; `console` is the Console itself, for rich objects that take one."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console  # rich.console: see the class docstring

            options = dict(self._options)
            if options.pop("wide_when_piped", False):
                options["width"] = None if sys.stdout.isatty() else 200
            self._console = Console(**options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


# Piped output is read by people with wide terminals and by grep: do not wrap it at rich's default 80.
# markup=False: what we print is mostly other people's text (paths, ids, shard names, reasons, a tracker's
# or a worker's reply), and rich would read `[live]` or `packager[cluster]` in it as markup and drop it.
# Styled words go through say(); a string with markup of our own passes markup=True explicitly.
out = LazyConsole(highlight=False, markup=False, wide_when_piped=True)
err = LazyConsole(stderr=True, highlight=False, markup=False, soft_wrap=True)


def say(console: LazyConsole | Console, label: str, text: str, style: str = "bold red") -> None:
    """Print `label` (``error:``, ``warning:``...) in `style`, then `text` exactly as it is."""
    from rich.text import Text  # with the console itself, at its first use (see LazyConsole)

    console.print(Text.assemble((label, style), " ", text))


class PackagerGroup(TyperGroup):
    """Maps PackagerError to a two-line message and an exit code, for the real CLI and CliRunner alike."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PackagerError as e:
            say(err, "error:", e.message)
            if e.hint:
                say(err, "hint:", e.hint, "bold")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as e:
            # The last resort for the machine saying no (permissions, a full disk, a read-only state
            # database) where no stage turned it into a PackagerError: a message, exit 3, no traceback.
            if not _environment_error(e):
                raise
            if isinstance(e, BrokenPipeError):
                raise  # stdout closed by the reader (`| head`): typer exits quietly
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            what = getattr(e, "strerror", None) or str(e)
            say(err, "error:", where + what)
            say(err, "hint:", "check that the folders exist, are writable and have free space", "bold")
            raise typer.Exit(3) from None


def _environment_error(e: Exception) -> bool:
    """An OSError, or a sqlite3.Error (sqlite3 looked up, not imported: a command that never opened a
    database, as verify, cannot have raised one, and need not load it)."""
    sqlite3 = sys.modules.get("sqlite3")
    return isinstance(e, OSError) or (sqlite3 is not None and isinstance(e, sqlite3.Error))


app = typer.Typer(
    cls=PackagerGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Turn a huge preservation archive into a phased public BitTorrent release.",
)

WorkspaceArg = Annotated[Path, typer.Argument(help="The release workspace folder (made by `packager init`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def pubkey_given(value: str | None) -> str | None:
    """--pubkey's callback: an empty key (`--pubkey "$KEY"` with KEY unset) would read as no key at all, so
    nothing would be authenticated and the check would still pass."""
    if value is not None and not value.strip():
        raise typer.BadParameter(
            "empty: give the publisher's .pub file or its base64 line", param_hint="--pubkey"
        )
    return value


TrustFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--trust-file",
        envvar="PACKAGER_TRUST_FILE",
        help="Where the last trusted publication is kept, per release and key "
        "(default: $XDG_DATA_HOME/packager/trust.json, i.e. ~/.local/share/packager/trust.json).",
    ),
]


def emit_json(report: Any) -> None:
    """The --json branch of every command: a report (its as_dict()), a dataclass, a list of them, or data."""
    sys.stdout.write(json.dumps(_plain(report), indent=2, ensure_ascii=False, default=str) + "\n")


def _plain(data: Any) -> Any:
    if hasattr(data, "as_dict"):
        return data.as_dict()
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    if isinstance(data, list | tuple):
        return [_plain(item) for item in data]
    return data


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


class count_progress:
    """A transient rich progress line fed by a count callback; silent for --json or a non-terminal."""

    def __init__(self, label: str, quiet: bool):
        self.label, self.quiet = label, quiet or not err.is_terminal
        self.progress = None

    def __enter__(self) -> Callable[[int], None]:
        if self.quiet:
            return lambda n: None
        # rich.progress (14 ms to import): only a terminal gets a bar
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.completed:,} " + self.label),
            TimeElapsedColumn(),
            console=err.console,
            transient=True,
        )
        self.progress.start()
        task = self.progress.add_task(self.label, total=None)
        return lambda n: self.progress.update(task, completed=n)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
