"""Hands payloads to decoder sessions and collects their events.

Only packets of flows that a decoder claimed (or that are still waiting for
their first probe) reach Python; everything else is filtered out with
vectorised masks over the batch columns.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from quaywatch.decode.base import (
    ANOMALY_SCHEMA,
    ANOMALY_TABLE,
    DatagramRows,
    Decoder,
    Direction,
    Event,
    Fold,
    Session,
    anomaly,
)
from quaywatch.decode.segments import in_order_prefix
from quaywatch.flows import table
from quaywatch.flows.community_id import community_id
from quaywatch.flows.reassembly import StreamData, StreamGap, StreamReassembler
from quaywatch.flows.records import TRANSPORT_NAMES, address_bytes, address_strings, mac_strings
from quaywatch.ingest import layers
from quaywatch.store.database import event_schema
from quaywatch.threads import give_way

log = logging.getLogger(__name__)

DIRECTION_NAMES = ("to_server", "to_client")
SIDES = (Direction.TO_SERVER, Direction.TO_CLIENT)
#: Payloads per direction offered to the probes before a flow is left undecoded. More than one,
#: because a capture may start mid-message or a peer may send one malformed message first.
PROBES_PER_DIRECTION = 3


@dataclass(slots=True)
class _FlowSession:
    decoder: int
    session: Session
    envelope: dict[str, object]
    streams: tuple[StreamReassembler, StreamReassembler] | None
    uid: int = -1
    envelopes: tuple[dict[str, object], dict[str, object]] = ({}, {})  # with the direction filled in

    def __post_init__(self) -> None:
        self.envelopes = tuple({**self.envelope, "direction": name} for name in DIRECTION_NAMES)  # type: ignore[assignment]


@dataclass(slots=True)
class EventBuffer:
    """Rows waiting to be written, per table."""

    rows: dict[str, list[dict[str, object]]] = field(default_factory=lambda: defaultdict(list))
    #: Rows that arrived as Arrow tables already (vectorised datagram decoding).
    tables: dict[str, list[pa.Table]] = field(default_factory=lambda: defaultdict(list))
    count: int = 0

    def add(self, envelope: dict[str, object], event: Event, timestamp: int, packet_number: int | None) -> None:
        row = dict(envelope)
        row.update(event.fields)
        row["ts"] = timestamp // 1000
        row["packet_number"] = packet_number
        row["event_type"] = event.event_type
        self.rows[event.table].append(row)
        self.count += 1


class Dispatcher:
    """Decoder sessions for the flows of one capture."""

    #: Events held as Python rows before they are handed on as Arrow tables: bounds memory.
    EVENT_FLUSH = 20_000
    #: Whether decoders' vectorised datagram paths are used (tests turn it off to compare both paths).
    VECTORISED = True

    def __init__(
        self,
        decoders: list[Decoder],
        capture_id: str,
        on_full: Callable[[], None] | None = None,
        workers: int = 1,
    ) -> None:
        self.on_full = on_full
        #: With a second worker, content inspectors' compiled scans (``scan``, GIL-free) run on this thread while
        #: the sessions decode the same batch; their matches are added at the end of the batch either way.
        self.executor = (
            ThreadPoolExecutor(1, thread_name_prefix="quaywatch-inspect", initializer=give_way) if workers > 1 else None
        )
        self.pending_content: list[tuple[Any, ...]] = []
        self.decoders = decoders
        self.capture_id = capture_id
        self.schemas: dict[str, pa.Schema] = {ANOMALY_TABLE: event_schema(ANOMALY_SCHEMA)}
        for decoder in decoders:
            for name, schema in decoder.tables.items():
                self.schemas[name] = event_schema(schema)
        self.stream_decoders = [i for i, d in enumerate(decoders) if d.transport == "tcp"]
        self.datagram_decoders = [i for i, d in enumerate(decoders) if d.transport == "udp"]
        self.frame_decoders = [i for i, d in enumerate(decoders) if d.transport == "ethernet"]
        self.content_decoders = [i for i, d in enumerate(decoders) if d.transport == "content"]
        from quaywatch.decode.cargo import ENCRYPTED

        #: Flow decoder states whose payloads content inspectors skip: ciphertext.
        self.encrypted_states = np.array([i for i, d in enumerate(decoders) if d.name in ENCRYPTED] or [-2], np.int64)
        self.content_envelopes: dict[int, dict[str, object]] = {}
        self.batch_decoders = np.array(
            [
                i
                for i, d in enumerate(decoders)
                if d.transport == "udp" and type(d).decode_datagrams is not Decoder.decode_datagrams
            ]
            or [-1],
            np.int64,
        )
        #: TCP decoders with a vectorised path for whole PDUs per in-order segment (polled protocols).
        self.segment_decoders = np.array(
            [
                i
                for i, d in enumerate(decoders)
                if d.transport == "tcp" and type(d).decode_segments is not Decoder.decode_segments
            ]
            or [-1],
            np.int64,
        )
        self.ether_types = np.array(
            sorted({t for i in self.frame_decoders for t in decoders[i].ethertypes}) or [-1], np.int64
        )
        #: Tables whose events are folded before they are stored (decode/base.Fold), and this batch's records:
        #: column-wise from vectorised paths, one by one from sessions.
        self.folds: dict[str, Fold] = {}
        for decoder in decoders:
            for name, fold in decoder.folds.items():
                self.folds.setdefault(name, fold())
        self.fold_parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, pa.Array]]]] = defaultdict(
            list
        )
        self.fold_events: dict[str, list[tuple[int, int, int, dict[str, object]]]] = defaultdict(list)
        self.sessions: dict[int, _FlowSession] = {}
        self.frame_sessions: dict[tuple[int, int], Session] = {}
        self.buffer = EventBuffer()
        self.claimed: dict[str, int] = defaultdict(int)

    @property
    def names(self) -> list[str]:
        return [decoder.name for decoder in self.decoders]

    # -- per batch ------------------------------------------------------------------

    def dispatch(
        self,
        buffer: np.ndarray,
        packets: np.ndarray,
        timestamps: np.ndarray,
        first_packet_number: int,
        flow_index: np.ndarray,
        direction: np.ndarray,
        flows: np.ndarray,
        overrides: dict[int, np.ndarray],
    ) -> None:
        """Feed this batch's wanted payloads to their sessions."""
        try:
            self._dispatch(buffer, packets, timestamps, first_packet_number, flow_index, direction, flows, overrides)
        finally:  # the batch's buffer is valid only until the next batch: no scan may outlive this call
            self._finish_content()
        if self.fold_parts or self.fold_events:
            self._fold_batch()

    def _dispatch(
        self,
        buffer: np.ndarray,
        packets: np.ndarray,
        timestamps: np.ndarray,
        first_packet_number: int,
        flow_index: np.ndarray,
        direction: np.ndarray,
        flows: np.ndarray,
        overrides: dict[int, np.ndarray],
    ) -> None:
        if not self.decoders:
            return
        if self.frame_decoders:
            self._frames(buffer, packets, timestamps, first_packet_number)
        has_payload = (flow_index >= 0) & (packets["payload_captured"] > 0)
        candidates = np.flatnonzero(has_payload)
        if candidates.shape[0] == 0:
            return
        decoder_column = flows["decoder"]
        rows = flow_index[candidates]
        states = decoder_column[rows]
        # Offer each direction's first PROBES_PER_DIRECTION payloads to the probes (vectorised selection).
        sides = direction[candidates].astype(np.int64)
        offered = (flows["probes"][rows].astype(np.int64) >> (4 * sides)) & 0xF
        waiting = np.flatnonzero((states == table.DECODER_UNPROBED) & (offered < PROBES_PER_DIRECTION))
        claimed_from: dict[int, int] = {}
        if waiting.shape[0]:
            keys = rows[waiting] * 2 + sides[waiting]
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            group_start = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            rank = np.arange(order.shape[0]) - np.repeat(group_start, np.diff(np.r_[group_start, order.shape[0]]))
            chosen = waiting[order[rank < PROBES_PER_DIRECTION - offered[waiting][order]]]
            for index in np.sort(candidates[chosen]).tolist():
                row_index = int(flow_index[index])
                if int(decoder_column[row_index]) != table.DECODER_UNPROBED:
                    continue
                state = self._probe(
                    flows[row_index], self._payload(buffer, overrides, packets, index), Direction(int(direction[index]))
                )
                decoder_column[row_index] = state
                if state >= 0:
                    claimed_from[row_index] = index
            states = decoder_column[rows]
        if self.content_decoders:  # after probing, so a flow just found to be TLS is not scanned
            self._inspect(
                buffer, overrides, packets, candidates, rows, direction, timestamps, first_packet_number, flows
            )
        deliver = candidates[states >= 0]
        if deliver.shape[0] == 0:
            return
        if claimed_from:  # payloads before the one that identified the protocol are not decoded
            first = np.full(flows.shape[0], -1, np.int64)
            first[np.fromiter(claimed_from.keys(), np.int64)] = np.fromiter(claimed_from.values(), np.int64)
            deliver = deliver[deliver >= first[flow_index[deliver]]]
        batched = self._datagram_batches(buffer, overrides, deliver, packets[deliver], flow_index, direction,
                                         timestamps, first_packet_number, flows)  # fmt: skip
        if batched is not None:  # decoded already, column-wise: the per-packet loop skips them without a look
            deliver = deliver[~batched]
        segmented = self._segment_batches(buffer, overrides, deliver, packets[deliver], flow_index, direction,
                                          timestamps, first_packet_number, flows)  # fmt: skip
        if segmented is not None:
            deliver = deliver[~segmented]
        if deliver.shape[0] == 0:
            return
        # Pull every column the loop needs into Python lists at once: numpy scalar access per packet is slow.
        chosen = packets[deliver]
        memory = memoryview(buffer)  # type: ignore[arg-type]
        columns = zip(
            deliver.tolist(),
            flows["uid"][flow_index[deliver]].tolist(),
            direction[deliver].tolist(),
            timestamps[deliver].tolist(),
            chosen["payload_offset"].tolist(),
            chosen["payload_captured"].tolist(),
            chosen["payload_length"].tolist(),
            chosen["sequence"].tolist(),
            chosen["acknowledgement"].tolist(),
            chosen["tcp_flags"].tolist(),
            strict=True,
        )
        sessions = self.sessions
        for index, uid, side_number, timestamp, start, captured, declared, sequence, ack, flags in columns:
            flow_session = sessions.get(uid)
            if flow_session is None:
                continue
            source = memory if index not in overrides else memoryview(overrides[index])  # type: ignore[arg-type]
            payload = bytes(source[start : start + captured])
            side = SIDES[side_number]
            packet_number = first_packet_number + index
            if flow_session.streams is not None:
                stream = flow_session.streams[side]
                if flags & 0x10:  # this side's ACK may reveal a hole in the other stream
                    other = SIDES[1 - side_number]
                    for piece in flow_session.streams[other].acknowledged(ack):
                        self._deliver(flow_session, piece, other, timestamp, packet_number)
                pieces = stream.segment(sequence, payload)
                if declared > captured:  # the snap length cut this segment: the rest is a gap, now
                    pieces += stream.missing(sequence + captured, declared - captured)
                for piece in pieces:
                    self._deliver(flow_session, piece, side, timestamp, packet_number)
            else:
                self._feed(flow_session, payload, side, timestamp, packet_number)
            if self.buffer.count >= self.EVENT_FLUSH and self.on_full is not None:
                self.on_full()

    def _datagram_batches(
        self,
        buffer: np.ndarray,
        overrides: dict[int, np.ndarray],
        deliver: np.ndarray,
        chosen: np.ndarray,
        flow_index: np.ndarray,
        direction: np.ndarray,
        timestamps: np.ndarray,
        first_packet_number: int,
        flows: np.ndarray,
    ) -> np.ndarray | None:
        """Datagrams of decoders with a vectorised path, decoded in one call each; a mask over ``deliver``."""
        if not self.VECTORISED or self.batch_decoders[0] < 0:
            return None
        rows = flow_index[deliver]
        owners = flows["decoder"][rows].astype(np.int64)
        wanted = np.isin(owners, self.batch_decoders)  # UDP decoders only, so datagrams only
        if overrides:
            wanted &= ~np.isin(deliver, np.fromiter(overrides, np.int64, len(overrides)))
        if not wanted.any():
            return None
        done = np.zeros(deliver.shape[0], np.bool_)
        for decoder_index in np.unique(owners[wanted]).tolist():
            mine = np.flatnonzero(wanted & (owners == decoder_index))
            decoder = self.decoders[decoder_index]
            try:
                result = decoder.decode_datagrams(
                    buffer, chosen["payload_offset"][mine], chosen["payload_captured"][mine]
                )
            except Exception as error:  # a decoder must not raise; its sessions take the datagrams instead
                log.warning("vectorised path of %s raised %r", decoder.name, error)
                continue
            if result is None or not result.handled.any():
                continue
            picked = mine[result.handled]
            self._add_rows(result, deliver[picked], rows[picked], direction[deliver[picked]],
                           timestamps[deliver[picked]], first_packet_number, flows)  # fmt: skip
            done[picked] = True
        if self.buffer.count >= self.EVENT_FLUSH and self.on_full is not None:
            self.on_full()
        return done

    def _segment_batches(
        self,
        buffer: np.ndarray,
        overrides: dict[int, np.ndarray],
        deliver: np.ndarray,
        chosen: np.ndarray,
        flow_index: np.ndarray,
        direction: np.ndarray,
        timestamps: np.ndarray,
        first_packet_number: int,
        flows: np.ndarray,
    ) -> np.ndarray | None:
        """Each flow's in-order prefix of whole-PDU segments, decoded column-wise (decode/segments.py); a mask."""
        if not self.VECTORISED or self.segment_decoders[0] < 0 or deliver.shape[0] == 0:
            return None
        rows = flow_index[deliver]
        owners = flows["decoder"][rows].astype(np.int64)
        wanted = np.isin(owners, self.segment_decoders)
        if not wanted.any():
            return None
        done = np.zeros(deliver.shape[0], np.bool_)
        for decoder_index in np.unique(owners[wanted]).tolist():
            mine = np.flatnonzero(wanted & (owners == decoder_index))
            decoder = self.decoders[decoder_index]
            distinct, slots = np.unique(flows["uid"][rows[mine]], return_inverse=True)
            slots = slots.astype(np.int64)
            # A flow qualifies while its session has no partial message and neither stream holds a hole.
            sessions: list[_FlowSession | None] = []
            next_sequence = np.full((distinct.shape[0], 2), -1, np.int64)
            for slot, uid in enumerate(distinct.tolist()):
                flow_session = self.sessions.get(uid)
                streams = flow_session.streams if flow_session is not None else None
                if (
                    flow_session is None
                    or streams is None
                    or streams[0].pending
                    or streams[1].pending
                    or not flow_session.session.idle()
                ):
                    sessions.append(None)
                    continue
                sessions.append(flow_session)
                for side in (0, 1):
                    known = streams[side].next_sequence
                    if known is not None:
                        next_sequence[slot, side] = known
            starts = chosen["payload_offset"][mine]
            lengths = chosen["payload_captured"][mine].astype(np.int64)
            sides = direction[deliver[mine]].astype(np.int64)
            try:
                accepted = np.asarray(decoder.segment_shapes(buffer, starts, lengths, sides), np.bool_)
            except Exception as error:  # a decoder must not raise; its sessions take the segments instead
                log.warning("segment shapes of %s raised %r", decoder.name, error)
                continue
            accepted &= chosen["payload_length"][mine] == chosen["payload_captured"][mine]
            if overrides:  # reassembled IP fragments live outside the batch buffer
                accepted &= ~np.isin(deliver[mine], np.fromiter(overrides, np.int64, len(overrides)))
            before = next_sequence.copy()
            fast = in_order_prefix(slots, sides, chosen["sequence"][mine].astype(np.int64), lengths, accepted,
                                   next_sequence)  # fmt: skip
            if not fast.any():
                continue
            picked = mine[fast]
            picked_slots = slots[fast]
            owners_of = [sessions[slot].session for slot in picked_slots.tolist()]
            try:
                results = decoder.decode_segments(
                    buffer, starts[fast], lengths[fast], sides[fast], timestamps[deliver[picked]], owners_of
                )
            except Exception as error:  # the contract says decoders never raise; the sessions take over
                log.warning("vectorised segments of %s raised %r", decoder.name, error)
                continue
            for positions, result in results:
                where = picked[positions]
                self._add_rows(result, deliver[where], rows[where], direction[deliver[where]],
                               timestamps[deliver[where]], first_packet_number, flows)  # fmt: skip
            moved = np.bincount(picked_slots * 2 + sides[fast], weights=lengths[fast], minlength=2 * len(sessions))
            for key in np.flatnonzero(moved).tolist():
                slot, side = key >> 1, key & 1
                streams = sessions[slot].streams  # type: ignore[union-attr]
                assert streams is not None and before[slot, side] >= 0
                streams[side].advance(int(next_sequence[slot, side]), int(moved[key]))
            done[picked] = True
        if self.buffer.count >= self.EVENT_FLUSH and self.on_full is not None:
            self.on_full()
        return done

    def _add_rows(
        self,
        result: DatagramRows,
        indices: np.ndarray,
        rows: np.ndarray,
        sides: np.ndarray,
        timestamps: np.ndarray,
        first_packet_number: int,
        flows: np.ndarray,
    ) -> None:
        """The envelope for vectorised rows: per distinct flow and direction, then spread by index."""
        keys = flows["uid"][rows].astype(np.int64) * 2 + sides.astype(np.int64)
        numbers = indices.astype(np.int64) + first_packet_number
        if result.table in self.folds:  # folded at the end of the batch, in packet order with the sessions' records
            self.fold_parts[result.table].append((keys, timestamps, numbers, result.columns))
            return
        self._add_columns(result.table, result.event_type, keys, timestamps, numbers, result.columns)

    def _add_columns(
        self,
        table_name: str,
        event_type: str,
        keys: np.ndarray,
        timestamps: np.ndarray,
        numbers: np.ndarray,
        own: dict[str, pa.Array],
    ) -> None:
        """Rows of table ``table_name`` from columns, with the envelope of each row's flow and direction (``keys``)."""
        schema = self.schemas[table_name]
        count = keys.shape[0]
        if count == 0:
            return
        distinct, inverse = np.unique(keys, return_inverse=True)
        envelopes = [self.sessions[int(key) >> 1].envelopes[int(key) & 1] for key in distinct.tolist()]
        spread = pa.array(inverse.reshape(-1).astype(np.int32))
        columns: dict[str, pa.Array] = dict(own)
        for name in ("capture_id", "flow_id", "community_id", "client_ip", "client_port", "server_ip",
                     "server_port", "transport", "direction"):  # fmt: skip
            values = pa.array([envelope.get(name) for envelope in envelopes], schema.field(name).type)
            columns[name] = values.take(spread)
        columns["ts"] = pa.array(timestamps.astype(np.int64) // 1000, pa.int64()).cast(schema.field("ts").type)
        columns["packet_number"] = pa.array(numbers, pa.int64())
        columns["event_type"] = pa.array([event_type] * count, pa.string())
        arrays = [columns.get(f.name, pa.nulls(count, f.type)).cast(f.type) for f in schema]
        self.buffer.tables[table_name].append(pa.Table.from_arrays(arrays, schema=schema))
        self.buffer.count += count

    def _fold_batch(self) -> None:
        """This batch's records of folded tables, vectorised and from sessions, in packet order to their folds."""
        for name in self.fold_parts.keys() | self.fold_events.keys():
            fold = self.folds[name]
            parts = self.fold_parts.pop(name, [])
            events = self.fold_events.pop(name, [])
            if events:
                keys, stamps, numbers, fields = zip(*events, strict=True)
                table_of_events = pa.Table.from_pylist(list(fields), schema=fold.records)
                parts.append((
                    np.array(keys, np.int64), np.array(stamps, np.int64), np.array(numbers, np.int64),
                    {column: table_of_events.column(column).combine_chunks() for column in fold.records.names},
                ))  # fmt: skip
            keys_all = np.concatenate([part[0] for part in parts])
            order = np.argsort(np.concatenate([part[2] for part in parts]), kind="stable")
            columns = {
                column: _concatenated([part[3][column] for part in parts], fold.records.field(column).type)
                for column in fold.records.names
            }
            if len(parts) > 1 or not np.array_equal(order, np.arange(order.shape[0])):
                taken = pa.array(order)
                columns = {column: values.take(taken) for column, values in columns.items()}
            self._add_folded(
                fold,
                fold.add(
                    keys_all[order],
                    np.concatenate([part[1] for part in parts])[order],
                    np.concatenate([part[2] for part in parts])[order],
                    columns,
                ),
            )
        self.fold_parts.clear()
        self.fold_events.clear()

    def _add_folded(self, fold: Fold, rows: tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, pa.Array]]) -> None:
        keys, timestamps, numbers, columns = rows
        self._add_columns(fold.table, fold.event_type, keys, timestamps, numbers, columns)

    @staticmethod
    def _payload(buffer: np.ndarray, overrides: dict[int, np.ndarray], packets: np.ndarray, index: int) -> bytes:
        row = packets[index]
        start = int(row["payload_offset"])
        return bytes(overrides.get(index, buffer)[start : start + int(row["payload_captured"])])

    def _probe(self, flow_row: np.void, payload: bytes, side: Direction) -> int:
        """Offer the first payload of each direction to the decoders; content decides."""
        transport = int(flow_row["transport"])
        server_port = int(flow_row["server_port"])
        if transport == 6:
            pool = self.stream_decoders
        elif transport == 17:
            pool = self.datagram_decoders
        else:
            return table.DECODER_NONE
        probed = int(flow_row["probes"])
        shift = 4 * int(side)
        if (probed >> shift) & 0xF >= PROBES_PER_DIRECTION:
            return table.DECODER_UNPROBED  # this direction had its chances; wait for the other one
        # Decoders whose well-known port matches go first.
        ordered = [i for i in pool if server_port in self.decoders[i].ports]
        ordered += [i for i in pool if i not in ordered]
        for index in ordered:
            try:
                matched = self.decoders[index].probe(payload, side, server_port)
            except Exception as error:  # a probe must not raise; keep going and record it
                log.warning("probe of %s raised %r", self.decoders[index].name, error)
                matched = False
            if matched:
                self._start(index, flow_row)
                return index
        probed += 1 << shift
        flow_row["probes"] = probed
        exhausted = (probed & 0xF) >= PROBES_PER_DIRECTION and (probed >> 4) >= PROBES_PER_DIRECTION
        return table.DECODER_NONE if exhausted else table.DECODER_UNPROBED

    def _inspect(
        self,
        buffer: np.ndarray,
        overrides: dict[int, np.ndarray],
        packets: np.ndarray,
        candidates: np.ndarray,
        rows: np.ndarray,
        direction: np.ndarray,
        timestamps: np.ndarray,
        first_packet_number: int,
        flows: np.ndarray,
    ) -> None:
        """Show content inspectors every cleartext payload of the batch, whichever decoder has the flow."""
        clear = ~np.isin(flows["decoder"][rows].astype(np.int64), self.encrypted_states)
        if overrides:  # reassembled IP fragments live outside the batch buffer: give them their own pass
            clear &= ~np.isin(candidates, np.fromiter(overrides, np.int64, len(overrides)))
        chosen = candidates[clear]
        if chosen.shape[0] == 0:
            return
        keys = flows["uid"][rows[clear]].astype(np.int64) * 2 + direction[chosen].astype(np.int64)
        sources = [(buffer, packets["payload_offset"][chosen], packets["payload_captured"][chosen], keys, chosen)]
        wanted = set(candidates.tolist()) if overrides else set()
        for index in overrides:
            if index in wanted and not np.isin(
                flows["decoder"][rows[np.searchsorted(candidates, index)]], self.encrypted_states
            ):
                row = packets[index]
                start, length = int(row["payload_offset"]), int(row["payload_captured"])
                data = np.ascontiguousarray(overrides[index][start : start + length])
                row_index = int(rows[np.searchsorted(candidates, index)])
                key = np.array([int(flows["uid"][row_index]) * 2 + int(direction[index])])
                sources.append((data, np.zeros(1, np.int64), np.array([length]), key, np.array([index])))
        for decoder_index in self.content_decoders:
            decoder = self.decoders[decoder_index]
            for data, starts, lengths, group_keys, indices in sources:
                scan = getattr(decoder, "scan", None)
                job: Future[object] | Callable[[], object]
                if scan is not None and self.executor is not None and data is buffer:
                    job = self.executor.submit(scan, data, starts, lengths, group_keys)
                else:
                    job = partial(decoder.inspect, data, starts, lengths, group_keys)  # type: ignore[attr-defined]
                self.pending_content.append((decoder, job, indices, rows, candidates, direction, timestamps,
                                             first_packet_number, flows))  # fmt: skip

    def _finish_content(self) -> None:
        """The content inspectors' matches of this batch, added after the sessions' events.

        A scan handed to the worker thread ran while the sessions decoded; its Python part runs here. Each table's
        rows keep packet order either way: only these rows' place among other tables' rows moves.
        """
        pending, self.pending_content = self.pending_content, []
        for decoder, job, indices, rows, candidates, direction, timestamps, first_packet_number, flows in pending:
            try:
                found = decoder.finish(job.result()) if isinstance(job, Future) else job()
            except Exception as error:  # an inspector must not raise; record it and go on
                found = []
                log.warning("content inspector %s raised %r", decoder.name, error)
            for payload_index, _offset, fields in found:
                index = int(indices[payload_index])
                row_index = int(rows[np.searchsorted(candidates, index)])
                envelope = self._content_envelope(flows[row_index])
                side = int(direction[index])
                event = Event(next(iter(decoder.tables)), str(fields["kind"]), fields)
                self.buffer.add(
                    {**envelope, "direction": DIRECTION_NAMES[side]},
                    event,
                    int(timestamps[index]),
                    first_packet_number + index,
                )

    def _content_envelope(self, flow_row: np.void) -> dict[str, object]:
        uid = int(flow_row["uid"])
        envelope = self.content_envelopes.get(uid)
        if envelope is None:
            session = self.sessions.get(uid)
            envelope = session.envelope if session is not None else self._envelope(flow_row)
            self.content_envelopes[uid] = envelope
        return envelope

    def _envelope(self, flow_row: np.void) -> dict[str, object]:
        high = np.array([flow_row["client_high"], flow_row["server_high"]], np.uint64)
        low = np.array([flow_row["client_low"], flow_row["server_low"]], np.uint64)
        client_ip, server_ip = address_strings(high, low)
        transport = int(flow_row["transport"])
        return {
            "capture_id": self.capture_id,
            "flow_id": f"{int(flow_row['hash']):016x}",
            "community_id": community_id(
                transport,
                address_bytes(int(flow_row["client_high"]), int(flow_row["client_low"])),
                address_bytes(int(flow_row["server_high"]), int(flow_row["server_low"])),
                int(flow_row["client_port"]),
                int(flow_row["server_port"]),
            ),
            "client_ip": client_ip,
            "client_port": int(flow_row["client_port"]),
            "server_ip": server_ip,
            "server_port": int(flow_row["server_port"]),
            "transport": TRANSPORT_NAMES.get(transport, str(transport)),
        }

    def _start(self, index: int, flow_row: np.void) -> None:
        decoder = self.decoders[index]
        self.claimed[decoder.name] += 1
        envelope = self._envelope(flow_row)
        streams = (StreamReassembler(), StreamReassembler()) if decoder.transport == "tcp" else None
        self.sessions[int(flow_row["uid"])] = _FlowSession(
            index, decoder.session_for(int(flow_row["server_port"])), envelope, streams, int(flow_row["uid"])
        )

    def _deliver(
        self, flow_session: _FlowSession, piece: StreamData | StreamGap, side: Direction, timestamp: int, number: int
    ) -> None:
        if isinstance(piece, StreamData):
            self._feed(flow_session, piece.data, side, timestamp, number)
            return
        name = self.decoders[flow_session.decoder].name
        events = self._guard(name, lambda: flow_session.session.gap(side, piece.length))
        events.append(anomaly(name, "stream_gap", f"{piece.length} bytes missing from the {side.name} stream"))
        self._emit(flow_session.envelope, events, side, timestamp, number)

    def _feed(self, flow_session: _FlowSession, data: bytes, side: Direction, timestamp: int, number: int) -> None:
        try:
            events = flow_session.session.feed(data, side, timestamp / 1e9)
        except Exception as error:  # the contract says decoders never raise; record it if one does
            name = self.decoders[flow_session.decoder].name
            events = [anomaly(name, "decoder_exception", f"{type(error).__name__}: {error}")]
        if events:
            add = self.buffer.add
            envelope = flow_session.envelopes[side]
            folds = self.folds
            for event in events:
                if event.table in folds:  # folded at the end of the batch (decode/base.Fold)
                    self.fold_events[event.table].append((flow_session.uid * 2 + side, timestamp, number, event.fields))
                else:
                    add(envelope, event, timestamp, number)

    def _guard(self, name: str, call: object) -> list[Event]:
        try:
            return list(call())  # type: ignore[operator]
        except Exception as error:  # the contract says decoders never raise; record it if one does
            return [anomaly(name, "decoder_exception", f"{type(error).__name__}: {error}")]

    def _emit(
        self,
        envelope: dict[str, object],
        events: list[Event],
        side: Direction | None,
        timestamp: int,
        number: int | None,
    ) -> None:
        base = dict(envelope)
        base["direction"] = DIRECTION_NAMES[side] if side is not None else None
        for event in events:
            self.buffer.add(base, event, timestamp, number)

    # -- layer 2 ----------------------------------------------------------------------

    def _frames(self, buffer: np.ndarray, packets: np.ndarray, timestamps: np.ndarray, first_number: int) -> None:
        ether = packets["ether_type"].astype(np.int64)
        ether = np.where(ether < 0x600, 0, ether)  # IEEE 802.3 length field: LLC frames are type 0
        wanted = np.flatnonzero((packets["network"] == layers.L3_OTHER) & np.isin(ether, self.ether_types))
        if wanted.shape[0] == 0:
            return
        rows = packets[wanted]
        # The link envelope (base.LINK_FIELDS), column-wise: a frame has no flow, so no 5-tuple.
        vlans = [v if v >= 0 else None for v in rows["vlan_outer"].tolist()]
        columns = zip(
            wanted.tolist(),
            ether[wanted].tolist(),
            rows["payload_offset"].tolist(),
            rows["payload_captured"].tolist(),
            rows["source_mac"].tolist(),
            mac_strings(rows["source_mac"]),
            mac_strings(rows["destination_mac"]),
            vlans,
            timestamps[wanted].tolist(),
            strict=True,
        )
        memory = memoryview(buffer)  # type: ignore[arg-type]
        for index, kind, start, captured, source, source_mac, destination_mac, vlan, timestamp in columns:
            payload = bytes(memory[start : start + captured])
            envelope: dict[str, object] | None = None
            for decoder_index in self.frame_decoders:
                decoder = self.decoders[decoder_index]
                if kind not in decoder.ethertypes:
                    continue
                key = (decoder_index, source)
                session = self.frame_sessions.get(key)
                if session is None:
                    session = self.frame_sessions[key] = decoder.session()
                events = self._guard(
                    decoder.name,
                    lambda s=session, p=payload, t=timestamp / 1e9: s.feed(p, Direction.TO_SERVER, t),
                )
                if events:
                    if envelope is None:
                        envelope = {
                            "capture_id": self.capture_id,
                            "vlan": vlan,
                            "source_mac": source_mac,
                            "destination_mac": destination_mac,
                        }
                    self._emit(envelope, events, None, timestamp, first_number + index)

    # -- flow end -------------------------------------------------------------------

    def close_flows(self, ended: np.ndarray) -> None:
        """Flush and close the sessions of flows that ended."""
        if self.content_envelopes and ended.shape[0]:
            for uid in ended["uid"].tolist():
                self.content_envelopes.pop(uid, None)
        if not self.sessions or ended.shape[0] == 0:
            return
        for fold in self.folds.values():  # before the sessions go: the rows take their envelopes
            self._add_folded(fold, fold.finish(ended["uid"]))
        for uid, last_timestamp, last_packet in zip(
            ended["uid"].tolist(), ended["last_timestamp"].tolist(), ended["last_packet"].tolist(), strict=True
        ):
            flow_session = self.sessions.pop(uid, None)
            if flow_session is None:
                continue
            if flow_session.streams is not None:
                for side in (Direction.TO_SERVER, Direction.TO_CLIENT):
                    for piece in flow_session.streams[side].finish():
                        self._deliver(flow_session, piece, side, last_timestamp, last_packet)
            name = self.decoders[flow_session.decoder].name
            events = self._guard(name, flow_session.session.close)
            if events:
                self._emit(flow_session.envelope, events, None, last_timestamp, last_packet)

    def close_all(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        for key, session in list(self.frame_sessions.items()):
            events = self._guard(self.decoders[key[0]].name, session.close)
            if events:
                self._emit({"capture_id": self.capture_id}, events, None, 0, None)
        self.frame_sessions.clear()

    def take_tables(self) -> dict[str, pa.Table]:
        """Events collected so far, as Arrow tables, and empty the buffer."""
        tables = {}
        for name in self.buffer.rows.keys() | self.buffer.tables.keys():
            schema = self.schemas.get(name)
            if schema is None:
                log.warning("events for undeclared table %s dropped", name)
                continue
            parts = list(self.buffer.tables.get(name, []))
            if self.buffer.rows.get(name):
                parts.append(pa.Table.from_pylist(self.buffer.rows[name], schema=schema))
            tables[name] = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        self.buffer = EventBuffer()
        return tables


def _concatenated(arrays: list[pa.Array], kind: pa.DataType) -> pa.Array:
    """One array of type ``kind`` from parts, copying only when there are several."""
    typed = [array if array.type == kind else array.cast(kind) for array in arrays]
    return typed[0] if len(typed) == 1 else pa.concat_arrays(typed)
