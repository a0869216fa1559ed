"""IPv4 and IPv6 fragment reassembly.

Fragments are rare on OT networks, so this runs in Python over fragment rows
only. A completed datagram is rebuilt as a minimal unfragmented IP packet and
re-parsed by the compiled walker; the pipeline then substitutes it for the
packet that completed it, so flows and decoders see one whole datagram.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from quaywatch.ingest import layers

NANOSECONDS = 1_000_000_000


@dataclass(slots=True)
class _Pending:
    first_timestamp: int
    frames_bytes: int = 0
    total_length: int = -1  # known once the last fragment arrives
    pieces: dict[int, bytes] = field(default_factory=dict)
    overlap: bool = False


@dataclass(frozen=True, slots=True)
class Reassembled:
    """A datagram completed by the packet at ``index`` of the batch."""

    index: int
    row: np.void  # PACKET_DTYPE row with offsets into ``buffer``
    buffer: np.ndarray
    frames_bytes: int  # frame bytes of every fragment, for flow byte counts
    fragments: int


class FragmentReassembler:
    """Collect fragments across batches; bounded by count and age."""

    def __init__(self, timeout_seconds: float = 60.0, max_pending: int = 10_000) -> None:
        self.timeout = int(timeout_seconds * NANOSECONDS)
        self.max_pending = max_pending
        self.pending: dict[tuple[int, int, int, int, int, int], _Pending] = {}
        self.expired = 0
        self.overlapping = 0

    def add_batch(
        self,
        buffer: np.ndarray,
        packets: np.ndarray,
        original_lengths: np.ndarray,
        timestamps: np.ndarray,
    ) -> list[Reassembled]:
        """Feed every fragment row of a batch; return completed datagrams."""
        done: list[Reassembled] = []
        for index in np.flatnonzero(packets["status"] == layers.STATUS_FRAGMENT).tolist():
            row = packets[index]
            key = (
                int(row["network"]),
                int(row["source_high"]),
                int(row["source_low"]),
                int(row["destination_high"]),
                int(row["destination_low"]),
                (int(row["fragment_id"]) << 8) | int(row["transport"]),
            )
            timestamp = int(timestamps[index])
            pending = self.pending.get(key)
            if pending is None or timestamp - pending.first_timestamp > self.timeout:
                if pending is not None:
                    self.expired += 1
                if len(self.pending) >= self.max_pending:
                    self.pending.pop(next(iter(self.pending)))
                    self.expired += 1
                pending = self.pending[key] = _Pending(timestamp)
            start = int(row["payload_offset"])
            data = bytes(buffer[start : start + int(row["payload_captured"])])
            offset = int(row["fragment_offset"])
            if offset in pending.pieces:
                pending.overlap = True
            pending.pieces.setdefault(offset, data)
            pending.frames_bytes += int(original_lengths[index])
            if not row["more_fragments"]:
                pending.total_length = offset + int(row["payload_length"])
            datagram = self._complete(pending)
            if datagram is None:
                continue
            del self.pending[key]
            if pending.overlap:
                self.overlapping += 1
            rebuilt = _rebuild(row, datagram)
            parsed = np.zeros(1, layers.PACKET_DTYPE)  # parse_packets expects zeroed rows
            layers.parse_packets(
                rebuilt,
                np.zeros(1, np.int64),
                np.array([rebuilt.shape[0]], np.int32),
                np.array([101], np.int32),
                parsed,
            )
            parsed["vlan_outer"] = row["vlan_outer"]
            parsed["vlan_inner"] = row["vlan_inner"]
            parsed["source_mac"] = row["source_mac"]
            parsed["destination_mac"] = row["destination_mac"]
            parsed["ttl"] = row["ttl"]
            done.append(Reassembled(index, parsed[0], rebuilt, pending.frames_bytes, len(pending.pieces)))
        return done

    def _complete(self, pending: _Pending) -> bytes | None:
        if pending.total_length < 0:
            return None
        cursor = 0
        parts = []
        for offset in sorted(pending.pieces):
            piece = pending.pieces[offset]
            if offset > cursor:
                return None
            parts.append(piece[cursor - offset :])
            cursor = max(cursor, offset + len(piece))
        if cursor < pending.total_length:
            return None
        return b"".join(parts)[: pending.total_length]

    def abandon(self) -> int:
        """Drop what never completed (end of capture); returns how many datagrams."""
        count = len(self.pending)
        self.pending.clear()
        self.expired += count
        return count


def _rebuild(row: np.void, payload: bytes) -> np.ndarray:
    transport = int(row["transport"])
    if int(row["network"]) == layers.L3_IPV4:
        source = (int(row["source_low"]) & 0xFFFFFFFF).to_bytes(4, "big")
        destination = (int(row["destination_low"]) & 0xFFFFFFFF).to_bytes(4, "big")
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, min(0xFFFF, 20 + len(payload)), int(row["fragment_id"]) & 0xFFFF, 0,
            int(row["ttl"]), transport, 0, source, destination,
        )  # fmt: skip
    else:
        source = int(row["source_high"]).to_bytes(8, "big") + int(row["source_low"]).to_bytes(8, "big")
        destination = int(row["destination_high"]).to_bytes(8, "big") + int(row["destination_low"]).to_bytes(8, "big")
        header = struct.pack(
            "!IHBB16s16s", 0x60000000, min(0xFFFF, len(payload)), transport, int(row["ttl"]), source, destination
        )
    return np.frombuffer(header + payload, np.uint8)
