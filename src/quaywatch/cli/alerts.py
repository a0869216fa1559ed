"""``quaywatch detect``, ``quaywatch alerts`` and ``quaywatch attack``: run the detections, read their alerts.

``detect`` runs every rule file and statistical module over the store (detect/registry.py) and replaces their alerts.
``alerts`` lists them, filtered, with suppressions applied at read time (``--all`` shows the suppressed ones marked);
``alerts show`` prints one with its evidence and score components; ``alerts suppress FILE`` stores a suppression file.
``attack update`` rebuilds the ATT&CK data file from a MITRE STIX bundle, offline.

Exit codes follow main.py: 0 done, 1 a bad rule, policy or suppression file, an unknown alert id, or a detection that
failed; 2 usage error; 3 the database cannot be opened or written. Alert titles, explanations and evidence values hold
packet-derived text: every such string goes through terminal_safe.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import duckdb
from rich.console import Console
from rich.table import Table

from quaywatch.cli.options import database_option, load_policy_or_exit
from quaywatch.cli.text import terminal_safe
from quaywatch.detect import attack
from quaywatch.detect.alert import ALERTS_TABLE, SEVERITIES
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.rules import RuleError, parse_duration
from quaywatch.detect.suppression import (
    Suppression,
    SuppressionError,
    first_match,
    load_suppressions,
    store_suppressions,
    stored_suppressions,
)
from quaywatch.store.database import DEFAULT_DATABASE, Store, StoreError

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_STORE = 3

SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}

suppressions_option = click.option(
    "--suppressions",
    "suppressions_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Suppression file applied on top of the stored ones (docs/detections.md).",
)


sub_database_option = click.option(
    "--db",
    "database",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"DuckDB database file (default: the one given to 'alerts', else {DEFAULT_DATABASE}).",
)


def _inherited(database: Path | None) -> Path:
    """The subcommand's --db, else the group's, else the default."""
    context = click.get_current_context()
    parent = (context.parent.obj or {}) if context.parent else {}
    return database or parent.get("database") or DEFAULT_DATABASE


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {terminal_safe(message)}", err=True)
    sys.exit(code)


def _open(database: Path, read_only: bool = False) -> Store:
    if not database.exists():
        _fail(f"{database}: no such database; run 'quaywatch analyze' first", EXIT_STORE)
    try:
        return Store(database, read_only=read_only)
    except StoreError as error:
        _fail(str(error), EXIT_STORE)
        raise  # unreachable: _fail exits


# -- detect ---------------------------------------------------------------------------------------------------------


@click.command()
@database_option
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Site policy (docs/policy.md) the detections judge against.",
)
@click.option(
    "--rules",
    "rules_folder",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of rule files to run instead of the shipped ones.",
)
@click.option(
    "--learning-until",
    default=None,
    help="D8 baseline: traffic before this ISO time is the learning period (e.g. 2026-11-02T00:00:00+01:00).",
)
@click.option(
    "--learning-share",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=None,
    help="D8 baseline: the first SHARE of the stored time span is the learning period (e.g. 0.2).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Detections run at once, each on a cursor of its own (default: the cores, at most 4).",
)
@click.option(
    "--geoip",
    "geoip_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A MaxMind DB file (GeoLite2/DB-IP Lite country or ASN, IPinfo Lite) for the internet peers' country and "
    "AS; repeat for several. Offline: nothing is downloaded.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def detect(
    database: Path,
    policy_file: Path | None,
    rules_folder: Path | None,
    learning_until: str | None,
    learning_share: float | None,
    workers: int | None,
    geoip_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Run every detection over the database and replace their alerts."""
    from quaywatch.detect.registry import run_detections
    from quaywatch.intel.geoip import GeoDatabaseError, GeoDatabases

    policy = None
    if policy_file is not None:
        policy = load_policy_or_exit(policy_file, EXIT_PROBLEM)
    try:
        geo = GeoDatabases(geoip_files) if geoip_files else None
    except GeoDatabaseError as error:
        _fail(str(error), EXIT_PROBLEM)
        raise  # unreachable: _fail exits
    store = _open(database)
    try:
        options: dict[str, object] = {}
        if learning_until is not None:
            options["learning_until"] = learning_until
        if learning_share is not None:
            options["learning_share"] = learning_share
        summary = run_detections(
            store,
            DetectionContext(policy=policy, options=options, enrichers=(geo,) if geo is not None else ()),
            rules_folder=rules_folder,
            workers=workers or min(len(os.sched_getaffinity(0)), 4),
        )
    except RuleError as error:
        for problem in error.problems:
            click.echo(terminal_safe(str(problem)), err=True)
        _fail("invalid rule file(s); nothing was written", EXIT_PROBLEM)
    except (duckdb.Error, StoreError) as error:
        _fail(str(error), EXIT_STORE)
    finally:
        store.close()
        if geo is not None:
            geo.close()
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        console = Console()
        table = Table(title="Detections", title_justify="left")
        for column in ("detection", "alerts", "note"):
            table.add_column(column, justify="right" if column == "alerts" else "left")
        for name, count in sorted(summary.alerts.items()):
            table.add_row(name, str(count), "")
        for name, reason in sorted(summary.skipped.items()):
            table.add_row(name, "-", f"[dim]skipped: {terminal_safe(reason)}[/]")
        for name, reason in sorted(summary.failed.items()):
            table.add_row(name, "-", f"[red]failed: {terminal_safe(reason)}[/]")
        console.print(table)
        console.print(f"{summary.total} alert(s) written to {terminal_safe(str(database))}; see 'quaywatch alerts'")
    sys.exit(EXIT_PROBLEM if summary.failed else EXIT_OK)


