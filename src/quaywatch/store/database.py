"""The embedded store: one DuckDB file holding captures, flows and events.

Every row carries the ``capture_id`` (the capture file's sha256). A capture is
registered as ``running`` before its rows are written and marked ``complete``
or ``partial`` afterwards, which gives two guarantees:

* analysing the same file again finds it finished and changes nothing;
* a run that died half way is found ``running``; its rows are deleted and the
  capture is analysed again from the start, so nothing is duplicated.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import pyarrow as pa

from quaywatch.decode.base import ANOMALY_SCHEMA, ANOMALY_TABLE
from quaywatch.threads import give_way

DEFAULT_DATABASE = Path("quaywatch.duckdb")

CAPTURES_SCHEMA = pa.schema(
    [
        pa.field("capture_id", pa.string(), False, {"doc": "identity keying this capture's rows in every table"}),
        pa.field("sha256", pa.string(), True, {"doc": "sha256 of the whole file as stored (compressed if gzip)"}),
        pa.field("name", pa.string(), False, {"doc": "file name"}),
        pa.field("path", pa.string(), False, {"doc": "path given when it was analysed"}),
        pa.field("format", pa.string(), True, {"doc": "pcap or pcapng"}),
        pa.field("compressed", pa.bool_(), True, {"doc": "gzip-compressed file"}),
        pa.field("file_bytes", pa.int64(), False),
        pa.field("packets", pa.int64(), True),
        pa.field("bytes", pa.int64(), True, {"doc": "sum of original frame lengths"}),
        pa.field("flows", pa.int64(), True),
        pa.field("malformed_packets", pa.int64(), True),
        pa.field("first_ts", pa.timestamp("us", tz="UTC"), True),
        pa.field("last_ts", pa.timestamp("us", tz="UTC"), True),
        pa.field("status", pa.string(), False, {"doc": "running, complete or partial"}),
        pa.field("fault", pa.string(), True, {"doc": "why reading stopped early, with the byte offset"}),
        pa.field("fault_offset", pa.int64(), True),
        pa.field("analysed_at", pa.timestamp("us", tz="UTC"), False),
        pa.field("quaywatch_version", pa.string(), False),
    ]
)

#: Columns every event table starts with (the shared envelope).
ENVELOPE_FIELDS = [
    pa.field("capture_id", pa.string(), False, {"doc": "captures.capture_id"}),
    pa.field("ts", pa.timestamp("us", tz="UTC"), False, {"doc": "time of the packet that completed the event"}),
    pa.field("packet_number", pa.int64(), True, {"doc": "1-based packet number in the capture"}),
    pa.field("flow_id", pa.string(), True, {"doc": "flows.flow_id"}),
    pa.field("community_id", pa.string(), True, {"doc": "Community ID v1 of the flow"}),
    pa.field("client_ip", pa.string(), True),
    pa.field("client_port", pa.int32(), True),
    pa.field("server_ip", pa.string(), True),
    pa.field("server_port", pa.int32(), True),
    pa.field("transport", pa.string(), True),
    pa.field("direction", pa.string(), True, {"doc": "to_server or to_client"}),
    pa.field("event_type", pa.string(), False, {"doc": "kind of record within the table"}),
]


def event_schema(fields: pa.Schema) -> pa.Schema:
    """Envelope followed by a decoder's own columns."""
    return pa.schema(ENVELOPE_FIELDS + list(fields))


ARP_SCHEMA = event_schema(
    pa.schema(
        [
            pa.field("vlan", pa.int32(), True),
            pa.field("operation", pa.string(), False, {"doc": "request or reply"}),
            pa.field("source_mac", pa.string(), True, {"doc": "Ethernet source"}),
            pa.field("sender_mac", pa.string(), False),
            pa.field("sender_ip", pa.string(), False),
            pa.field("target_mac", pa.string(), False),
            pa.field("target_ip", pa.string(), False),
            pa.field("gratuitous", pa.bool_(), False, {"doc": "sender announces its own address"}),
            pa.field(
                "kind",
                pa.string(),
                True,
                {
                    "doc": "request, reply, probe (RFC 5227 2.1.1: request from 0.0.0.0), announcement (RFC 5227 "
                    "2.3: request with sender IP = target IP, target MAC zero), gratuitous request (the same with "
                    "another target MAC), gratuitous reply (sender IP = target IP)"
                },
            ),
        ]
    )
)

