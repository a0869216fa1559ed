"""The ``quaywatch`` command.

Exit codes (also in the README):

* 0: every input was analysed (a capture whose last record was cut short, as a
  killed capture process leaves it, still counts: the rest was stored).
* 1: some input could not be read in full (not a capture, empty, corrupt in the
  middle, unsupported link type). Everything valid was stored; look at the
  named file and byte offset.
* 2: usage error (unknown option, missing path).
* 3: the database cannot be opened or written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from quaywatch import __version__
from quaywatch.analysis import MAX_WORKERS, Analyzer, CaptureResult, default_workers, expand_inputs
from quaywatch.cli.alerts import COMMANDS as ALERT_COMMANDS
from quaywatch.cli.assets import assets, import_inventory
from quaywatch.cli.intel import intel
from quaywatch.cli.map import map_command
from quaywatch.cli.options import database_option, load_policy_or_exit
from quaywatch.cli.policy import policy
from quaywatch.cli.provenance import provenance
from quaywatch.cli.report import report
from quaywatch.cli.sim import sim
from quaywatch.cli.text import terminal_safe
from quaywatch.decode.registry import all_decoders
from quaywatch.store.database import Store, StoreError

EXIT_OK = 0
EXIT_INPUT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_STORE = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quaywatch")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Configuration file (default: ./quaywatch.toml if present); command-line options override it.",
)
@click.pass_context
def main(context: click.Context, config_file: Path | None) -> None:
    """Passive monitoring of port OT networks."""
    from quaywatch.config import ConfigError, find_config

    try:
        config = find_config(config_file)
    except ConfigError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_USAGE)
    if config is not None:
        context.default_map = _default_map(context.command, config)


def _default_map(command: click.Command, config: Any) -> dict[str, Any]:
    """Click's default map for the command tree: each key sets the option of that name wherever it exists."""
    defaults: dict[str, Any] = config.defaults({param.name for param in command.params if param.name})
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            defaults[name] = _default_map(sub, config)
    return defaults


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@database_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary as one JSON object.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Threads DuckDB may use.")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Threads the analysis keeps busy: 1 does everything on one; 2 (or more, which count as 2) runs the database "
    "inserts, the file's sha256 and the payload scans beside the decoding. Default: the cores this process may use.",
)
@click.option("--force", is_flag=True, help="Analyse again captures already in the database.")
@click.option(
    "--decoders",
    default="all",
    show_default=True,
    help="Protocol decoders to run: 'all', 'none' (flows only), or a comma-separated list such as 'modbus'.",
)
@click.option(
    "--inventory",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Declared inventory CSV: after the analysis, build the asset inventory and its findings.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Site policy YAML: after the analysis, build the assets, evaluate the policy and rate asset risk.",
)
def analyze(
    inputs: tuple[Path, ...],
    database: Path,
    quiet: bool,
    as_json: bool,
    threads: int | None,
    workers: int | None,
    force: bool,
    decoders: str,
    inventory: Path | None,
    policy_file: Path | None,
) -> None:
    """Analyse capture files (pcap, pcapng, gzip) or folders of them into the database."""
    loaded_policy = load_policy_or_exit(policy_file, EXIT_USAGE) if policy_file is not None else None
    available: dict[str, list[Any]] = {}  # a name can have several decoders (dns and dnp3 over TCP and UDP)
    for decoder in all_decoders():
        available.setdefault(decoder.name, []).append(decoder)
    if decoders == "all":
        chosen = list(all_decoders())
    elif decoders == "none":
        chosen = []
    else:
        names = [name.strip() for name in decoders.split(",") if name.strip()]
        unknown = [name for name in names if name not in available]
        if unknown:
            raise click.BadParameter(
                f"unknown decoder(s) {', '.join(unknown)}; available: {', '.join(sorted(available))}",
                param_hint="--decoders",
            )
        chosen = [decoder for name in names for decoder in available[name]]
    console = Console(stderr=True, quiet=quiet and not as_json, soft_wrap=True)  # never break a path
    files, skipped = expand_inputs(inputs)
    try:
        store = Store(database, threads=threads)
    except StoreError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_STORE)
    results: list[CaptureResult] = []
    try:
        analyzer = Analyzer(store, decoders=chosen, workers=min(workers or default_workers(), MAX_WORKERS))
        for note in skipped:
            console.print(f"[yellow]skipped[/] {terminal_safe(note.fault or '')}")
        show_progress = not quiet and not as_json and sys.stderr.isatty()
        for path in files:
            results.append(_analyze_one(analyzer, path, force, console, show_progress))
        summary = _summary(store, results, skipped, database)
        inventory_ok = True
        if inventory is not None or loaded_policy is not None:
            inventory_ok = _inventory(store, inventory, loaded_policy, summary)
    except StoreError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_STORE)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(summary, default=str))
    elif not quiet:
        _print_summary(Console(), summary)
    sys.exit(EXIT_INPUT_PROBLEM if any(r.needs_attention for r in results) or not inventory_ok else EXIT_OK)


