"""Per-capture summaries of the ICS event tables and of the flows, written when a capture is analysed and read by
D7, D8 and D4.

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

The flows get two more (:data:`FLOW_SCHEMAS`): a million flows are a few hundred distinct combinations of both
ends' addresses and MACs, server port, transport and application, and D8 (devices, pairs, protocols) and D4 (the
pairs worth a beaconing test) only count flows per such combination. Grouping the million rows by seven text
columns on every run costs twice as much as summing a per-capture count per integer key:

- ``flow_keys``: the store's dictionary of those combinations, one ``key_id`` each. It has no ``capture_id``: a key
  is added the first time a capture shows it and is never renumbered or removed (re-analysing a capture finds its
  keys already there);
- ``flow_summary``: per capture and key, the flows' count, first and last start time and every start time. The
  times let D8 split a row at a learning end inside its capture, so the flows are never read raw for a capture
  that has a summary (where the ICS summaries read a capture spanning the learning end raw).

(ARP, which D8 groups by sender, was tried the same way and dropped: its 385,000 packets per million flows group
as fast as their per-capture summary adds up.)

``rollup_captures`` records which captures were summarised, and by which :data:`ROLLUP_VERSION`. A capture missing
there (a store from an older version, rows written by hand) is read from the raw tables, so the detections' answers
never depend on whether a summary exists; the tests check that both paths give the same alerts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from quaywatch.detect import catalog

if TYPE_CHECKING:
    import duckdb

    from quaywatch.store.database import Store

#: Raise when a summary's definition changes: captures summarised by another version are read raw.
ROLLUP_VERSION = 2
ROLLUP_CAPTURES = "rollup_captures"
COMMAND_EVENTS = "ics_command_events"
FUNCTION_SUMMARY = "function_code_summary"
RANGE_SUMMARY = "register_range_summary"
FLOW_KEYS = "flow_keys"
FLOW_SUMMARY = "flow_summary"
#: The flow columns a flow key stands for: D8 groups flows by all of them, D4 counts its pairs by four.
FLOW_KEY_COLUMNS = ("client_ip", "client_mac", "server_ip", "server_mac", "server_port", "transport", "application")
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

FLOW_KEYS_SCHEMA = pa.schema(
    [
        _field("key_id", pa.int32(), "the key's number, never changed once given", False),
        *(
            _field(name, pa.int32() if name == "server_port" else pa.string(), f"flows.{name}")
            for name in FLOW_KEY_COLUMNS
        ),
    ]
)
FLOW_SUMMARY_SCHEMA = pa.schema(
    [
        _field("capture_id", pa.string(), "capture summarised", False),
        _field("key_id", pa.int32(), "flow_keys.key_id of these flows' ends, port, transport and application", False),
        _field("count", pa.int64(), "flows in this capture with this key", False),
        _field("first_ts", pa.timestamp("us", tz="UTC"), "first of their start times (flows.ts); NULL if one has none"),
        _field("last_ts", pa.timestamp("us", tz="UTC"), "last of their start times; NULL if one has none"),
        _field(
            "times",
            pa.list_(pa.timestamp("us", tz="UTC")),
            "every one of their start times, in order: splits the row at a learning end inside the capture",
        ),
    ]
)
#: The flow tables, apart from :data:`SCHEMAS` (whose tables a re-analysis clears by capture: flow_keys has none).
FLOW_SCHEMAS = {FLOW_KEYS: FLOW_KEYS_SCHEMA, FLOW_SUMMARY: FLOW_SUMMARY_SCHEMA}
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
    for name, schema in (SCHEMAS | FLOW_SCHEMAS).items():
        if name not in store.schemas:
            store.ensure_table(name, schema)
    present = catalog.tables(con)
    if written is None:
        for name in [*SCHEMAS, FLOW_SUMMARY]:  # never flow_keys: other captures' summaries use its numbers
            con.execute(f'DELETE FROM "{name}" WHERE capture_id = ?', [capture_id])
    else:
        present &= written
    if "flows" in present and {*FLOW_KEY_COLUMNS, "ts"} <= set(catalog.columns(con, "flows")):
        _summarise_flows(con, capture_id)
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


#: A summary row's first or last time, NULL when a flow has none (or time 0, from a pcapng simple packet block):
#: such a row is split by its times, and every other row's span lies inside its capture's.
_STAMPED = "CASE WHEN count(*) FILTER (WHERE ts > TIMESTAMPTZ '1970-01-01 00:00:00+00') = count(*) THEN {}(ts) END"


def _summarise_flows(con: duckdb.DuckDBPyConnection, capture_id: str) -> None:
    """One capture's flows counted per key into ``flow_summary``, after adding the keys ``flow_keys`` lacks.

    New keys are numbered on from the largest number given, in key order, so the numbers depend only on the order
    in which captures are analysed. ``EXCEPT`` and ``IS NOT DISTINCT FROM`` treat NULLs (no MAC, no application)
    as equal, so such a key is found again and never added twice.
    """
    columns = ", ".join(FLOW_KEY_COLUMNS)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE rollup_flow_groups AS
            SELECT {columns}, count(*) AS count, {_STAMPED.format("min")} AS first_ts,
                   {_STAMPED.format("max")} AS last_ts, list(ts ORDER BY ts) AS times
            FROM flows WHERE capture_id = $capture GROUP BY ALL""",
        {"capture": capture_id},
    )
    try:
        con.execute(
            f"""INSERT INTO {FLOW_KEYS} BY NAME
                SELECT CAST((SELECT coalesce(max(key_id), 0) FROM {FLOW_KEYS})
                            + row_number() OVER (ORDER BY {columns}) AS INTEGER) AS key_id, *
                FROM (SELECT {columns} FROM rollup_flow_groups EXCEPT SELECT {columns} FROM {FLOW_KEYS})"""
        )
        same = " AND ".join(f"g.{name} IS NOT DISTINCT FROM k.{name}" for name in FLOW_KEY_COLUMNS)
        con.execute(
            f"""INSERT INTO {FLOW_SUMMARY} BY NAME
                SELECT $capture AS capture_id, k.key_id, g.count, g.first_ts, g.last_ts, g.times
                FROM rollup_flow_groups AS g JOIN {FLOW_KEYS} AS k ON {same}""",
            {"capture": capture_id},
        )
    finally:
        con.execute("DROP TABLE IF EXISTS rollup_flow_groups")


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


