"""``quaywatch map``: the network map (zones, assets, observed conduits) as a self-contained HTML or SVG file.

Exit codes follow main.py: 0 written, 1 the policy file has errors or the output cannot be written, 2 usage error,
3 the database cannot be opened or written. The inventory is rebuilt first, as ``quaywatch assets`` does, so the map
shows the current store.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import duckdb

from quaywatch.assets.inventory import build_inventory
from quaywatch.assets.netmap import build_map, render_html, render_svg
from quaywatch.cli.options import database_option, load_policy_or_exit, require_database
from quaywatch.cli.text import terminal_safe
from quaywatch.policy.model import Policy
from quaywatch.store.database import Store, StoreError

EXIT_POLICY = 1
EXIT_OUTPUT = 1
EXIT_STORE = 3


@click.command(name="map")
@database_option
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Site policy: its zones place the assets and its conduits mark what is allowed.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="File to write.")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["html", "svg"]),
    default=None,
    help="html (map, legend and conduit table) or svg (the map alone); default from the --out suffix, else html.",
)
def map_command(database: Path, policy_file: Path | None, out: Path, file_format: str | None) -> None:
    """Write the network map: zones, assets and the conduits observed between them, loading nothing from anywhere."""
    policy: Policy | None = None
    if policy_file is not None:
        policy = load_policy_or_exit(policy_file, EXIT_POLICY)
    require_database(database)
    try:
        store = Store(database)
        try:
            build_inventory(store)
            network = build_map(store.connection, policy)
        finally:
            store.close()
    except (duckdb.Error, StoreError) as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_STORE)
    chosen = file_format or ("svg" if out.suffix.lower() == ".svg" else "html")
    document = render_svg(network) if chosen == "svg" else render_html(network)
    try:
        out.write_text(document, encoding="utf-8")
    except OSError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_OUTPUT)
    nodes = sum(len(zone.nodes) for zone in network.zones)
    click.echo(
        f"{terminal_safe(str(out))}: {len(network.zones)} zones, {nodes} nodes, {len(network.conduits)} conduits"
    )
