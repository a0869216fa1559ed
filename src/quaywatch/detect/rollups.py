"""Per-capture summaries of the ICS event tables, written when a capture is analysed and read by D7 and D8.

Why: a crane terminal's PLCs are polled several times a second, so the Modbus, S7comm and CIP tables hold tens of
millions of reads for every million flows. D7 (unauthorised commands) needs only the few state-changing requests
among them, and D8 (baseline) only each distinct function code and register range per client and server. Scanning
and grouping every read again on every ``quaywatch detect`` would cost more than all other detections together; the
summaries are built once per capture, from that capture's rows only, so the cost is paid at analysis and grows with
new traffic, not with history.

Three tables, each keyed by ``capture_id`` (so re-analysing or removing a capture replaces its summary with its
rows, as for every other table):

- ``ics_command_events``: every state-changing request of every ICS decoder (D7's sources), one row each;
- ``function_code_summary``: per capture, protocol, client, server, server port, transport and function code: the
  count, first and last time and the first :data:`EVIDENCE_ROWS` requests as evidence (D8);
- ``register_range_summary``: per capture, client, server, unit, data table and address interval of Modbus
  requests: the same (D8).

``rollup_captures`` records which captures were summarised, and by which :data:`ROLLUP_VERSION`. A capture missing
there (a store from an older version, rows written by hand) is read from the raw tables, so the detections' answers
never depend on whether a summary exists; the tests check that both paths give the same alerts.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pyarrow as pa

from quaywatch.detect import catalog

if TYPE_CHECKING:
    import duckdb

    from quaywatch.store.database import Store

#: Raise when a summary's definition changes: captures summarised by another version are read raw.
ROLLUP_VERSION = 1
ROLLUP_CAPTURES = "rollup_captures"
COMMAND_EVENTS = "ics_command_events"
FUNCTION_SUMMARY = "function_code_summary"
RANGE_SUMMARY = "register_range_summary"
#: Evidence kept per summary row: as many as D8 shows per alert.
EVIDENCE_ROWS = 10


def _field(name: str, kind: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable, {"doc": doc})


#: One evidence entry: the event's table, capture, packet, flow and Community ID, with the time that orders them.
EVIDENCE_TYPE = pa.struct(
    [
        pa.field(
            "o",
            pa.struct(
                [("ts", pa.timestamp("us", tz="UTC")), ("capture_id", pa.string()), ("packet_number", pa.int64())]
            ),
        ),
        pa.field(
            "e",
            pa.struct(
                [
                    ("source", pa.string()),
                    ("capture_id", pa.string()),
                    ("packet_number", pa.int64()),
                    ("flow_id", pa.string()),
                    ("community_id", pa.string()),
                ]
            ),
        ),
    ]
)

ROLLUP_CAPTURES_SCHEMA = pa.schema(
    [
        _field("capture_id", pa.string(), "the capture summarised", False),
        _field("version", pa.int32(), "ROLLUP_VERSION of the summaries written", False),
        _field("built_at", pa.timestamp("us", tz="UTC"), "when they were written", False),
    ]
)
COMMAND_EVENTS_SCHEMA = pa.schema(
    [
        _field("protocol", pa.string(), "modbus, s7comm, cip, opcua, profinet_dcp, dnp3, iec104 or bacnet", False),
        _field("capture_id", pa.string(), "capture of the request", False),
        _field("flow_id", pa.string(), "flow of the request"),
        _field("community_id", pa.string(), "Community ID of its flow"),
        _field("ts", pa.timestamp("us", tz="UTC"), "time of the request"),
        _field("packet_number", pa.int64(), "packet number within the capture"),
        _field("client", pa.string(), "sender (IP address, or MAC for layer-2 DCP)"),
        _field("server", pa.string(), "target device (IP address, or MAC for layer-2 DCP)"),
        _field("code", pa.int32(), "function code, S7 function, CIP service, type id ..."),
        _field("code_name", pa.string(), "its name as the decoder gave it"),
        _field("baseline_code", pa.string(), "the code as D8's baseline spells it (function_code_summary.code)"),
        _field("unit_id", pa.int16(), "Modbus unit identifier"),
        _field("address", pa.int32(), "Modbus first address written"),
        _field("written", pa.list_(pa.int32()), "Modbus values written, from the first address on"),
        _field("detail", pa.string(), "S7 PI service, block, items; CIP tag; DCP settings; IEC 104 objects ..."),
    ]
)
_SUMMARY_TAIL = [
    _field("count", pa.int64(), "requests in this capture with this key", False),
    _field("first_ts", pa.timestamp("us", tz="UTC"), "first of them", False),
    _field("last_ts", pa.timestamp("us", tz="UTC"), "last of them", False),
    _field("evidence", pa.list_(EVIDENCE_TYPE), f"the first {EVIDENCE_ROWS} of them, in time order"),
]
FUNCTION_SUMMARY_SCHEMA = pa.schema(
    [
        _field("capture_id", pa.string(), "capture summarised", False),
        _field("protocol", pa.string(), "modbus, s7comm, cip, dnp3, iec104 or opcua"),
        _field("client_ip", pa.string(), "client"),
        _field("server_ip", pa.string(), "server"),
        _field("server_port", pa.int32(), "server port"),
        _field("transport", pa.string(), "tcp or udp"),
        _field("code", pa.string(), "function code as in baseline_items.code"),
        _field("code_name", pa.string(), "its name as the decoder gave it"),
        *_SUMMARY_TAIL,
    ]
)
RANGE_SUMMARY_SCHEMA = pa.schema(
    [
        _field("capture_id", pa.string(), "capture summarised", False),
        _field("client_ip", pa.string(), "client"),
        _field("server_ip", pa.string(), "server"),
        _field("unit_id", pa.int32(), "Modbus unit identifier"),
        _field("address_space", pa.string(), "coils, discrete_inputs, holding_registers or input_registers"),
        _field("range_start", pa.int32(), "first address of the request"),
        _field("range_end", pa.int32(), "last address of the request (inclusive)"),
        *_SUMMARY_TAIL,
    ]
)
SCHEMAS = {
    ROLLUP_CAPTURES: ROLLUP_CAPTURES_SCHEMA,
    COMMAND_EVENTS: COMMAND_EVENTS_SCHEMA,
    FUNCTION_SUMMARY: FUNCTION_SUMMARY_SCHEMA,
    RANGE_SUMMARY: RANGE_SUMMARY_SCHEMA,
}

#: The evidence struct of a raw event row (columns source, capture_id, packet_number, flow_id, community_id, ts).
EVIDENCE_SQL = (
    "struct_pack(o := struct_pack(ts := ts, capture_id := capture_id, packet_number := packet_number), "
    "e := struct_pack(source := source, capture_id := capture_id, packet_number := packet_number, "
    "flow_id := flow_id, community_id := community_id))"
)
#: Aggregates of raw event rows into one summary row (count, first/last time, first evidence rows).
SUMMARY_AGGREGATES = (
    f"count(*) AS count, min(ts) AS first_ts, max(ts) AS last_ts, "
    f"min_by({EVIDENCE_SQL}, struct_pack(ts, capture_id, packet_number), {EVIDENCE_ROWS}) AS evidence"
)


def build_rollups(store: Store, capture_id: str, written: set[str] | None = None) -> None:
    """Summarise one capture's rows (after they are flushed); replaces an earlier summary of it.

    ``written``: the tables that received rows of this capture, when the caller knows (the analysis does:
    ``Store.written``, and it removed the capture's earlier rows when it began); only those are read, so a capture
    without ICS traffic costs one row in ``rollup_captures``.
    """
    from quaywatch.detect import baseline, ics_commands

    store.flush()
    con = store.connection
    for name, schema in SCHEMAS.items():
        if name not in store.schemas:
            store.ensure_table(name, schema)
    present = catalog.tables(con)
    if written is None:
        for name in SCHEMAS:
            con.execute(f'DELETE FROM "{name}" WHERE capture_id = ?', [capture_id])
    else:
        present &= written
    commands = ics_commands.command_sources(present)
    if commands:
        con.execute(
            f"INSERT INTO {COMMAND_EVENTS} BY NAME SELECT * FROM ({' UNION ALL '.join(commands)}) "
            "WHERE capture_id = $capture",
            {"capture": capture_id},
        )
    functions = baseline.function_code_sources(con, present)
    if functions:
        con.execute(
            f"""INSERT INTO {FUNCTION_SUMMARY} BY NAME
                SELECT capture_id, protocol, client_ip, server_ip, server_port, transport, code,
                       any_value(code_name) AS code_name, {SUMMARY_AGGREGATES}
                FROM ({" UNION ALL ".join(functions)}) WHERE capture_id = $capture GROUP BY ALL""",
            {"capture": capture_id},
        )
    ranges = baseline.register_sources(con, present)
    if ranges:
        con.execute(
            f"""INSERT INTO {RANGE_SUMMARY} BY NAME
                SELECT capture_id, client_ip, server_ip, unit_id, address_space, range_start, range_end,
                       {SUMMARY_AGGREGATES}
                FROM ({ranges}) WHERE capture_id = $capture GROUP BY ALL""",
            {"capture": capture_id},
        )
    con.execute(
        f"INSERT INTO {ROLLUP_CAPTURES} VALUES (?, ?, ?)", [capture_id, ROLLUP_VERSION, dt.datetime.now(dt.UTC)]
    )  # the capture's tables were all read: tables it wrote nothing to hold none of its rows


def all_captures_rolled(con: duckdb.DuckDBPyConnection, present: set[str]) -> bool:
    """Every registered capture has a current summary. The store registers a capture before any of its rows
    (``Store.begin_capture``), so then no raw row lies outside the summaries."""
    if "captures" not in present or ROLLUP_CAPTURES not in present:
        return False
    rows = con.execute(
        f"SELECT count(*) FROM captures WHERE capture_id NOT IN "
        f"(SELECT capture_id FROM {ROLLUP_CAPTURES} WHERE version = {ROLLUP_VERSION})"
    ).fetchall()  # all, not one: a result read only in part keeps the connection busy for the caller's next query
    return bool(rows) and int(rows[0][0]) == 0


def rolled_captures_sql(present: set[str], until: dt.datetime | None = None) -> str | None:
    """A query of the capture ids whose summaries are current (and, with ``until``, that end before it or start at
    or after it: a capture spanning the end of a learning period is read raw); None when no capture has one."""
    if ROLLUP_CAPTURES not in present:
        return None
    query = f"SELECT capture_id FROM {ROLLUP_CAPTURES} WHERE version = {ROLLUP_VERSION}"
    if until is not None:
        if "captures" not in present:
            return None
        literal = until.astimezone(dt.UTC).isoformat()
        query += (
            f" AND capture_id IN (SELECT capture_id FROM captures WHERE last_ts < TIMESTAMPTZ '{literal}' "
            f"OR first_ts >= TIMESTAMPTZ '{literal}')"
        )
    return query
