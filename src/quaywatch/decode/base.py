"""The contract between the capture pipeline and protocol decoders.

Decoders are sans-IO, in the manner of h11:

1. A decoder never reads files or sockets. The pipeline hands it bytes and it
   returns typed events.
2. A session sees exactly one flow. For TCP it receives each direction's
   reassembled byte stream, in order, in chunks that may split a message
   anywhere; for UDP it receives one datagram per call; for layer-2 decoders one
   frame payload (after the EtherType) per call.
3. Feeding a stream one byte at a time (with the same timestamps) yields the
   same events as feeding it whole. Sessions therefore buffer partial
   messages themselves.
4. Malformed input becomes an ``anomaly`` event. No exception escapes
   ``feed``; the pipeline still guards each call and records an escape as an
   anomaly, but a decoder that relies on that is a bug.

The pipeline adds the shared envelope (timestamp, packet number, flow id,
Community ID, 5-tuple, direction) to every event, so a decoder only fills the
fields of its own table.

Layer-2 decoders (``transport == "ethernet"``) see frames, not flows: their
rows have no flow id, Community ID, 5-tuple or direction (NULL). Instead the
pipeline fills the link envelope, :data:`LINK_FIELDS` (outer VLAN id, source
and destination MAC, named as in the ``arp`` table), and every table of a
layer-2 decoder starts its schema with ``*LINK_FIELDS`` so those columns
exist. The shared envelope itself stays the same for every table; anomaly rows
of layer-2 decoders keep ``packet_number`` to join back to the frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

#: "content" marks a content inspector (decode/cargo): it claims no flow but is shown every cleartext payload.
Transport = Literal["tcp", "udp", "ethernet", "content"]


class Direction(IntEnum):
    """Which side of the flow sent the bytes."""

    TO_SERVER = 0
    TO_CLIENT = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded record destined for ``table``.

    ``fields`` maps column names of the decoder's declared schema to values;
    missing columns are stored as NULL. Strings from packets are
    attacker-controlled: keep them as received, either as ``bytes`` in binary
    columns or as text made with ``decode("utf-8", "backslashreplace")``, so
    that nothing is lost and nothing is interpreted.
    """

    table: str
    event_type: str
    fields: dict[str, object] = field(default_factory=dict)


ANOMALY_TABLE = "anomaly"

#: Every decoder may emit rows into this table; the pipeline creates it.
ANOMALY_SCHEMA = pa.schema(
    [
        pa.field("protocol", pa.string(), metadata={"doc": "decoder that saw the fault"}),
        pa.field("code", pa.string(), metadata={"doc": "stable machine-readable anomaly code"}),
        pa.field("detail", pa.string(), metadata={"doc": "human explanation, with offsets"}),
    ]
)


#: Columns a layer-2 decoder's tables start with; the pipeline fills them from the frame's header.
LINK_FIELDS = [
    pa.field("vlan", pa.int32(), True, {"doc": "outer 802.1Q VLAN id (0: priority tag only), NULL if untagged"}),
    pa.field("source_mac", pa.string(), True, {"doc": "Ethernet source"}),
    pa.field("destination_mac", pa.string(), True, {"doc": "Ethernet destination"}),
]


def anomaly(protocol: str, code: str, detail: str) -> Event:
    """Build the event a decoder returns instead of raising."""
    return Event(ANOMALY_TABLE, "anomaly", {"protocol": protocol, "code": code, "detail": detail})


@dataclass(frozen=True, slots=True)
class DatagramRows:
    """Rows a decoder made for many datagrams at once, column by column (see ``Decoder.decode_datagrams``)."""

    #: One flag per datagram offered: decoded here. The others go to the flow's session as usual.
    handled: np.ndarray
    table: str
    event_type: str
    #: Column name -> one value per handled datagram, in the order offered.
    columns: dict[str, pa.Array]


class Fold(ABC):
    """Folds one table's per-event records into fewer stored rows (cyclic I/O: one row per connection and second).

    The records are what the decoder's sessions and vectorised paths produce for the table (``records`` is their
    schema); the dispatcher collects them per batch and hands them over in packet order, keyed by flow and
    direction (``uid * 2 + direction``). The answers are the stored rows: keys, timestamps (ns) and packet numbers
    for their envelopes, and their own columns (the table's schema in ``Decoder.tables``).
    """

    table: ClassVar[str]
    event_type: ClassVar[str]
    records: ClassVar[pa.Schema]

    @abstractmethod
    def add(
        self, keys: np.ndarray, timestamps: np.ndarray, numbers: np.ndarray, columns: dict[str, pa.Array]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, pa.Array]]:
        """Take the next records; return the rows they completed."""

    @abstractmethod
    def finish(self, uids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, pa.Array]]:
        """The flows ``uids`` ended (None: all of them): return their remaining rows and forget them."""


