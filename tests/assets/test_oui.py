"""OUI registry lookups: all three block sizes, offline, column path."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from quaywatch.assets import oui


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any socket use fails the test: the lookups must never download a registry."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    class NoSocket(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("network access attempted")

    oui._registry.cache_clear()
    oui.vendor.cache_clear()
    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def test_ma_l_hikvision_with_country() -> None:
    found = oui.vendor("44:19:b6:12:34:56")
    assert found is not None
    assert (found.block, found.prefix, found.country) == ("MA-L", "44:19:B6", "CN")
    assert found.organisation == "Hangzhou Hikvision Digital Technology Co.,Ltd."
    assert oui.vendor("4C-BD-8F-00-00-01") == oui.vendor("4cbd.8f00.0001") != None  # noqa: E711


def test_ma_l_quectel() -> None:
    found = oui.vendor("34873D000001")
    assert found is not None and found.organisation.startswith("Quectel Wireless Solutions")


def test_ma_m_block_wins_over_its_ma_l() -> None:
    found = oui.vendor("00:55:DA:12:34:56")
    assert found is not None
    assert (found.block, found.prefix, found.organisation) == ("MA-M", "00:55:DA:10:00:00/28", "KoolPOS Inc.")


def test_ma_s_block() -> None:
    found = oui.vendor("8C:1F:64:FE:30:0A")
    assert found is not None
    assert (found.block, found.prefix) == ("MA-S", "8C:1F:64:FE:30:00/36")
    assert found.organisation == "Power Electronics Espana, S.L."


def test_unparsable_and_unassigned() -> None:
    assert oui.vendor("not a mac") is None
    assert oui.vendor("44:19:B6") is None
    assert oui.parse_mac("44:19:B6:12:34:56:78") is None


def test_column_lookup_matches_scalar_path() -> None:
    macs = ["44:19:B6:00:00:01", None, "garbage", "8C:1F:64:FE:30:0A", "00:55:DA:12:34:56", "44:19:B6:00:00:02"]
    expected = [None if not isinstance(m, str) else oui.vendor(m) for m in macs]
    assert oui.vendors(macs) == expected
    assert oui.vendors(pa.array(macs)) == expected
    assert oui.vendors(np.array(["44:19:B6:00:00:01"])) == [oui.vendor("44:19:B6:00:00:01")]
    assert oui.vendors([]) == []


def test_data_sources_named() -> None:
    assert set(oui.data_sources()) == {"manuf", "netaddr"}
