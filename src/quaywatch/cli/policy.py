"""``quaywatch policy``: check a site policy file, or propose one from observed traffic.

Exit codes follow main.py: 0 valid (warnings allowed), 1 problems found or the store has no flows, 2 usage error,
3 the database cannot be opened. Problems quote the policy's own text, so they are escaped before printing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import duckdb

from quaywatch.cli.text import terminal_safe
from quaywatch.policy.learn import learn_policy
from quaywatch.policy.load import load_policy
from quaywatch.store.database import DEFAULT_DATABASE

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_STORE = 3


@click.group()
def policy() -> None:
    """Site policy: IEC 62443 zones and conduits, engineering hosts, remote access, external destinations."""


@policy.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Validate FILE and report every problem with its line and key path."""
    loaded, problems = load_policy(file)
    for problem in problems:
        click.echo(terminal_safe(str(problem)), err=problem.severity == "error")
    errors = sum(problem.severity == "error" for problem in problems)
    warnings = len(problems) - errors
    counts = loaded.counts()
    rules = sum(counts.values()) - counts["zones"] - counts["conduits"]
    click.echo(
        f"{terminal_safe(str(file))}: {counts['zones']} zones, {counts['conduits']} conduits, {rules} rules "
        f"({counts['engineering_hosts']} engineering, {counts['remote_access']} remote access, "
        f"{counts['external_destinations']} external, {counts['container_data']} container data); "
        f"{errors} errors, {warnings} warnings"
    )
    sys.exit(EXIT_PROBLEMS if errors else EXIT_OK)


@policy.command()
@click.option(
    "--db",
    "database",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DATABASE,
    show_default=True,
    help="DuckDB database file.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here, not stdout.")
def learn(database: Path, out: Path | None) -> None:
    """Propose a policy from the observed traffic, for a person to review."""
    if not database.exists():
        click.echo(f"error: {terminal_safe(str(database))}: no such database; run 'quaywatch analyze' first", err=True)
        sys.exit(EXIT_STORE)
    try:
        con = duckdb.connect(str(database), read_only=True)
    except duckdb.Error as error:
        click.echo(f"error: {terminal_safe(str(database))}: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)
    try:
        tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "flows" not in tables:
            click.echo(
                f"error: {terminal_safe(str(database))}: no flows table; run 'quaywatch analyze' first", err=True
            )
            sys.exit(EXIT_PROBLEMS)
        text = learn_policy(con)
    finally:
        con.close()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(
            f"wrote {terminal_safe(str(out))}: review it, then run 'quaywatch policy check {terminal_safe(str(out))}'"
        )
