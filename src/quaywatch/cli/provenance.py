"""``quaywatch provenance``: who made a device, who owns the maker, and which restricted lists apply.

Exit codes follow main.py: 0 done, 1 unknown name or a bad knowledge-base/import file (the message names the file,
line or entry index and key), 2 usage error. Every string from a data or import file is escaped before printing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from quaywatch.assets.provenance import KnowledgeBase, Provenance, ProvenanceError, load_knowledge_base
from quaywatch.assets.provenance_update import apply_update, override_dir, user_data_dir
from quaywatch.cli.text import terminal_safe

EXIT_OK = 0
EXIT_INPUT_PROBLEM = 1

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="User data directory with imported list updates (default: $QUAYWATCH_DATA_DIR or ~/.local/share/quaywatch).",
)


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _load(data_dir: Path | None) -> KnowledgeBase:
    try:
        return load_knowledge_base(override_dir=override_dir(user_data_dir(data_dir)))
    except ProvenanceError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_INPUT_PROBLEM)


@click.group()
def provenance() -> None:
    """Vendor provenance knowledge base: makers, parents, countries and restricted lists."""


@provenance.command()
@click.argument("name")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the answer as one JSON object.")
def show(name: str, data_dir: Path | None, as_json: bool) -> None:
    """Show maker, parent chain, country and list memberships for NAME (maker, brand or IEEE OUI name)."""
    kb = _load(data_dir)
    found = kb.lookup(name)
    if found is None:
        if as_json:
            click.echo(json.dumps({"query": name, "found": False}))
        else:
            click.echo(f"{terminal_safe(name)}: not in the provenance knowledge base", err=True)
        sys.exit(EXIT_INPUT_PROBLEM)
    if as_json:
        click.echo(json.dumps({"found": True, **found.to_dict()}, ensure_ascii=True))
        return
    _print_provenance(_console(), found)


def _print_provenance(console: Console, found: Provenance) -> None:
    safe = terminal_safe
    if found.brand is not None:
        brand = found.brand
        period = "".join(
            part
            for part in (
                f" from {brand.valid_from}" if brand.valid_from else "",
                f" until {brand.valid_until}" if brand.valid_until else "",
            )
        )
        console.print(f"brand: {safe(brand.brand)} ({safe(brand.relation)}{safe(period)})")
        for source in brand.sources:
            console.print(f"  source: {safe(source.url)} ({safe(source.date)})")
    if found.maker is not None:
        maker = found.maker
        roles = ", ".join(maker.roles) or "-"
        console.print(f"maker: {safe(maker.name)} ({safe(maker.country or '?')}); roles: {safe(roles)}")
        chain = " -> ".join(f"{org.name} ({org.country or '?'})" for org in found.chain)
        console.print(f"parent chain: {safe(chain)}")
        for org in found.chain:
            for source in org.sources:
                console.print(f"  {safe(org.id)} source: {safe(source.url)} ({safe(source.date)})")
    console.print(f"country: {safe(found.country or 'unknown')}")
    if not found.memberships:
        console.print("lists: none found")
    for membership in found.memberships:
        via = f" [via parent {membership.via}]" if membership.via else ""
        flag = " (to verify)" if membership.confidence == "R" else ""
        console.print(
            f"list: {safe(membership.list_name)} ({safe(membership.list_version)}): "
            f"listed as {safe(repr(membership.listed_name))} since {safe(membership.date)}{safe(via)}{flag}"
        )
        for source in membership.sources:
            console.print(f"  source: {safe(source.url)} ({safe(source.date)})")


@provenance.command(name="lists")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the lists as JSON.")
def lists_command(data_dir: Path | None, as_json: bool) -> None:
    """Each restricted list: its version, date and member count."""
    kb = _load(data_dir)
    rows = [
        {"id": r.id, "name": r.name, "version": r.version, "date": r.date, "url": r.url, "members": len(r.members)}
        for r in kb.lists.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=True))
        return
    console = _console()
    for row in rows:
        console.print(
            f"{terminal_safe(str(row['id']))}: {terminal_safe(str(row['name']))}, {row['members']} members; "
            f"version: {terminal_safe(str(row['version']))} ({terminal_safe(str(row['date']))}); "
            f"{terminal_safe(str(row['url']))}"
        )


@provenance.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@data_dir_option
def update(file: Path, data_dir: Path | None) -> None:
    """Import a newer list offline: a trade.gov CSL JSON file or a CSV with name,list,country,source,date."""
    target_dir = user_data_dir(data_dir)
    kb = _load(data_dir)
    try:
        result = apply_update(file, kb, target_dir)
        load_knowledge_base(override_dir=override_dir(target_dir))  # the written override must load
    except ProvenanceError as error:
        click.echo(f"error: {terminal_safe(str(error))}", err=True)
        sys.exit(EXIT_INPUT_PROBLEM)
    console = _console()
    if not result.changed:
        console.print(
            f"no change: all {result.unchanged} entries already known; {terminal_safe(str(result.override_path))}"
        )
        return
    for list_id, count in sorted(result.added.items()):
        console.print(f"{terminal_safe(list_id)}: {count} entries added")
    console.print(f"{result.unchanged} entries already known; wrote {terminal_safe(str(result.override_path))}")
