"""A flow-heavy store for the detection benchmark: one short simulated terminal, repeated in time.

Why replicate rather than simulate a million flows: the simulator's terminal opens few, long-lived connections
(about 3 flows per simulated second), so a million flows would take days of simulated traffic and hours of analysis.
A store made of the same five minutes ``copies`` times over, each copy a capture of its own (``capture_id`` suffixed,
``flow_id`` suffixed, every event time shifted by the copy's offset), is what a port that rotates its capture file
every five minutes (``tcpdump -G 300``) accumulates in days: the same hosts, assets, zones and policy verdicts, the
same attacks recurring, and every detection with realistic work. Addresses are kept, so that the inventory, the
policy zones and ``host_context`` stay true for every copy; beaconing and baselines then see long, regular series,
as on a real site.

Only the tables that some detection reads are repeated; the others (cyclic CIP I/O, LLDP, RTP, ...) are copied
once: they would multiply the file tenfold and no detection reads them.

Usage: ``python bench/detection_store.py SEED.duckdb OUT.duckdb --flows 1000000``; the bench calls :func:`build`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import duckdb

#: Event tables read by some detection (grep of src/quaywatch/detect for table names): repeated per copy.
REPEATED = (
    "flows", "flow_policy", "dns", "tls", "tls_certificate", "http", "ssh", "remote_access", "cargo_content",
    "cleartext_credentials", "snmp", "dhcp", "arp", "modbus", "s7comm", "cip", "enip", "dnp3", "iec104", "opcua",
    "profinet_dcp", "bacnet", "bacnet_property", "bacnet_device_control", "telnet", "captures",
    # The per-capture summaries analysis writes for D7 and D8 (src/quaywatch/detect/rollups.py); the times inside
    # their evidence lists are not shifted (they only order each row's evidence).
    "rollup_captures", "ics_command_events", "function_code_summary", "register_range_summary",
    # The per-capture flow counts; their dictionary of flow keys (flow_keys, no capture_id) is copied once: the
    # copies keep every address, so each key stands for the same flows in every copy.
    "flow_summary",
)  # fmt: skip
#: Columns that are no event time (certificate validity, import and analysis times): never shifted.
UNSHIFTED = ("not_before", "not_after", "analysed_at", "imported_at")
#: Tables without capture_id whose time span should cover the whole replicated period.
WIDENED = ("assets", "arp_history")


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = 'seed' AND table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()


def build(seed: Path, out: Path, flows: int, threads: int = 2) -> dict[str, int]:
    """Write ``out`` from ``seed`` with about ``flows`` flows; returns the row count of every table written."""
    for path in (out, out.with_name(out.name + ".wal")):
        path.unlink(missing_ok=True)
    con = duckdb.connect(str(out))
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"ATTACH '{seed}' AS seed (READ_ONLY)")
    seed_flows = int(con.execute("SELECT count(*) FROM seed.flows").fetchone()[0])  # type: ignore[index]
    copies = max(1, math.ceil(flows / max(seed_flows, 1)))
    first, last = con.execute("SELECT min(first_ts), max(last_ts) FROM seed.captures").fetchone()  # type: ignore[misc]
    period = max(1, math.ceil((last - first).total_seconds()))
    tables = [
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'seed' AND table_schema = 'main'"
        ).fetchall()
    ]
    counts: dict[str, int] = {}
    for table in tables:
        columns = _columns(con, table)
        names = {name for name, _ in columns}
        times = [(name, kind) for name, kind in columns if kind.startswith("TIMESTAMP") and name not in UNSHIFTED]
        if table in REPEATED and "capture_id" in names:
            replaced = ["capture_id || '-' || copy AS capture_id"]
            if "flow_id" in names:
                replaced.append("flow_id || '-' || copy AS flow_id")
            if table == "captures":
                replaced.append("sha256 || '-' || copy AS sha256")
            replaced += [
                f'list_transform("{name}", lambda t: t + to_seconds(copy * {period})) AS "{name}"'
                if kind.endswith("[]")  # a list of times (flow_summary.times): each one shifted
                else f'"{name}" + to_seconds(copy * {period}) AS "{name}"'
                for name, kind in times
            ]
            # No ORDER BY: sorting tens of millions of event rows costs minutes and changes no detection's result.
            select = f'SELECT * REPLACE ({", ".join(replaced)}) FROM range({copies}) AS r(copy), seed."{table}"'
            con.execute(f'CREATE TABLE "{table}" AS {select}')
        elif table in WIDENED and "last_seen" in names:
            shift = f"last_seen + to_seconds({(copies - 1) * period}) AS last_seen"
            con.execute(f'CREATE TABLE "{table}" AS SELECT * REPLACE ({shift}) FROM seed."{table}"')
        else:
            con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM seed."{table}"')
        counts[table] = int(con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])  # type: ignore[index]
    con.execute("DETACH seed")
    con.execute("CHECKPOINT")
    con.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--flows", type=int, default=1_000_000)
    arguments = parser.parse_args()
    counts = build(arguments.seed, arguments.out, arguments.flows)
    print({name: count for name, count in sorted(counts.items()) if count})


if __name__ == "__main__":
    main()