#: Per IP address, each MAC address that claimed it (ARP sender fields; probes from 0.0.0.0 left out), with first
#: and last time seen and counts: the IP-to-MAC history. Several MACs for one IP is a conflict, a failover or a spoof.
ARP_HISTORY_VIEW = """
CREATE OR REPLACE VIEW arp_history AS
SELECT
    sender_ip AS ip,
    sender_mac AS mac,
    vlan,
    min(ts) AS first_seen,
    max(ts) AS last_seen,
    count(*) AS packets,
    count(*) FILTER (WHERE operation = 'request') AS requests,
    count(*) FILTER (WHERE operation = 'reply') AS replies,
    count(*) FILTER (WHERE gratuitous) AS gratuitous,
    count(DISTINCT capture_id) AS captures,
    count(*) OVER (PARTITION BY sender_ip, vlan) AS macs_for_ip
FROM arp
WHERE sender_ip <> '0.0.0.0'
GROUP BY sender_ip, sender_mac, vlan
ORDER BY
    try_cast(split_part(ip, '.', 1) AS INTEGER), try_cast(split_part(ip, '.', 2) AS INTEGER),
    try_cast(split_part(ip, '.', 3) AS INTEGER), try_cast(split_part(ip, '.', 4) AS INTEGER),
    ip, vlan NULLS FIRST, first_seen, mac
"""


class StoreError(Exception):
    """The database file cannot be opened or written."""


