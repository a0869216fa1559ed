"""D2 on the simulator and on Zeek's RDP/VNC/SSH traces: unapproved remote sessions into OT, approved ones silent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.detect import remote_access
from quaywatch.detect.remote_access import Host, in_window, judge
from quaywatch.policy.model import HostMatch, Policy, RemoteAccess, TimeWindow
from tests.detect.simulated import (
    OUR_MODULES,  # noqa: F401  (the modules the sites run)
    SimulatedSite,
    build_site,
    matches_label,
    with_remote_access,
)

TRACES = Path("/work/shared/research-data/zeek-btest/testing/btest/Traces")
VENDOR = "91.198.174.20"
CMS = "10.20.0.5"
#: The vendor's session starts 2025-11-25 08:55:30 UTC: a Tuesday, 09:55 in Amsterdam.
TUESDAY_RULE = f"""  - name: crane-vendor-maintenance
    method: rdp
    source: [{VENDOR}/32]
    zones: [cms-ocr]
    windows:
      - {{days: [tue], start: "09:00", end: "12:00", timezone: Europe/Amsterdam}}
    expires: 2027-06-30
    reason: ticket CHG-2291
"""


@pytest.fixture(scope="module")
def rdp_site(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSite:
    """The vendor's direct RDP session, with a policy whose window covers it (analysed with that policy)."""
    return build_site(
        tmp_path_factory.mktemp("rdp"), seed=4, duration=100.0, scenarios=[("vendor-remote-access", {})],
        extra_policy="remote_access:\n" + TUESDAY_RULE,
    )  # fmt: skip


def test_approved_session_inside_its_window_gives_no_alert(rdp_site: SimulatedSite) -> None:
    assert rdp_site.detect() == [], "an approved vendor session in its window is neither D1 nor D2 nor D3"


def test_session_outside_the_window_names_the_window(rdp_site: SimulatedSite) -> None:
    policy = with_remote_access(rdp_site, TUESDAY_RULE.replace("[tue]", "[thu]"))
    alerts = [alert for alert in rdp_site.detect(policy) if alert["detection"] == remote_access.DETECTION]
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["key"] == {"method": "rdp", "client_ip": VENDOR, "server_ip": CMS}
    assert (
        "Tuesday 09:55 Europe/Amsterdam is outside crane-vendor-maintenance's window Thu 09:00-12:00"
        in (alert["explanation"])
    )
    assert "user zpmc-svc" in alert["explanation"]
    assert alert["severity"] == "high" and alert["confidence"] == 0.9
    assert [technique["id"] for technique in alert["techniques"]] == ["T0822", "T0886"]
    label = next(label for label in rdp_site.labels if label["scenario"] == "vendor-remote-access")
    assert matches_label(alert, label)


def test_wrong_source_and_expired_rule_are_each_named(rdp_site: SimulatedSite) -> None:
    rule = TUESDAY_RULE.replace(f"{VENDOR}/32", "198.51.100.0/24").replace("2027-06-30", "2025-01-31")
    alert = next(a for a in rdp_site.detect(with_remote_access(rdp_site, rule)) if a["detection"].startswith("D2"))
    assert f"source {VENDOR} is not in crane-vendor-maintenance's sources" in alert["explanation"]
    assert "crane-vendor-maintenance expired on 2025-01-31" in alert["explanation"]


def test_without_a_policy_the_session_into_ot_is_a_lower_confidence_alert(rdp_site: SimulatedSite) -> None:
    alerts = [a for a in rdp_site.detect(use_policy=False) if a["detection"] == remote_access.DETECTION]
    assert len(alerts) == 1
    assert alerts[0]["confidence"] < 0.9
    assert "there is no site policy" in alerts[0]["explanation"]


