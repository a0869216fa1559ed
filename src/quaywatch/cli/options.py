"""Options every store-reading command shares, defined once so that they read and behave alike."""

from __future__ import annotations

from pathlib import Path

import click

from quaywatch.store.database import DEFAULT_DATABASE

#: ``--db FILE``: every command that reads or writes the store takes it (a configuration file may set it too).
database_option = click.option(
    "--db",
    "database",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DATABASE,
    show_default=True,
    help="DuckDB database file.",
)