#: Up to this many captures read raw are named as constants, with their time spans, which lets DuckDB skip the
#: other row groups.
_LISTED_CAPTURES = 64
#: Rows of packets without a timestamp (pcapng simple packet blocks) carry none or time 0, outside the capture's span.
_UNSTAMPED = "ts IS NULL OR ts <= TIMESTAMPTZ '1970-01-01 00:00:00+00'"


def _timestamp_literal(value: dt.datetime) -> str:
    return f"TIMESTAMPTZ '{value.astimezone(dt.UTC).isoformat()}'"


def raw_filter(con: duckdb.DuckDBPyConnection, present: set[str], rolled: str | None) -> str | None:
    """Which raw rows to summarise: all without summaries; else those of the captures outside ``rolled``
    (:func:`rolled_captures_sql`, which for a learning end leaves out the captures spanning it), named, when few,
    with their spans: each capture's rows lie together and inside its span, so the time zone maps skip the rest,
    where capture ids, which share long prefixes, cannot; None when there are none.

    The span condition changes no result: a capture's ``first_ts`` and ``last_ts`` are its first and last packet
    times, which bound every row's time but those of packets without one; the summaries' learned flags rely on it
    too."""
    if rolled is None:
        return "true"
    return _raw_filter_of(rolled, _unrolled_captures(con, present, rolled))


def _unrolled_captures(con: duckdb.DuckDBPyConnection, present: set[str], rolled: str) -> list[tuple[Any, ...]] | None:
    """The captures outside ``rolled`` (id, first and last time; at most one more than :data:`_LISTED_CAPTURES`),
    when every capture has a current summary; None when some has none (then they are many, or unknown)."""
    if not all_captures_rolled(con, present):
        return None
    return con.execute(
        f"SELECT capture_id, first_ts, last_ts FROM captures WHERE capture_id NOT IN ({rolled}) "
        f"LIMIT {_LISTED_CAPTURES + 1}"
    ).fetchall()


