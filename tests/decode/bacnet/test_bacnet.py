"""BACnet decoder: hand-built datagrams, probing, datagram-alone equivalence with the pipeline, truncation at
every length, fuzzing, and the research corpus. The ICSNPP comparisons are in test_bacnet_oracles.py."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.bacnet import TABLES, BacnetDecoder, BacnetSession
from quaywatch.decode.bacnet import constants as c
from quaywatch.decode.base import Direction, Event
from tests.decode.bacnet.common import ICSNPP, ITI, NDPI, Record, analyse
from tests.decode.oracles import require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
TABLE_NAMES = (*TABLES, "anomaly")


def bvlc(apdu: bytes, function: int = 0x0A, npdu: bytes = b"\x01\x04") -> bytes:
    body = npdu + apdu
    return bytes([0x81, function]) + (len(body) + 4).to_bytes(2, "big") + body


def decode(datagram: bytes, direction: Direction = Direction.TO_SERVER) -> list[Event]:
    return BacnetSession().feed(datagram, direction, 0.0)


def rows(events: list[Event], table: str) -> list[dict[str, object]]:
    return [event.fields for event in events if event.table == table]


#: I-Am from device 100: max APDU 1476, segmented-both, vendor 24.
I_AM = bvlc(bytes.fromhex("1000c40200006422 05c4 9100 2118".replace(" ", "")), 0x0B, b"\x01\x00")
#: WriteProperty analog-value 1 present-value := 100.0 at priority 8.
WRITE = bvlc(bytes.fromhex("00050f0f" + "0c00800001" + "1955" + "3e4442c800003f" + "4908"))
#: ReinitializeDevice coldstart with the password 's3cr3t!!'.
REINITIALIZE = bvlc(bytes.fromhex("00050114" + "0900" + "1d0900") + b"s3cr3t!!")


def test_i_am_names_the_vendor() -> None:
    events = decode(I_AM)
    (header,) = rows(events, "bacnet")
    assert (header["bvlc_function"], header["pdu_type"], header["service"]) == (
        "Original_Broadcast_NPDU",
        "UNCONFIRMED_REQUEST",
        "i_am",
    )
    (found,) = rows(events, "bacnet_discovery")
    assert found["device_instance"] == 100 and found["device_object_type"] == "device"
    assert (found["max_apdu"], found["segmentation"]) == (1476, "segmented-both")
    assert (found["vendor_id"], found["vendor"]) == (24, "Automated Logic Corporation")
    assert not rows(events, "anomaly")


def test_write_property_keeps_the_value_and_sets_the_flags() -> None:
    events = decode(WRITE)
    (header,) = rows(events, "bacnet")
    assert header["service"] == "write_property" and header["controls_device"] is True
    (written,) = rows(events, "bacnet_property")
    assert (written["object_type"], written["object_instance"], written["property"]) == (
        "analog-value",
        1,
        "present-value",
    )
    assert (written["value_tag"], written["value"], written["value_number"], written["priority"]) == (
        "real",
        "100.000000",
        100.0,
        8,
    )
    assert written["writes"] is True and written["invoke_id"] == 15
    answer = BacnetSession()
    answer.feed(WRITE, Direction.TO_SERVER, 10.0)
    ack = answer.feed(bvlc(bytes.fromhex("200f0f"), npdu=b"\x01\x00"), Direction.TO_CLIENT, 10.25)
    (row,) = rows(ack, "bacnet")
    assert (row["pdu_type"], row["matched"], row["latency"], row["request_service"]) == (
        "SIMPLE_ACK",
        True,
        0.25,
        "write_property",
    )


def test_reinitialize_device_never_stores_the_password() -> None:
    events = decode(REINITIALIZE)
    (control,) = rows(events, "bacnet_device_control")
    assert (control["service"], control["state"], control["password_present"], control["password_length"]) == (
        "reinitialize_device",
        "coldstart",
        True,
        8,
    )
    assert rows(events, "bacnet")[0]["controls_device"] is True
    assert b"s3cr3t" not in repr([event.fields for event in events]).encode()


def test_read_property_multiple_ack_with_an_access_error() -> None:
    ack = "300a0e" + "0c02000064" + "1e" + "294d" + "4e7506006d6574656f4f" + "291c" + "5e91029120" + "5f" + "1f"
    events = decode(bvlc(bytes.fromhex(ack), npdu=b"\x01\x00"))
    name, description = rows(events, "bacnet_property")
    assert (name["property"], name["value"]) == ("object-name", "meteo")
    assert (description["property"], description["error_class"], description["error_code"]) == (
        "description",
        "property",
        "unknown-property",
    )


def test_network_message_and_routing() -> None:
    events = decode(bvlc(b"", npdu=bytes.fromhex("01a0ffff00ff0100030004")))
    (row,) = rows(events, "bacnet")
    assert (row["network_message_type"], row["dnet"], row["hop_count"], row["networks"]) == (
        "i_am_router_to_network",
        65535,
        255,
        [3, 4],
    )


def test_probe_decides_by_content() -> None:
    decoder = BacnetDecoder()
    assert decoder.probe(I_AM, Direction.TO_SERVER, 47809)
    assert decoder.probe(WRITE, Direction.TO_SERVER, 40000)
    assert not decoder.probe(bytes.fromhex("abcd01000001000000000000") + b"\x07example", Direction.TO_SERVER, 47808)
    assert decoder.probe(WRITE[:-1], Direction.TO_SERVER, 47808)  # a wrong BVLC length, well-formed NPDU and APDU
    assert not decoder.probe(b"\x81\x0a\x00\x08\x02\x04\x00\x05", Direction.TO_SERVER, 47808)  # NPDU version 2
    assert not decoder.probe(b"\x81\x0a\x00\x20\x01\x50\x00\x05\x01", Direction.TO_SERVER, 47808)  # and reserved bits


# -- the traces: datagram alone == pipeline, truncation ----------------------------------------------------------


def _datagrams(capture: Path) -> list[tuple[int, bytes]]:
    """(packet number, UDP payload) of every BVLC datagram, read with dpkt (independent of our ingest)."""
    import dpkt

    out = []
    with require(capture).open("rb") as handle:
        for number, (_timestamp, frame) in enumerate(dpkt.pcap.Reader(handle), 1):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP) and ip.data.data[:1] == b"\x81":
                out.append((number, bytes(ip.data.data)))
    return out


#: Filled by a session from other datagrams of the flow: request pairing and segment reassembly.
_CONTEXT = {"message_id", "matched", "request_service", "latency", "segments"}


def _decoded(record: Record, schema_names: set[str]) -> dict[str, object]:
    return {k: v for k, v in record.items() if k in schema_names and k not in _CONTEXT}


@pytest.mark.parametrize(
    "trace", ["bacnet_error_reject_abort.pcap", "bacnet_segmented_data.pcap", "bacnet_services.pcap"]
)
def test_each_datagram_alone_gives_the_pipeline_events(tmp_path: Path, trace: str) -> None:
    tables = analyse(tmp_path, ICSNPP / "traces" / trace)
    piped: dict[tuple[str, int], list[dict[str, object]]] = defaultdict(list)
    for table in TABLES:
        names = set(TABLES[table].names)
        for record in tables[table]:
            piped[(table, int(record["packet_number"]))].append(_decoded(record, names))  # type: ignore[call-overload]
    compared = 0
    for number, datagram in _datagrams(ICSNPP / "traces" / trace)[:1500]:  # the rest repeats, kept fast
        events = decode(datagram)
        (header,) = rows(events, "bacnet")
        reject_or_abort = header.get("pdu_type_code") in (c.REJECT, c.ABORT)
        for table in TABLES:
            names = set(TABLES[table].names)
            alone = [_decoded(row, names) for row in rows(events, table)]
            theirs = piped.get((table, number), [])
            if header.get("segmented"):  # continuation segments are reassembled only in a session
                continue
            if table == "bacnet" and reject_or_abort:  # the service is the request's, from the session
                for row in theirs:
                    row.pop("service", None)
            assert [{k: v for k, v in row.items() if v is not None} for row in alone] == [
                {k: v for k, v in row.items() if v is not None} for row in theirs
            ], (trace, number, table)
            compared += len(alone)
    assert compared > 20


def test_truncation_at_every_length_gives_anomalies_never_exceptions() -> None:
    seen: set[bytes] = set()
    for trace in sorted((ICSNPP / "traces").glob("*.pcap")):
        for _number, datagram in _datagrams(trace):
            shape = datagram[:12]
            if shape in seen or len(seen) >= 200:  # 200 distinct headers, kept fast
                continue
            seen.add(shape)
            for size in range(len(datagram)):
                events = decode(datagram[:size])
                assert any(event.table == "anomaly" for event in events), (trace.name, datagram.hex(), size)
    assert len(seen) > 50


def test_research_corpus_decodes_without_decoder_exceptions(tmp_path: Path) -> None:
    captures = [*sorted(require(ITI).rglob("*.pcap*"))]
    captures = [p for p in captures if "bacnet" in str(p).lower()] + [NDPI / "bacnet.pcap"]
    total = 0
    for capture in captures:
        tables = analyse(tmp_path, require(capture))
        assert not [a for a in tables["anomaly"] if a["code"] == "decoder_exception"], capture
        assert tables["bacnet"], capture
        total += len(tables["bacnet"])
    assert total >= 40


# -- fuzzing -----------------------------------------------------------------------------------------------------


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(datagrams=st.lists(st.binary(max_size=200), max_size=10), prefix=st.booleans())
def test_random_datagrams_never_raise(datagrams: list[bytes], prefix: bool) -> None:
    session = BacnetSession()
    for index, data in enumerate(datagrams):
        datagram = bvlc(data, npdu=b"\x01" + data[:1]) if prefix else data
        for event in session.feed(datagram, Direction(index % 2), float(index)):
            assert event.table in TABLE_NAMES
    session.close()


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(
    kind=st.integers(0, 15),
    flags=st.integers(0, 15),
    choice=st.sampled_from([0, 1, 7, 8, 12, 14, 15, 16, 17, 20, 26, 255]),
    body=st.binary(max_size=160),
    segment=st.integers(0, 3),
)
def test_well_framed_random_apdus_never_raise(kind: int, flags: int, choice: int, body: bytes, segment: int) -> None:
    """Random service data behind valid APDU headers reaches every service parser."""
    first = bytes([kind << 4 | flags])
    headers = {
        0: first + b"\x05\x01" + (bytes([segment, 4]) if flags & 8 else b"") + bytes([choice]),
        1: first + bytes([choice]),
        3: first + b"\x01" + (bytes([segment, 4]) if flags & 8 else b"") + bytes([choice]),
    }
    apdu = headers.get(kind, first + b"\x01" + bytes([choice])) + body
    session = BacnetSession()
    for direction in Direction:
        events = session.feed(bvlc(apdu), direction, 0.0)
        assert events[0].table == "bacnet"
    session.close()
