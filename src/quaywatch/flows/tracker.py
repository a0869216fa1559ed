"""Keeps the flow table across batches: growth, ending idle flows, compaction.

Memory is bounded by the number of *open* flows: ended flows are handed to the
caller after every batch and dropped from the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from quaywatch.flows import table

NANOSECONDS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Inactivity timeouts in seconds; Zeek's defaults for TCP, UDP and ICMP."""

    tcp: float = 300.0
    udp: float = 60.0
    other: float = 60.0

    def as_array(self) -> np.ndarray:
        return np.array(
            [int(self.tcp * NANOSECONDS), int(self.udp * NANOSECONDS), int(self.other * NANOSECONDS)], np.int64
        )


class FlowTracker:
    """Assigns packets to flows and yields flows once they end."""

    def __init__(
        self,
        timeouts: Timeouts | None = None,
        initial_capacity: int = 1 << 14,
        max_open_flows: int = 1 << 19,
        server_ports: Iterable[int] = (),
    ) -> None:
        self.timeouts = (timeouts or Timeouts()).as_array()
        # Ports below 1024 and the ports of registered decoders identify servers (see table.update).
        self.likely_servers = np.zeros(65536, np.bool_)
        self.likely_servers[:1024] = True
        self.likely_servers[[port for port in server_ports if 0 <= port < 65536]] = True
        self.max_open_flows = max_open_flows
        self.flows = np.zeros(initial_capacity, table.FLOW_DTYPE)
        self.slots = np.full(initial_capacity * 2, -1, np.int64)
        self.count = 0
        self.next_uid = 1
        self.latest_timestamp = 0

    def assign(
        self,
        packets: np.ndarray,
        original_lengths: np.ndarray,
        timestamps: np.ndarray,
        first_packet_number: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-packet flow row (-1 for none) and direction (0 to server, 1 to client)."""
        size = packets.shape[0]
        flow_index = np.empty(size, np.int64)
        direction = np.empty(size, np.uint8)
        start = 0
        while True:
            status, start, self.count, self.next_uid = table.update(
                packets, original_lengths, timestamps, first_packet_number, start,
                self.flows, self.count, self.slots, self.next_uid, self.timeouts, self.likely_servers, flow_index,
                direction,
            )  # fmt: skip
            if status == table.DONE:
                break
            self._grow()
        if size:
            self.latest_timestamp = max(self.latest_timestamp, int(timestamps.max()))
        return flow_index, direction

    def ended(self) -> np.ndarray:
        """Flows that ended so far (split or idle), removed from the table."""
        table.mark_idle(self.flows, self.count, self.latest_timestamp, self.timeouts)
        live = self.flows[: self.count]
        open_rows = np.flatnonzero(live["end_reason"] == table.OPEN)
        if open_rows.shape[0] > self.max_open_flows:
            # A scan or flood must not grow memory without bound: end the least recently active quarter.
            excess = open_rows.shape[0] - (self.max_open_flows * 3) // 4
            oldest = open_rows[np.argsort(live["last_timestamp"][open_rows], kind="stable")[:excess]]
            live["end_reason"][oldest] = table.ENDED_EVICTED
        return self._take(live["end_reason"] != table.OPEN)

    def finish(self) -> np.ndarray:
        """End every open flow at the end of the capture."""
        live = self.flows[: self.count]
        live["end_reason"][live["end_reason"] == table.OPEN] = table.ENDED_CAPTURE_END
        return self._take(np.ones(self.count, bool))

    def _take(self, selected: np.ndarray) -> np.ndarray:
        if not selected.any():
            return self.flows[:0].copy()
        taken = self.flows[: self.count][selected].copy()
        keep = self.flows[: self.count][~selected].copy()
        self.count = keep.shape[0]
        self.flows[: self.count] = keep
        table.rebuild_slots(self.flows, self.count, self.slots)
        return taken

    def _grow(self) -> None:
        capacity = self.flows.shape[0] * 2
        grown = np.zeros(capacity, table.FLOW_DTYPE)
        grown[: self.count] = self.flows[: self.count]
        self.flows = grown
        self.slots = np.full(capacity * 2, -1, np.int64)
        table.rebuild_slots(self.flows, self.count, self.slots)
