"""Shared pieces of the DNP3 tests: oracle locations and running the analyser on a trace."""

from __future__ import annotations

from pathlib import Path

from quaywatch.decode.base import Decoder
from quaywatch.decode.dnp3 import TABLES, Dnp3TcpDecoder, Dnp3UdpDecoder
from tests.decode.oracles import RESEARCH, analysed_tables, query, require  # noqa: F401 (re-exported)

ICSNPP = RESEARCH / "icsnpp-dnp3/testing"
ZEEK = RESEARCH / "zeek-btest/testing/btest"
SURICATA = RESEARCH / "suricata-verify/tests/dnp3"
ITI = RESEARCH / "iti-ics-security-tools/pcaps"
AUTOMAYT = RESEARCH / "automayt-ICS-pcap/DNP3"

Record = dict[str, object]
ORDER = {
    "dnp3": "packet_number, flow_id, message_id",
    "dnp3_objects": "packet_number, flow_id, message_id, header_index",
    "dnp3_control": "packet_number, flow_id, message_id, header_index",
    "dnp3_link": "packet_number, flow_id",
    "anomaly": "packet_number",
}


def decoders() -> list[Decoder]:
    return [Dnp3TcpDecoder(), Dnp3UdpDecoder()]


def analyse(tmp_path: Path, capture: Path) -> dict[str, list[Record]]:
    """Every DNP3 table (and the anomalies) of one capture, in capture order."""
    return analysed_tables(tmp_path, capture, decoders(), [*TABLES, "anomaly"], ORDER)
