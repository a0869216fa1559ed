"""Shared pieces of the BACnet tests: oracle locations and running the analyser on a trace."""

from __future__ import annotations

from pathlib import Path

from quaywatch.decode.bacnet import TABLES, BacnetDecoder
from tests.decode.oracles import RESEARCH, analysed_tables

ICSNPP = RESEARCH / "icsnpp-bacnet/testing"
ITI = RESEARCH / "iti-ics-security-tools/pcaps"
NDPI = RESEARCH / "ndpi/tests/cfgs/default/pcap"

Record = dict[str, object]
ORDER = {
    "bacnet": "packet_number, flow_id, message_id",
    "bacnet_discovery": "packet_number, flow_id, message_id",
    "bacnet_property": "packet_number, flow_id, message_id",
    "bacnet_device_control": "packet_number, flow_id, message_id",
    "anomaly": "packet_number",
}


def analyse(tmp_path: Path, capture: Path) -> dict[str, list[Record]]:
    """Every BACnet table (and the anomalies) of one capture, in capture order, through the real pipeline."""
    return analysed_tables(tmp_path, capture, [BacnetDecoder()], [*TABLES, "anomaly"], ORDER)
