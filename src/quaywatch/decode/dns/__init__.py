"""DNS (RFC 1035), mDNS (RFC 6762) and LLMNR (RFC 4795) over UDP and TCP, with EDNS (RFC 6891).

Table ``dns``: one row per message (``event_type`` ``query`` or ``response``) with the header, the first question,
the answers as lists, EDNS, tunnelling signals (longest label, query name length, RDATA volume) and the pairing of
each response with its query on the flow (``query_message_id``, ``latency``). When the flow ends, every query that
no response answered gets one more row, ``event_type`` ``unanswered``, repeating the query's identity (rows already
written cannot be updated, so the absence of an answer is said when it is known).

UDP carries one message per datagram; TCP (RFC 1035 section 4.2.2, RFC 7766) prefixes each message with its
length in two octets, and messages are reassembled across segments.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from quaywatch.decode.base import Decoder, Direction, Event, Session, anomaly
from quaywatch.decode.dns import message as m

PROTOCOL = "dns"
#: Queries waiting for their response, per flow; the oldest is forgotten beyond this.
MAXIMUM_PENDING = 4096
#: Anomaly rows per message at most (a hostile message could hold hundreds of faults).
MAXIMUM_FAULTS = 8


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


DNS_SCHEMA = pa.schema(
    [
        _field("message_id", pa.int64(), "ordinal of the message in its flow, from 0 (both directions)"),
        _field("transaction_id", pa.int32(), "ID field of the header (RFC 1035 section 4.1.1)"),
        _field("is_response", pa.bool_(), "QR bit: the message is a response"),
        _field("opcode", pa.int16(), "OPCODE (0 query, 1 inverse query, 2 status, 4 notify, 5 update)"),
        _field("opcode_name", pa.string(), "QUERY, IQUERY, STATUS, NOTIFY, UPDATE, DSO, or OPCODEn"),
        _field("authoritative", pa.bool_(), "AA bit"),
        _field("truncated", pa.bool_(), "TC bit: the sender truncated the message (retry over TCP)"),
        _field("recursion_desired", pa.bool_(), "RD bit"),
        _field("recursion_available", pa.bool_(), "RA bit"),
        _field("authentic_data", pa.bool_(), "AD bit (RFC 4035 section 3.2.3)"),
        _field("checking_disabled", pa.bool_(), "CD bit (RFC 4035 section 3.2.2)"),
        _field("rcode", pa.int16(), "response code; with EDNS the 12-bit extended RCODE (RFC 6891 section 6.1.3)"),
        _field("rcode_name", pa.string(), "NOERROR, FORMERR, SERVFAIL, NXDOMAIN, REFUSED, BADVERS ..., or RCODEn"),
        _field("qd_count", pa.int32(), "QDCOUNT as received"),
        _field("an_count", pa.int32(), "ANCOUNT as received"),
        _field("ns_count", pa.int32(), "NSCOUNT as received"),
        _field("ar_count", pa.int32(), "ARCOUNT as received"),
        _field("query_name", pa.string(), "first question's name, Zeek-style escaped text (see docs/decoders/dns.md)"),
        _field("query_name_raw", pa.binary(), "first question's labels joined by '.', as received"),
        _field("query_type", pa.int32(), "first question's QTYPE"),
        _field("query_type_name", pa.string(), "QTYPE name (A, AAAA, TXT, ANY ...), TYPEn if unassigned"),
        _field("query_class", pa.int32(), "first question's QCLASS as received (mDNS: top bit is unicast-response)"),
        _field("query_class_name", pa.string(), "class name of the low 15 bits (IN, CH ...), CLASSn if unassigned"),
        _field("query_unicast_response", pa.bool_(), "top bit of QCLASS: mDNS QU question (RFC 6762 section 5.4)"),
        _field("query_name_length", pa.int32(), "octets of the first question's name (labels and dots, unescaped)"),
        _field("longest_label", pa.int32(), "octets of the longest label of the first question's name"),
        _field("label_count", pa.int32(), "labels in the first question's name"),
        _field("edns", pa.bool_(), "an OPT pseudo-record is present (RFC 6891)"),
        _field("edns_udp_size", pa.int32(), "OPT: requestor's UDP payload size"),
        _field("edns_version", pa.int16(), "OPT: EDNS version"),
        _field("edns_do", pa.bool_(), "OPT: DNSSEC OK bit"),
        _field("answer_names", pa.list_(pa.string()), "answer section: owner names, escaped like query_name"),
        _field("answer_types", pa.list_(pa.int32()), "answer section: TYPE of each record"),
        _field("answer_type_names", pa.list_(pa.string()), "answer section: TYPE names"),
        _field("answer_ttls", pa.list_(pa.int64()), "answer section: TTL in seconds"),
        _field(
            "answer_data",
            pa.list_(pa.string()),
            "answer section: RDATA rendered (A/AAAA address; NS/CNAME/PTR/DNAME name; MX 'pref name'; SRV "
            "'priority weight port target'; SOA 'mname rname serial refresh retry expire minimum'; TXT quoted escaped "
            "strings), hex of the RDATA for other types",
        ),
        _field("records", pa.int32(), "resource records parsed in all three sections (OPT included)"),
        _field("rdata_length", pa.int64(), "total RDATA octets of every record parsed, all sections (tunnelling)"),
        _field("message_length", pa.int32(), "octets of the message (without the TCP length prefix)"),
        _field("matched", pa.bool_(), "responses: a query with the same ID and question was seen on the flow"),
        _field("query_message_id", pa.int64(), "responses: message_id of that query; unanswered rows: the query"),
        _field("latency", pa.float64(), "responses: seconds since that query"),
        _field("malformed", pa.string(), "anomaly codes of the message, comma-separated (also anomaly rows)"),
    ]
)

TABLES: dict[str, pa.Schema] = {PROTOCOL: DNS_SCHEMA}

_Key = tuple[int, bytes, int, int]


def _flags(row: dict[str, object], flags: int) -> None:
    row["authoritative"] = bool(flags & 0x0400)
    row["truncated"] = bool(flags & 0x0200)
    row["recursion_desired"] = bool(flags & 0x0100)
    row["recursion_available"] = bool(flags & 0x0080)
    row["authentic_data"] = bool(flags & 0x0020)
    row["checking_disabled"] = bool(flags & 0x0010)


def fields(parsed: m.Message, length: int) -> dict[str, object]:
    """The ``dns`` row of one parsed message (without the pairing columns)."""
    qd, an, ns, ar = parsed.counts
    row: dict[str, object] = {
        "transaction_id": parsed.id,
        "is_response": parsed.response,
        "opcode": parsed.opcode,
        "opcode_name": m.opcode_name(parsed.opcode),
        "qd_count": qd,
        "an_count": an,
        "ns_count": ns,
        "ar_count": ar,
        "message_length": length,
    }
    _flags(row, parsed.flags)
    if parsed.questions:
        question = parsed.questions[0]
        labels = question.name.labels
        row["query_name"] = question.name.text
        row["query_name_raw"] = question.name.raw
        row["query_type"] = question.qtype
        row["query_type_name"] = m.type_name(question.qtype)
        row["query_class"] = question.qclass
        row["query_class_name"] = m.class_name(question.qclass & 0x7FFF)
        row["query_unicast_response"] = bool(question.qclass & 0x8000)
        row["query_name_length"] = question.name.length
        row["longest_label"] = max((len(label) for label in labels), default=0)
        row["label_count"] = len(labels)
    rcode = parsed.rcode
    opt = next((record for record in parsed.records if record.rtype == m.OPT and record.section == 3), None)
    row["edns"] = opt is not None
    if opt is not None:
        rcode |= (opt.ttl >> 24) << 4
        row["edns_udp_size"] = opt.rclass
        row["edns_version"] = (opt.ttl >> 16) & 0xFF
        row["edns_do"] = bool(opt.ttl & 0x8000)
    row["rcode"] = rcode
    row["rcode_name"] = m.rcode_name(rcode)
    answers = [record for record in parsed.records if record.section == 1]
    row["answer_names"] = [record.name.text for record in answers]
    row["answer_types"] = [record.rtype for record in answers]
    row["answer_type_names"] = [m.type_name(record.rtype) for record in answers]
    row["answer_ttls"] = [record.ttl for record in answers]
    row["answer_data"] = [record.data for record in answers]
    row["records"] = len(parsed.records)
    row["rdata_length"] = sum(len(record.rdata) for record in parsed.records)
    if parsed.faults:
        row["malformed"] = ",".join(dict.fromkeys(code for code, _ in parsed.faults))
    return row


class DnsSession(Session):
    """One flow: messages per datagram (UDP) or length-prefixed in each direction's stream (TCP); pending queries."""

    def __init__(self, stream: bool = False) -> None:
        self.stream = stream
        self.buffers = {Direction.TO_SERVER: bytearray(), Direction.TO_CLIENT: bytearray()}
        self.lost = {Direction.TO_SERVER: False, Direction.TO_CLIENT: False}
        #: Pending queries: key -> (message_id, timestamp, the query's identifying fields).
        self.pending: dict[_Key, tuple[int, float, dict[str, object]]] = {}
        self.messages = 0

    def feed(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        if not self.stream:
            return self._message(bytes(data), direction, timestamp)
        if self.lost[direction]:
            return []
        buffer = self.buffers[direction]
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                break
            events += self._message(bytes(buffer[2 : 2 + length]), direction, timestamp)
            del buffer[: 2 + length]
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        """Length prefixes cannot be found again after a hole: the rest of this direction is not decoded."""
        self.buffers[direction].clear()
        if self.lost[direction]:
            return []
        self.lost[direction] = True
        return [anomaly(PROTOCOL, "stream_abandoned", f"{direction.name}: no message framing after a gap")]

    def close(self) -> list[Event]:
        events: list[Event] = []
        for direction, buffer in self.buffers.items():
            if buffer:
                events.append(
                    anomaly(PROTOCOL, "truncated_message", f"{direction.name}: {len(buffer)} octets of a message")
                )
                buffer.clear()
        for message_id, _, row in self.pending.values():
            events.append(Event(PROTOCOL, "unanswered", {**row, "query_message_id": message_id}))
        self.pending.clear()
        return events

    def _message(self, data: bytes, direction: Direction, timestamp: float) -> list[Event]:
        parsed = m.parse(data)
        if parsed is None:
            return [anomaly(PROTOCOL, "short_message", f"{direction.name}: {len(data)} octets, the header needs 12")]
        message_id = self.messages
        self.messages += 1
        row = fields(parsed, len(data))
        row["message_id"] = message_id
        events: list[Event] = []
        key: _Key | None = None
        if parsed.questions:
            question = parsed.questions[0]
            key = (parsed.id, question.name.raw.lower(), question.qtype, question.qclass & 0x7FFF)
        if parsed.response:
            pending = self.pending.pop(key, None) if key is not None else None
            row["matched"] = pending is not None
            if pending is not None:
                row["query_message_id"] = pending[0]
                row["latency"] = max(0.0, timestamp - pending[1])
            events.append(Event(PROTOCOL, "response", row))
        else:
            events.append(Event(PROTOCOL, "query", row))
            # A retransmission (same ID and question) stays paired with the first query.
            if key is not None and key not in self.pending:
                if len(self.pending) >= MAXIMUM_PENDING:
                    self.pending.pop(next(iter(self.pending)))
                identity = {
                    name: row.get(name)
                    for name in (
                        "transaction_id",
                        "is_response",
                        "opcode",
                        "opcode_name",
                        "query_name",
                        "query_name_raw",
                        "query_type",
                        "query_type_name",
                        "query_class",
                        "query_class_name",
                        "query_name_length",
                        "longest_label",
                        "label_count",
                    )
                }
                self.pending[key] = (message_id, timestamp, identity)
        for code, detail in parsed.faults[:MAXIMUM_FAULTS]:
            events.append(anomaly(PROTOCOL, code, f"{direction.name} message {message_id}: {detail}"))
        return events


class DnsUdpDecoder(Decoder):
    """DNS, mDNS and LLMNR over UDP: one message per datagram."""

    name = PROTOCOL
    transport = "udp"
    ports = frozenset({53, 5353, 5355})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """A header with a known opcode and sane counts whose question section parses; the port plays no part."""
        return m.plausible(payload)

    def session(self) -> Session:
        return DnsSession(stream=False)


class DnsTcpDecoder(Decoder):
    """DNS over TCP: two-octet length prefix, then the message."""

    name = PROTOCOL
    transport = "tcp"
    ports = frozenset({53, 5353, 5355})
    tables: ClassVar[dict[str, pa.Schema]] = TABLES

    def probe(self, payload: bytes, direction: Direction, server_port: int) -> bool:
        """A length prefix of at least 12 that the payload does not exceed, then a plausible message.

        The message may continue in later segments, so the question section is checked on what is present when
        it is all there; a client that sends the two-octet prefix alone is accepted only on port 53.
        """
        if len(payload) == 2:
            return server_port == 53 and ((payload[0] << 8) | payload[1]) >= m.HEADER_LENGTH
        if len(payload) < 2 + m.HEADER_LENGTH:
            return False
        length = (payload[0] << 8) | payload[1]
        if length < m.HEADER_LENGTH:
            return False
        return m.plausible(bytes(payload[2 : 2 + length]))

    def session(self) -> Session:
        return DnsSession(stream=True)


__all__ = ["TABLES", "DnsSession", "DnsTcpDecoder", "DnsUdpDecoder"]
