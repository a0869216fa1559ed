"""RDP decoder: Zeek's rdp.log baselines and suricata-verify's rdp cases through the real pipeline, the S7comm
probe leaving RDP alone, one byte at a time, fuzzing and hand-built Connection Requests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction
from quaywatch.decode.rdp import TABLES, RdpDecoder, RdpSession
from quaywatch.decode.s7comm import S7Decoder
from tests.decode.oracles import RESEARCH, Agreement, read_log, replay, tcp_streams
from tests.decode.remote_access.common import Record, analyse, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
ZEEK = RESEARCH / "zeek-btest/testing/btest"
TRACES = ZEEK / "Traces/rdp"
BASELINE = ZEEK / "Baseline"
#: baseline directory -> trace
CASES = {
    "rdp-no-cookie-msthash": "rdp-no-cookie-mstshash.pcap",
    "rdp-proprietary-encryption": "rdp-proprietary-encryption.pcap",
    "rdp-to-ssl": "rdp-to-ssl.pcap",
    "rdp-unknown-keyboard": "rdp-unknown-keyboard.pcap",
    "rdp-x509": "rdp-x509.pcap",
}
#: Zeek's base/protocols/rdp/consts.zeek names for the builds and layouts these traces use.
BUILDS = {2600: "RDP 5.1", 6000: "RDP 6.0", 9600: "RDP 8.1"}
LAYOUTS = {0x409: "English - United States", 0x41E: "Thai"}
FIELDS = (
    "cookie",
    "result",
    "security_protocol",
    "client_channels",
    "keyboard_layout",
    "client_build",
    "client_name",
    "client_dig_product_id",
    "desktop_width",
    "desktop_height",
    "requested_color_depth",
    "cert_type",
    "cert_count",
    "cert_permanent",
    "encryption_level",
    "encryption_method",
)


def zeek_view(row: Record) -> dict[str, str | None]:
    """Our row in rdp.log's spelling."""
    layout = row.get("keyboard_layout")
    build = row.get("client_build")
    view: dict[str, str | None] = {name: None if row.get(name) is None else str(row[name]) for name in FIELDS}
    view["client_channels"] = ",".join(row["client_channels"]) if row.get("client_channels") else None  # type: ignore[arg-type]
    view["keyboard_layout"] = None if layout is None else LAYOUTS.get(int(layout) & 0xFFFF, str(layout))  # type: ignore[call-overload]
    view["client_build"] = None if build is None else BUILDS.get(int(build), str(build))  # type: ignore[call-overload]
    view["cert_permanent"] = None if row.get("cert_permanent") is None else "T" if row["cert_permanent"] else "F"
    view["cert_count"] = str(row.get("cert_count") or 0)
    view["client_port"] = str(row["client_port"])
    return view


def oracle_view(row: dict[str, str | None]) -> dict[str, str | None]:
    view = dict(row)
    layout = view.get("keyboard_layout")
    if layout and " (Best Guess" in layout:  # Zeek names an unknown layout by its low word: the same language
        view["keyboard_layout"] = layout.split(" (Best Guess")[0]
    view["client_port"] = row["id.orig_p"]
    if view.get("cookie"):  # Zeek's TSV writer escapes a backslash as two
        view["cookie"] = view["cookie"].replace("\\\\", "\\")
    return view


def test_zeek_rdp_log(tmp_path: Path) -> None:
    agreement = Agreement(FIELDS)
    for baseline, trace in CASES.items():
        theirs = [oracle_view(r) for r in read_log(BASELINE / f"scripts.base.protocols.rdp.{baseline}/rdp.log")]
        ours = [zeek_view(r) for r in analyse(tmp_path, TRACES / trace, [RdpDecoder()])["rdp"]]
        agreement.score(ours, theirs, key=lambda r: r["client_port"])
    print(agreement.report("Zeek rdp.log"))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in FIELDS:
        assert agreement.ratio(name) >= 0.99, name


SURICATA = {
    "rdp.cookie": "cookie",
    "rdp.client.desktop_height": "desktop_height",
    "rdp.client.client_name": "client_name",
    "rdp.client.id": "client_dig_product_id",
}


def test_suricata_verify_rdp(tmp_path: Path) -> None:
    """rdp-protocol's eve checks: cookie, client name, desktop height, product id, channels, build (Windows XP)."""
    case = RESEARCH / "suricata-verify/tests/rdp-protocol"
    spec = yaml.safe_load(require(case / "test.yaml").read_text())
    (row,) = analyse(tmp_path, case / "RDP-003.pcap", [RdpDecoder()])["rdp"]
    compared = agreed = 0
    for check in spec["checks"]:
        match = check["filter"]["match"]
        if match.get("event_type") != "rdp":
            continue
        for key, value in match.items():
            if key in SURICATA:
                compared += 1
                agreed += row[SURICATA[key]] == value
            elif key.startswith("rdp.channels["):
                compared += 1
                agreed += row["client_channels"][int(key[13:-1])] == value  # type: ignore[index]
            elif key == "rdp.client.build":  # Suricata names build 2600 "Windows XP"
                compared += 1
                agreed += (row["client_build"], value) == (2600, "Windows XP")
    print(f"suricata-verify rdp-protocol: {agreed}/{compared} eve fields agree")
    assert compared >= 8 and agreed == compared


