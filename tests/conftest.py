"""Shared fixtures: the real captures of ../shared/research-data that several tests build inputs from."""

from __future__ import annotations

from pathlib import Path

import pytest

RESEARCH_DATA = Path(__file__).parents[1].parent / "shared" / "research-data"
MODBUS_PCAP = RESEARCH_DATA / "icsnpp-modbus" / "testing" / "traces" / "modbus_example.pcap"
ENIP_PCAPNG = RESEARCH_DATA / "icsnpp-enip" / "tests" / "traces" / "multiple_service_packet_cip.pcapng"


def _research_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not found: these tests build their inputs from ../shared/research-data")
    return path


@pytest.fixture(scope="session")
def modbus_pcap() -> Path:
    """cisagov/icsnpp-modbus modbus_example.pcap: 100 Ethernet frames, 2 TCP connections, microseconds."""
    return _research_file(MODBUS_PCAP)


@pytest.fixture(scope="session")
def enip_pcapng() -> Path:
    """cisagov/icsnpp-enip multiple_service_packet_cip.pcapng: SHB, IDB (Ethernet), one EPB."""
    return _research_file(ENIP_PCAPNG)
