"""``quaywatch assets``: the passive asset inventory, rebuilt from the store, as a table, JSON lines or CSV.

``--inventory FILE`` imports a declared inventory first; ``assets findings`` lists how it differs from what was
observed. Exit codes follow main.py: 0 done, 1 unknown asset id or bad rows in the declared inventory (the valid rows
were imported), 3 the database cannot be opened or written. Every value that
came from a packet is escaped for the terminal (cli/text.py); CSV cells are neutralised against formula injection.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

import click
import duckdb
from rich.console import Console
from rich.table import Table

from quaywatch.assets.declared import (
    FINDINGS_TABLE,
    DeclaredInventoryError,
    build_findings,
    has_declared,
    import_declared,
)
from quaywatch.assets.inventory import ASSETS_TABLE, ATTRIBUTES_TABLE, build_inventory
from quaywatch.assets.risk import LEVELS, RISK_TABLE, rate_assets
from quaywatch.cli.options import database_option
from quaywatch.cli.text import terminal_safe
from quaywatch.store.database import Store, StoreError

EXIT_OK = 0
EXIT_INPUT_PROBLEM = 1
EXIT_STORE = 3

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

local_net_option = click.option(
    "--local-net",
    "local_nets",
    multiple=True,
    help="The site's local networks (CIDR, repeatable); default RFC 1918, link-local, CGNAT, ULA.",
)
inventory_option = click.option(
    "--inventory",
    "inventory",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Declared inventory CSV (asset tag, maker, model, MAC, IP, location, crane, zone) to import and compare.",
)


def csv_safe(value: Any) -> str:
    """A CSV cell that a spreadsheet shows as text: formulas prefixed with ', control characters escaped."""
    if value is None:
        return ""
    if isinstance(value, list):
        text = ";".join(str(item) for item in value)
    elif isinstance(value, dt.datetime):
        text = value.isoformat()
    else:
        text = str(value)
    if text.startswith(_FORMULA_START):
        text = "'" + text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _open(database: Path) -> Store:
    if not database.exists():
        click.echo(f"error: {terminal_safe(str(database))}: no such database; run 'quaywatch analyze' first", err=True)
        sys.exit(EXIT_STORE)
    try:
        return Store(database)
    except StoreError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)


def _rebuild(store: Store, local_nets: tuple[str, ...]) -> None:
    try:
        if local_nets:
            build_inventory(store, local_networks=local_nets)
        else:
            build_inventory(store)
    except (duckdb.Error, StoreError) as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)
    except ValueError as error:  # a bad --local-net
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(2)
    try:
        if has_declared(store):  # findings follow the inventory they were computed from
            build_findings(store)
        rate_assets(store)  # and so does the risk rating (with the last policy evaluation's verdicts)
    except (duckdb.Error, StoreError) as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)


def import_inventory(store: Store, path: Path) -> bool:
    """Import a declared inventory, printing every bad row (escaped) to stderr; False when anything was rejected."""
    try:
        parsed = import_declared(store, path)
    except DeclaredInventoryError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        return False
    except (duckdb.Error, StoreError) as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)
    for problem in parsed.errors:
        click.echo(f"error: {terminal_safe(str(problem))}", err=True)
    if parsed.ignored_columns:
        click.echo(f"note: ignored columns: {terminal_safe(', '.join(parsed.ignored_columns))}", err=True)
    click.echo(
        f"declared inventory {terminal_safe(path.name)}: {len(parsed.rows)} rows imported, "
        f"{len(parsed.errors)} rejected",
        err=True,
    )
    return not parsed.errors


def _rows(store: Store, sql: str, parameters: list[Any]) -> list[dict[str, Any]]:
    cursor = store.connection.execute(sql, parameters)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return terminal_safe(", ".join(str(item) for item in value)) or "-"
    return terminal_safe(str(value))


@click.group(invoke_without_command=True)
@database_option
@local_net_option
@click.option("--role", default=None, help="Only assets with this role (e.g. PLC, camera).")
@click.option("--vendor", default=None, help="Only assets whose OUI vendor, decoded vendor or maker contains this.")
@click.option("--listed", "only_listed", is_flag=True, help="Only assets whose maker is on a restricted list.")
@click.option(
    "--risk", "risk_level", type=click.Choice(LEVELS), default=None, help="Only assets rated this level or higher."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per asset (JSON lines).")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write CSV.")
