"""Analyse capture files end to end: read, decode headers, track flows,
dispatch payloads to decoders and write everything to the store.

Each batch of records goes through the same steps::

    capture file ─▶ CaptureReader ─▶ layers.parse_packets ─▶ FragmentReassembler
        ─▶ FlowTracker.assign ─▶ Dispatcher (decoders) ─▶ Store (DuckDB)

Only the Dispatcher works per packet in Python, and only for the payloads a
decoder asked for.

With two workers (a second core) that Python thread is the critical path and
what can leave it runs beside it, without the GIL: the file's sha256, the
content inspectors' compiled scans and the DuckDB inserts. The stored rows are
the same (tests/test_analysis_workers.py).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from quaywatch import __version__
from quaywatch.decode.base import ANOMALY_TABLE, Decoder
from quaywatch.decode.dispatch import Dispatcher
from quaywatch.decode.registry import all_decoders
from quaywatch.detect.rollups import build_rollups
from quaywatch.flows.records import FLOW_SCHEMA, TRANSPORT_NAMES, address_strings, flows_to_arrow, mac_strings
from quaywatch.flows.tracker import FlowTracker, Timeouts
from quaywatch.ingest import layers
from quaywatch.ingest.capture import CaptureFormatError, CaptureReader, RecordBatch, detect_format
from quaywatch.ingest.fragments import FragmentReassembler
from quaywatch.store.database import ARP_SCHEMA, Store, event_schema

Progress = Callable[[int], None]


@dataclass(slots=True)
class CaptureResult:
    """What happened to one input file."""

    path: Path
    capture_id: str = ""
    status: str = "complete"  # complete, partial, already_analysed, skipped
    packets: int = 0
    bytes: int = 0
    flows: int = 0
    malformed_packets: int = 0
    first_timestamp: int | None = None
    last_timestamp: int | None = None
    fault: str | None = None
    fault_offset: int | None = None
    truncated_tail: bool = False
    transports: Counter[str] = field(default_factory=Counter)
    applications: Counter[str] = field(default_factory=Counter)

    @property
    def needs_attention(self) -> bool:
        """Data was lost in a way the user should look at (not just a cut-off tail)."""
        return self.status == "partial" and not self.truncated_tail


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


SAMPLE_BYTES = 1 << 20

#: The analysis has two kinds of work that can run at once (decoding; inserts and hashing), so more gain nothing.
MAX_WORKERS = 2


def default_workers() -> int:
    """The cores this process may run on (``taskset`` limits them), at most :data:`MAX_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def file_identity(path: Path) -> str:
    """A cheap identity from the size and three 1 MiB samples of the file.

    It keys the capture's rows while the full sha256 is computed during the
    single reading pass. A rerun that matches it is confirmed against the
    stored full sha256 before anything is skipped, so a file edited only
    between the samples is never mistaken for one already analysed.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(size.to_bytes(8, "big"))
    with path.open("rb") as handle:
        for start in (0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)):
            handle.seek(start)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def expand_inputs(paths: Iterable[Path]) -> tuple[list[Path], list[CaptureResult]]:
    """Files to analyse; files inside folders that are not captures are skipped with a note."""
    files: list[Path] = []
    skipped: list[CaptureResult] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
                with candidate.open("rb") as handle:
                    head = handle.read(4)
                if detect_format(head) is None:
                    reason = "empty file" if not head else f"not a pcap or pcapng capture (first bytes {head.hex()})"
                    skipped.append(
                        CaptureResult(
                            candidate, status="skipped", fault=f"{candidate}: byte 0: {reason}", fault_offset=0
                        )
                    )
                else:
                    files.append(candidate)
        else:
            files.append(path)
    return files, skipped


class Analyzer:
    """Analyses captures into one store."""

    def __init__(
        self,
        store: Store,
        decoders: list[Decoder] | None = None,
        timeouts: Timeouts | None = None,
        buffer_bytes: int = 16 << 20,
        workers: int = 1,
    ) -> None:
        self.store = store
        #: Threads the analysis keeps busy: with two, the DuckDB inserts, the file's sha256 and the content
        #: inspectors' compiled scans run beside the parsing and decoding (Store.background_writes, CaptureReader's
        #: background hash, Dispatcher's executor), on a second core; the tables are identical.
        self.workers = workers
        self.decoders = all_decoders() if decoders is None else decoders
        self.timeouts = timeouts
        self.buffer_bytes = buffer_bytes
        store.ensure_core_tables(FLOW_SCHEMA)
        for decoder in self.decoders:
            for name, schema in decoder.tables.items():
                store.ensure_table(name, event_schema(schema))

    def analyze(self, path: Path, progress: Progress | None = None, force: bool = False) -> CaptureResult:
        result = CaptureResult(path)
        try:
            result.capture_id = file_identity(path)
            known = self.store.capture_record(result.capture_id)
            if known is not None and known[0] in ("complete", "partial"):
                full = file_sha256(path)
                if full == known[1] and not force:
                    result.status = "already_analysed"
                    return result
                if full != known[1]:
                    result.capture_id = full  # same samples, different file: key it by its full hash
        except OSError as error:
            result.status = "partial"
            result.fault = f"{path}: byte 0: cannot read: {error.strerror or error}"
            result.fault_offset = 0
            return result
        self.store.begin_capture(result.capture_id, path.name, str(path), path.stat().st_size, __version__)
        reader = CaptureReader(path, buffer_bytes=self.buffer_bytes, background_hash=self.workers > 1)
        with self.store.background_writes() if self.workers > 1 else nullcontext():
            try:
                self._read(reader, result, progress)
            except CaptureFormatError as error:
                result.fault = str(error)
                result.fault_offset = error.offset
        if reader.fault is not None:
            result.fault = str(reader.fault)
            result.fault_offset = reader.fault.offset
            result.truncated_tail = reader.fault.truncated_tail
        result.status = "partial" if result.fault else "complete"
        # The detections' per-capture summaries (detect/rollups.py), from the tables this capture wrote.
        build_rollups(self.store, result.capture_id, self.store.written)
        self.store.finish_capture(
            result.capture_id,
            {
                "sha256": reader.sha256,
                "format": reader.format or None,
                "compressed": reader.compressed,
                "packets": result.packets,
                "bytes": result.bytes,
                "flows": result.flows,
                "malformed_packets": result.malformed_packets,
                "first_ts": _microseconds(result.first_timestamp),
                "last_ts": _microseconds(result.last_timestamp),
                "status": result.status,
                "fault": result.fault,
                "fault_offset": result.fault_offset,
            },
        )
        return result

    def _read(self, reader: CaptureReader, result: CaptureResult, progress: Progress | None) -> None:
        tracker = FlowTracker(self.timeouts, server_ports={p for d in self.decoders for p in d.ports})
        dispatcher = Dispatcher(self.decoders, result.capture_id, workers=self.workers)
        dispatcher.on_full = lambda: self._write_events(dispatcher)
        fragments = FragmentReassembler()
        names = dispatcher.names
        try:
            for batch, packets, tally in (_parse(batch) for batch in reader.batches()):
                original_lengths = batch.original_lengths
                overrides: dict[int, np.ndarray] = {}
                if tally[layers.TALLY_FRAGMENT]:
                    original_lengths = original_lengths.copy()
                    for done in fragments.add_batch(batch.buffer, packets, original_lengths, batch.timestamps):
                        packets[done.index] = done.row
                        original_lengths[done.index] = done.frames_bytes
                        overrides[done.index] = done.buffer
                flow_index, direction = tracker.assign(
                    packets, original_lengths, batch.timestamps, batch.first_packet_number
                )
                dispatcher.dispatch(
                    batch.buffer, packets, batch.timestamps, batch.first_packet_number,
                    flow_index, direction, tracker.flows, overrides,
                )  # fmt: skip
                self._account(result, batch.timestamps, batch.original_lengths, tally)
                if tally[layers.TALLY_MALFORMED] or tally[layers.TALLY_ARP]:
                    self._write_layer_rows(result, packets, batch.timestamps, batch.first_packet_number)
                ended = tracker.ended()
                self._write_flows(result, dispatcher, ended, names)
                if progress is not None:
                    progress(reader.file_position)
        finally:
            ended = tracker.finish()
            self._write_flows(result, dispatcher, ended, names)
            dispatcher.close_all()
            self._write_events(dispatcher)
            incomplete = fragments.abandon()
            if incomplete:
                self._anomalies(
                    result.capture_id,
                    [("ingest", "fragments_incomplete", f"{incomplete} fragmented datagrams never completed")],
                )

    def _account(
        self, result: CaptureResult, timestamps: np.ndarray, original_lengths: np.ndarray, tally: np.ndarray
    ) -> None:
        if timestamps.shape[0] == 0:
            return
        result.packets += int(timestamps.shape[0])
        result.bytes += int(original_lengths.sum(dtype=np.int64))
        low, high = int(timestamps.min()), int(timestamps.max())
        if low <= 0:  # simple packet blocks carry no timestamp
            stamped = timestamps[timestamps > 0]
            low = int(stamped.min()) if stamped.shape[0] else 0
        if high > 0:
            result.first_timestamp = low if result.first_timestamp is None else min(result.first_timestamp, low)
            result.last_timestamp = high if result.last_timestamp is None else max(result.last_timestamp, high)
        for number in np.flatnonzero(tally[:256]).tolist():
            result.transports[TRANSPORT_NAMES.get(number, f"ip-{number}")] += int(tally[number])
        for slot, name in (
            (layers.TALLY_ARP, "arp"),
            (layers.TALLY_OTHER, "other-ethertype"),
            (layers.TALLY_FRAGMENT, "ip-fragment"),
            (layers.TALLY_MALFORMED, "malformed"),
        ):
            if tally[slot]:
                result.transports[name] += int(tally[slot])

    def _write_layer_rows(
        self, result: CaptureResult, packets: np.ndarray, timestamps: np.ndarray, first_number: int
    ) -> None:
        status = packets["status"]
        bad = np.flatnonzero((status != layers.STATUS_OK) & (status != layers.STATUS_FRAGMENT))
        if bad.shape[0]:
            result.malformed_packets += int(bad.shape[0])
            rows = {
                "capture_id": [result.capture_id] * bad.shape[0],
                "ts": (timestamps[bad] // 1000).tolist(),
                "packet_number": (bad + first_number).tolist(),
                "event_type": ["anomaly"] * bad.shape[0],
                "protocol": ["ingest"] * bad.shape[0],
                "code": [f"malformed_{int(s)}" for s in status[bad].tolist()],
                "detail": [layers.STATUS_NAMES.get(int(s), "malformed") for s in status[bad].tolist()],
            }
            self.store.append(ANOMALY_TABLE, pa.table(rows).cast(_subset(self.store.schemas[ANOMALY_TABLE], rows)))
        arp = np.flatnonzero((packets["network"] == layers.L3_ARP) & (status == layers.STATUS_OK))
        if arp.shape[0]:
            rows_arp = packets[arp]
            sender_ip = address_strings(rows_arp["source_high"], rows_arp["source_low"])
            target_ip = address_strings(rows_arp["destination_high"], rows_arp["destination_low"])
            vlan = rows_arp["vlan_outer"]
            target_mac = [m or "00:00:00:00:00:00" for m in mac_strings(rows_arp["arp_target_mac"])]
            columns = {
                "capture_id": [result.capture_id] * arp.shape[0],
                "ts": (timestamps[arp] // 1000).tolist(),
                "packet_number": (arp + first_number).tolist(),
                "event_type": ["arp"] * arp.shape[0],
                "vlan": pa.array(vlan, pa.int32(), mask=vlan < 0),
                "operation": [
                    {1: "request", 2: "reply"}.get(op, f"operation-{op}") for op in rows_arp["arp_operation"].tolist()
                ],
                "source_mac": mac_strings(rows_arp["source_mac"]),
                "sender_mac": mac_strings(rows_arp["arp_sender_mac"]),
                "sender_ip": sender_ip,
                "target_mac": target_mac,
                "target_ip": target_ip,
                "gratuitous": [s == t for s, t in zip(sender_ip, target_ip, strict=True)],
                "kind": [
                    _arp_kind(op, s, t, m)
                    for op, s, t, m in zip(
                        rows_arp["arp_operation"].tolist(), sender_ip, target_ip, target_mac, strict=True
                    )
                ],
            }
            self.store.append("arp", pa.table(columns).cast(_subset(ARP_SCHEMA, columns)))

    def _write_flows(self, result: CaptureResult, dispatcher: Dispatcher, ended: np.ndarray, names: list[str]) -> None:
        dispatcher.close_flows(ended)
        if ended.shape[0]:
            result.flows += int(ended.shape[0])
            decoders = ended["decoder"]
            for index in np.flatnonzero(decoders >= 0).tolist():
                result.applications[names[int(decoders[index])]] += 1
            self.store.append("flows", flows_to_arrow(ended, result.capture_id, names))
        self._write_events(dispatcher)

    def _write_events(self, dispatcher: Dispatcher) -> None:
        for name, rows in dispatcher.take_tables().items():
            self.store.append(name, rows)

    def _anomalies(self, capture_id: str, items: list[tuple[str, str, str]]) -> None:
        rows = {
            "capture_id": [capture_id] * len(items),
            "ts": [0] * len(items),
            "event_type": ["anomaly"] * len(items),
            "protocol": [i[0] for i in items],
            "code": [i[1] for i in items],
            "detail": [i[2] for i in items],
        }
        self.store.append(ANOMALY_TABLE, pa.table(rows).cast(_subset(self.store.schemas[ANOMALY_TABLE], rows)))


_Parsed = tuple[RecordBatch, np.ndarray, np.ndarray]  # a batch, its packet headers and the tally


def _parse(batch: RecordBatch) -> _Parsed:
    packets = np.zeros(batch.count, layers.PACKET_DTYPE)
    tally = layers.parse_packets(batch.buffer, batch.offsets, batch.captured_lengths, batch.link_types, packets)
    return batch, packets, tally


def _arp_kind(operation: int, sender_ip: str, target_ip: str, target_mac: str) -> str:
    """RFC 5227's names: a probe asks from 0.0.0.0 (2.1.1); an announcement asks for its own address with the
    target MAC zero (2.3, as tshark's arp.isannouncement); the older gratuitous request form has another target MAC."""
    if operation == 1:
        if sender_ip == "0.0.0.0":
            return "probe"
        if sender_ip == target_ip:
            return "announcement" if target_mac == "00:00:00:00:00:00" else "gratuitous request"
        return "request"
    if operation == 2:
        return "gratuitous reply" if sender_ip == target_ip else "reply"
    return f"operation-{operation}"


def _subset(schema: pa.Schema, columns: dict[str, object]) -> pa.Schema:
    return pa.schema([schema.field(name) for name in columns])


def _microseconds(nanoseconds: int | None) -> object:
    if nanoseconds is None:
        return None
    import datetime as dt

    return dt.datetime.fromtimestamp(nanoseconds // 1000 / 1e6, dt.UTC)