@pytest.mark.parametrize(
    ("parameters", "client", "server"),
    [({"method": "vnc"}, VENDOR, CMS), ({"method": "teamviewer"}, CMS, "217.146.28.143")],
)
def test_vnc_and_teamviewer_sessions_match_their_labels(
    tmp_path: Path, parameters: dict[str, str], client: str, server: str
) -> None:
    site = build_site(tmp_path, seed=6, duration=95.0, scenarios=[("vendor-remote-access", parameters)])
    alerts = [alert for alert in site.detect() if alert["detection"] == remote_access.DETECTION]
    label = next(label for label in site.labels if label["scenario"] == "vendor-remote-access")
    assert [alert["key"] for alert in alerts] == [
        {"method": parameters["method"], "client_ip": client, "server_ip": server}
    ]
    assert matches_label(alerts[0], label)
    assert (CMS in alerts[0]["assets"] and server not in alerts[0]["assets"]) or server == CMS


def _host(ip: str, zone: str) -> Host:
    return Host(ip, None, zone, zone != "external", None, None, True)


def test_window_spanning_midnight_is_read_in_its_own_time_zone() -> None:
    window = TimeWindow(("sat",), dt.time(22, 0), dt.time(4, 0), "Europe/Amsterdam", spans_midnight=True)
    sunday_early = dt.datetime(2026, 11, 29, 2, 30, tzinfo=dt.UTC)  # 03:30 Amsterdam on Sunday
    sunday_late = dt.datetime(2026, 11, 29, 4, 30, tzinfo=dt.UTC)  # 05:30
    assert in_window(window, sunday_early)
    assert not in_window(window, sunday_late)
    rule = RemoteAccess("ocr-night", "teamviewer", HostMatch(), destinations=HostMatch(), windows=(window,))
    # TeamViewer: the OT host dials out to the relay; the rule's destination is the OT end either way.
    approved, why = judge(Policy(remote_access=(rule,)), "teamviewer", _host("10.90.0.4", "ocr"),
                          _host("217.146.28.143", "external"), sunday_early)  # fmt: skip
    assert approved, why
    approved, why = judge(Policy(remote_access=(rule,)), "vnc", _host("10.90.0.4", "ocr"),
                          _host("10.20.0.5", "cms"), sunday_early)  # fmt: skip
    assert not approved and why == "no remote_access rule allows vnc"


@pytest.mark.skipif(not TRACES.exists(), reason="research data not mounted")
@pytest.mark.parametrize(
    ("trace", "server"),
    [("rdp/rdp-to-ssl.pcap", "192.168.1.150"), ("rfb/vnc-mac-to-linux.pcap", None), ("ssh/ssh.pcap", None)],
)
def test_zeek_traces_without_policy_give_possibly_ot_alerts(tmp_path: Path, trace: str, server: str | None) -> None:
    database = tmp_path / "trace.duckdb"
    result = CliRunner().invoke(main, ["analyze", str(TRACES / trace), "--db", str(database)])
    assert result.exit_code == 0, result.output
    site = SimulatedSite(tmp_path, database, Policy(), [])
    alerts = [alert for alert in site.detect(use_policy=False) if alert["detection"] == remote_access.DETECTION]
    assert alerts, trace
    assert all(alert["confidence"] == 0.4 and alert["severity"] == "low" for alert in alerts)
    assert all("possibly OT" in alert["explanation"] for alert in alerts)
    if server is not None:
        assert {alert["key"]["server_ip"] for alert in alerts} == {server}


def test_sessions_carry_their_flows_macs_and_end_as_a_plain_join_does(rdp_site: SimulatedSite) -> None:
    """The join to ``flows`` reads only the flows on the sessions' server ports: it finds each session's flow."""
    con = duckdb.connect(str(rdp_site.database), read_only=True)
    try:
        found = remote_access.sessions(con)
        expected = {
            (row[0], row[1]): row[2:]
            for row in con.execute("SELECT capture_id, flow_id, client_mac, server_mac, last_ts FROM flows").fetchall()
        }
    finally:
        con.close()
    assert found, "the vendor's RDP session"
    for session in found:
        key = (session["capture_id"], session["flow_id"])
        assert (session["client_mac"], session["server_mac"], session["last_ts"]) == expected[key]