def _inventory(store: Store, path: Path | None, site_policy: Any, summary: dict[str, Any]) -> bool:
    """Import the declared inventory, build the assets and findings, evaluate the policy, rate risk; count them all."""
    from quaywatch.assets.declared import build_findings, has_declared
    from quaywatch.assets.inventory import build_inventory
    from quaywatch.assets.risk import rate_assets
    from quaywatch.policy.evaluate import evaluate_policy

    store.flush()
    imported = import_inventory(store, path) if path is not None else True
    build_inventory(store)
    if has_declared(store):
        summary["inventory_findings"] = build_findings(store).kinds
    if site_policy is not None:
        summary["policy_verdicts"] = evaluate_policy(store, site_policy).verdicts
    summary["assets_by_risk"] = rate_assets(store).levels
    return imported


def _analyze_one(analyzer: Analyzer, path: Path, force: bool, console: Console, show_progress: bool) -> CaptureResult:
    name = terminal_safe(str(path))
    if show_progress:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=console, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task(name, total=path.stat().st_size)
            result = analyzer.analyze(path, progress=lambda done: bar.update(task, completed=done), force=force)
    else:
        result = analyzer.analyze(path, force=force)
    if result.status == "already_analysed":
        console.print(f"[dim]{name}: already in the database (sha256 {result.capture_id[:12]}), nothing changed[/]")
    elif result.fault:
        style = "yellow" if result.truncated_tail else "red"
        console.print(
            f"[{style}]{'warning' if result.truncated_tail else 'error'}:[/] {terminal_safe(result.fault)}; "
            f"{result.packets} packets before it were stored and the capture is marked partial"
        )
    return result