class Store:
    """A DuckDB database file with the quaywatch tables."""

    def __init__(self, path: Path = DEFAULT_DATABASE, threads: int | None = None, read_only: bool = False) -> None:
        self.path = path
        try:
            self.connection = duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as error:
            raise StoreError(f"{path}: cannot open the database: {error}") from error
        if threads:
            self.connection.execute(f"SET threads = {int(threads)}")
        self.schemas: dict[str, pa.Schema] = {}
        self.pending: dict[str, list[pa.Table]] = {}
        self.pending_rows: dict[str, int] = {}
        #: Tables that received rows since the current capture began (begin_capture): what its summaries read.
        self.written: set[str] = set()
        self.writer: _Writer | None = None

    def close(self) -> None:
        self.flush()
        self.connection.close()

    @contextmanager
    def background_writes(self) -> Iterator[None]:
        """Run the INSERTs on a second thread while the caller goes on (DuckDB executes without the GIL).

        Rows reach the tables in the order they were appended, as without it. A failed INSERT is raised as the
        same :class:`StoreError` by the next ``append`` or ``flush`` in the calling thread; leaving the block
        writes every queued row (or raises) and ends the thread.
        """
        if self.writer is not None:
            yield
            return
        # One DuckDB thread meanwhile: the caller keeps the other core busy. The setting is restored afterwards
        # (the capture's summaries are queries that use every thread allowed).
        threads = self.connection.execute("SELECT current_setting('threads')").fetchall()[0]
        self.connection.execute("SET threads = 1")
        self.writer = _Writer(self.connection.cursor(), self.path)
        try:
            yield
            self.flush()
        finally:
            writer, self.writer = self.writer, None
            writer.stop()
            if threads is not None:
                self.connection.execute(f"SET threads = {int(threads[0])}")
        writer.raise_error()

    # -- schema ---------------------------------------------------------------------

    def ensure_table(self, name: str, schema: pa.Schema) -> None:
        """Create ``name`` from an Arrow schema unless it exists."""
        self.schemas[name] = schema
        empty = schema.empty_table()  # noqa: F841  (read by DuckDB's replacement scan)
        self.connection.execute(f'CREATE TABLE IF NOT EXISTS "{name}" AS SELECT * FROM empty LIMIT 0')

    def ensure_core_tables(self, flow_schema: pa.Schema) -> None:
        self.ensure_table("captures", CAPTURES_SCHEMA)
        self.ensure_table("flows", flow_schema)
        self.ensure_table("arp", ARP_SCHEMA)
        # Databases written before the column existed get it, so new rows can be inserted by name.
        self.connection.execute('ALTER TABLE arp ADD COLUMN IF NOT EXISTS "kind" VARCHAR')
        self.connection.execute(ARP_HISTORY_VIEW)
        self.ensure_table(ANOMALY_TABLE, event_schema(ANOMALY_SCHEMA))

    def tables(self) -> list[str]:
        rows = self.connection.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' AND table_type = 'BASE TABLE' ORDER BY 1"
        ).fetchall()
        return [row[0] for row in rows]

    # -- captures -------------------------------------------------------------------

    def capture_record(self, capture_id: str) -> tuple[str, str | None] | None:
        """Status and full sha256 of a capture already registered."""
        self.flush()
        rows = self.connection.execute(
            "SELECT status, sha256 FROM captures WHERE capture_id = ?", [capture_id]
        ).fetchall()
        return None if not rows else (str(rows[0][0]), rows[0][1])

    def begin_capture(self, capture_id: str, name: str, path: str, file_bytes: int, version: str) -> None:
        """Register a capture as running, removing rows of an earlier interrupted run."""
        self.flush()
        if self.capture_record(capture_id) is not None:
            # An earlier run left rows. The captures row is written before any data row (below), so a capture
            # without one has none to remove: skipping the deletes saves about 0.1 s per capture on 70 tables.
            self.remove_capture(capture_id)
        self.written = set()
        self.append(
            "captures",
            pa.Table.from_pylist(
                [
                    {
                        "capture_id": capture_id,
                        "name": name,
                        "path": path,
                        "file_bytes": file_bytes,
                        "status": "running",
                        "analysed_at": dt.datetime.now(dt.UTC),
                        "quaywatch_version": version,
                    }
                ],
                schema=CAPTURES_SCHEMA,
            ),
        )
        self.flush()  # the running row must be on disk before any data row

    def remove_capture(self, capture_id: str) -> None:
        """Delete every row of one capture, in every table that has a capture_id column."""
        self.flush()
        tables = self.connection.execute(
            "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t "
            "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE c.table_schema = 'main' AND t.table_type = 'BASE TABLE' AND c.column_name = 'capture_id' "
            "ORDER BY 1"
        ).fetchall()
        for (table,) in tables:
            self.connection.execute(f'DELETE FROM "{table}" WHERE capture_id = ?', [capture_id])

    def finish_capture(self, capture_id: str, values: dict[str, object]) -> None:
        self.flush()
        assignments = ", ".join(f'"{key}" = ?' for key in values)
        self.connection.execute(
            f"UPDATE captures SET {assignments} WHERE capture_id = ?", [*values.values(), capture_id]
        )

    # -- rows -----------------------------------------------------------------------

    #: Rows gathered per table before one INSERT: each statement has a fixed cost, and DuckDB appends whole row
    #: groups (122,880 rows) at about half the cost of partial ones, so full row groups are written and the rest waits.
    FLUSH_ROWS = 122_880

    def append(self, name: str, rows: pa.Table) -> None:
        """Queue rows for ``name``; they are written in large batches (see :meth:`flush`)."""
        if rows.num_rows == 0:
            return
        self.pending.setdefault(name, []).append(rows)
        if rows.num_rows:
            self.written.add(name)
        self.pending_rows[name] = self.pending_rows.get(name, 0) + rows.num_rows
        if self.pending_rows[name] >= self.FLUSH_ROWS:
            self._write(name, whole_groups=True)

    def flush(self) -> None:
        """Write every queued row."""
        if self.writer is None:
            for name in list(self.pending):
                self._write(name)
            return
        self.writer.wait()  # what was handed over first: each table's rows keep their order
        # The caller would only wait for the rest (every table's last partial row groups, most of a small capture's
        # rows): it writes about half of them itself while the writer does the other half, on two cores.
        loads = [0, 0]
        mine = []
        for name in sorted(self.pending, key=lambda table: -self.pending_rows.get(table, 0)):
            side = 0 if loads[0] <= loads[1] else 1
            loads[side] += self.pending_rows.get(name, 0)
            if side == 0:
                self._write(name)  # to the writer
            else:
                mine.append(name)
        for name in mine:
            batch = self._take(name)
            if batch is not None:
                _insert(self.connection, self.path, name, batch)
        self.writer.wait()

    def _take(self, name: str, whole_groups: bool = False) -> pa.Table | None:
        """The rows queued for ``name`` as one table (only whole row groups with ``whole_groups``), or None."""
        tables = self.pending.pop(name, [])
        self.pending_rows.pop(name, None)
        if not tables:
            return None
        batch = pa.concat_tables(tables, promote_options="permissive")
        if whole_groups:  # write whole row groups only; the rest waits for the next rows
            cut = batch.num_rows - batch.num_rows % self.FLUSH_ROWS
            if cut < batch.num_rows:
                self.pending[name] = [batch.slice(cut)]
                self.pending_rows[name] = batch.num_rows - cut
                batch = batch.slice(0, cut)
        return batch

    def _write(self, name: str, whole_groups: bool = False) -> None:
        batch = self._take(name, whole_groups)
        if batch is None:
            return
        if self.writer is not None:
            self.writer.submit(name, batch)
            return
        _insert(self.connection, self.path, name, batch)

    # -- export ---------------------------------------------------------------------

    def export_parquet(self, directory: Path, tables: Iterable[str] | None = None) -> list[Path]:
        """Write each table to ``directory/<table>.parquet``."""
        self.flush()
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for table in tables or self.tables():
            target = directory / f"{table}.parquet"
            quoted = str(target).replace("'", "''")
            self.connection.execute(f"""COPY "{table}" TO '{quoted}' (FORMAT parquet, COMPRESSION zstd)""")
            written.append(target)
        return written