# -- alerts ---------------------------------------------------------------------------------------------------------


def _since(text: str | None, now: dt.datetime) -> dt.datetime | None:
    if text is None:
        return None
    seconds = parse_duration(text)
    if seconds is not None:
        return now - dt.timedelta(seconds=seconds)
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as error:
        message = f"expected a duration (24h, 7d) or an ISO time, got {text!r}"
        raise click.BadParameter(message, param_hint="--since") from error
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def read_alerts(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every ``alerts`` row as a dict, most severe first, then latest first."""
    present = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [ALERTS_TABLE]
    ).fetchall()
    if not present or not present[0][0]:
        return []
    cursor = con.execute(f'SELECT * FROM "{ALERTS_TABLE}" ORDER BY last_seen DESC, occurrence_id')
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    rows.sort(key=lambda r: -SEVERITIES.index(r["severity"]) if r["severity"] in SEVERITIES else 0)
    return rows


def _hosts(row: dict[str, Any]) -> list[str]:
    key = json.loads(row["key_json"] or "{}")
    values = [*(row["assets"] or []), *(v for k, v in key.items() if k.endswith("_ip") or k == "ip")]
    return list(dict.fromkeys(str(v) for v in values))


def _detection_matches(name: str, wanted: str) -> bool:
    """``D11`` selects D11.*, a full id selects itself."""
    return name == wanted or name.startswith(wanted.rstrip(".") + ".")


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return value


def eve_record(row: dict[str, Any], suppressed: Suppression | None) -> dict[str, Any]:
    """One alert as an EVE-style object: envelope (timestamp, event_type, flow ids) and an ``alert`` sub-object."""
    return {
        "timestamp": _json_value(row["last_seen"]),
        "event_type": "alert",
        "alert_id": row["alert_id"],
        "occurrence_id": row["occurrence_id"],
        "flow_id": (row["flow_ids"] or [None])[0],
        "community_id": (row["community_ids"] or [None])[0],
        "alert": {
            "detection": row["detection"],
            "title": row["title"],
            "severity": row["severity"],
            "confidence": row["confidence"],
            "score": row["score"],
            "techniques": row["techniques"],
            "first_seen": _json_value(row["first_seen"]),
            "last_seen": _json_value(row["last_seen"]),
            "count": row["count"],
            "key": json.loads(row["key_json"] or "{}"),
            "assets": row["assets"],
            "zones": row["zones"],
            "explanation": row["explanation"],
            "score_components": row["score_components"],
            "suppression_seconds": row["suppression_seconds"],
            "detected_at": _json_value(row["detected_at"]),
        },
        "evidence": {
            "flow_ids": row["flow_ids"],
            "community_ids": row["community_ids"],
            "events": row["events"],
            "packet_numbers": row["packet_numbers"],
            "values": json.loads(row["values_json"] or "{}"),
        },
        "suppressed": None
        if suppressed is None
        else {"reason": suppressed.reason, "file": suppressed.source_file, "line": suppressed.line},
    }


def _suppressions(con: duckdb.DuckDBPyConnection, extra: Path | None) -> list[Suppression]:
    entries = stored_suppressions(con)
    if extra is not None:
        try:
            entries += load_suppressions(extra)
        except SuppressionError as error:
            for problem in error.problems:
                click.echo(terminal_safe(str(problem)), err=True)
            _fail(f"{extra}: invalid suppression file", EXIT_PROBLEM)
    return entries


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@click.group(invoke_without_command=True)
@database_option
@click.option("--severity", type=click.Choice(SEVERITIES), default=None, help="Only this severity and above.")
@click.option("--detection", default=None, help="Only this detection (id, or a prefix such as D11).")
@click.option("--host", default=None, help="Only alerts involving this address, CIDR or asset id.")
@click.option("--since", default=None, help="Only alerts last seen since then: a duration (24h, 7d) or an ISO time.")
@click.option("--all", "show_all", is_flag=True, help="Also show suppressed alerts, marked with the reason.")
@suppressions_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per alert per line (EVE style).")
@click.pass_context
def alerts(
    ctx: click.Context,
    database: Path,
    severity: str | None,
    detection: str | None,
    host: str | None,
    since: str | None,
    show_all: bool,
    suppressions_file: Path | None,
    as_json: bool,
) -> None:
    """List the alerts, most severe first, with suppressions applied."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"database": database, "suppressions": suppressions_file}  # `alerts --db X show ID` works too
        return
    from quaywatch.detect.suppression import _host_matches

    now = dt.datetime.now(dt.UTC)
    start = _since(since, now)
    store = _open(database, read_only=True)
    try:
        rows = read_alerts(store.connection)
        entries = _suppressions(store.connection, suppressions_file)
    except duckdb.Error as error:
        _fail(str(error), EXIT_STORE)
    finally:
        store.close()
    minimum = SEVERITIES.index(severity) if severity else 0
    chosen: list[tuple[dict[str, Any], Suppression | None]] = []
    hidden = 0
    for row in rows:
        if SEVERITIES.index(row["severity"]) < minimum:
            continue
        if detection and not (
            row["detection"] == detection or row["detection"].startswith(detection.rstrip(".") + ".")
        ):
            continue
        if host and not _host_matches(host, _hosts(row)):
            continue
        if start and row["last_seen"] < start:
            continue
        suppressed = first_match(entries, row, now.date())
        if suppressed is not None and not show_all:
            hidden += 1
            continue
        chosen.append((row, suppressed))
    if as_json:
        for row, suppressed in chosen:
            click.echo(json.dumps(eve_record(row, suppressed), default=str))
        if hidden:
            click.echo(f"{hidden} suppressed alert(s) not shown (--all shows them)", err=True)
        return
    console = Console()
    table = Table(title=f"Alerts ({len(chosen)})", title_justify="left")
    for column in ("severity", "detection", "title", "hosts", "count", "first seen", "last seen", "techniques", "id"):
        table.add_column(column, justify="right" if column == "count" else "left", no_wrap=column == "id")
    for row, suppressed in chosen:
        style = SEVERITY_STYLE.get(row["severity"], "")
        label = f"[{style}]{row['severity']}[/]" + (" [dim](suppressed)[/]" if suppressed else "")
        title = terminal_safe(row["title"]) + (
            f"\n[dim]suppressed: {terminal_safe(suppressed.reason)}[/]" if suppressed else ""
        )
        table.add_row(
            label,
            terminal_safe(row["detection"]),
            title,
            terminal_safe(", ".join(_hosts(row))),
            str(row["count"]),
            _when(row["first_seen"]),
            _when(row["last_seen"]),
            terminal_safe(", ".join(t["id"] for t in row["techniques"] or [])),
            row["alert_id"],  # `alerts show` takes it (all occurrences) or an occurrence_id
        )
    console.print(table)
    if hidden:
        console.print(f"{hidden} suppressed alert(s) not shown (--all shows them)")
    if not rows:
        console.print("no alerts stored: run 'quaywatch detect' first")


@alerts.command()
@click.argument("alert_id")
@sub_database_option
@suppressions_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per occurrence per line (EVE style).")
def show(alert_id: str, database: Path | None, suppressions_file: Path | None, as_json: bool) -> None:
    """Print one alert (an alert_id shows each of its occurrences, an occurrence_id that one) in full."""
    database = _inherited(database)
    store = _open(database, read_only=True)
    try:
        rows = [r for r in read_alerts(store.connection) if alert_id in (r["alert_id"], r["occurrence_id"])]
        entries = _suppressions(store.connection, suppressions_file)
    finally:
        store.close()
    if not rows:
        _fail(f"no alert {alert_id}; 'quaywatch alerts' lists them", EXIT_PROBLEM)
    today = dt.datetime.now(dt.UTC).date()
    if as_json:
        for row in rows:
            click.echo(json.dumps(eve_record(row, first_match(entries, row, today)), default=str))
        return
    console = Console()
    for row in rows:
        suppressed = first_match(entries, row, today)
        style = SEVERITY_STYLE.get(row["severity"], "")
        console.print(f"[bold]{terminal_safe(row['title'])}[/]")
        console.print(f"  occurrence  {row['occurrence_id']}")
        console.print(
            f"  detection   {terminal_safe(row['detection'])}   severity [{style}]{row['severity']}[/]   "
            f"confidence {row['confidence']:.2f}   score {row['score'] or 0:.2f}"
        )
        console.print(
            f"  seen        {_when(row['first_seen'])} → {_when(row['last_seen'])}, {row['count']} time(s); "
            f"suppression window {row['suppression_seconds']} s"
        )
        if suppressed:
            console.print(
                f"  [dim]suppressed by {terminal_safe(suppressed.source_file)}:{suppressed.line}: "
                f"{terminal_safe(suppressed.reason)}[/]"
            )
        console.print(f"  key         {terminal_safe(row['key_json'])}")
        console.print(f"  hosts       {terminal_safe(', '.join(_hosts(row))) or '-'}")
        console.print(f"  zones       {terminal_safe(', '.join(row['zones'] or [])) or '-'}")
        for technique in row["techniques"] or []:
            console.print(f"  ATT&CK      {technique['id']} {terminal_safe(technique['name'])}")
        console.print(f"  why         {terminal_safe(row['explanation'])}")
        for component in row["score_components"] or []:
            console.print(
                f"  score part  {terminal_safe(component['name'])} = {component['value']:.3g} × weight "
                f"{component['weight']:.3g}: {terminal_safe(component['explanation'])}"
            )
        console.print(f"  packets     {', '.join(str(n) for n in row['packet_numbers'] or []) or '-'}")
        console.print(f"  flows       {terminal_safe(', '.join(row['flow_ids'] or [])) or '-'}")
        console.print(f"  community   {terminal_safe(', '.join(row['community_ids'] or [])) or '-'}")
        for event in row["events"] or []:
            console.print(
                f"  event       {terminal_safe(event['table'])} capture {event['capture_id'][:12]} packet "
                f"{event['packet_number']} flow {terminal_safe(str(event['flow_id']))}"
            )
        for name, values in json.loads(row["values_json"] or "{}").items():
            text = (
                ", ".join(json.dumps(v) if not isinstance(v, str) else v for v in values)
                if isinstance(values, list)
                else json.dumps(values)
            )
            console.print(f"  value       {terminal_safe(name)}: {terminal_safe(text)}")
        console.print()


@alerts.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@sub_database_option
def suppress(file: Path, database: Path | None) -> None:
    """Store the suppression FILE (replacing an earlier import of the same file name); applies to every read."""
    database = _inherited(database)
    try:
        entries = load_suppressions(file)
    except SuppressionError as error:
        for problem in error.problems:
            click.echo(terminal_safe(str(problem)), err=True)
        _fail(f"{file}: invalid suppression file; nothing stored", EXIT_PROBLEM)
    store = _open(database)
    try:
        count = store_suppressions(store.connection, entries, file.name)
    except duckdb.Error as error:
        _fail(str(error), EXIT_STORE)
    finally:
        store.close()
    click.echo(f"{count} suppression(s) from {terminal_safe(file.name)} stored")


# -- attack ---------------------------------------------------------------------------------------------------------


@click.group(name="attack")
def attack_command() -> None:
    """The ATT&CK for ICS data file behind technique names."""


@attack_command.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the data file (default: the user data directory, which then takes precedence).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="User data directory (default QUAYWATCH_DATA_DIR or ~/.local/share/quaywatch).",
)
def update(file: Path, out: Path | None, data_dir: Path | None) -> None:
    """Rebuild attack_ics.yaml from a MITRE ATT&CK for ICS STIX 2.1 bundle (ics-attack.json), offline."""
    from quaywatch.assets.provenance_update import user_data_dir

    target = out or user_data_dir(data_dir) / attack.DATA_FILE
    try:
        data = attack.rebuild(file, target)
    except (attack.BundleError, OSError) as error:
        _fail(str(error), EXIT_PROBLEM)
    ics = sum(t.domain == "ics" for t in data.techniques.values())
    click.echo(f"{ics} ICS techniques ({terminal_safe(data.version)}) written to {terminal_safe(str(target))}")


#: Registered by cli/main.py with one loop.
COMMANDS: list[click.Command] = [detect, alerts, attack_command]