def _summary(
    store: Store, results: list[CaptureResult], skipped: list[CaptureResult], database: Path
) -> dict[str, Any]:
    analysed = [r for r in results if r.status in ("complete", "partial")]
    ids = [r.capture_id for r in analysed]
    transports: dict[str, int] = {}
    applications: dict[str, int] = {}
    for result in analysed:
        for key, value in result.transports.items():
            transports[key] = transports.get(key, 0) + value
        for key, value in result.applications.items():
            applications[key] = applications.get(key, 0) + value
    talkers: list[dict[str, Any]] = []
    if ids:
        rows = store.connection.execute(
            """
            WITH sides AS (
                SELECT client_ip AS ip, bytes_to_server + bytes_to_client AS b,
                       packets_to_server + packets_to_client AS p FROM flows WHERE capture_id IN ?
                UNION ALL
                SELECT server_ip, bytes_to_server + bytes_to_client, packets_to_server + packets_to_client
                FROM flows WHERE capture_id IN ?
            )
            SELECT ip, sum(b) AS bytes, sum(p) AS packets, count(*) AS flows
            FROM sides GROUP BY ip ORDER BY bytes DESC, ip LIMIT 10
            """,
            [ids, ids],
        ).fetchall()
        talkers = [{"ip": r[0], "bytes": int(r[1]), "packets": int(r[2]), "flows": int(r[3])} for r in rows]
    starts = [r.first_timestamp for r in analysed if r.first_timestamp]
    ends = [r.last_timestamp for r in analysed if r.last_timestamp]
    return {
        "database": str(database),
        "captures": [
            {
                "path": str(r.path),
                "capture_id": r.capture_id,
                "status": r.status,
                "packets": r.packets,
                "bytes": r.bytes,
                "flows": r.flows,
                "malformed_packets": r.malformed_packets,
                "fault": r.fault,
                "fault_offset": r.fault_offset,
            }
            for r in [*results, *skipped]
        ],
        "packets": sum(r.packets for r in analysed),
        "bytes": sum(r.bytes for r in analysed),
        "flows": sum(r.flows for r in analysed),
        "malformed_packets": sum(r.malformed_packets for r in analysed),
        "first_ts": min(starts) / 1e9 if starts else None,
        "last_ts": max(ends) / 1e9 if ends else None,
        "transports": dict(sorted(transports.items(), key=lambda kv: -kv[1])),
        "applications": dict(sorted(applications.items(), key=lambda kv: -kv[1])),
        "top_talkers": talkers,
    }


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    import datetime as dt

    def when(value: float | None) -> str:
        if value is None:
            return "-"
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")

    captures = Table(title="Captures", title_justify="left")
    for column in ("file", "status", "packets", "flows", "note"):
        captures.add_column(column, justify="right" if column in ("packets", "flows") else "left")
    for capture in summary["captures"]:
        captures.add_row(
            terminal_safe(capture["path"]), capture["status"], f"{capture['packets']:,}", f"{capture['flows']:,}",
            terminal_safe(capture["fault"] or ""),
        )  # fmt: skip
    console.print(captures)
    span = "-"
    if summary["first_ts"] is not None:
        seconds = summary["last_ts"] - summary["first_ts"]
        span = f"{when(summary['first_ts'])} → {when(summary['last_ts'])} ({seconds:.1f} s)"
    console.print(
        f"[bold]{summary['packets']:,}[/] packets, [bold]{summary['bytes']:,}[/] bytes, "
        f"[bold]{summary['flows']:,}[/] flows, {summary['malformed_packets']:,} malformed; time span {span}"
    )
    protocols = Table(title="Protocols", title_justify="left")
    protocols.add_column("layer")
    protocols.add_column("protocol")
    protocols.add_column("count", justify="right")
    for name, count in summary["transports"].items():
        protocols.add_row("packets", name, f"{count:,}")
    for name, count in summary["applications"].items():
        protocols.add_row("flows", name, f"{count:,}")
    console.print(protocols)
    talkers = Table(title="Top talkers", title_justify="left")
    for column in ("address", "bytes", "packets", "flows"):
        talkers.add_column(column, justify="left" if column == "address" else "right")
    for talker in summary["top_talkers"]:
        talkers.add_row(
            terminal_safe(talker["ip"]), f"{talker['bytes']:,}", f"{talker['packets']:,}", f"{talker['flows']:,}"
        )
    console.print(talkers)
    for key, title in (("inventory_findings", "inventory findings"), ("policy_verdicts", "policy verdicts (flows)"),
                       ("assets_by_risk", "assets by risk level")):  # fmt: skip
        if key in summary:
            counts = ", ".join(f"{name} {count:,}" for name, count in summary[key].items()) or "none"
            console.print(f"{title}: {counts}")
    console.print(f"database: {terminal_safe(summary['database'])}")


@main.command()
@click.option("--format", "file_format", type=click.Choice(["parquet"]), default="parquet", show_default=True)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@database_option
def export(file_format: str, directory: Path, database: Path) -> None:
    """Write every table of the database to DIRECTORY as <table>.parquet."""
    if not database.exists():
        click.echo(f"error: {database}: no such database; run 'quaywatch analyze' first", err=True)
        sys.exit(EXIT_STORE)
    try:
        store = Store(database, read_only=True)
        try:
            written = store.export_parquet(directory)
        finally:
            store.close()
    except StoreError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_STORE)
    for path in written:
        click.echo(str(path))


main.add_command(provenance)
main.add_command(assets)
main.add_command(policy)
main.add_command(map_command)
main.add_command(sim)
main.add_command(intel)
main.add_command(report)
for _command in ALERT_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
