"""D8: baseline deviation (ATT&CK for ICS T0846, T0888, T0861).

An OT network repeats itself: the same HMIs poll the same PLCs with the same function codes over the same
registers all day. What was never seen during a learning period is worth a look afterwards: a new device, a new
talker pair, a new protocol between two hosts, a new ICS function code, or a register range outside the
learned ones (a reconnaissance sweep, T0861, or an engineering tool, T0888).

Learning period: from the start of the stored traffic up to ``learning_until``, a timezone-aware datetime in the
detection context's options, or the first ``learning_share`` of the stored time span (first flow start to last flow
end; 0.2 of a day learns from its first 4.8 hours). Everything seen from then on is judged against what was seen
before it. Without either option the module stays silent: a baseline nobody chose would call every device that
first speaks later in a capture "new", which is noise, not detection (``quaywatch detect --learning-until`` or
``--learning-share``).

One alert per new item kind and key, and a new item caused by a newer one is folded into it: a new device's pairs,
protocols, function codes and register ranges are one alert (the device's), a new pair's protocol is the pair's
alert, and the function codes and ranges of a protocol new on a pair are that protocol's alert. The folded items
are listed in the evidence (``values["also_new"]``).

The learned baseline is written to the table ``baseline_items`` (``BASELINE_SCHEMA``) when the connection can
write, and :func:`learned_operations` returns the learned function codes and register ranges for other detections
(unauthorised ICS commands without a policy, D7).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from quaywatch.detect import catalog, rollups
from quaywatch.detect.alert import Alert, EventReference, Evidence, ScoreComponent
from quaywatch.yaml_files import load_yaml

if TYPE_CHECKING:
    from quaywatch.detect.context import DetectionContext

DETECTION = "D8.baseline-deviation"
REQUIRES = ("flows",)
#: One-core seconds over the benchmark store (make bench): the engine starts the longest detections first.
COST = 0.15
BASELINE_TABLE = "baseline_items"
#: The share of the stored time span used when ``learning_share`` is given without a value.
DEFAULT_LEARNING_SHARE = 0.2
#: Packets kept as evidence per alert.
EVIDENCE_PACKETS = 10

KINDS = ("device", "talker_pair", "protocol", "function_code", "register_range")
#: Each kind's alerts carry their own detection id (``D8.baseline-deviation.device`` ...), so they filter apart.
DETECTIONS = tuple(f"{DETECTION}.{kind.replace('_', '-')}" for kind in KINDS)
#: ATT&CK for ICS per kind: new hosts and paths are discovery (T0846), new function codes are information
#: discovery or an engineering tool (T0888), new register ranges are point and tag identification (T0861).
TECHNIQUES = {
    "device": ["T0846"],
    "talker_pair": ["T0846"],
    "protocol": ["T0846", "T0888"],
    "function_code": ["T0888"],
    "register_range": ["T0861"],
}
SEVERITY = {
    "device": "medium",
    "talker_pair": "low",
    "protocol": "medium",
    "function_code": "medium",
    "register_range": "medium",
}
#: The columns that identify an item of each kind.
KEY_FIELDS = {
    "device": ("ip", "mac"),
    "talker_pair": ("client_ip", "server_ip", "server_port", "transport"),
    "protocol": ("client_ip", "server_ip", "protocol"),
    "function_code": ("protocol", "client_ip", "server_ip", "code"),
    "register_range": ("client_ip", "server_ip", "unit_id", "address_space"),
}
#: Decoder table of each ICS protocol whose function codes are learned, with the flow application that carries it.
FUNCTION_SOURCES = {
    "modbus": ("modbus", "CAST(function_code AS VARCHAR)", "function", "event_type = 'request'"),
    "s7comm": (
        "s7comm",
        "CASE WHEN rosctr_code = 7 THEN 'userdata ' ELSE 'job ' END || CAST(function_code AS VARCHAR)",
        "function",
        "rosctr_code IN (1, 7) AND direction = 'to_server'",
    ),
    "cip": ("enip", "CAST(service_code AS VARCHAR)", "service", "message = 'request'"),
    "dnp3": ("dnp3", "CAST(function_code AS VARCHAR)", "function", "direction = 'to_server'"),
    "iec104": ("iec104", "CAST(type_id AS VARCHAR)", "type_name", "type_id IS NOT NULL"),
    "opcua": ("opcua", "service", "service", "direction = 'to_server' AND service IS NOT NULL"),
}

BASELINE_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), False, {"doc": "device, talker_pair, protocol, function_code or register_range"}),
        pa.field("item_key", pa.string(), False, {"doc": "the key fields of the item as a JSON object"}),
        pa.field("ip", pa.string(), True, {"doc": "device: IP address"}),
        pa.field("mac", pa.string(), True, {"doc": "device: MAC address seen with it (empty when none)"}),
        pa.field("client_ip", pa.string(), True, {"doc": "talker pair, protocol, function code, register range"}),
        pa.field("server_ip", pa.string(), True, {"doc": "talker pair, protocol, function code, register range"}),
        pa.field("server_port", pa.int32(), True, {"doc": "talker pair: server port (ICMP: code)"}),
        pa.field("transport", pa.string(), True, {"doc": "talker pair: tcp, udp, icmp ..."}),
        pa.field("protocol", pa.string(), True, {"doc": "protocol: flows.application; function code: ICS protocol"}),
        pa.field(
            "code",
            pa.string(),
            True,
            {
                "doc": "function code: Modbus/DNP3 function, 'job N'/'userdata N' "
                "for S7comm, CIP service, IEC 104 type id, OPC UA service"
            },
        ),
        pa.field("code_name", pa.string(), True, {"doc": "function code: its name as the decoder gave it"}),
        pa.field("unit_id", pa.int32(), True, {"doc": "register range: Modbus unit identifier"}),
        pa.field(
            "address_space",
            pa.string(),
            True,
            {"doc": "register range: coils, discrete_inputs, holding_registers or input_registers"},
        ),
        pa.field("range_start", pa.int32(), True, {"doc": "register range: first address of a learned range"}),
        pa.field("range_end", pa.int32(), True, {"doc": "register range: last address (inclusive)"}),
        pa.field("first_seen", pa.timestamp("us", tz="UTC"), False, {"doc": "first time seen in the learning period"}),
        pa.field("last_seen", pa.timestamp("us", tz="UTC"), False, {"doc": "last time seen in the learning period"}),
        pa.field("count", pa.int64(), False, {"doc": "observations in the learning period (flows, requests)"}),
        pa.field("learning_until", pa.timestamp("us", tz="UTC"), False, {"doc": "end of the learning period"}),
        pa.field("built_at", pa.timestamp("us", tz="UTC"), False, {"doc": "when this baseline was written"}),
    ]
)


@functools.cache
def address_spaces() -> dict[int, str]:
    """Modbus function code to data table, from ``data/modbus_address_spaces.yaml`` (the specification's model)."""
    text = resources.files("quaywatch.data").joinpath("modbus_address_spaces.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = load_yaml(text)
    return {int(code): str(space) for code, space in document["function_codes"].items()}


def _table_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return set(catalog.columns(con, table))


def learning_end(con: duckdb.DuckDBPyConnection, options: dict[str, Any] | None = None) -> dt.datetime | None:
    """``learning_until`` from the options (datetime or ISO 8601 text; naive means UTC), or the end of the first
    ``learning_share`` of the stored time span; None without either option or without flows."""
    chosen = (options or {}).get("learning_until")
    share = (options or {}).get("learning_share")
    if chosen is None and share is None:
        return None
    if isinstance(chosen, str):  # from a command line or a configuration file
        chosen = dt.datetime.fromisoformat(chosen)
    if isinstance(chosen, dt.datetime):
        return chosen if chosen.tzinfo else chosen.replace(tzinfo=dt.UTC)
    if "ts" not in _table_columns(con, "flows"):
        return None
    rows = con.execute("SELECT min(ts), max(last_ts) FROM flows").fetchall()
    row = rows[0] if rows else None
    if row is None or row[0] is None:
        return None
    start, end = row
    return start + (end - start) * float(share if share is not None else DEFAULT_LEARNING_SHARE)


def _is_local(address: str) -> bool:
    """A device of the site: private, link-local or unique-local addresses (remote servers are pairs, not devices)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    if parsed.is_unspecified or parsed.is_multicast or parsed.is_loopback or parsed.is_reserved:
        return False
    return bool(parsed.is_private or parsed.is_link_local) and address != "255.255.255.255"


_EVIDENCE = (
    "struct_pack(source := source, capture_id := capture_id, packet_number := packet_number, flow_id := flow_id, "
    "community_id := community_id)"
)
#: Multicast and broadcast MACs (the group bit, the low bit of the first octet) are destinations, not devices.
_UNICAST_MAC = "substr({mac}, 2, 1) NOT IN ('1', '3', '5', '7', '9', 'b', 'd', 'f', 'B', 'D', 'F')"


def _observations(con: duckdb.DuckDBPyConnection, until: dt.datetime) -> None:
    """Every device, pair, protocol and function code sighting as one temporary view ``d8_observations``, and
    those counted per item in ``d8_sightings`` (:func:`_sightings`).

    A view, not a table: each kind's queries read only their own branch of the union, straight from the store.
    """
    parts: list[str] = []
    columns = (
        "kind, ip, mac, client_ip, server_ip, server_port, transport, protocol, code, code_name, ts, "
        "source, capture_id, packet_number, flow_id, community_id"
    )
    flows = _table_columns(con, "flows")
    has_flows = {"client_ip", "server_ip", "ts", "application"} <= flows
    has_arp = {"sender_ip", "sender_mac", "ts"} <= _table_columns(con, "arp")
    _groups(con, until, has_flows, has_arp)
    # The addresses from the groupings (a few thousand rows), not from the million flows and the ARP rows again.
    sources = (
        ["SELECT client_ip AS ip FROM d8_flow_groups", "SELECT server_ip FROM d8_flow_groups"] if has_flows else []
    ) + (["SELECT sender_ip FROM d8_arp_groups"] if has_arp else [])
    addresses = (
        [
            str(row[0])
            for row in con.execute(f"SELECT DISTINCT ip FROM ({' UNION '.join(sources)})").fetchall()
            if row[0]
        ]
        if sources
        else []
    )
    local = set(filter(_is_local, addresses))
    if {"ip", "zone"} <= _table_columns(con, "host_zones"):  # the policy's zone map: a zoned host is a device
        rows = con.execute("SELECT DISTINCT ip FROM host_zones WHERE zone IS DISTINCT FROM 'external'").fetchall()
        local |= {str(row[0]) for row in rows if row[0]}
    con.register("d8_local_source", pa.table({"ip": pa.array(sorted(local), pa.string())}))
    con.execute("CREATE OR REPLACE TEMP TABLE d8_local AS SELECT * FROM d8_local_source")
    con.unregister("d8_local_source")
    if has_flows:
        for side in ("client", "server"):
            parts.append(
                f"""SELECT 'device', {side}_ip, coalesce({side}_mac, ''), NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                           ts, 'flows', capture_id, first_packet, flow_id, community_id
                    FROM flows WHERE {side}_ip IN (SELECT ip FROM d8_local)
                    AND ({side}_mac IS NULL OR {_UNICAST_MAC.format(mac=side + "_mac")})"""
            )
        parts.append(
            """SELECT 'talker_pair', NULL, NULL, client_ip, server_ip, server_port, transport, NULL, NULL, NULL,
                      ts, 'flows', capture_id, first_packet, flow_id, community_id FROM flows"""
        )
        parts.append(
            """SELECT 'protocol', NULL, NULL, client_ip, server_ip, server_port, transport, application, NULL, NULL,
                      ts, 'flows', capture_id, first_packet, flow_id, community_id FROM flows
               WHERE application IS NOT NULL"""
        )
    if has_arp:
        parts.append(
            f"""SELECT 'device', sender_ip, coalesce(sender_mac, ''), NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                      ts, 'arp', capture_id, packet_number, flow_id, community_id
               FROM arp WHERE sender_ip IN (SELECT ip FROM d8_local) AND {_UNICAST_MAC.format(mac="sender_mac")}"""
        )
    # A typed empty first part: the table has its columns and types even when no source table exists.
    empty = (
        "SELECT NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::INTEGER, "
        "NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::TIMESTAMPTZ, NULL::VARCHAR, "
        "NULL::VARCHAR, NULL::BIGINT, NULL::VARCHAR, NULL::VARCHAR WHERE false"
    )
    body = " UNION ALL ".join([empty, *parts])
    con.execute(f"CREATE OR REPLACE TEMP VIEW d8_observations AS SELECT * FROM ({body}) AS o({columns})")
    _sightings(con, has_flows, has_arp)


def _groups(con: duckdb.DuckDBPyConnection, until: dt.datetime, has_flows: bool, has_arp: bool) -> None:
    """``d8_flow_groups`` and ``d8_arp_groups``: one grouping each of ``flows`` (by both ends, port, transport and
    application) and of ``arp`` (by sender), per side of ``until``, with count, first and last time. A site's
    million flows and hundreds of thousands of ARP packets are a few thousand such combinations: the devices, pairs
    and protocols are counted from those (:func:`_sightings`), and so are the addresses judged local.

    The flows come from the per-capture flow summary where a capture has one (detect/rollups.py), and the rows
    of a key and side it gives are added up here: a row per key and side makes the groupings that follow cheaper.
    ARP is grouped raw: its rows group as fast as a summary of them adds up."""
    if has_flows:
        counts = rollups.flow_groups_sql(con, catalog.tables(con), until)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE d8_flow_groups AS
                SELECT {", ".join(rollups.FLOW_KEY_COLUMNS)}, learned, CAST(sum(count) AS BIGINT) AS count,
                       min(first_ts) AS first_ts, max(last_ts) AS last_ts
                FROM ({counts}) GROUP BY ALL"""
        )
    if has_arp:
        con.execute(
            """CREATE OR REPLACE TEMP TABLE d8_arp_groups AS
               SELECT sender_ip, sender_mac, ts < $until AS learned, count(*) AS count, min(ts) AS first_ts,
                      max(ts) AS last_ts
               FROM arp GROUP BY ALL""",
            {"until": until},
        )


def _sightings(con: duckdb.DuckDBPyConnection, has_flows: bool, has_arp: bool) -> None:
    """``d8_sightings``: the device, pair and protocol observations of ``d8_observations`` counted per item and side
    of the learning end (count, first and last time), from the groupings of :func:`_groups` rather than each kind
    from every flow again (an ARP group's sender MAC is never NULL here: the unicast test drops NULL, as the
    observations' does)."""
    columns = "kind, ip, mac, client_ip, server_ip, server_port, transport, protocol, learned, count, first_ts, last_ts"
    parts = [
        "SELECT NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::INTEGER, "
        "NULL::VARCHAR, NULL::VARCHAR, NULL::BOOLEAN, NULL::BIGINT, NULL::TIMESTAMPTZ, NULL::TIMESTAMPTZ WHERE false"
    ]
    if has_flows:
        for side in ("client", "server"):
            parts.append(
                f"""SELECT 'device', {side}_ip, coalesce({side}_mac, ''), NULL, NULL, NULL, NULL, NULL,
                           learned, count, first_ts, last_ts
                    FROM d8_flow_groups WHERE {side}_ip IN (SELECT ip FROM d8_local)
                    AND ({side}_mac IS NULL OR {_UNICAST_MAC.format(mac=side + "_mac")})"""
            )
        parts.append(
            """SELECT 'talker_pair', NULL, NULL, client_ip, server_ip, server_port, transport, NULL,
                      learned, count, first_ts, last_ts FROM d8_flow_groups"""
        )
        parts.append(
            """SELECT 'protocol', NULL, NULL, client_ip, server_ip, server_port, transport, application,
                      learned, count, first_ts, last_ts FROM d8_flow_groups WHERE application IS NOT NULL"""
        )
    if has_arp:
        parts.append(
            f"""SELECT 'device', sender_ip, sender_mac, NULL, NULL, NULL, NULL, NULL, learned, count, first_ts,
                       last_ts
                FROM d8_arp_groups
                WHERE sender_ip IN (SELECT ip FROM d8_local) AND {_UNICAST_MAC.format(mac="sender_mac")}"""
        )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE d8_sightings AS SELECT * FROM ({' UNION ALL '.join(parts)}) AS s({columns})"
    )


