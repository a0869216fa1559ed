"""``quaywatch report``: the offline HTML incident report (and the alerts as CSV alongside).

Exit codes follow main.py: 0 written, 1 the policy file has errors or an output cannot be written, 2 usage error,
3 the database cannot be opened. The store is opened read-only: a report never changes what it reports on (run
``quaywatch analyze --policy ... --inventory ...`` and ``quaywatch detect`` first).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import click
import duckdb

from quaywatch.cli.options import database_option, load_policy_or_exit, require_database
from quaywatch.cli.text import terminal_safe
from quaywatch.policy.model import Policy
from quaywatch.report.collect import collect
from quaywatch.report.render import render_csv, render_html, render_values_csv
from quaywatch.store.database import Store, StoreError

EXIT_PROBLEM = 1
EXIT_STORE = 3


def csv_paths(out: Path) -> tuple[Path, Path]:
    """Where the CSV exports go, next to the report: ``<name>-alerts.csv`` and ``<name>-evidence.csv``."""
    return out.with_name(out.stem + "-alerts.csv"), out.with_name(out.stem + "-evidence.csv")


@click.command(name="report")
@database_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="HTML file to write.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Site policy: its site name and zones for the summary and the network map.",
)
@click.option("--title", default=None, help="Report title (default: 'Incident report: SITE').")
@click.option("--organisation", default="", help="Reporting entity's legal name, for the incident-report block.")
@click.option(
    "--csv/--no-csv",
    "with_csv",
    default=True,
    show_default=True,
    help="Also write OUT-alerts.csv and OUT-evidence.csv.",
)
def report(
    database: Path, out: Path, policy_file: Path | None, title: str | None, organisation: str, with_csv: bool
) -> None:
    """Write one self-contained HTML incident report that works offline and loads nothing."""
    policy: Policy | None = None
    policy_sha256: str | None = None
    if policy_file is not None:
        policy = load_policy_or_exit(policy_file, EXIT_PROBLEM)
        policy_sha256 = hashlib.sha256(policy_file.read_bytes()).hexdigest()
    require_database(database)
    try:
        store = Store(database, read_only=True)
        try:
            data = collect(
                store.connection,
                policy,
                title=title,
                organisation=organisation,
                policy_name=policy_file.name if policy_file else None,
                policy_sha256=policy_sha256,
            )
        finally:
            store.close()
    except (duckdb.Error, StoreError) as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)
    alerts_csv, evidence_csv = csv_paths(out)
    try:
        out.write_text(render_html(data), encoding="utf-8")
        if with_csv:
            alerts_csv.write_text(render_csv(data), encoding="utf-8", newline="")
            evidence_csv.write_text(render_values_csv(data), encoding="utf-8", newline="")
    except OSError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_PROBLEM)
    counts = data.severity_counts
    levels = ", ".join(f"{level} {count}" for level, count in counts.items() if count) or "none"
    click.echo(
        f"{terminal_safe(str(out))}: {len(data.alerts)} alert(s) ({levels}), {len(data.assets)} asset(s), "
        f"{len(data.findings)} inventory finding(s)"
    )
    if with_csv:
        click.echo(f"{terminal_safe(str(alerts_csv))}: alerts; {terminal_safe(str(evidence_csv))}: evidence values")
