"""SNMP decoder: hand-built messages for the important fields, tshark differential, fuzzing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction
from quaywatch.decode.snmp import TABLES, SnmpDecoder, SnmpSession
from tests.decode.oracles import Agreement, Row
from tests.decode.snmp.common import NDPI, SURICATA, ZEEK, analyse

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))


def tlv(tag: int, body: bytes) -> bytes:
    length = len(body)
    head = bytes([length]) if length < 0x80 else bytes([0x82]) + length.to_bytes(2, "big")
    return bytes([tag]) + head + body


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def oid(text: str) -> bytes:
    arcs = [int(a) for a in text.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def varbinds(*pairs: tuple[str, bytes]) -> bytes:
    return tlv(0x30, b"".join(tlv(0x30, oid(name) + value) for name, value in pairs))


def message(version: int, community: bytes, pdu: bytes) -> bytes:
    return tlv(0x30, integer(version) + tlv(0x04, community) + pdu)


def pdu(tag: int, request_id: int, status: int, index: int, binds: bytes) -> bytes:
    return tlv(tag, integer(request_id) + integer(status) + integer(index) + binds)


NULL = b"\x05\x00"


def rows(session: SnmpSession, data: bytes, direction: Direction = Direction.TO_SERVER, ts: float = 1.0) -> list:
    return session.feed(data, direction, ts)


def test_get_and_response_with_system_group_and_pairing() -> None:
    session = SnmpSession()
    request = message(
        1, b"private", pdu(0xA0, 77, 0, 0, varbinds(("1.3.6.1.2.1.1.1.0", NULL), ("1.3.6.1.2.1.1.5.0", NULL)))
    )
    [get] = rows(session, request)
    assert get.event_type == "get"
    assert get.fields["version"] == "2c" and get.fields["community"] == "private" and get.fields["request_id"] == 77
    assert get.fields["oids"] == ["1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.5.0"] and get.fields.get("sys_descr") is None
    answer = message(
        1,
        b"private",
        pdu(
            0xA2,
            77,
            0,
            0,
            varbinds(
                ("1.3.6.1.2.1.1.1.0", tlv(0x04, b"ZPMC crane PLC \xff")),
                ("1.3.6.1.2.1.1.2.0", oid("1.3.6.1.4.1.9.1.1")),
                ("1.3.6.1.2.1.1.5.0", tlv(0x04, b"sts-04")),
            ),
        ),
    )
    [response] = rows(session, answer, Direction.TO_CLIENT, 1.25)
    fields = response.fields
    assert fields["sys_descr"] == "ZPMC crane PLC \\xff"
    assert fields["sys_object_id"] == "1.3.6.1.4.1.9.1.1" and fields["sys_name"] == "sts-04"
    assert fields["matched"] is True and fields["latency"] == 0.25 and fields["request_pdu_type"] == "get"
    assert fields["error_status"] == "noError" and fields["varbinds"] == 3


def test_error_status_and_get_bulk() -> None:
    session = SnmpSession()
    [bulk] = rows(session, message(1, b"public", pdu(0xA5, 5, 0, 10, varbinds(("1.3.6.1.2.1.2", NULL)))))
    assert bulk.fields["pdu_type"] == "get-bulk"
    assert bulk.fields["non_repeaters"] == 0 and bulk.fields["max_repetitions"] == 10
    assert bulk.fields.get("error_status") is None
    [error] = rows(
        session, message(0, b"public", pdu(0xA2, 6, 2, 1, varbinds(("1.3.6.1.9", NULL)))), Direction.TO_CLIENT
    )
    assert error.fields["error_status"] == "noSuchName" and error.fields["error_index"] == 1
    assert error.fields["matched"] is False and error.fields["version"] == "1"


def test_v1_trap_and_v2_trap_oid() -> None:
    body = (
        oid("1.3.6.1.4.1.31337")
        + tlv(0x40, bytes([10, 0, 0, 7]))
        + integer(4)
        + integer(12)
        + tlv(0x43, (123456).to_bytes(3, "big"))
        + varbinds(("1.3.6.1.2.1.1.5.0", tlv(0x04, b"crane")))
    )
    [trap] = rows(SnmpSession(), message(0, b"public", tlv(0xA4, body)))
    fields = trap.fields
    assert fields["pdu_type"] == "trap" and fields["enterprise"] == "1.3.6.1.4.1.31337"
    assert fields["agent_address"] == "10.0.0.7" and fields["generic_trap"] == "authenticationFailure"
    assert fields["specific_trap"] == 12 and fields["time_stamp"] == 123456 and fields["sys_name"] == "crane"
    v2 = pdu(
        0xA7,
        9,
        0,
        0,
        varbinds(("1.3.6.1.2.1.1.3.0", tlv(0x43, b"\x01")), ("1.3.6.1.6.3.1.1.4.1.0", oid("1.3.6.1.6.3.1.1.5.3"))),
    )
    [notification] = rows(SnmpSession(), message(1, b"public", v2))
    assert notification.fields["pdu_type"] == "v2-trap" and notification.fields["trap_oid"] == "1.3.6.1.6.3.1.1.5.3"


def v3(flags: int, user: bytes, scoped: bytes) -> bytes:
    header = tlv(0x30, integer(4242) + integer(65507) + tlv(0x04, bytes([flags])) + integer(3))
    usm = tlv(
        0x30,
        tlv(0x04, bytes.fromhex("80001f8880"))
        + integer(7)
        + integer(1000)
        + tlv(0x04, user)
        + tlv(0x04, b"")
        + tlv(0x04, b""),
    )
    return tlv(0x30, integer(3) + header + tlv(0x04, usm) + scoped)


def test_v3_plain_and_encrypted() -> None:
    scoped = tlv(
        0x30, tlv(0x04, b"\x80\x00") + tlv(0x04, b"ctx") + pdu(0xA0, 1, 0, 0, varbinds(("1.3.6.1.2.1.1.1.0", NULL)))
    )
    [plain] = rows(SnmpSession(), v3(4, b"operator", scoped))
    fields = plain.fields
    assert fields["version"] == "3" and fields["msg_id"] == 4242 and fields["msg_max_size"] == 65507
    assert fields["reportable"] and not fields["authenticated"] and not fields["encrypted"]
    assert (
        fields["security_model"] == "USM" and fields["user_name"] == "operator" and fields["engine_id"] == "80001f8880"
    )
    assert fields["engine_boots"] == 7 and fields["engine_time"] == 1000
    assert fields["context_name"] == "ctx" and fields["pdu_type"] == "get" and fields["oids"] == ["1.3.6.1.2.1.1.1.0"]
    [secret] = rows(SnmpSession(), v3(7, b"admin", tlv(0x04, b"\x13\x37" * 20)))
    assert secret.event_type == "encrypted" and secret.fields["encrypted"] and secret.fields.get("pdu_type") is None
    assert secret.fields["user_name"] == "admin" and secret.fields.get("malformed") is None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (message(1, b"public", pdu(0xA0, 1, 0, 0, varbinds(("1.3.6.1", NULL))))[:-3], "claims"),
        (b"\x30\x80" + integer(1)[:] + b"\x00\x00", "indefinite"),
        (tlv(0x30, integer(2) + tlv(0x04, b"x") + pdu(0xA0, 1, 0, 0, varbinds())), "unknown version"),
        (message(1, b"public", tlv(0xAF, b"")), "unknown PDU"),
        (message(1, b"public", pdu(0xA0, 1, 0, 0, tlv(0x30, tlv(0x30, b"\x06\x02\x2b\x86" + NULL)))), "ends inside"),
        (message(1, b"public", pdu(0xA0, 1, 0, 0, tlv(0x30, tlv(0x30, b"\x06\x03\x2b\x80\x01" + NULL)))), "0x80"),
    ],
)
def test_malformed_messages_are_anomalies(data: bytes, why: str) -> None:
    events = rows(SnmpSession(), data)
    assert events[0].table == "snmp" and why in str(events[0].fields["malformed"])
    assert [e.fields["code"] for e in events[1:]] == ["malformed_message"]


def test_probe() -> None:
    decoder = SnmpDecoder()
    good = message(1, b"public", pdu(0xA0, 1, 0, 0, varbinds(("1.3.6.1", NULL))))
    assert decoder.probe(good, Direction.TO_SERVER, 161)
    assert decoder.probe(v3(4, b"", tlv(0x30, b"")), Direction.TO_SERVER, 5000)
    assert not decoder.probe(b"GET / HTTP/1.1\r\n\r\n", Direction.TO_SERVER, 161)
    assert not decoder.probe(good[:10], Direction.TO_SERVER, 161)
    assert not decoder.probe(tlv(0x30, integer(1) + tlv(0x04, b"x") + tlv(0x30, b"")), Direction.TO_SERVER, 161)


# -- tshark differential ----------------------------------------------------------------------------------------

TSHARK_FIELDS = ["version", "community", "pdu_type", "request_id", "error_status_code", "oids", "user_name",
                 "engine_id", "trap_oid"]  # fmt: skip
TSHARK_PDU = {"0": "get", "1": "get-next", "2": "response", "3": "set", "4": "trap", "5": "get-bulk",
              "6": "inform", "7": "v2-trap", "8": "report"}  # fmt: skip


def tshark_rows(capture: Path) -> dict[int, Row]:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is missing: run `make system-packages`")
    columns = ["frame.number", "snmp.version", "snmp.msgVersion", "snmp.community", "snmp.data", "snmp.request_id",
               "snmp.error_status", "snmp.name", "snmp.msgUserName", "snmp.msgAuthoritativeEngineID",
               "snmp.enterprise", "snmp.encryptedPDU"]  # fmt: skip
    command = ["tshark", "-n", "-r", str(capture), "-Y", "snmp", "-T", "fields", "-E", "occurrence=a", "-E",
               "aggregator=,", "-d", "udp.port==161,snmp"]  # fmt: skip
    for column in columns:
        command += ["-e", column]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    out: dict[int, Row] = {}
    for line in output.splitlines():
        values = [v or None for v in line.split("\t")]
        frame, version, v3, community, data, request, status, names, user, engine, enterprise, encrypted = values
        version = version or v3
        if not version or "," in version:
            continue
        out[int(frame or 0)] = {
            "version": {"0": "1", "1": "2c", "3": "3"}.get(version),
            "community": community,
            "pdu_type": TSHARK_PDU.get(data or "") if not encrypted else None,
            "request_id": request,
            "error_status_code": status,
            "oids": names,
            "user_name": user,
            "engine_id": None if engine in (None, "<MISSING>") else engine.replace(":", ""),
            "trap_oid": enterprise,
        }
    return out


#: The Zeek traces that test_snmp_oracles.py does not compare with Zeek's baselines, nDPI's and suricata-verify's.
CAPTURES = [
    *(ZEEK / "Traces/snmp" / name for name in ("leak_test.pcapng", "snmpwalk-short.pcap")),
    NDPI / "pcap/snmp.pcap",
    *sorted(SURICATA.glob("snmp-*/*.pcap")),
]


def test_tshark_agreement(tmp_path: Path) -> None:
    agreement = Agreement(TSHARK_FIELDS)
    present = [c for c in CAPTURES if c.exists()]
    if not present:
        pytest.skip(f"research data missing: {ZEEK / 'Traces/snmp'}")
    for capture in present:
        theirs = tshark_rows(capture)
        mine = {}
        for row in analyse(tmp_path, capture, [SnmpDecoder()], list(TABLES))["snmp"]:
            view: Row = {n: None if row.get(n) is None else str(row[n]) for n in TSHARK_FIELDS}
            view["oids"] = ",".join(row["oids"]) if row["oids"] else None  # type: ignore[arg-type]
            if row["pdu_type"] == "trap" or row["encrypted"]:
                view["user_name"] = view["user_name"] or None
            if row["pdu_type"] != "trap":
                view["trap_oid"] = None
            mine[int(row["packet_number"])] = view  # type: ignore[call-overload]
        for frame, other in theirs.items():
            if frame in mine:
                agreement._compare(mine[frame], other)
            else:
                agreement.unmatched_theirs += 1
        agreement.unmatched_ours += len(mine.keys() - theirs.keys())
    print("\n" + agreement.report(f"tshark snmp ({len(present)} captures)"))
    assert agreement.unmatched_theirs == 0
    for name in TSHARK_FIELDS:
        assert agreement.ratio(name) >= 0.99, agreement.report("tshark")


# -- datagram independence and fuzzing ----------------------------------------------------------------------------


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(datagrams=st.lists(st.binary(max_size=200), max_size=10), prefix=st.booleans())
def test_random_datagrams_never_raise(datagrams: list[bytes], prefix: bool) -> None:
    session = SnmpSession()
    for data in datagrams:
        data = (b"\x30" + bytes([min(len(data), 127)]) + data) if prefix else data
        events = session.feed(data, Direction.TO_SERVER, 1.0)
        assert events and events[0].table == "snmp"
        if events[0].fields.get("malformed"):
            assert events[-1].table == "anomaly"
    SnmpDecoder().probe(b"".join(datagrams), Direction.TO_SERVER, 161)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(cut=st.integers(0, 200), flip=st.integers(0, 255), position=st.integers(0, 200))
def test_mutated_messages_never_raise(cut: int, flip: int, position: int) -> None:
    good = bytearray(message(1, b"public", pdu(0xA2, 77, 0, 0, varbinds(("1.3.6.1.2.1.1.1.0", tlv(0x04, b"x" * 90))))))
    good[position % len(good)] ^= flip
    events = SnmpSession().feed(bytes(good[: cut or None]), Direction.TO_CLIENT, 1.0)
    assert events[0].table == "snmp"