def function_code_sources(con: duckdb.DuckDBPyConnection, present: set[str]) -> list[str]:
    """Per ICS decoder table present: its requests' function codes, as the columns protocol, client_ip,
    server_ip, server_port, transport, code, code_name, ts, source, capture_id, packet_number, flow_id,
    community_id (read by the baseline and summarised per capture by detect/rollups.py)."""
    selects = []
    for table, (protocol, code, name, condition) in FUNCTION_SOURCES.items():
        if table not in present or not {"client_ip", "server_ip", "ts", "direction"} <= _table_columns(con, table):
            continue
        try:
            con.execute(f"SELECT {code}, {name} FROM {table} WHERE {condition} LIMIT 0")
        except duckdb.Error:
            continue  # an older table without these columns
        selects.append(
            f"""SELECT '{protocol}' AS protocol, client_ip, server_ip, CAST(server_port AS INTEGER) AS server_port,
                       transport, {code} AS code, CAST({name} AS VARCHAR) AS code_name, ts, '{table}' AS source,
                       capture_id, packet_number, flow_id, community_id
                FROM {table} WHERE ({condition}) AND {code} IS NOT NULL"""
        )
    return selects


#: Summary rows (detect/rollups.py) of captures that have them, raw rows summarised the same way for the others;
#: ``learned`` tells a summary of rows before the learning period's end from one of rows after it.
#: Summary rows keep their evidence in the summary table (read by row id for new items only, _merge_evidence).
#: The summary rows of one key and side of the learning end are added up here, over every capture: the answer has
#: a row per key, not one per key and capture, for the groupings that follow.
_SUMMARY_ROWS = """
SELECT {keys}, {extra} CAST(sum(count) AS BIGINT) AS count, min(first_ts) AS first_ts, max(last_ts) AS last_ts,
       NULL AS evidence, list(rowid) AS summary_rows, last_ts < $until AS learned
FROM {summary} WHERE {wanted} GROUP BY {keys}, learned
"""
_RAW_ROWS = """
SELECT {keys}, {extra} {aggregates}, NULL::BIGINT[] AS summary_rows, learned FROM (
    SELECT *, ts < $until AS learned FROM ({raw}) WHERE {raw_filter}
) GROUP BY {keys}, learned
"""


