"""D3 on the simulator's undeclared modem (every signal one score component) and on a lone weak sign."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.detect import cellular
from quaywatch.policy.model import Policy
from quaywatch.sim.scenarios.wire import dns_query, dns_response
from tests.detect.simulated import SimulatedSite, build_site, matches_label
from tests.factories import udp_frame, write_pcap

MODEM = "10.10.2.99"


@pytest.fixture(scope="module")
def modem_site(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSite:
    scenarios: list[tuple[str, dict[str, Any]]] = [("cellular-modem", {})]
    return build_site(tmp_path_factory.mktemp("cellular"), seed=9, duration=90.0, scenarios=scenarios)


def test_undeclared_modem_is_one_critical_alert_with_each_signal(modem_site: SimulatedSite) -> None:
    alerts = [alert for alert in modem_site.detect() if alert["detection"] == cellular.DETECTION]
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert MODEM in alert["assets"]
    assert alert["severity"] == "critical"
    names = {component["name"] for component in alert["score_components"]}
    assert {"maker", "own_uplink", "reply_ttl", "rogue_dhcp", "carrier_dns", "ot_location"} <= names
    assert "TTL 46" in alert["explanation"] and "offers router 10.10.2.99" in alert["explanation"]
    assert [technique["id"] for technique in alert["techniques"]] == ["T0883", "T0884", "T1011"]
    assert alert["packet_numbers"]
    for label in modem_site.labels:
        if "D3" in label["expect"]["detections"]:
            assert matches_label(alert, label), label["instance"]


def test_lone_iot_cloud_query_from_the_office_gives_no_alert(tmp_path: Path) -> None:
    """AWS IoT from a corporate laptop is a weak sign: alone it must not alert at all."""
    frames = []
    for number in range(5):
        name = "a1b2c3d4e5-ats.iot.eu-west-1.amazonaws.com"
        frames.append((1_764_000_000.0 + number, udp_frame("172.16.1.5", "9.9.9.9", 40000 + number, 53,
                                                           dns_query(number + 1, name))))  # fmt: skip
        frames.append((1_764_000_000.01 + number, udp_frame("9.9.9.9", "172.16.1.5", 53, 40000 + number,
                                                            dns_response(number + 1, name, ["52.1.2.3"]))))  # fmt: skip
    capture = write_pcap(tmp_path / "iot.pcap", frames)
    database = tmp_path / "iot.duckdb"
    result = CliRunner().invoke(main, ["analyze", str(capture), "--db", str(database)])
    assert result.exit_code == 0, result.output
    site = SimulatedSite(tmp_path, database, Policy(), [])
    assert [alert for alert in site.detect(use_policy=False) if alert["detection"] == cellular.DETECTION] == []


def test_indicator_patterns_cover_carrier_and_iot_names() -> None:
    data = cellular.indicators()
    assert cellular._matches("epdg.epc.mnc008.mcc204.pub.3gppnetwork.org", data["carrier_domains"])
    assert cellular._matches("internet.mnc004.mcc204.gprs.", data["carrier_domains"])
    assert cellular._matches("hub1.azure-devices.net", data["iot_cloud_domains"])
    assert cellular._matches("iot-as-mqtt.cn-shanghai.aliyuncs.com", data["iot_cloud_domains"])
    assert cellular._matches("www.example.com", [*data["carrier_domains"], *data["iot_cloud_domains"]]) is None


def test_maker_alone_is_left_to_d12_and_a_path_sign_makes_it_an_alert() -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    device = cellular.Device("asset-1", "asset-1", {"10.10.2.99"}, "c4:a6:4e:21:71:03", ot=True)
    device.add("maker", 1.0, "maker Quectel (cellular_module): a cellular device")
    device.add("ot_location", 1.0, "the device is in an OT zone")
    assert cellular._alert(device, now) is None
    device.add("carrier_dns", 1.0, "queries a carrier (3GPP) name")
    alert = cellular._alert(device, now)
    assert alert is not None and alert.severity == "high" and alert.score == 0.65


def test_dns_names_are_matched_once_each_and_only_matching_queries_are_grouped() -> None:
    """The query names are judged per distinct spelling: a mixed-case, dot-terminated carrier name still matches,
    and its queries are grouped per client and lower-cased name as every query was before."""
    import duckdb

    con = duckdb.connect()
    con.execute(
        """CREATE TABLE dns AS SELECT * FROM (VALUES
               ('10.0.0.5', 'query', 'Ims.MNC001.MCC001.3GPPNETWORK.org.', TIMESTAMPTZ '2026-01-01 00:00:02+00', 7),
               ('10.0.0.5', 'query', 'ims.mnc001.mcc001.3gppnetwork.org.', TIMESTAMPTZ '2026-01-01 00:00:01+00', 3),
               ('10.0.0.6', 'query', 'example.com', TIMESTAMPTZ '2026-01-01 00:00:01+00', 4),
               ('10.0.0.6', 'response', 'x.gprs', TIMESTAMPTZ '2026-01-01 00:00:01+00', 5))
           AS t(client_ip, event_type, query_name, ts, packet_number)"""
    )
    con.execute("ALTER TABLE dns ADD COLUMN capture_id VARCHAR DEFAULT 'c'")
    con.execute("ALTER TABLE dns ADD COLUMN flow_id VARCHAR DEFAULT 'f'")
    con.execute("ALTER TABLE dns ADD COLUMN community_id VARCHAR DEFAULT '1:x'")
    devices = cellular.Devices(con, set())
    cellular._dns(con, devices)
    assert set(devices.devices) == {"ip:10.0.0.5"}
    device = devices.devices["ip:10.0.0.5"]
    assert set(device.signals) == {"carrier_dns"}
    assert device.values["queried_names"] == {"ims.mnc001.mcc001.3gppnetwork.org."}
    assert device.signal_times == [dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.UTC)]
    assert [event.packet_number for event in device.events] == [3]
