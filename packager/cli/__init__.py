"""The `packager` command line: parse, call one library function, render with rich.

One module per command group (workspace, shards, ...); each registers its commands on the one typer app.
"""

from . import workspace, shards, publish, fetch, verify, seed, swarm  # noqa: F401, I001  (registers commands, in help order)
from ._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