@inventory_option
@click.pass_context
def assets(
    context: click.Context,
    database: Path,
    local_nets: tuple[str, ...],
    role: str | None,
    vendor: str | None,
    only_listed: bool,
    risk_level: str | None,
    as_json: bool,
    csv_file: Path | None,
    inventory: Path | None,
) -> None:
    """Build the passive asset inventory from the store and list it."""
    if context.invoked_subcommand is not None:
        return
    store = _open(database)
    findings: list[dict[str, Any]] = []
    imported = True
    try:
        if inventory is not None:
            imported = import_inventory(store, inventory)
        _rebuild(store, local_nets)
        if inventory is not None and FINDINGS_TABLE in store.tables():
            findings = _rows(store, f"SELECT * FROM {FINDINGS_TABLE}", [])
        where: list[str] = ["TRUE"]
        parameters: list[Any] = []
        if role:
            where.append("lower(role) = lower(?)")
            parameters.append(role)
        if vendor:
            where.append("(vendor ILIKE ? OR device_vendor ILIKE ? OR maker ILIKE ?)")
            parameters += [f"%{vendor}%"] * 3
        if only_listed:
            where.append("len(listed) > 0")
        if risk_level:
            where.append("list_position(?, r.risk_level) >= ?")
            parameters += [list(LEVELS), LEVELS.index(risk_level) + 1]
        rows = _rows(
            store,
            f"SELECT a.*, r.risk_score, r.risk_level FROM {ASSETS_TABLE} a LEFT JOIN (SELECT asset_id, score AS "
            f"risk_score, level AS risk_level FROM {RISK_TABLE}) r USING (asset_id) WHERE {' AND '.join(where)} "
            "ORDER BY mac NULLS LAST, asset_id",
            parameters,
        )
    finally:
        store.close()
    if csv_file is not None:
        with csv_file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            names = list(rows[0]) if rows else []
            writer.writerow(names)
            for row in rows:
                writer.writerow([csv_safe(row[name]) for name in names])
    if as_json:
        for row in rows:
            click.echo(json.dumps({key: _json_value(value) for key, value in row.items()}, ensure_ascii=True))
    elif csv_file is not None:
        click.echo(f"{len(rows)} assets written to {terminal_safe(str(csv_file))}")
    else:
        console = Console(highlight=False)
        console.print(_table(rows))
        if inventory is not None:
            console.print(_findings_table(findings))
    if not imported:
        sys.exit(EXIT_INPUT_PROBLEM)


def _table(rows: list[dict[str, Any]]) -> Table:
    """One line per asset, narrow enough for an 80-column terminal; ``assets show`` has everything."""
    table = Table(title=f"{len(rows)} assets (quaywatch assets show ID for the evidence)")
    table.add_column("asset", no_wrap=True, min_width=8)
    table.add_column("mac", no_wrap=True, min_width=17)
    table.add_column("ip", no_wrap=True, min_width=15)
    table.add_column("role", overflow="ellipsis", no_wrap=True, max_width=14)
    table.add_column("vendor / model", overflow="ellipsis", no_wrap=True, max_width=28)
    table.add_column("maker, country: lists", overflow="ellipsis", no_wrap=True)
    table.add_column("risk", no_wrap=True)
    for row in rows:
        ips = row["ips"] or []
        address = _text(ips[0]) + (f" +{len(ips) - 1}" if len(ips) > 1 else "") if ips else "-"
        vendor = _text(row["device_vendor"] or row["vendor"])
        if row["model"]:
            vendor += f" {_text(row['model'])}"
        provenance = _text(row["maker"]) + (f", {_text(row['maker_country'])}" if row["maker_country"] else "")
        if row["listed"]:
            provenance += f": {_text(row['listed'])}"
        risk = f"{row['risk_level']} {row['risk_score']:.0f}" if row.get("risk_level") else "-"
        table.add_row(
            str(row["asset_id"])[:8], _text(row["mac"]), address, _text(row["role"]), vendor, provenance, risk
        )
    return table