def _raw_filter_of(rolled: str, rows: list[tuple[Any, ...]] | None) -> str | None:
    if rows is None or len(rows) > _LISTED_CAPTURES:
        return f"capture_id NOT IN ({rolled})"
    if not rows:
        return None
    listed = "capture_id IN (" + ", ".join(_quoted(row[0]) for row in rows) + ")"
    if any(first is None or last is None for _, first, last in rows):
        return listed
    spans = " OR ".join(
        f"ts BETWEEN {_timestamp_literal(first)} AND {_timestamp_literal(last)}" for _, first, last in rows
    )
    return f"{listed} AND ({_UNSTAMPED} OR {spans})"


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which captures a detection reads from their summaries and which raw, for one learning end (or none).

    Worked out once per run (:func:`coverage`) rather than by every query that reads a summary: each answer costs
    two small queries of the captures.
    """

    #: A query of the summarised capture ids (:func:`rolled_captures_sql`), None when no capture has a summary.
    rolled: str | None
    #: With every capture summarised: the few that are not (spanning the learning end), else None.
    unrolled: list[tuple[Any, ...]] | None

    def raw_filter(self) -> str | None:
        """As :func:`raw_filter`."""
        return "true" if self.rolled is None else _raw_filter_of(self.rolled, self.unrolled)

    def summary_filter(self) -> str:
        """Which summary rows to read: those of the summarised captures; named as all but the few others when every
        capture is summarised but those (reading each summary row's long capture id against the summarised ones
        costs more than the sums)."""
        if self.unrolled is None or len(self.unrolled) > _LISTED_CAPTURES:
            return f"capture_id IN ({self.rolled})"
        if not self.unrolled:
            return "true"
        return "capture_id NOT IN (" + ", ".join(_quoted(row[0]) for row in self.unrolled) + ")"


def coverage(con: duckdb.DuckDBPyConnection, present: set[str], until: dt.datetime | None = None) -> Coverage:
    """Which captures to read from their summaries and which raw, for ``until`` (see :class:`Coverage`)."""
    rolled = rolled_captures_sql(present, until)
    return Coverage(rolled, None if rolled is None else _unrolled_captures(con, present, rolled))


def _quoted(text: Any) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _straddling(con: duckdb.DuckDBPyConnection, present: set[str], until: dt.datetime) -> tuple[str, str]:
    """The flow summary rows that :func:`flow_groups_sql` splits by their times, as two conditions (each a scan
    that DuckDB filters as it reads, where one condition with OR is tested row by row): those without a span (a
    flow without a time) and those whose span contains ``until``.

    The latter lie in a capture spanning ``until``, so their first time is at least that capture's first: bounds
    on both sides of one column skip the other rows' times as they are read (the upper bound alone leaves a fifth
    of them). Without every summarised capture's span (a capture not finished, a row removed by hand) there is no
    lower bound."""
    end = _timestamp_literal(until)
    lower = ""
    if "captures" in present:
        start, unbounded = con.execute(
            f"""SELECT min(first_ts) FILTER (WHERE first_ts < {end} AND last_ts >= {end}),
                       count(*) FILTER (WHERE first_ts IS NULL OR last_ts IS NULL)
                       + (SELECT count(*) FROM {ROLLUP_CAPTURES}
                          WHERE capture_id NOT IN (SELECT capture_id FROM captures))
                FROM captures"""
        ).fetchall()[0]
        if not unbounded:  # no capture spanning ``until``: no row straddles it, the range is empty
            lower = f"first_ts >= {_timestamp_literal(start or until)} AND "
    return "first_ts IS NULL", f"{lower}first_ts < {end} AND last_ts >= {end}"


def flow_groups_sql(
    con: duckdb.DuckDBPyConnection,
    present: set[str],
    until: dt.datetime | None = None,
    keys: tuple[str, ...] = FLOW_KEY_COLUMNS,
) -> str:
    """A query of the flows counted per ``keys`` (some of :data:`FLOW_KEY_COLUMNS`), with, given ``until``, their
    side of it: the columns ``keys``, ``learned`` (with ``until``), ``count``, ``first_ts`` and ``last_ts`` of the
    flows' start times.

    Captures with a current summary are added up from ``flow_summary``: a summary row wholly on one side of
    ``until`` counts as it is, the few that straddle it (of the capture spanning it) and those with a flow
    without a time are split by their ``times``. Other captures are grouped from their raw flows, as before the
    summaries existed. A key may have several rows, so callers add the rows up again: they are a few per key,
    not one per flow.
    """
    columns = ", ".join(keys)
    current = rolled_captures_sql(present) if {FLOW_KEYS, FLOW_SUMMARY} <= present else None
    if current is None:
        raw: str | None = "true"
        parts = []
    else:
        every = all_captures_rolled(con, present)
        wanted = "true" if every else f"capture_id IN ({current})"
        raw = None if every else raw_filter(con, present, current)
        totals = "CAST(sum(count) AS BIGINT) AS count, min(first_ts) AS first_ts, max(last_ts) AS last_ts"
        if until is None:  # a row with a flow without a time has no span: its times give the first and last
            counts = f"""SELECT key_id, {totals} FROM {FLOW_SUMMARY} WHERE {wanted} AND first_ts IS NOT NULL
                         GROUP BY ALL
                         UNION ALL
                         SELECT key_id, count(*) AS count, min(ts) AS first_ts, max(ts) AS last_ts
                         FROM (SELECT key_id, unnest(times) AS ts FROM {FLOW_SUMMARY}
                               WHERE {wanted} AND first_ts IS NULL)
                         GROUP BY ALL"""
        else:
            end = _timestamp_literal(until)
            whole = f"first_ts IS NOT NULL AND (last_ts < {end} OR first_ts >= {end})"
            split = " UNION ALL ".join(
                f"SELECT key_id, unnest(times) AS ts FROM {FLOW_SUMMARY} WHERE {wanted} AND {condition}"
                for condition in _straddling(con, present, until)
            )
            counts = f"""SELECT key_id, last_ts < {end} AS learned, {totals}
                         FROM {FLOW_SUMMARY} WHERE {wanted} AND {whole} GROUP BY ALL
                         UNION ALL
                         SELECT key_id, ts < {end} AS learned, count(*) AS count, min(ts) AS first_ts,
                                max(ts) AS last_ts
                         FROM ({split}) GROUP BY ALL"""
        learned = "" if until is None else "learned, "
        parts = [f"SELECT {columns}, {learned}count, first_ts, last_ts FROM ({counts}) JOIN {FLOW_KEYS} USING (key_id)"]
    if raw is not None:  # None when every capture has a summary
        side = "" if until is None else f"ts < {_timestamp_literal(until)} AS learned, "
        parts.append(
            f"""SELECT {columns}, {side}count(*) AS count, min(ts) AS first_ts, max(ts) AS last_ts
                FROM flows WHERE {raw} GROUP BY ALL"""
        )
    return " UNION ALL ".join(parts)
