"""D1 on the simulator: the modem's beacon and carrier DNS leave OT unapproved; a clean day stays silent."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.detect import unapproved_flows
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import build_context_views
from tests.detect.simulated import SimulatedSite, build_site, matches_label
from tests.intel.mmdb import write_mmdb


@pytest.fixture(scope="module")
def modem_site(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSite:
    scenarios: list[tuple[str, dict[str, Any]]] = [("cellular-modem", {}), ("vendor-remote-access", {"via": "modem"})]
    return build_site(tmp_path_factory.mktemp("modem"), seed=21, duration=100.0, scenarios=scenarios)


def test_modem_traffic_out_of_ot_is_one_alert_per_destination(modem_site: SimulatedSite) -> None:
    alerts = [alert for alert in modem_site.detect() if alert["detection"] == unapproved_flows.DETECTION]
    by_server = {alert["key"].get("server_ip") or alert["key"]["server_zone"]: alert for alert in alerts}
    expected = [label for label in modem_site.labels if "D1" in label["expect"]["detections"]]
    for label in expected:
        assert any(matches_label(alert, label) for alert in alerts), label["instance"]
    cloud = by_server["47.103.24.117"]
    assert cloud["key"] == {"client_ip": "10.10.2.99", "server_ip": "47.103.24.117"}
    assert cloud["severity"] == "high"
    assert "country unknown, ASN unknown" in cloud["explanation"]
    assert [technique["id"] for technique in cloud["techniques"]] == ["T0883", "T0869", "T0885"]
    assert cloud["packet_numbers"], "evidence must point at packets"
    # The modem's RDP into the CMS crosses two zones with no conduit: the zones and the conduit's failure are named.
    lateral = by_server["cms-ocr"]
    assert lateral["key"] == {"client_ip": "10.10.2.99", "server_zone": "cms-ocr"}
    assert "10.20.0.5" in lateral["assets"]
    assert lateral["severity"] == "medium"
    assert "zone cms-ocr from zone sts-crane-02" in lateral["explanation"]
    assert "not rdp" in lateral["explanation"]
    # Per asset and destination (internet peer, or zone inside the site), not per flow.
    assert len(alerts) == len({tuple(sorted(alert["key"].items())) for alert in alerts}) == 3


def test_enrichment_hook_fills_country_and_asn(modem_site: SimulatedSite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unapproved_flows, "ENRICHERS", [lambda ip: {"country": "CN", "asn": "AS37963"}])
    alerts = [alert for alert in modem_site.detect() if alert["key"].get("server_ip") == "47.103.24.117"]
    assert "country CN, ASN AS37963" in alerts[0]["explanation"]


@pytest.mark.parametrize("seed", [3, 8])
def test_clean_day_gives_no_d1_d2_d3_alert(tmp_path: Path, seed: int) -> None:
    site = build_site(tmp_path, seed=seed, duration=120.0)
    assert site.detect() == []


def test_a_policy_evaluation_without_flow_columns_gives_the_same_alerts(
    modem_site: SimulatedSite, tmp_path: Path
) -> None:
    """An older ``flow_policy`` without the flows' times and ports is joined back to ``flows``: the evidence comes
    as whole records from the top-N there, by row id from ``flow_policy`` otherwise, and both say the same."""
    copy = tmp_path / "older.duckdb"
    shutil.copy(modem_site.database, copy)
    con = duckdb.connect(str(copy))
    try:
        build_context_views(con)
        context = DetectionContext(policy=modem_site.policy)
        current = [dataclasses.asdict(alert) for alert in unapproved_flows.detect(con, context)]
        for column in unapproved_flows._FLOW_COLUMNS:
            con.execute(f"ALTER TABLE flow_policy DROP COLUMN {column}")
        older = [dataclasses.asdict(alert) for alert in unapproved_flows.detect(con, context)]
    finally:
        con.close()
    assert len(current) == 3 and older == current


def test_detect_with_the_sites_geoip_files_names_the_peers_country_and_as(
    modem_site: SimulatedSite, tmp_path: Path
) -> None:
    """`quaywatch detect --geoip`: real MaxMind DB files (written with mmdb-writer) give D1 the cloud's country."""
    database = tmp_path / "copy.duckdb"
    shutil.copy(modem_site.database, database)
    country = write_mmdb(tmp_path / "dbip-country-lite.mmdb", "DBIP-Country-Lite", {
        "47.96.0.0/11": {"country": {"iso_code": "CN", "names": {"en": "China"}}},
    })  # fmt: skip
    asn = write_mmdb(tmp_path / "dbip-asn-lite.mmdb", "DBIP-ASN-Lite (compat=GeoLite2-ASN)", {
        "47.96.0.0/11": {"autonomous_system_number": 37963, "autonomous_system_organization": "Alibaba <b>Cloud</b>"},
    })  # fmt: skip
    command = ["detect", "--db", str(database), "--policy", str(modem_site.directory / "policy.yaml")]
    result = CliRunner().invoke(main, [*command, "--geoip", str(country), "--geoip", str(asn), "--json"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(database), read_only=True)
    (explanation, values) = con.execute(
        "SELECT explanation, values_json FROM alerts WHERE detection = ? AND key_json LIKE '%47.103.24.117%'",
        [unapproved_flows.DETECTION],
    ).fetchone() or ("", "{}")
    con.close()
    assert "country CN (China), ASN AS37963 (Alibaba <b>Cloud</b>)" in explanation  # raw here; outputs escape it
    evidence = json.loads(values)
    assert evidence["peer_country"] == ["CN (China)"]
    assert "dbip-country-lite.mmdb (DBIP-Country-Lite, built " in evidence["geoip_source"][0]
    missing = CliRunner().invoke(main, [*command, "--geoip", str(tmp_path / "absent.mmdb")])
    assert missing.exit_code != 0 and "absent.mmdb: no such GeoIP database file" in missing.output
