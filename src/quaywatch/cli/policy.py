"""``quaywatch policy``: check a site policy file, or propose one from observed traffic.

Exit codes follow main.py: 0 valid (warnings allowed), 1 problems found or the store has no flows, 2 usage error,
3 the database cannot be opened. Problems quote the policy's own text, so they are escaped before printing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import duckdb

from quaywatch.cli.options import database_option, load_policy_or_exit, require_database
from quaywatch.cli.text import terminal_safe
from quaywatch.policy.learn import learn_policy
from quaywatch.policy.load import load_policy

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
@database_option
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


@policy.command()
@database_option
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Site policy YAML.",
)
@click.option("--limit", type=click.IntRange(0), default=50, show_default=True, help="Violations shown (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Verdict counts and every violation as one JSON object.")
def evaluate(database: Path, policy_file: Path, limit: int, as_json: bool) -> None:
    """Judge every stored flow against the policy: verdict counts and the violations (writes flow_policy)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from quaywatch.assets.risk import rate_assets
    from quaywatch.policy.evaluate import FLOW_POLICY_TABLE, evaluate_policy
    from quaywatch.store.database import Store, StoreError

    loaded = load_policy_or_exit(policy_file, EXIT_PROBLEMS)
    require_database(database)
    try:
        store = Store(database)
    except StoreError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)
    try:
        if "flows" not in store.tables():
            click.echo(
                f"error: {terminal_safe(str(database))}: no flows table; run 'quaywatch analyze' first", err=True
            )
            sys.exit(EXIT_PROBLEMS)
        summary = evaluate_policy(store, loaded)
        rate_assets(store)  # the risk rating counts violations: keep it in step with the verdicts
        cursor = store.connection.execute(
            f"SELECT f.ts, p.client_ip, p.client_zone, p.server_ip, p.server_zone, p.protocol, p.verdict, p.conduit, "
            f"p.reason, p.flow_id FROM {FLOW_POLICY_TABLE} p JOIN flows f USING (capture_id, flow_id) "
            "WHERE p.verdict IN ('violation', 'external_unapproved') ORDER BY f.ts, p.flow_id"
        )
        names = [column[0] for column in cursor.description]
        violations = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        store.close()
    if as_json:
        document = {"verdicts": summary.verdicts, "zones": summary.zones, "violations": violations}
        click.echo(json.dumps(document, default=str, ensure_ascii=True))
        return
    console = Console(highlight=False)
    counts = Table(title=f"{summary.flows} flows, {summary.addresses} addresses", title_justify="left")
    counts.add_column("verdict")
    counts.add_column("flows", justify="right")
    for verdict, count in summary.verdicts.items():
        counts.add_row(verdict, f"{count:,}")
    console.print(counts)
    shown = violations if limit == 0 else violations[:limit]
    table = Table(title=f"{len(violations)} violations" + (f" (first {len(shown)})" if len(shown) < len(violations)
                  else ""), title_justify="left")  # fmt: skip
    for column in ("client", "server", "protocol", "verdict", "reason"):
        table.add_column(column, overflow="fold")
    for row in shown:
        table.add_row(
            terminal_safe(f"{row['client_ip']} ({row['client_zone']})"),
            terminal_safe(f"{row['server_ip']} ({row['server_zone']})"),
            terminal_safe(str(row["protocol"])), row["verdict"], terminal_safe(str(row["reason"])),
        )  # fmt: skip
    console.print(table)
