"""Options every store-reading command shares, defined once so that they read and behave alike."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from quaywatch.cli.text import terminal_safe
from quaywatch.policy.load import load_policy
from quaywatch.policy.model import Policy
from quaywatch.store.database import DEFAULT_DATABASE

#: Exit status of every command whose database cannot be opened or is missing (README, Exit codes).
EXIT_STORE = 3

#: ``--db FILE``: every command that reads or writes the store takes it (a configuration file may set it too).
database_option = click.option(
    "--db",
    "database",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DATABASE,
    show_default=True,
    help="DuckDB database file.",
)


def load_policy_or_exit(path: Path, exit_code: int) -> Policy:
    """The site policy, or every error printed (file, line, key; escaped: it quotes the file) and an exit."""
    policy, problems = load_policy(path)
    errors = [problem for problem in problems if problem.severity == "error"]
    for problem in errors:
        click.echo(f"error: {terminal_safe(str(problem))}", err=True)
    if errors:
        click.echo(f"error: {terminal_safe(str(path))}: {len(errors)} problem(s); fix the policy first", err=True)
        sys.exit(exit_code)
    return policy


def require_database(database: Path) -> None:
    """Commands that read the store stop early, and say what to do, when there is none yet."""
    if not database.exists():
        click.echo(f"error: {terminal_safe(str(database))}: no such database; run 'quaywatch analyze' first", err=True)
        sys.exit(EXIT_STORE)
