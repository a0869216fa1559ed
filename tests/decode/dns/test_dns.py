"""DNS decoder: hand-built messages for the important fields, pairing, names, TCP framing one byte at a time,
probing, and fuzzing. The tshark and nDPI comparisons are in test_dns_oracles.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction, Event
from quaywatch.decode.dns import DnsSession, DnsTcpDecoder, DnsUdpDecoder
from quaywatch.decode.dns import message as m
from tests.decode.oracles import replay

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))


def name(text: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in text.split(b".") if label) + b"\x00"


def dns(
    ident: int,
    flags: int,
    questions: list[bytes],
    answers: list[bytes] = (),  # type: ignore[assignment]
    additional: list[bytes] = (),  # type: ignore[assignment]
) -> bytes:
    head = struct.pack(">HHHHHH", ident, flags, len(questions), len(answers), 0, len(additional))
    return head + b"".join(questions) + b"".join(answers) + b"".join(additional)


def question(qname: bytes, qtype: int = 1, qclass: int = 1) -> bytes:
    return name(qname) + struct.pack(">HH", qtype, qclass)


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 300, rclass: int = 1) -> bytes:
    return owner + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata


POINTER = b"\xc0\x0c"  # the question name at offset 12
QUERY = dns(0x1234, 0x0100, [question(b"modem.iot-cloud.example")])
OPT = rr(b"\x00", 41, b"", ttl=0x01008000, rclass=1232)  # extended rcode 1, version 0, DO


def rows(events: list[Event]) -> list[dict[str, object]]:
    return [e.fields | {"event_type": e.event_type} for e in events if e.table == "dns"]


def anomalies(events: list[Event]) -> list[str]:
    return [str(e.fields["code"]) for e in events if e.table == "anomaly"]


def test_query_fields() -> None:
    (row,) = rows(DnsSession().feed(QUERY, Direction.TO_SERVER, 1.0))
    assert row["event_type"] == "query" and row["transaction_id"] == 0x1234 and row["is_response"] is False
    assert (row["opcode"], row["opcode_name"], row["recursion_desired"]) == (0, "QUERY", True)
    assert (row["query_name"], row["query_type"], row["query_type_name"], row["query_class_name"]) == (
        "modem.iot-cloud.example",
        1,
        "A",
        "IN",
    )
    assert (row["query_name_length"], row["longest_label"], row["label_count"]) == (23, 9, 3)
    assert (row["qd_count"], row["an_count"], row["edns"]) == (1, 0, False)


def test_response_answers_edns_and_pairing() -> None:
    answers = [
        rr(POINTER, 5, name(b"edge.example")),
        rr(POINTER, 1, bytes([10, 0, 0, 7]), ttl=60),
        rr(POINTER, 28, bytes(15) + b"\x01"),
        rr(POINTER, 15, b"\x00\x0a" + name(b"mx.example")),
        rr(POINTER, 16, b"\x05hello\x03a\x00b"),
        rr(POINTER, 33, struct.pack(">HHH", 1, 2, 8883) + name(b"broker.example")),
        rr(POINTER, 6, name(b"ns1.example") + name(b"root.example") + struct.pack(">IIIII", 1, 2, 3, 4, 5)),
        rr(POINTER, 99 + 1000, b"\xde\xad"),
    ]
    response = dns(0x1234, 0x8183, [question(b"modem.iot-cloud.example")], answers, [OPT])
    session = DnsSession()
    session.feed(QUERY, Direction.TO_SERVER, 1.0)
    events = session.feed(response, Direction.TO_CLIENT, 1.25)
    (row,) = rows(events)
    assert not anomalies(events)
    assert row["event_type"] == "response" and row["matched"] is True
    assert (row["query_message_id"], row["latency"]) == (0, 0.25)
    assert (row["rcode"], row["rcode_name"]) == (0x13, "BADMODE")  # header 3 | extended 1 << 4
    assert (row["edns"], row["edns_udp_size"], row["edns_version"], row["edns_do"]) == (True, 1232, 0, True)
    assert row["answer_data"] == [
        "edge.example",
        "10.0.0.7",
        "::1",
        "10 mx.example",
        '"hello" "a\\x00b"',
        "1 2 8883 broker.example",
        "ns1.example root.example 1 2 3 4 5",
        "dead",
    ]
    assert row["answer_type_names"][:2] == ["CNAME", "A"] and row["answer_type_names"][-1] == "TYPE1099"  # type: ignore[index]
    assert row["answer_ttls"][1] == 60 and row["answer_names"][0] == "modem.iot-cloud.example"  # type: ignore[index]
    assert row["records"] == 9 and session.close() == []


def test_unanswered_queries_are_reported_at_close() -> None:
    session = DnsSession()
    session.feed(QUERY, Direction.TO_SERVER, 1.0)
    session.feed(QUERY, Direction.TO_SERVER, 2.0)  # a retransmission stays with the first
    other = dns(7, 0x0100, [question(b"x.example", 16)])
    session.feed(other, Direction.TO_SERVER, 3.0)
    unanswered = rows(session.close())
    assert [(r["event_type"], r["query_message_id"], r["query_name"]) for r in unanswered] == [
        ("unanswered", 0, "modem.iot-cloud.example"),
        ("unanswered", 2, "x.example"),
    ]
    # A response with another ID or question is not a match.
    session = DnsSession()
    session.feed(QUERY, Direction.TO_SERVER, 1.0)
    (row,) = rows(session.feed(dns(0x1235, 0x8180, [question(b"modem.iot-cloud.example")]), Direction.TO_CLIENT, 2))
    assert row["matched"] is False and row.get("latency") is None


def test_names_are_escaped_like_zeek_and_raw_is_kept() -> None:
    label = b"a.b\\c \x00\xff"
    packet = dns(1, 0x0000, [bytes([len(label)]) + label + b"\x03com\x00" + b"\x00\x10\x00\x01"])
    (row,) = rows(DnsSession().feed(packet, Direction.TO_SERVER, 0))
    assert row["query_name"] == "a\\x2eb\\x5cc\\x20\\x00\\xff.com"
    assert row["query_name_raw"] == label + b".com"
    assert (row["longest_label"], row["query_name_length"]) == (8, 12)
    (root,) = rows(DnsSession().feed(dns(2, 0, [b"\x00\x00\x02\x00\x01"]), Direction.TO_SERVER, 0))
    assert root["query_name"] == "." and root["query_type_name"] == "NS"


def test_pointer_loop_and_out_of_message_pointer_are_anomalies_and_parsing_goes_on() -> None:
    # The answer's owner name is a pointer to itself.
    owner_offset = 12 + len(question(b"a.example"))
    loop = dns(1, 0x8180, [question(b"a.example")], [rr(bytes([0xC0, owner_offset]), 1, b"\x01\x02\x03\x04")])
    events = DnsSession().feed(loop, Direction.TO_CLIENT, 0)
    (row,) = rows(events)
    assert "pointer_loop" in anomalies(events) and row["answer_data"] == ["1.2.3.4"]
    outside = dns(1, 0x8180, [question(b"a.example")], [rr(b"\xc0\xff", 1, b"\x01\x02\x03\x04")])
    events = DnsSession().feed(outside, Direction.TO_CLIENT, 0)
    assert "pointer_out_of_message" in anomalies(events) and rows(events)[0]["answer_data"] == ["1.2.3.4"]
    assert rows(events)[0]["malformed"] == "pointer_out_of_message"


def test_truncated_and_short_messages() -> None:
    events = DnsSession().feed(QUERY[:-3], Direction.TO_SERVER, 0)
    assert anomalies(events) == ["truncated"] and rows(events)[0].get("query_name") is None
    assert anomalies(DnsSession().feed(b"\x00" * 5, Direction.TO_SERVER, 0)) == ["short_message"]
    long_name = b".".join([b"x" * 63] * 4)
    events = DnsSession().feed(dns(1, 0, [question(long_name)]), Direction.TO_SERVER, 0)
    assert anomalies(events) == ["name_too_long"] and rows(events)[0]["query_name_length"] == 255


def test_tcp_framing_one_byte_at_a_time_equals_whole() -> None:
    response = dns(0x1234, 0x8180, [question(b"modem.iot-cloud.example")], [rr(POINTER, 1, b"\x0a\x00\x00\x01")])
    framed = [
        (Direction.TO_SERVER, struct.pack(">H", len(QUERY)) + QUERY + struct.pack(">H", len(QUERY)), 1.0),
        (Direction.TO_SERVER, QUERY, 1.1),
        (Direction.TO_CLIENT, struct.pack(">H", len(response)) + response + b"\x00\x40\x12", 1.5),
    ]
    whole = replay(DnsSession(stream=True), framed, one_byte=False)
    single = replay(DnsSession(stream=True), framed, one_byte=True)
    assert whole == single
    assert [e.event_type for e in whole] == ["query", "query", "response", "anomaly"]
    assert whole[2].fields["matched"] is True and whole[3].fields["code"] == "truncated_message"


def test_probe() -> None:
    udp, tcp = DnsUdpDecoder(), DnsTcpDecoder()
    assert udp.probe(QUERY, Direction.TO_SERVER, 9999)
    assert tcp.probe(struct.pack(">H", len(QUERY)) + QUERY, Direction.TO_SERVER, 9999)
    assert tcp.probe(struct.pack(">H", len(QUERY)), Direction.TO_SERVER, 53)
    assert not tcp.probe(struct.pack(">H", len(QUERY)), Direction.TO_SERVER, 8080)
    assert not udp.probe(b"\x00" * 12, Direction.TO_SERVER, 53)
    assert not udp.probe(QUERY[:-2], Direction.TO_SERVER, 53)
    assert not udp.probe(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Direction.TO_SERVER, 53)
    assert not udp.probe(QUERY[:2] + b"\x30" + QUERY[3:], Direction.TO_SERVER, 53)  # opcode 6
    netbios = dns(1, 0x0110, [question(b"FHEPFCELEHFCEPFFFACACACACACACABN", 0x20)])
    assert not udp.probe(netbios, Direction.TO_SERVER, 137)
    announcement = dns(0, 0x8400, [], [rr(name(b"cam._http._tcp.local"), 12, name(b"cam.local"))])
    assert udp.probe(announcement, Direction.TO_SERVER, 5353)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_datagrams_never_raise(data: bytes) -> None:
    session = DnsSession()
    events = session.feed(data, Direction.TO_SERVER, 0.0) + session.close()
    assert all(e.table in ("dns", "anomaly") for e in events)
    if len(data) < 12:
        assert anomalies(events) == ["short_message"]
    m.plausible(data)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=12), st.integers(0, 2**16 - 1), st.data())
def test_fuzz_mutated_messages_never_raise_and_tcp_is_split_invariant(
    positions: list[int], value: int, data: st.DataObject
) -> None:
    base = bytearray(
        dns(0x1234, 0x8180, [question(b"modem.iot-cloud.example")], [rr(POINTER, 5, POINTER), rr(POINTER, 16, b"\x01")])
    )
    for position in positions:
        base[position % len(base)] = (value + position) & 0xFF
    message = bytes(base)
    framed = [(Direction.TO_CLIENT, struct.pack(">H", len(message)) + message, 0.0)]
    whole = replay(DnsSession(stream=True), framed, one_byte=False)
    assert whole == replay(DnsSession(stream=True), framed, one_byte=True)
    if any(e.fields.get("malformed") for e in whole):
        assert anomalies(whole)


def _tcp_capture(path: Path, segments: list[tuple[bool, int, bytes]]) -> None:
    """A pcap of one TCP connection 10.0.0.2:40000 -> 10.0.0.53:53: handshake, then (to_server, flags, payload)."""
    import dpkt

    client, server = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 53])
    sequence = {True: 1000, False: 5000}
    frames = [
        (True, dpkt.tcp.TH_SYN, b""),
        (False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, b""),
        (True, dpkt.tcp.TH_ACK, b""),
    ]
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for number, (to_server, flags, payload) in enumerate(frames + segments):
            tcp = dpkt.tcp.TCP(
                sport=40000 if to_server else 53,
                dport=53 if to_server else 40000,
                seq=sequence[to_server],
                ack=sequence[not to_server],
                flags=flags,
                data=payload,
            )
            sequence[to_server] += len(payload) + (1 if flags & dpkt.tcp.TH_SYN else 0)
            ip = dpkt.ip.IP(src=client if to_server else server, dst=server if to_server else client, p=6, data=tcp)
            ip.len = len(ip)
            frame = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
            writer.writepkt(bytes(frame), ts=1_700_000_000 + number * 0.5)


def test_tcp_through_the_pipeline(tmp_path: Path) -> None:
    """Length prefix alone in the first segment, a message split over segments, two messages in one segment."""
    from tests.decode.dns.common import analyse

    response = dns(0x1234, 0x8180, [question(b"modem.iot-cloud.example")], [rr(POINTER, 1, b"\x0a\x00\x00\x01")])
    axfr = dns(9, 0x0000, [question(b"example", 252)])
    push = 0x18  # PSH | ACK
    prefix = struct.pack(">H", len(QUERY))
    capture = tmp_path / "dns_tcp.pcap"
    _tcp_capture(
        capture,
        [
            (True, push, prefix),
            (True, push, QUERY[:7]),
            (True, push, QUERY[7:] + struct.pack(">H", len(axfr)) + axfr),
            (False, push, struct.pack(">H", len(response)) + response),
        ],
    )
    tables = analyse(tmp_path, capture)
    got = [(r["event_type"], r["transport"], r["transaction_id"], r["query_type_name"]) for r in tables["dns"]]
    assert got == [
        ("query", "tcp", 0x1234, "A"),
        ("query", "tcp", 9, "AXFR"),
        ("response", "tcp", 0x1234, "A"),
        ("unanswered", "tcp", 9, "AXFR"),
    ]
    # Latency runs from the segment that completed the query (packet 6) to the response (packet 7).
    assert tables["dns"][2]["latency"] == pytest.approx(0.5) and tables["dns"][2]["answer_data"] == ["10.0.0.1"]
    assert [f["application"] for f in tables["flows"]] == ["dns"]
    assert not tables["anomaly"]


def test_pairing_ignores_the_case_of_the_name() -> None:
    """DNS 0x20 (randomised case) resolvers echo the case they sent; names compare case-insensitively (RFC 4343)."""
    session = DnsSession()
    session.feed(dns(5, 0x0100, [question(b"MoDeM.example")]), Direction.TO_SERVER, 1.0)
    (row,) = rows(session.feed(dns(5, 0x8180, [question(b"modem.EXAMPLE")]), Direction.TO_CLIENT, 1.5))
    assert row["matched"] is True and row["query_name"] == "modem.EXAMPLE" and session.close() == []


def test_a_name_of_many_labels_without_pointers_is_read_to_its_end() -> None:
    many = b"".join(b"\x01x" for _ in range(200)) + b"\x00" + b"\x00\x01\x00\x01"
    answer = rr(b"\xc0\x0c", 1, b"\x01\x02\x03\x04")
    packet = struct.pack(">HHHHHH", 3, 0x8180, 1, 1, 0, 0) + many + answer
    events = DnsSession().feed(packet, Direction.TO_CLIENT, 0)
    (row,) = rows(events)
    assert anomalies(events) == ["name_too_long", "name_too_long"]  # the question, and the owner pointing to it
    assert (row["label_count"], row["answer_data"]) == (200, ["1.2.3.4"])