def _summaries(
    con: duckdb.DuckDBPyConnection,
    name: str,
    summary: str,
    raw: list[str],
    keys: str,
    until: dt.datetime,
    named: bool = False,
    coverage: rollups.Coverage | None = None,
) -> None:
    """Temporary table ``name``: the summary rows of ``summary`` for the captures that have one, and ``raw``
    summarised the same way for the others (each row's learned flag says on which side of ``until`` it lies)."""
    present = catalog.tables(con)
    if coverage is None:
        coverage = rollups.coverage(con, present, until)
    rolled = coverage.rolled if summary in present else None
    parts = []
    extra = "any_value(code_name) AS code_name, " if named else ""
    if rolled is not None:
        parts.append(_SUMMARY_ROWS.format(keys=keys, extra=extra, summary=summary, wanted=coverage.summary_filter()))
    filter_ = coverage.raw_filter() if rolled is not None else "true"
    if raw and filter_ is not None:
        parts.append(_RAW_ROWS.format(keys=keys, extra=extra,
                                      aggregates=rollups.SUMMARY_AGGREGATES, raw=" UNION ALL ".join(raw),
                                      raw_filter=filter_))  # fmt: skip
    if not parts:
        parts.append(
            f"SELECT {keys}, {'NULL::VARCHAR AS code_name, ' if named else ''}NULL::BIGINT AS count, "
            "NULL::TIMESTAMPTZ AS first_ts, "
            "NULL::TIMESTAMPTZ AS last_ts, NULL AS evidence, NULL::BIGINT[] AS summary_rows, NULL::BOOLEAN AS learned "
            "WHERE false"
        )
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS " + " UNION ALL ".join(parts), {"until": until})