class Session(ABC):
    """Decoder state for one flow."""

    @abstractmethod
    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        """Consume the next bytes of ``direction`` and return completed events.

        ``timestamp`` (seconds since the epoch) is when the packet carrying
        ``data`` was captured; sessions use it for request/response latency.
        """

    def gap(self, direction: Direction, length: int) -> list[Event]:
        """Told when ``length`` bytes of a TCP stream were never captured.

        The default resynchronises nothing; stream decoders should drop any
        partial message of that direction and look for the next message start.
        """
        return []

    def close(self) -> list[Event]:
        """The flow ended; flush what can be said about unfinished messages."""
        return []

    def idle(self) -> bool:
        """No partial message and nothing skipped in either direction (see ``Decoder.decode_segments``).

        Only then may a vectorised path decode the next segments instead of ``feed``; the default says never.
        """
        return False


class Decoder(ABC):
    """A protocol: how to recognise it and how to start a session.

    Subclasses set the class variables and are listed once in
    :mod:`quaywatch.decode.registry`.
    """

    #: Short lower-case protocol name, also the default table name.
    name: ClassVar[str]
    transport: ClassVar[Transport]
    #: Well-known ports: a hint only. Content decides (``probe``).
    ports: ClassVar[frozenset[int]] = frozenset()
    #: For ``transport == "ethernet"``: the EtherTypes handed to the decoder.
    ethertypes: ClassVar[frozenset[int]] = frozenset()
    #: Event tables this decoder fills: name -> schema of its own columns.
    tables: ClassVar[dict[str, pa.Schema]] = {}
    #: Tables whose events are folded before they are stored (see :class:`Fold`): name -> the fold's class.
    folds: ClassVar[dict[str, type[Fold]]] = {}

    @abstractmethod
    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """Whether the first payload of a flow is this protocol.

        Called with the first few non-empty payloads of each direction of a
        flow until one matches (see ``dispatch.PROBES_PER_DIRECTION``). Must
        be cheap and must not raise.
        """

    @abstractmethod
    def session(self) -> Session:
        """A fresh session for one flow."""

    def decode_datagrams(self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> DatagramRows | None:
        """A vectorised path for the commonest datagrams of a UDP protocol whose datagrams are independent.

        Cyclic I/O sends the same small datagram thousands of times a second, more than a Python call per
        datagram can keep up with. ``buffer[starts[i] : starts[i] + lengths[i]]`` is datagram ``i``. The rows
        of every datagram marked handled must equal what ``session().feed`` returns for it, as one event; a
        decoder without such a path returns None and its sessions see every datagram.
        """
        return None

    def segment_shapes(
        self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, sides: np.ndarray
    ) -> np.ndarray:
        """Per TCP segment: it holds exactly one whole PDU of a shape ``decode_segments`` decodes (stateless).

        Cyclic polling sends one small request and one small response per segment, far more often than a Python
        call per segment keeps up with. The dispatcher hands a flow's segments to ``decode_segments`` only while
        they arrive in order, each has this shape and the flow's session is ``idle``; from the first segment that
        breaks a condition on, the flow's segments go to its session as usual.
        """
        return np.zeros(starts.shape[0], np.bool_)

    def decode_segments(
        self,
        buffer: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        sides: np.ndarray,
        timestamps: np.ndarray,
        sessions: list[Session],
    ) -> list[tuple[np.ndarray, DatagramRows]]:
        """Rows for segments ``segment_shapes`` accepted, in stream order; ``sessions[i]`` owns segment ``i``.

        Returns (positions among the segments offered, rows for them) per event type. The rows must equal what
        the sessions' ``feed`` would have returned, and the sessions' own state (pending requests) must end as
        ``feed`` would have left it.
        """
        return []

    def session_for(self, server_port: int) -> Session:
        """A fresh session for a flow to ``server_port``.

        For the rare protocol whose framing depends on the port (GTP' and GTP-C share a header); a decoder
        stays stateless, so the port reaches the session here rather than through ``probe``.
        """
        return self.session()