def _insert(connection: duckdb.DuckDBPyConnection, path: Path, name: str, batch: pa.Table) -> None:
    try:
        connection.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM batch')
    except duckdb.Error as error:
        raise StoreError(f"{path}: cannot write table {name}: {error}") from error


class _Writer:
    """The thread behind :meth:`Store.background_writes`: INSERTs in order from a bounded queue.

    After the first failure it drops what follows (the caller stops at the error, as it would have without the
    thread) and keeps taking items, so the caller never blocks on a full queue; the caller also checks the thread
    is alive while it waits, so a dead writer cannot hang it.
    """

    #: Batches waiting at most (each up to a few row groups): bounds the memory the queue holds.
    DEPTH = 8

    def __init__(self, connection: duckdb.DuckDBPyConnection, path: Path) -> None:
        self.connection = connection
        self.path = path
        self.queue: queue.Queue[tuple[str, pa.Table] | threading.Event | None] = queue.Queue(self.DEPTH)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="quaywatch-store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        give_way()
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                if self.error is None:
                    try:
                        _insert(self.connection, self.path, *item)
                    except BaseException as error:  # handed to the caller's thread
                        self.error = error
        except BaseException as error:  # the thread itself failed: the caller raises it
            self.error = self.error or error
        finally:
            self.connection.close()

    def _put(self, item: tuple[str, pa.Table] | threading.Event | None) -> None:
        while True:
            if not self.thread.is_alive():
                self.raise_error()
                raise StoreError(f"{self.path}: the database writer stopped")
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def submit(self, name: str, batch: pa.Table) -> None:
        self.raise_error()
        self._put((name, batch))

    def wait(self) -> None:
        """Return once every batch submitted so far is written; raise the writer's error if one failed."""
        done = threading.Event()
        self._put(done)
        while not done.wait(0.1):
            if not self.thread.is_alive():
                self.raise_error()
                raise StoreError(f"{self.path}: the database writer stopped")
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            if isinstance(self.error, StoreError):
                raise self.error
            raise StoreError(f"{self.path}: the database writer failed: {self.error!r}") from self.error

    def stop(self) -> None:
        if self.thread.is_alive():
            with suppress(StoreError):
                self._put(None)
            self.thread.join()