_FUNCTION_KEYS = "protocol, client_ip, server_ip, server_port, transport, code"


def _function_codes(
    con: duckdb.DuckDBPyConnection, until: dt.datetime, coverage: rollups.Coverage | None = None
) -> None:
    """``d8_functions``: function-code summaries per capture (or per raw rows), see :func:`_summaries`."""
    raw = function_code_sources(con, catalog.tables(con))
    _summaries(con, "d8_functions", rollups.FUNCTION_SUMMARY, raw, _FUNCTION_KEYS, until, True, coverage)


#: A group's evidence: the lists of its raw summaries and the summary rows whose lists are read afterwards.
_EVIDENCE_PARTS = (
    "list({alias}.evidence) FILTER (WHERE {alias}.evidence IS NOT NULL) AS raw_evidence, "
    "flatten(list({alias}.summary_rows) FILTER (WHERE {alias}.summary_rows IS NOT NULL)) AS summary_rows"
)


def _merge_evidence(con: duckdb.DuckDBPyConnection, summary: str, groups: list[dict[str, Any]]) -> None:
    """Each group's first EVIDENCE_PACKETS entries in time order, from its raw lists and its summary rows.

    Summary evidence is read only for these groups (the new items, few), by row id: carrying every summary's list
    through the grouping would cost more than all the rest of D8.
    """
    wanted = sorted({int(row) for group in groups for row in group["summary_rows"] or []})
    stored: dict[int, list[dict[str, Any]]] = {}
    for start in range(0, len(wanted), 1000):
        chunk = ", ".join(map(str, wanted[start : start + 1000]))
        for row, evidence in con.execute(f"SELECT rowid, evidence FROM {summary} WHERE rowid IN ({chunk})").fetchall():
            stored[int(row)] = list(evidence or [])
    for group in groups:
        entries = [entry for part in group.pop("raw_evidence") or [] for entry in part or []]
        entries += [entry for row in group.pop("summary_rows") or [] for entry in stored.get(int(row), [])]
        entries.sort(key=_summary_order)
        group["evidence"] = [entry["e"] for entry in entries[:EVIDENCE_PACKETS]]


def _summary_order(entry: dict[str, Any]) -> tuple[Any, ...]:
    order = entry["o"]
    packet = order["packet_number"]
    return (order["ts"], str(order["capture_id"]), packet is None, packet or 0)


def _item_key_sql(kind: str) -> str:
    fields = KEY_FIELDS[kind]
    pairs = ", ".join(f"'{name}', coalesce(CAST({name} AS VARCHAR), '')" for name in fields)
    return f"CAST(json_object({pairs}) AS VARCHAR)"


