"""The ``arp`` table (with RFC 5227 kinds) against tshark's arp dissector, and the ``arp_history`` view.

Run with ``-s`` to see the agreement table. The inputs are research captures with ARP found by a bounded tshark
scan (``-Y arp``) of every capture under 3 MB: a MELSEC capture (461 ARP packets), a Modbus capture and a Profinet
capture (requests, replies, announcements).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH, Agreement, Row
from tests.factories import write_pcap

pytestmark = pytest.mark.oracle

ITI = RESEARCH / "iti-ics-security-tools/pcaps"
CAPTURES = [
    ITI / "MELSEC/melsoft_UDP_unclean_1.pcap",
    ITI / "ModbusTCP/mb2.pcap",
    ITI / "profinet/Profinet_Failed.pcap",
]
TSHARK = {
    "frame.number": "packet",
    "arp.opcode": "opcode",
    "arp.src.hw_mac": "sender_mac",
    "arp.src.proto_ipv4": "sender_ip",
    "arp.dst.hw_mac": "target_mac",
    "arp.dst.proto_ipv4": "target_ip",
    "arp.isgratuitous": "gratuitous",
    "arp.isprobe": "probe",
    "arp.isannouncement": "announcement",
}
FIELDS = ["operation", "sender_mac", "sender_ip", "target_mac", "target_ip", "gratuitous", "probe", "announcement"]


def tshark_rows(capture: Path) -> list[Row]:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `make system-packages`")
    command = ["tshark", "-n", "-r", str(capture), "-Y", "arp", "-T", "fields"]
    for name in TSHARK:
        command += ["-e", name]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in output.splitlines():
        row: Row = dict(zip(TSHARK.values(), line.split("\t"), strict=True))
        row["operation"] = {"1": "request", "2": "reply"}.get(row.pop("opcode") or "")
        for name in ("gratuitous", "probe", "announcement"):
            row[name] = str(row[name] == "1")
        rows.append(row)
    return rows


def analyse(tmp_path: Path, capture: Path) -> tuple[list[dict[str, object]], list[tuple[object, ...]]]:
    store = Store(tmp_path / f"{capture.stem}.duckdb")
    Analyzer(store, decoders=[]).analyze(capture)
    cursor = store.connection.execute("SELECT * FROM arp ORDER BY packet_number")
    names = [column[0] for column in cursor.description]
    arp = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    history = store.connection.execute("SELECT ip, mac, packets, first_seen, last_seen FROM arp_history").fetchall()
    store.close()
    return arp, history


def our_rows(rows: list[dict[str, object]]) -> list[Row]:
    result = []
    for r in rows:
        row: Row = {name: str(r[name]) for name in ("operation", "sender_mac", "sender_ip", "target_mac", "target_ip")}
        row["packet"] = str(r["packet_number"])
        # tshark's arp.isgratuitous is sender IP = target IP (RFC 5227 2.3: an announcement is one); ours as well.
        row["gratuitous"] = str(r["gratuitous"])
        row["probe"] = str(r["kind"] == "probe")
        row["announcement"] = str(r["kind"] == "announcement")
        result.append(row)
    return result


def test_arp_rows_agree_with_tshark(tmp_path: Path) -> None:
    for capture in CAPTURES:
        if not capture.exists():
            pytest.skip(f"research data missing: {capture}")
    agreement = Agreement(FIELDS)
    for capture in CAPTURES:
        rows, _ = analyse(tmp_path, capture)
        agreement.score(our_rows(rows), tshark_rows(capture), key=lambda r: r["packet"])
    print("\n" + agreement.report("tshark arp, research captures"))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    assert agreement.compared["sender_ip"] >= 500
    for name in FIELDS:
        assert agreement.ratio(name) >= 0.99, agreement.report(name)


def test_history_matches_the_rows_tshark_sees(tmp_path: Path) -> None:
    capture = CAPTURES[0]
    if not capture.exists():
        pytest.skip(f"research data missing: {capture}")
    _, history = analyse(tmp_path, capture)
    expected: dict[tuple[str, str], int] = {}
    for row in tshark_rows(capture):
        if row["sender_ip"] != "0.0.0.0":
            key = (str(row["sender_ip"]), str(row["sender_mac"]))
            expected[key] = expected.get(key, 0) + 1
    assert {(ip, mac): packets for ip, mac, packets, _, _ in history} == expected
    assert all(first <= last for _, _, _, first, last in history)


def test_kinds_and_history_of_a_modem_taking_over_an_address(tmp_path: Path) -> None:
    """RFC 5227 probe and announcement, a gratuitous reply, and a second MAC claiming the gateway's address."""
    import dpkt

    def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
        body = dpkt.arp.ARP(
            op=op, sha=sha, spa=bytes(map(int, spa.split("."))), tha=tha, tpa=bytes(map(int, tpa.split(".")))
        )
        return bytes(dpkt.ethernet.Ethernet(src=sha, dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=body))

    plc, gateway, modem = bytes.fromhex("0800069fcf32"), bytes.fromhex("001b1b0299c3"), bytes.fromhex("0c1efa000001")
    frames = [
        arp(1, plc, "0.0.0.0", b"\x00" * 6, "10.20.0.7"),
        arp(1, plc, "10.20.0.7", b"\x00" * 6, "10.20.0.7"),
        arp(1, plc, "10.20.0.7", b"\xff" * 6, "10.20.0.7"),
        arp(1, plc, "10.20.0.7", b"\x00" * 6, "10.20.0.1"),
        arp(2, gateway, "10.20.0.1", plc, "10.20.0.7"),
        arp(2, modem, "10.20.0.1", b"\xff" * 6, "10.20.0.1"),
        arp(2, modem, "10.20.0.1", b"\xff" * 6, "10.20.0.1"),
    ]
    capture = write_pcap(tmp_path / "arp.pcap", [(1_700_000_000.0 + i, f) for i, f in enumerate(frames)])
    store = Store(tmp_path / "arp.duckdb")
    Analyzer(store, decoders=[]).analyze(capture)
    kinds = [row[0] for row in store.connection.execute("SELECT kind FROM arp ORDER BY packet_number").fetchall()]
    assert kinds == [
        "probe",
        "announcement",
        "gratuitous request",
        "request",
        "reply",
        "gratuitous reply",
        "gratuitous reply",
    ]
    history = store.connection.execute("SELECT ip, mac, packets, gratuitous, macs_for_ip FROM arp_history").fetchall()
    assert history == [
        ("10.20.0.1", "00:1b:1b:02:99:c3", 1, 0, 2),
        ("10.20.0.1", "0c:1e:fa:00:00:01", 2, 2, 2),
        ("10.20.0.7", "08:00:06:9f:cf:32", 3, 2, 1),
    ]
    store.close()
