"""``quaywatch intel``: import, list and remove threat-intelligence indicators (D10) from STIX 2.1 or CSV files.

Feeds reach an air-gapped port as files; nothing is fetched. Exit codes follow main.py: 0 done, 1 a file had rows or
indicators that were rejected (the valid ones were stored; each problem names file, line and column or indicator id),
3 the database cannot be opened or written. Indicator descriptions come from third parties: escaped on output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import duckdb
from rich.console import Console
from rich.table import Table

from quaywatch.cli.options import database_option
from quaywatch.cli.text import terminal_safe
from quaywatch.intel.indicators import import_file, list_indicators, remove_source
from quaywatch.store.database import Store, StoreError

EXIT_OK = 0
EXIT_INPUT_PROBLEM = 1
EXIT_STORE = 3


def _open(database: Path, read_only: bool = False) -> Store:
    try:
        return Store(database, read_only=read_only)
    except StoreError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)


@click.group()
def intel() -> None:
    """Threat-intelligence indicators (IP, CIDR, domain, URL, hashes, JA3/JA4, HASSH, certificates) for D10."""


@intel.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@database_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
def import_command(files: tuple[Path, ...], database: Path, as_json: bool) -> None:
    """Import STIX 2.1 bundles (.json) and CSV files (type,value,description,source,confidence,valid_until).

    Importing a file again (same content or same name) replaces its indicators, never duplicates them.
    """
    store = _open(database)
    rejected = False
    try:
        for path in files:
            try:
                result = import_file(store.connection, path)
            except (OSError, duckdb.Error) as error:
                click.echo(f"error: {terminal_safe(str(path))}: {terminal_safe(str(error))}", err=True)
                sys.exit(EXIT_STORE if isinstance(error, duckdb.Error) else EXIT_INPUT_PROBLEM)
            errors = [problem for problem in result.problems if problem.severity == "error"]
            rejected = rejected or bool(errors)
            if as_json:
                click.echo(json.dumps(result.to_dict()))
                continue
            for problem in [*result.problems, *result.unsupported]:
                click.echo(terminal_safe(str(problem)), err=True)
            click.echo(
                f"{terminal_safe(result.file)}: {result.indicators} indicator(s) imported ({result.rows} value(s)), "
                f"{len(errors)} rejected, {len(result.unsupported)} unsupported pattern note(s)"
            )
    finally:
        store.close()
    sys.exit(EXIT_INPUT_PROBLEM if rejected else EXIT_OK)


@intel.command("list")
@database_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per indicator.")
def list_command(database: Path, as_json: bool) -> None:
    """The imported indicators, one per line, with their values, source and validity."""
    if not database.exists():
        click.echo(f"error: {terminal_safe(str(database))}: no such database", err=True)
        sys.exit(EXIT_STORE)
    store = _open(database, read_only=True)
    try:
        rows = list_indicators(store.connection)
    finally:
        store.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    table = Table(title=f"Indicators ({len(rows)})", title_justify="left")
    for column in ("indicator", "values", "confidence", "valid until", "source", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            terminal_safe(str(row["indicator_id"])),
            terminal_safe(", ".join(row["values"])),
            str(row["confidence"]),
            row["valid_until"].isoformat() if row["valid_until"] else "-",
            terminal_safe(f"{row['source']} ({row['source_file']})"),
            terminal_safe(str(row["description"] or "")),
        )
    Console(soft_wrap=True).print(table)


@intel.command("remove")
@click.argument("source")
@database_option
def remove_command(source: str, database: Path) -> None:
    """Remove the indicators of one imported file, named by its file name or its sha256 (8 digits or more)."""
    store = _open(database)
    try:
        count = remove_source(store.connection, source)
    finally:
        store.close()
    click.echo(f"{count} indicator value(s) removed from {terminal_safe(source)}")
    sys.exit(EXIT_OK if count else EXIT_INPUT_PROBLEM)
