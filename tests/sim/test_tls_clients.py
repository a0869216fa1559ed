"""The simulator's TLS clients: each profile's ClientHello is well formed for tshark, our JA3 equals tshark's, and the
profiles' JA4s differ, so an indicator on an implant's JA4 cannot match the office browsers."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from quaywatch.analysis import Analyzer
from quaywatch.decode.tls import TlsDecoder
from quaywatch.sim.frames import (
    TO_SERVER,
    Endpoint,
    client_hello,
    mac_bytes,
    office_tls_client,
    scenario_tls_client,
    tcp_session,
    tls_client,
    tls_record,
)
from quaywatch.sim.pcapng import PcapngWriter
from quaywatch.sim.scenarios import SCENARIOS
from quaywatch.store.database import Store
from tests.sim.sources import fields


@cache
def document() -> dict[str, Any]:
    text = resources.files("quaywatch.data").joinpath("sim", "tls_clients.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


PROFILES = sorted(document()["profiles"])


@pytest.fixture(scope="module")
def hellos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str], list[dict[str, Any]]]:
    """One TCP session per profile, each carrying only its ClientHello; returns the capture and our tls rows."""
    directory = tmp_path_factory.mktemp("tls-clients")
    client = Endpoint("laptop", "10.40.0.10", mac_bytes("02:00:00:00:00:10"))
    server = Endpoint("web", "198.51.100.7", mac_bytes("02:00:00:00:00:20"))
    blocks = []
    ports = {}
    for number, name in enumerate(PROFILES):
        hello = tls_record(
            22, client_hello(f"{name.replace('_', '-')}.example", bytes([number]) * 32, tls_client(name))
        )
        port = 50_000 + number
        ports[port] = name
        session, _ = tcp_session(client, server, port, 443, 1_700_000_000.0 + number, [(TO_SERVER, hello, 0.0)], "tls")
        blocks += session
    capture = directory / "hellos.pcapng"
    with capture.open("wb") as handle:
        PcapngWriter(handle, "tls-clients").write(blocks, {})
    store = Store(directory / "q.duckdb")
    Analyzer(store, decoders=[TlsDecoder()]).analyze(capture)
    store.flush()
    cursor = store.connection.execute("SELECT client_port, ja3, ja4 FROM tls WHERE ja4 IS NOT NULL ORDER BY 1")
    rows = [{"port": port, "ja3": ja3, "ja4": ja4} for port, ja3, ja4 in cursor.fetchall()]
    store.close()
    return capture, ports, rows


def test_every_profile_is_well_formed_and_our_ja3_is_tsharks(
    hellos: tuple[Path, dict[int, str], list[dict[str, Any]]],
) -> None:
    capture, _, rows = hellos
    assert fields(capture, "frame.number", display_filter="_ws.malformed || _ws.expert.severity >= warning") == []
    theirs = {int(port): ja3 for port, ja3 in fields(capture, "tcp.srcport", "tls.handshake.ja3_full",
                                                     display_filter="tls.handshake.type == 1")}  # fmt: skip
    assert len(theirs) == len(PROFILES)
    assert {row["port"]: row["ja3"] for row in rows} == theirs


def test_profiles_have_distinct_ja4_and_the_generic_one_is_unchanged(
    hellos: tuple[Path, dict[int, str], list[dict[str, Any]]],
) -> None:
    _, ports, rows = hellos
    by_profile = {ports[row["port"]]: row["ja4"] for row in rows}
    assert sorted(by_profile) == PROFILES
    assert len(set(by_profile.values())) == len(PROFILES), by_profile
    # What the simulator sent before profiles existed, and what the TLS 1.2-only stacks say about themselves.
    assert by_profile["generic"].startswith("t13d0706h1_")
    for name in ("windows_schannel", "mbedtls_embedded", "openssl_1_0_embedded"):
        assert by_profile[name].startswith("t12d"), name
    assert by_profile["python_openssl3"][8:10] == "00"  # no ALPN


def test_scenarios_use_their_own_stack_and_laptops_keep_one_browser() -> None:
    clients = document()["scenario_clients"]
    assert set(clients) <= {scenario.name for scenario in SCENARIOS}
    browsers = set(document()["office_browsers"])
    for scenario in clients:
        profile = scenario_tls_client(scenario)
        assert profile.name in PROFILES
    implants = {scenario_tls_client(s).name for s in clients if s != "vendor-remote-access"}
    assert not implants & browsers  # the engineer's RDP client is Windows; the implants and devices are not browsers
    chosen = [office_tls_client(f"02:00:00:00:{n // 256:02x}:{n % 256:02x}").name for n in range(400)]
    assert set(chosen) == browsers
    assert 0.6 < chosen.count("chromium") / len(chosen) < 0.8  # the file's 0.7 share