def _items(con: duckdb.DuckDBPyConnection, until: dt.datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Learned items (seen before ``until``) and new ones (first seen from ``until`` on), one pass per kind.

    Evidence (first packets, ports) is gathered afterwards for the new items only: they are few, the learned many.
    """
    learned: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    for kind in KINDS[:3]:
        fields = ", ".join(KEY_FIELDS[kind])
        extra = ", any_value(code_name) AS code_name" if kind == "function_code" else ""
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE d8_grouped AS
                SELECT {fields}, CAST(coalesce(sum(count) FILTER (WHERE learned), 0) AS BIGINT) AS learned_count,
                       min(first_ts) FILTER (WHERE learned) AS learned_first,
                       max(last_ts) FILTER (WHERE learned) AS learned_last,
                       CAST(sum(count) AS BIGINT) AS count, min(first_ts) AS first_seen, max(last_ts) AS last_seen
                FROM d8_sightings WHERE kind = '{kind}' GROUP BY {fields}"""
        )
        cursor = con.execute(
            f"""SELECT '{kind}' AS kind, {fields}, {_item_key_sql(kind)} AS item_key, learned_first AS first_seen,
                       learned_last AS last_seen, learned_count AS count {", code_name" if extra else ""}
                FROM d8_grouped WHERE learned_count > 0"""
        )
        names = [column[0] for column in cursor.description]
        learned += [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        if not con.execute("SELECT count(*) FROM d8_grouped WHERE learned_count = 0").fetchall()[0][0]:
            continue  # nothing new of this kind: no need to read its observations again for evidence
        join = " AND ".join(f"o.{name} IS NOT DISTINCT FROM g.{name}" for name in KEY_FIELDS[kind])
        cursor = con.execute(
            f"""SELECT '{kind}' AS kind, {", ".join(f"g.{name}" for name in KEY_FIELDS[kind])},
                       any_value(g.count) AS count, any_value(g.first_seen) AS first_seen,
                       any_value(g.last_seen) AS last_seen {extra.replace("code_name)", "g.code_name)")},
                       list({_EVIDENCE} ORDER BY o.ts, o.capture_id, o.packet_number)
                           [1:{EVIDENCE_PACKETS}] AS evidence,
                       list(DISTINCT o.server_port) FILTER (WHERE o.server_port IS NOT NULL) AS ports,
                       list(DISTINCT o.transport) FILTER (WHERE o.transport IS NOT NULL) AS transports
                FROM (SELECT * FROM d8_grouped WHERE learned_count = 0) g
                JOIN (SELECT * FROM d8_observations WHERE kind = '{kind}') o ON {join}
                GROUP BY {", ".join(f"g.{name}" for name in KEY_FIELDS[kind])}"""
        )
        names = [column[0] for column in cursor.description]
        new += [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    function_learned, function_new = _function_items(con)
    return learned + function_learned, new + function_new


def _function_items(con: duckdb.DuckDBPyConnection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`_items` for function codes, from the summaries in ``d8_functions`` rather than from every request."""
    kind = "function_code"
    fields = ", ".join(KEY_FIELDS[kind])
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE d8_grouped AS
            SELECT {fields}, CAST(coalesce(sum(count) FILTER (WHERE learned), 0) AS BIGINT) AS learned_count,
                   min(first_ts) FILTER (WHERE learned) AS learned_first,
                   max(last_ts) FILTER (WHERE learned) AS learned_last,
                   CAST(sum(count) AS BIGINT) AS count, min(first_ts) AS first_seen, max(last_ts) AS last_seen,
                   any_value(code_name) AS code_name
            FROM d8_functions GROUP BY {fields}"""
    )
    cursor = con.execute(
        f"""SELECT '{kind}' AS kind, {fields}, {_item_key_sql(kind)} AS item_key, learned_first AS first_seen,
                   learned_last AS last_seen, learned_count AS count, code_name
            FROM d8_grouped WHERE learned_count > 0"""
    )
    names = [column[0] for column in cursor.description]
    learned = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    join = " AND ".join(f"f.{name} IS NOT DISTINCT FROM g.{name}" for name in KEY_FIELDS[kind])
    cursor = con.execute(
        f"""SELECT '{kind}' AS kind, {", ".join(f"g.{name}" for name in KEY_FIELDS[kind])},
                   any_value(g.count) AS count, any_value(g.first_seen) AS first_seen,
                   any_value(g.last_seen) AS last_seen, any_value(g.code_name) AS code_name,
                   {_EVIDENCE_PARTS.format(alias="f")},
                   list(DISTINCT f.server_port) FILTER (WHERE f.server_port IS NOT NULL) AS ports,
                   list(DISTINCT f.transport) FILTER (WHERE f.transport IS NOT NULL) AS transports
            FROM (SELECT * FROM d8_grouped WHERE learned_count = 0) g JOIN d8_functions f ON {join}
            GROUP BY {", ".join(f"g.{name}" for name in KEY_FIELDS[kind])}"""
    )
    names = [column[0] for column in cursor.description]
    new = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    _merge_evidence(con, rollups.FUNCTION_SUMMARY, new)
    return learned, new


# -- register ranges ------------------------------------------------------------------------------------------


def _merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or adjacent intervals joined: [(0, 9), (10, 12), (20, 20)] -> [(0, 12), (20, 20)]."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """The interval lies within one merged learned range."""
    position = bisect.bisect_right(ranges, (start, float("inf"))) - 1
    return position >= 0 and ranges[position][0] <= start and end <= ranges[position][1]


def register_sources(con: duckdb.DuckDBPyConnection, present: set[str]) -> str | None:
    """Every Modbus request's address interval as the columns client_ip, server_ip, unit_id, address_space,
    range_start, range_end, ts, source, capture_id, packet_number, flow_id, community_id; None without the table."""
    columns = _table_columns(con, "modbus") if "modbus" in present else set()
    spaces = address_spaces()
    if not {"function_code", "address", "quantity", "unit_id", "ts"} <= columns:
        return None
    cases = " ".join(f"WHEN {int(code)} THEN '{space}'" for code, space in spaces.items() if space.isidentifier())
    read_part = (
        """UNION ALL SELECT client_ip, server_ip, CAST(unit_id AS INTEGER), 'holding_registers',
                  CAST(read_address AS INTEGER),
                  CAST(read_address + greatest(coalesce(read_quantity, 1), 1) - 1 AS INTEGER), ts, 'modbus',
                  capture_id, packet_number, flow_id, community_id
           FROM modbus WHERE event_type = 'request' AND function_code = 23 AND read_address IS NOT NULL"""
        if {"read_address", "read_quantity"} <= columns
        else ""
    )
    return f"""SELECT client_ip, server_ip, CAST(unit_id AS INTEGER) AS unit_id,
                      CASE function_code {cases} END AS address_space, CAST(address AS INTEGER) AS range_start,
                      CAST(address + greatest(coalesce(quantity, 1), 1) - 1 AS INTEGER) AS range_end, ts,
                      'modbus' AS source, capture_id, packet_number, flow_id, community_id
               FROM modbus
               WHERE event_type = 'request' AND address IS NOT NULL
                     AND function_code IN ({", ".join(map(str, spaces))})
               {read_part}"""


_RANGE_COLUMNS = "client_ip, server_ip, unit_id, address_space, range_start, range_end"


def _register_requests(
    con: duckdb.DuckDBPyConnection, until: dt.datetime, coverage: rollups.Coverage | None = None
) -> None:
    """``d8_registers``: Modbus address-interval summaries per capture (or per raw rows), see :func:`_summaries`."""
    raw = register_sources(con, catalog.tables(con))
    _summaries(con, "d8_registers", rollups.RANGE_SUMMARY, [raw] if raw else [], _RANGE_COLUMNS, until, False, coverage)


def _learned_ranges(con: duckdb.DuckDBPyConnection, until: dt.datetime) -> dict[tuple[Any, ...], list[tuple[int, int]]]:
    rows = con.execute(
        """SELECT client_ip, server_ip, unit_id, address_space, range_start, range_end FROM d8_registers
           WHERE learned GROUP BY ALL"""
    ).fetchall()
    gathered: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
    for client, server, unit, space, start, end in rows:
        gathered.setdefault((client, server, unit, space), []).append((int(start), int(end)))
    return {key: _merge(intervals) for key, intervals in gathered.items()}


def _learned_range_stats(
    con: duckdb.DuckDBPyConnection, until: dt.datetime
) -> dict[tuple[Any, ...], tuple[Any, Any, int]]:
    rows = con.execute(
        """SELECT client_ip, server_ip, unit_id, address_space, min(first_ts), max(last_ts),
                  CAST(sum(count) AS BIGINT)
           FROM d8_registers WHERE learned GROUP BY ALL"""
    ).fetchall()
    return {(row[0], row[1], row[2], row[3]): (row[4], row[5], int(row[6])) for row in rows}


_RANGE_KEY = ("client_ip", "server_ip", "unit_id", "address_space", "range_start", "range_end")


def _range_evidence(
    con: duckdb.DuckDBPyConnection, until: dt.datetime, rows: list[dict[str, Any]]
) -> dict[tuple[Any, ...], list[Any]]:
    """The first EVIDENCE_PACKETS requests of each of these (client, server, unit, space, range) groups."""
    if not rows:
        return {}
    types = (pa.string(), pa.string(), pa.int32(), pa.string(), pa.int32(), pa.int32())
    wanted = pa.table(
        {name: pa.array([row[name] for row in rows], kind) for name, kind in zip(_RANGE_KEY, types, strict=True)}
    )
    con.register("d8_wanted_ranges", wanted)
    try:
        on = " AND ".join(f"r.{name} IS NOT DISTINCT FROM w.{name}" for name in _RANGE_KEY)
        cursor = con.execute(
            f"""SELECT {", ".join(f"r.{name}" for name in _RANGE_KEY)}, {_EVIDENCE_PARTS.format(alias="r")}
                FROM d8_registers AS r SEMI JOIN d8_wanted_ranges AS w ON {on}
                WHERE NOT r.learned GROUP BY ALL"""
        )
        names = [column[0] for column in cursor.description]
        found = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.unregister("d8_wanted_ranges")
    _merge_evidence(con, rollups.RANGE_SUMMARY, found)
    return {tuple(group[name] for name in _RANGE_KEY): group["evidence"] for group in found}


def _new_ranges(con: duckdb.DuckDBPyConnection, until: dt.datetime) -> list[dict[str, Any]]:
    """Requests after the learning period outside every learned range of their client, server, unit and table."""
    learned = _learned_ranges(con, until)
    # Coverage first, evidence after: on a long capture nearly every request repeats a learned range, and gathering
    # each group's evidence list before knowing would cost most of the detection's time.
    cursor = con.execute(
        """SELECT client_ip, server_ip, unit_id, address_space, range_start, range_end,
                  min(first_ts) AS first_seen, max(last_ts) AS last_seen, CAST(sum(count) AS BIGINT) AS count
           FROM d8_registers WHERE NOT learned GROUP BY ALL ORDER BY first_seen"""
    )
    names = [column[0] for column in cursor.description]
    uncovered = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        key = (row["client_ip"], row["server_ip"], row["unit_id"], row["address_space"])
        if not _covered(learned.get(key, []), int(row["range_start"]), int(row["range_end"])):
            uncovered.append(row)
    evidence = _range_evidence(con, until, uncovered)
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in uncovered:
        key = (row["client_ip"], row["server_ip"], row["unit_id"], row["address_space"])
        row["evidence"] = evidence.get((*key, row["range_start"], row["range_end"]), [])
        item = grouped.get(key)
        if item is None:
            item = grouped[key] = {
                "kind": "register_range",
                "client_ip": key[0],
                "server_ip": key[1],
                "unit_id": key[2],
                "address_space": key[3],
                "first_seen": row["first_seen"],
                "last_seen": row["last_seen"],
                "count": 0,
                "intervals": [],
                "evidence": [],
                "learned_ranges": learned.get(key, []),
            }
        item["first_seen"] = min(item["first_seen"], row["first_seen"])
        item["last_seen"] = max(item["last_seen"], row["last_seen"])
        item["count"] += int(row["count"])
        item["intervals"].append((int(row["range_start"]), int(row["range_end"])))
        item["evidence"] = sorted(item["evidence"] + list(row["evidence"]), key=_evidence_order)[:EVIDENCE_PACKETS]
    for item in grouped.values():
        item["ranges"] = _merge(item.pop("intervals"))
        item["item_key"] = json.dumps(
            {name: "" if item[name] is None else str(item[name]) for name in KEY_FIELDS["register_range"]}
        )
    return list(grouped.values())


def _evidence_order(entry: dict[str, Any]) -> tuple[str, int]:
    return (str(entry["capture_id"]), int(entry["packet_number"] or 0))


# -- the baseline for other detections ----------------------------------------------------------------------


def learned_operations(con: duckdb.DuckDBPyConnection, until: dt.datetime) -> dict[str, Any]:
    """What the learning period saw hosts do, for judging ICS commands without a policy (D7).

    Returns ``{"until": until, "function_codes": {(protocol, client_ip, server_ip): frozenset of codes},
    "register_ranges": {(client_ip, server_ip, unit_id, address_space): [(first, last), ...]}}``. Codes are
    strings as in ``baseline_items.code`` (Modbus ``"6"``, S7comm ``"job 5"``, OPC UA ``"WriteRequest"``);
    ranges are merged and inclusive.
    """
    try:
        return _learned_operations(con, until)
    finally:
        _drop_temporary(con)


def _learned_operations(con: duckdb.DuckDBPyConnection, until: dt.datetime) -> dict[str, Any]:
    coverage = rollups.coverage(con, catalog.tables(con), until)
    _function_codes(con, until, coverage)
    _register_requests(con, until, coverage)
    functions: dict[tuple[str, str, str], set[str]] = {}
    rows = con.execute(
        "SELECT DISTINCT protocol, client_ip, server_ip, code FROM d8_functions WHERE learned"
    ).fetchall()
    for protocol, client, server, code in rows:
        functions.setdefault((str(protocol), str(client), str(server)), set()).add(str(code))
    return {
        "until": until,
        "function_codes": {key: frozenset(codes) for key, codes in functions.items()},
        "register_ranges": _learned_ranges(con, until),
    }


def _store_baseline(con: duckdb.DuckDBPyConnection, until: dt.datetime, learned: list[dict[str, Any]]) -> bool:
    """Replace ``baseline_items`` with this learning period's items; False when the connection cannot write."""
    built = dt.datetime.now(dt.UTC)
    records = []
    for item in learned:
        record: dict[str, Any] = {name: item.get(name) for name in BASELINE_SCHEMA.names}
        record.update(learning_until=until, built_at=built)
        for name in ("server_port", "unit_id", "range_start", "range_end"):
            value = record[name]
            record[name] = None if value is None else int(value)
        records.append(record)
    baseline_rows = pa.Table.from_pylist(records, schema=BASELINE_SCHEMA)  # noqa: F841  (DuckDB replacement scan)
    try:
        # One statement, so it is atomic on its own and never touches a transaction the caller may have open.
        con.execute(f'CREATE OR REPLACE TABLE "{BASELINE_TABLE}" AS SELECT * FROM baseline_rows')
    except duckdb.Error:
        return False  # a read-only store: the alerts stand without the stored baseline
    return True


# -- detection ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _NewItem:
    kind: str
    key: dict[str, str]
    row: dict[str, Any]
    children: list[_NewItem] = field(default_factory=list)

    @property
    def label(self) -> str:
        key = self.key
        if self.kind == "device":
            return f"device {key['ip']}" + (f" ({key['mac']})" if key.get("mac") else "")
        if self.kind == "talker_pair":
            return f"talker pair {key['client_ip']} -> {key['server_ip']}:{key['server_port']}/{key['transport']}"
        if self.kind == "protocol":
            return f"protocol {key['protocol']} from {key['client_ip']} to {key['server_ip']}"
        if self.kind == "function_code":
            name = self.row.get("code_name")
            return (
                f"{key['protocol']} function {key['code']}"
                + (f" ({name})" if name else "")
                + f" from {key['client_ip']} to {key['server_ip']}"
            )
        ranges = ", ".join(f"{start}-{end}" for start, end in self.row["ranges"])
        return (
            f"{key['address_space']} {ranges} of unit {key['unit_id']} read or written by {key['client_ip']} on "
            f"{key['server_ip']}"
        )


def _key(kind: str, row: dict[str, Any]) -> dict[str, str]:
    return {name: "" if row.get(name) is None else str(row[name]) for name in KEY_FIELDS[kind]}


def _parents(item: _NewItem, devices: dict[str, _NewItem], index: dict[tuple[str, str], _NewItem]) -> list[_NewItem]:
    """The newer items that explain this one, most general first: its hosts' devices, its pair, its protocol."""
    key = item.key
    found = [devices[address] for address in (key.get("client_ip"), key.get("server_ip")) if address in devices]
    if item.kind == "protocol":
        for port in item.row.get("ports") or []:
            for transport in item.row.get("transports") or []:
                pair = {
                    "client_ip": key["client_ip"],
                    "server_ip": key["server_ip"],
                    "server_port": str(port),
                    "transport": str(transport),
                }
                parent = index.get(("talker_pair", json.dumps(pair, sort_keys=True)))
                if parent is not None:
                    found.append(parent)
    if item.kind in ("function_code", "register_range"):
        protocol = "modbus" if item.kind == "register_range" else FUNCTION_SOURCES.get(key["protocol"], ("",))[0]
        lookup = {"client_ip": key["client_ip"], "server_ip": key["server_ip"], "protocol": protocol}
        parent = index.get(("protocol", json.dumps(lookup, sort_keys=True)))
        if parent is not None:
            found.append(parent)
    return found


def _fold(items: list[_NewItem]) -> list[_NewItem]:
    """Each item into the newer item that explains it (its root), so one new thing makes one alert."""
    devices: dict[str, _NewItem] = {}
    for item in items:
        if item.kind == "device":
            devices.setdefault(item.key["ip"], item)
    index = {(item.kind, json.dumps(item.key, sort_keys=True)): item for item in items}
    parent_of: dict[int, _NewItem] = {}
    for item in items:
        if item.kind != "device":
            parents = _parents(item, devices, index)
            if parents:
                parent_of[id(item)] = parents[0]

    def root(item: _NewItem) -> _NewItem:
        seen = set()
        while id(item) in parent_of and id(item) not in seen:
            seen.add(id(item))
            item = parent_of[id(item)]
        return item

    roots: list[_NewItem] = []
    for item in items:
        top = root(item)
        if top is item:
            roots.append(item)
        else:
            top.children.append(item)
    return roots


def _drop_temporary(con: duckdb.DuckDBPyConnection) -> None:
    """The working relations live in the caller's connection: free them once the answer is built."""
    con.execute("DROP VIEW IF EXISTS d8_observations")
    for name in (
        "d8_grouped",
        "d8_registers",
        "d8_functions",
        "d8_local",
        "d8_sightings",
        "d8_flow_groups",
        "d8_arp_groups",
    ):
        con.execute(f"DROP TABLE IF EXISTS {name}")


def detect(con: duckdb.DuckDBPyConnection, context: DetectionContext) -> list[Alert]:
    """One alert per item first seen after the learning period, with what it brought along folded in."""
    options = getattr(context, "options", None) or {}
    until = learning_end(con, options)
    if until is None:
        return []
    try:
        return _detect(con, until)
    finally:
        _drop_temporary(con)


def _detect(con: duckdb.DuckDBPyConnection, until: dt.datetime) -> list[Alert]:
    _observations(con, until)
    coverage = rollups.coverage(con, catalog.tables(con), until)  # once for the function codes and the ranges
    _function_codes(con, until, coverage)
    _register_requests(con, until, coverage)
    learned, new = _items(con, until)
    stats = _learned_range_stats(con, until)
    for key, ranges in _learned_ranges(con, until).items():
        first, last, count = stats[key]
        for start, end in ranges:
            learned.append(
                {
                    "kind": "register_range",
                    "client_ip": key[0],
                    "server_ip": key[1],
                    "unit_id": key[2],
                    "address_space": key[3],
                    "range_start": start,
                    "range_end": end,
                    "first_seen": first,
                    "last_seen": last,
                    "count": count,
                    "item_key": json.dumps(
                        {
                            "client_ip": key[0],
                            "server_ip": key[1],
                            "unit_id": "" if key[2] is None else str(key[2]),
                            "address_space": key[3],
                            "range": f"{start}-{end}",
                        }
                    ),
                }
            )
    _store_baseline(con, until, learned)
    if not learned:
        return []  # nothing was learned (the learning period is empty): everything would be "new"
    rows = new + _new_ranges(con, until)
    items = [_NewItem(row["kind"], _key(row["kind"], row), row) for row in rows]
    items.sort(key=lambda item: (KINDS.index(item.kind), item.row["first_seen"], json.dumps(item.key)))
    zones = _zone_map(con)
    return [_alert(item, until, zones) for item in _fold(items)]


def _zone_map(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Each address's policy zones when another stage mapped hosts to zones (``host_zones``); empty otherwise."""
    if not {"ip", "zone"} <= _table_columns(con, "host_zones"):
        return {}
    rows = con.execute("SELECT ip, list(DISTINCT zone ORDER BY zone) FROM host_zones WHERE zone IS NOT NULL GROUP BY 1")
    return {str(ip): [str(zone) for zone in zones] for ip, zones in rows.fetchall()}


def _alert(item: _NewItem, until: dt.datetime, zone_map: dict[str, list[str]]) -> Alert:
    everything = [item, *item.children]
    unique = {
        (entry["source"], entry["capture_id"], entry["packet_number"], entry["flow_id"]): entry
        for member in everything
        for entry in member.row["evidence"] or []
    }  # a device's flow is also its pair's and its protocol's: each row once
    evidence = sorted(unique.values(), key=_evidence_order)[:EVIDENCE_PACKETS]
    addresses = sorted(  # the hosts involved: the new item's and those of what it brought along
        {member.key[name] for member in everything for name in ("ip", "client_ip", "server_ip") if member.key.get(name)}
    )
    techniques = list(dict.fromkeys(technique for member in everything for technique in TECHNIQUES[member.kind]))
    folded = [
        {
            "kind": child.kind,
            "item": child.label,
            "first_seen": child.row["first_seen"].isoformat(),
            "count": int(child.row["count"]),
        }
        for child in item.children
    ]
    values: dict[str, Any] = {"kind": item.kind, **item.key, "learning_until": until.isoformat(), "also_new": folded}
    if item.kind == "register_range":
        values["new_ranges"] = [f"{start}-{end}" for start, end in item.row["ranges"]]
        values["learned_ranges"] = [f"{start}-{end}" for start, end in item.row["learned_ranges"]]
    if item.kind == "function_code" and item.row.get("code_name"):
        values["code_name"] = item.row["code_name"]
    first_seen = min(member.row["first_seen"] for member in everything)
    last_seen = max(member.row["last_seen"] for member in everything)
    extra = f" It brought {len(folded)} more new items with it (listed in the evidence)." if folded else ""
    return Alert(
        detection=f"{DETECTION}.{item.kind.replace('_', '-')}",
        title=f"New {item.label}",
        key={"kind": item.kind, **item.key},
        severity=SEVERITY[item.kind],
        confidence=0.6,
        techniques=techniques,
        first_seen=first_seen,
        last_seen=last_seen,
        count=int(item.row["count"]),
        explanation=(
            f"The {item.label} was first seen at {item.row['first_seen'].isoformat()}, after the learning period "
            f"that ended at {until.isoformat()}; nothing like it was seen during it.{extra}"
        ),
        score=1.0,
        score_components=[
            ScoreComponent(
                "novelty",
                1.0,
                1.0,
                f"Not in the baseline learned until {until.isoformat()}: every deviation scores 1, the severity "
                "says which kind matters most.",
            )
        ],
        assets=addresses,
        zones=sorted({zone for address in addresses for zone in zone_map.get(address, [])}),
        evidence=Evidence(
            flow_ids=list(dict.fromkeys(str(entry["flow_id"]) for entry in evidence if entry["flow_id"])),
            community_ids=list(
                dict.fromkeys(str(entry["community_id"]) for entry in evidence if entry["community_id"])
            ),
            events=[
                EventReference(
                    str(entry["source"]),
                    str(entry["capture_id"]),
                    entry["packet_number"],
                    entry["flow_id"],
                )
                for entry in evidence
            ],
            packet_numbers=[int(entry["packet_number"]) for entry in evidence if entry["packet_number"] is not None],
            values=values,
        ),
    )
