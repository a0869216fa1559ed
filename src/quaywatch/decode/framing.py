"""Per-direction stream buffers for decoders that resynchronise byte by byte.

A stream decoder keeps the bytes of an unfinished message per direction. When the bytes at the front do
not start a valid message it drops one byte and tries again, so its decisions depend only on the stream,
never on how TCP or the pipeline cut it into chunks. Skipped bytes are counted and reported once, when a
valid header is found again, at a gap, or at the end of the flow.
"""

from __future__ import annotations

from quaywatch.decode.base import Direction, Event, anomaly


class ResynchronisingStreams:
    """The two directions' buffers and skip counts of one flow."""

    def __init__(self, protocol: str, code: str, target: str) -> None:
        self.protocol = protocol
        self.code = code
        self.target = target
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.skipped = {Direction.TO_SERVER: 0, Direction.TO_CLIENT: 0}

    def skip(self, direction: Direction) -> None:
        """Drop the first buffered byte of ``direction``: it cannot start a message."""
        del self.buffers[direction][0]
        self.skipped[direction] += 1

    def resynchronised(self, direction: Direction) -> list[Event]:
        """The anomaly for the bytes skipped since the last valid header, if any."""
        count = self.skipped[direction]
        if not count:
            return []
        self.skipped[direction] = 0
        return [anomaly(self.protocol, self.code, f"{direction.name}: {count} bytes skipped to {self.target}")]

    def gap(self, direction: Direction) -> list[Event]:
        """Bytes were lost: the partial message is useless; report what was skipped before."""
        self.buffers[direction].clear()
        return self.resynchronised(direction)

    def close(self, extra: dict[Direction, int] | None = None) -> list[Event]:
        """End of flow: skipped bytes and unfinished messages (plus ``extra`` bytes held elsewhere)."""
        events: list[Event] = []
        for direction in (Direction.TO_SERVER, Direction.TO_CLIENT):
            events += self.resynchronised(direction)
            left = len(self.buffers[direction]) + (extra or {}).get(direction, 0)
            if left:
                events.append(anomaly(self.protocol, "truncated_message", f"{direction.name}: {left} bytes left"))
            self.buffers[direction].clear()
        return events
