"""DHCPv6 decoder: hand-built messages (relay included), probing, fuzzing, and tshark's dhcpv6 dissector on every
research capture with DHCPv6 (found by a bounded tshark scan: S7 and Beckhoff captures, Windows SOLICITs) and on
a synthetic capture. Run with ``-s`` to see the agreement tables."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Direction, Event
from quaywatch.decode.dhcp.v6 import TABLES, Dhcpv6Decoder, Dhcpv6Session
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH, Agreement, Row
from tests.factories import udp_frame, write_pcap

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
TABLE_NAMES = (*TABLES, "anomaly")
ITI = RESEARCH / "iti-ics-security-tools/pcaps"
CAPTURES = [
    ITI / "s7/S7Comm/wrapup.pcapng",
    ITI / "beckoff/addroute.pcapng",
    ITI / "beckoff/addrouteuse444444444.pcapng",
    ITI / "beckoff/addroute1.pcapng",
    ITI / "beckoff/invokeid12.pcapng",
    ITI / "beckoff/beckoffiplinktc2.pcapng",
    ITI / "beckoff/beckoffiplink.pcapng",
]
DUID = bytes.fromhex("000100011d044858f0761ca86d8e")
SERVER_DUID = bytes.fromhex("0003000100a0451c2d3e")


def option(code: int, value: bytes) -> bytes:
    return struct.pack(">HH", code, len(value)) + value


def solicit(xid: int = 0x7F04EE) -> bytes:
    return (
        bytes([1]) + xid.to_bytes(3, "big")
        + option(8, b"\x00\x00")
        + option(1, DUID)
        + option(3, bytes.fromhex("11f0761c") + bytes(8))
        + option(39, b"\x00\x07jc_zhao")
        + option(16, struct.pack(">IH", 311, 8) + b"MSFT 5.0")
        + option(6, struct.pack(">HHHH", 24, 23, 17, 39))
    )  # fmt: skip


def advertise() -> bytes:
    address = bytes.fromhex("20010db8000000000000000000000077")
    ia = (
        bytes.fromhex("11f0761c") + struct.pack(">II", 3600, 5400) + option(5, address + struct.pack(">II", 7200, 7500))
    )
    dns = bytes.fromhex("20010db8000000000000000000000053") + bytes.fromhex("fd000000000000000000000000000001")
    return bytes([2]) + b"\x7f\x04\xee" + option(1, DUID) + option(2, SERVER_DUID) + option(3, ia) + option(23, dns)


def relay(inner: bytes) -> bytes:
    link = bytes.fromhex("20010db8000000010000000000000001")
    peer = bytes.fromhex("fe80000000000000f2761cfffea86d8e")
    return bytes([12, 1]) + link + peer + option(18, b"eth0") + option(9, inner)


def frames() -> list[bytes]:
    return [
        udp_frame("fe80::f276:1cff:fea8:6d8e", "ff02::1:2", 546, 547, solicit()),
        udp_frame("fe80::1", "fe80::f276:1cff:fea8:6d8e", 547, 546, advertise()),
        udp_frame("2001:db8:0:1::1", "2001:db8::547", 547, 547, relay(solicit(0x123456))),
    ]


def decode(data: bytes) -> list[Event]:
    return Dhcpv6Session().feed(data, Direction.TO_SERVER, 0.0)


def rows(events: list[Event], table: str = "dhcpv6") -> list[dict[str, object]]:
    return [event.fields for event in events if event.table == table]


def test_solicit_gives_the_fingerprint() -> None:
    (row,) = rows(decode(solicit()))
    assert (row["message_type_name"], row["transaction_id"]) == ("SOLICIT", 0x7F04EE)
    assert (row["client_duid"], row["client_duid_type"], row["client_mac"]) == (DUID, "LLT", "f0:76:1c:a8:6d:8e")
    assert (row["client_fqdn"], row["vendor_class_enterprise"], row["vendor_class"]) == ("jc_zhao", 311, ["MSFT 5.0"])
    assert row["requested_options"] == [24, 23, 17, 39] and row["options"] == [8, 1, 3, 39, 16, 6]


def test_advertise_and_relay() -> None:
    (row,) = rows(decode(advertise()))
    assert row["server_duid"] == SERVER_DUID and row["addresses"] == ["2001:db8::77"]
    assert row["dns_servers"] == ["2001:db8::53", "fd00::1"]
    events = decode(relay(solicit(0x123456)))
    (row,) = rows(events)
    assert events[0].event_type == "relay-forw" and not rows(events, "anomaly")
    assert (row["hop_count"], row["link_address"], row["peer_address"]) == (
        1,
        "2001:db8:0:1::1",
        "fe80::f276:1cff:fea8:6d8e",
    )
    assert (row["inner_message_type_name"], row["transaction_id"], row["client_mac"]) == (
        "SOLICIT",
        0x123456,
        "f0:76:1c:a8:6d:8e",
    )


def test_damage_and_probe() -> None:
    assert [e["code"] for e in rows(decode(b"\x01\x00"), "anomaly")] == ["truncated_header"]
    assert [e["code"] for e in rows(decode(solicit()[:-1]), "anomaly")] == ["truncated_option"]
    assert [e["code"] for e in rows(decode(relay(b"")[:60]), "anomaly")] == ["bad_relay_message"]
    decoder = Dhcpv6Decoder()
    assert decoder.probe(solicit(), Direction.TO_SERVER, 547) and decoder.probe(
        relay(solicit()), Direction.TO_SERVER, 9
    )
    assert not decoder.probe(solicit()[:-1], Direction.TO_SERVER, 547)
    assert not decoder.probe(b"\x01\x00\x00\x01" + option(8, b"\x00\x00"), Direction.TO_SERVER, 547)  # no DUID
    assert not decoder.probe(b"\x63" + solicit()[1:], Direction.TO_SERVER, 547)


def test_truncation_at_every_length_never_raises() -> None:
    data = relay(solicit())
    for length in range(len(data)):
        for event in decode(data[:length]):
            assert event.table in TABLE_NAMES


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(kind=st.integers(0, 25), items=st.lists(st.tuples(st.integers(0, 40), st.binary(max_size=40)), max_size=8))
def test_random_options_never_raise(kind: int, items: list[tuple[int, bytes]]) -> None:
    body = b"".join(option(code, value) for code, value in items)
    data = bytes([kind]) + (bytes(33) if kind in (12, 13) else b"\x00\x00\x01") + body
    for event in decode(data) + decode(body):
        assert event.table in TABLE_NAMES


# -- tshark ---------------------------------------------------------------------------------------------------------

TSHARK = {
    "frame.number": "packet",
    "dhcpv6.msgtype": "message_type",
    "dhcpv6.hopcount": "hop_count",
    "dhcpv6.linkaddr": "link_address",
    "dhcpv6.peeraddr": "peer_address",
    "dhcpv6.xid": "transaction_id",
    "dhcpv6.duid.bytes": "duids",
    "dhcpv6.duidllt.link_layer_addr": "client_mac",
    "dhcpv6.vendorclass.enterprise": "vendor_class_enterprise",
    "dhcpv6.vendorclass.data": "vendor_class",
    "dhcpv6.requested_option_code": "requested_options",
    "dhcpv6.elapsed_time": "elapsed_time",
    "dhcpv6.iaaddr.ip": "addresses",
    "dhcpv6.dns_server": "dns_servers",
}
FIELDS = [name for name in TSHARK.values() if name not in ("packet", "message_type")] + ["message_types"]


def tshark_rows(capture: Path) -> list[Row]:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `make system-packages`")
    command = ["tshark", "-n", "-r", str(capture), "-Y", "dhcpv6", "-T", "fields", "-E", "occurrence=a"]
    command += ["-E", "aggregator=\x1f"]
    for name in TSHARK:
        command += ["-e", name]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = []
    for line in output.splitlines():
        values = {k: (v.split("\x1f") if v else []) for k, v in zip(TSHARK.values(), line.split("\t"), strict=True)}
        row: Row = {name: ",".join(items) or None for name, items in values.items()}
        row["message_types"] = row.pop("message_type")  # outer, then inner for relayed messages
        for name in ("transaction_id", "hop_count"):
            row[name] = str(int(values[name][0], 0)) if values[name] else None
        row["link_address"] = values["link_address"][0] if values["link_address"] else None
        row["peer_address"] = values["peer_address"][0] if values["peer_address"] else None
        row["client_mac"] = values["client_mac"][0] if values["client_mac"] else None
        # tshark shows the Elapsed Time option in milliseconds; the option counts hundredths of a second (RFC 8415
        # section 21.9), which we keep.
        row["elapsed_time"] = str(int(values["elapsed_time"][0]) // 10) if values["elapsed_time"] else None
        result.append(row)
    return result


def our_rows(records: list[dict[str, object]]) -> list[Row]:
    result = []
    for r in records:
        row: Row = {"packet": str(r["packet_number"])}
        for name in FIELDS:
            value = r.get(name)
            row[name] = ",".join(map(str, value)) if isinstance(value, list) else None if value is None else str(value)
        row["duids"] = ",".join(bytes(d).hex() for d in (r["client_duid"], r["server_duid"]) if d is not None) or None  # type: ignore[arg-type]
        types = [r["message_type"], r["inner_message_type"]]
        row["message_types"] = ",".join(str(t) for t in types if t is not None)
        result.append(row)
    return result


def compare(tmp_path: Path, captures: list[Path], title: str) -> Agreement:
    agreement = Agreement(FIELDS)
    for capture in captures:
        store = Store(tmp_path / f"{capture.stem}.duckdb")
        Analyzer(store, decoders=[Dhcpv6Decoder()]).analyze(capture)
        cursor = store.connection.execute("SELECT * FROM dhcpv6 ORDER BY packet_number")
        names = [column[0] for column in cursor.description]
        records = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        assert not store.connection.execute("SELECT * FROM anomaly").fetchall()
        store.close()
        agreement.score(our_rows(records), tshark_rows(capture), key=lambda r: r["packet"])
    print("\n" + agreement.report(title))
    return agreement


@pytest.mark.oracle
def test_research_captures_agree_with_tshark(tmp_path: Path) -> None:
    for capture in CAPTURES:
        if not capture.exists():
            pytest.skip(f"research data missing: {capture}")
    agreement = compare(tmp_path, CAPTURES, "tshark dhcpv6, research captures")
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    assert agreement.compared["transaction_id"] == 50
    for name in FIELDS:
        assert agreement.ratio(name) >= 0.99, agreement.report(name)


@pytest.mark.oracle
def test_synthetic_messages_agree_with_tshark(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "v6.pcap", [(1.0 + i, f) for i, f in enumerate(frames())])
    agreement = compare(tmp_path, [capture], "tshark dhcpv6, synthetic messages")
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in FIELDS:
        assert agreement.compared.get(name), f"{name}: the synthetic capture should exercise it"
        assert agreement.ratio(name) == 1.0, agreement.report(name)
