"""The `packager` command line: parse, call one library function, render with rich.

One module per command group (workspace, shards, ...); each registers its commands on the one typer app.
`packager COMMAND` imports only COMMAND's module: start-up is part of every command's wait (importing
every command module, and what they import, took 0.5 s before `verify` began to read a byte; see
COMMANDS). `packager`, `packager --help` and an unknown name load them all, in help order; so does
`from packager.cli import app`.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def _starting() -> Iterator[None]:
    """Python's cyclic collector paused while modules load, and what they made frozen out of its way after:
    start-up makes tens of thousands of objects (modules, classes, functions) and frees almost none, yet
    the collector went over them 34 times before `verify --pieces` read a byte (15-25 ms of its start)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


with _starting():
    from . import _app

# Every command, in help order, with the module that defines it (tests/test_cli.py checks it is complete).
COMMANDS = {
    "init": "workspace",
    "ingest": "workspace",
    "plan": "workspace",
    "status": "workspace",
    "remove": "workspace",
    "demo": "workspace",
    "build": "shards",
    "extract": "shards",
    "torrent": "shards",
    "show": "shards",
    "piece-size": "shards",
    "keygen": "publish",
    "publish": "publish",
    "locate": "publish",
    "fetch": "fetch",
    "verify": "verify",
    "seed": "seed",
    "push": "seed",
    "tracker-whitelist": "seed",
    "health": "swarm",
    "pick": "swarm",
}
MODULES = tuple(dict.fromkeys(COMMANDS.values()))

__all__ = ["app", "main"]


def _load(modules: tuple[str, ...]):
    for module in modules:
        importlib.import_module(f"{__name__}.{module}")
    return _app.app


def _command(argv: list[str]) -> str | None:
    """The command an argument list names: its first word, when that comes before any option."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main() -> None:
    name = _command(sys.argv[1:])
    with _starting():
        app = _load((COMMANDS[name],) if name else MODULES)
    app()


def __getattr__(name: str):
    if name == "app":
        return _load(MODULES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