def test_s7comm_probe_leaves_rdp_alone() -> None:
    s7, rdp = S7Decoder(), RdpDecoder()
    for trace in CASES.values():
        for stream in tcp_streams(require(TRACES / trace), 3389):
            first = next(data for direction, data, _ in stream if direction == Direction.TO_SERVER)
            assert rdp.probe(first, Direction.TO_SERVER, 3389)
            assert not s7.probe(first, Direction.TO_SERVER, 3389)
    # An S7 connection request (TSAP parameters 0xC1/0xC2/0xC0) is still S7's, not RDP's.
    s7_request = bytes.fromhex("0300001611e00000000100c0010ac1020100c2020102")
    assert s7.probe(s7_request, Direction.TO_SERVER, 102)
    assert not rdp.probe(s7_request, Direction.TO_SERVER, 102)


def test_one_byte_at_a_time_equals_whole() -> None:
    for trace in CASES.values():
        for stream in tcp_streams(require(TRACES / trace), 3389):
            assert replay(RdpSession(), stream, one_byte=True) == replay(RdpSession(), stream, one_byte=False)


def request(
    cookie: bytes = b"Cookie: mstshash=alice\r\n", negotiate: bytes = b"\x01\x00\x08\x00\x0b\x00\x00\x00"
) -> bytes:
    body = b"\xe0\x00\x00\x00\x00\x00" + cookie + negotiate
    return b"\x03\x00" + (len(body) + 5).to_bytes(2, "big") + bytes([len(body)]) + body


def test_cookie_and_negotiation() -> None:
    session = RdpSession()
    assert session.feed(request(), Direction.TO_SERVER, 0.0) == []
    confirm = b"\x03\x00\x00\x13\x0e\xd0\x00\x00\x12\x34\x00\x02\x00\x08\x00\x02\x00\x00\x00"
    events = session.feed(confirm, Direction.TO_CLIENT, 1.0)
    rdp = next(e.fields for e in events if e.table == "rdp")
    access = next(e.fields for e in events if e.table == "remote_access")
    assert rdp["cookie"] == "alice" and rdp["requested_protocols"] == ["SSL", "HYBRID", "HYBRID_EX"]
    assert (rdp["security_protocol"], rdp["result"]) == ("HYBRID", "encrypted")
    assert (access["method"], access["user_name"]) == ("rdp", "alice")
    assert RdpDecoder().probe(request(), Direction.TO_SERVER, 40000)
    assert RdpDecoder().probe(request(cookie=b""), Direction.TO_SERVER, 40000)


def test_failure_code() -> None:
    session = RdpSession()
    session.feed(request(cookie=b"Cookie: msts=3640205228.15629.0000\r\n"), Direction.TO_SERVER, 0.0)
    failure = b"\x03\x00\x00\x13\x0e\xd0\x00\x00\x12\x34\x00\x03\x00\x08\x00\x05\x00\x00\x00"
    (rdp,) = [e.fields for e in session.feed(failure, Direction.TO_CLIENT, 1.0) if e.table == "rdp"]
    assert rdp["routing_token"] == "msts=3640205228.15629.0000" and rdp.get("cookie") is None
    assert (rdp["failure_code"], rdp["result"]) == (5, "HYBRID_REQUIRED_BY_SERVER")


def test_truncated_mcs_is_an_anomaly() -> None:
    session = RdpSession()
    session.feed(request(negotiate=b"\x01\x00\x08\x00\x00\x00\x00\x00"), Direction.TO_SERVER, 0.0)
    session.feed(b"\x03\x00\x00\x0b\x06\xd0\x00\x00\x12\x34\x00", Direction.TO_CLIENT, 0.0)
    events = session.feed(b"\x03\x00\x00\x0c\x02\xf0\x80\x7f\x65\x82\xff\xff", Direction.TO_SERVER, 0.0)
    assert [e.fields["code"] for e in events if e.table == "anomaly"] == ["malformed"]


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(chunks=st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=8), prefix=st.booleans())
def test_random_streams_never_raise(chunks: list[tuple[bool, bytes]], prefix: bool) -> None:
    session = RdpSession()
    if prefix:
        session.feed(request(), Direction.TO_SERVER, 0.0)
    for index, (to_client, data) in enumerate(chunks):
        framed = b"\x03\x00" + (len(data) + 4).to_bytes(2, "big") + data if index % 2 else data
        for event in session.feed(framed, Direction(int(to_client)), float(index)):
            assert event.table in (*TABLES, "anomaly")
    session.close()