@assets.command()
@click.argument("asset_id")
@database_option
@local_net_option
@click.option("--json", "as_json", is_flag=True, help="The asset and its attributes as one JSON object.")
def show(asset_id: str, database: Path, local_nets: tuple[str, ...], as_json: bool) -> None:
    """Every attribute of ASSET_ID with its evidence, rule and confidence; conflicting values are marked."""
    store = _open(database)
    try:
        _rebuild(store, local_nets)
        found = _rows(
            store,
            f"SELECT * FROM {ASSETS_TABLE} WHERE starts_with(asset_id, ?) OR mac = lower(?) ORDER BY asset_id",
            [asset_id, asset_id],
        )
        if len(found) > 1:  # a prefix shared by several assets: ask for more of it
            store.close()
            click.echo(f"{terminal_safe(asset_id)}: {len(found)} assets start with it; give more of the id", err=True)
            sys.exit(EXIT_INPUT_PROBLEM)
        attributes = (
            _rows(
                store,
                f"SELECT * FROM {ATTRIBUTES_TABLE} WHERE asset_id = ? "
                "ORDER BY attribute, confidence DESC, value, source_table, rule",
                [found[0]["asset_id"]],
            )
            if found
            else []
        )
        risk = (
            _rows(store, f"SELECT score, level, reasons FROM {RISK_TABLE} WHERE asset_id = ?", [found[0]["asset_id"]])
            if found
            else []
        )
    finally:
        store.close()
    if not found:
        click.echo(f"{terminal_safe(asset_id)}: no such asset", err=True)
        sys.exit(EXIT_INPUT_PROBLEM)
    asset = found[0]
    if as_json:
        document = {key: _json_value(value) for key, value in asset.items()}
        document["attributes"] = [{key: _json_value(value) for key, value in row.items()} for row in attributes]
        document["risk"] = risk[0] if risk else None
        click.echo(json.dumps(document, ensure_ascii=True))
        return
    console = Console(highlight=False, soft_wrap=True)
    for name, value in asset.items():
        console.print(f"{name}: {_text(value)}")
    if risk:
        console.print(f"risk: {risk[0]['level']} ({risk[0]['score']:.0f}/100)")
        for reason in risk[0]["reasons"]:
            console.print(f"  +{reason['points']:.0f} {_text(reason['factor'])}: {_text(reason['explanation'])}")
    console.print("attributes (every observation; '!' marks an attribute with disagreeing values):")
    for row in attributes:
        mark = f" ! {row['conflicts']} other value(s)" if row["conflicts"] else ""
        console.print(
            f"  {_text(row['attribute'])} = {_text(row['value'])}{mark}  "
            f"(confidence {row['confidence']:.2f}; {_text(row['source_table'])} / {_text(row['rule'])}; "
            f"seen {row['observations']}; evidence: {_text(row['evidence'])})"
        )


def _evidence_text(evidence: list[dict[str, Any]] | None) -> str:
    """Evidence rows on one line: attribute=value (table/rule: refs)."""
    return "; ".join(
        f"{item['attribute']}={item['value']} ({item['source_table']}/{item['rule']}"
        + (f": {', '.join(item['refs'])}" if item["refs"] else "")
        + ")"
        for item in evidence or []
    )


def _findings_table(rows: list[dict[str, Any]]) -> Table:
    """One line per finding; ``assets findings --json`` has the evidence in full."""
    table = Table(title=f"{len(rows)} inventory findings (quaywatch assets findings --json for the evidence)")
    table.add_column("severity", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("asset", no_wrap=True)
    table.add_column("declared tag", overflow="ellipsis", max_width=20)
    table.add_column("declared / observed", overflow="fold")
    for row in rows:
        table.add_row(
            row["severity"], row["kind"], _text(row["asset_id"])[:8], _text(row["declared_tag"]),
            f"{_text(row['declared'])} / {_text(row['observed'])}",
        )  # fmt: skip
    return table


@assets.command()
@database_option
@local_net_option
@inventory_option
@click.option("--kind", "kinds", multiple=True, help="Only findings of this kind (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding, with its evidence.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write CSV.")
def findings(
    database: Path,
    local_nets: tuple[str, ...],
    inventory: Path | None,
    kinds: tuple[str, ...],
    as_json: bool,
    csv_file: Path | None,
) -> None:
    """How the declared inventory differs from what was observed: undeclared, never seen, maker or model mismatch."""
    store = _open(database)
    imported = True
    try:
        if inventory is not None:
            imported = import_inventory(store, inventory)
        if not has_declared(store):
            click.echo("error: no declared inventory imported; run 'quaywatch assets --inventory FILE'", err=True)
            sys.exit(EXIT_INPUT_PROBLEM)
        _rebuild(store, local_nets)
        where, parameters = "TRUE", []
        if kinds:
            where, parameters = "list_contains(?, kind)", [list(kinds)]
        rows = _rows(store, f"SELECT * FROM {FINDINGS_TABLE} WHERE {where}", parameters)
    finally:
        store.close()
    if csv_file is not None:
        names = [name for name in rows[0]] if rows else []
        with csv_file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(names)
            for row in rows:
                writer.writerow([csv_safe(_evidence_text(row[n]) if n == "evidence" else row[n]) for n in names])
    if as_json:
        for row in rows:
            click.echo(json.dumps({key: _json_value(value) for key, value in row.items()}, ensure_ascii=True))
    elif csv_file is not None:
        click.echo(f"{len(rows)} findings written to {terminal_safe(str(csv_file))}")
    else:
        console = Console(highlight=False, soft_wrap=True)
        console.print(_findings_table(rows))
        for row in rows:
            console.print(f"{row['finding_id']} [{row['severity']}] {_text(row['kind'])}: {_text(row['explanation'])}")
            if row["evidence"]:
                console.print(f"  evidence: {_text(_evidence_text(row['evidence']))}")
    if not imported:
        sys.exit(EXIT_INPUT_PROBLEM)
