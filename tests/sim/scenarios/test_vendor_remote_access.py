"""Scenario 2: the vendor's session into the CMS outside the vendor window, by RDP, VNC or TeamViewer."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from quaywatch.sim.model import ModelError
from tests.sim.scenarios.checks import analyse, check_capture, labels, run

CMS_IP = "10.20.0.5"
VENDOR_IP = "91.198.174.20"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run with three sessions: RDP direct, VNC through the modem, TeamViewer out of the CMS."""
    return run(
        tmp_path_factory.mktemp("sim-vendor"),
        [
            ("cellular-modem", {"start": 100, "plc_start": 100, "dhcp": False}),  # present, quiet in 45 s
            ("vendor-remote-access", {"start": 3, "length": 8}),
            ("vendor-remote-access", {"start": 14, "length": 6, "method": "vnc", "via": "modem"}),
            ("vendor-remote-access", {"start": 25, "length": 6, "method": "teamviewer"}),
        ],
    )


@pytest.fixture(scope="module")
def store(attacked: Path) -> duckdb.DuckDBPyConnection:
    return analyse(attacked)


def test_capture_is_clean_labelled_and_leaves_normal_traffic_alone(attacked: Path, clean_run: Path) -> None:
    check_capture(attacked, clean_run)


def test_labels_say_outside_the_window_and_off_the_jump_host(attacked: Path) -> None:
    found = labels(attacked)
    rdp = found["vendor-remote-access/rdp-direct"]
    assert rdp["hosts"] == [VENDOR_IP, CMS_IP]
    assert {"T0822", "T0886"} <= set(rdp["techniques"])
    details = rdp["expect"]["details"]
    assert details["outside_vendor_window"] is True and details["local_start"].startswith("2025-11-25T09:55")
    assert rdp["expect"]["detections"][0] == "D2" and rdp["packets"] > 50
    assert [flow["destination_port"] for flow in rdp["flows"]] == [3389]
    vnc = found["vendor-remote-access/vnc-modem"]
    assert vnc["expect"]["source"] == "10.10.2.99" and "D3" in vnc["expect"]["detections"]
    teamviewer = found["vendor-remote-access/teamviewer-direct"]
    assert teamviewer["expect"]["source"] == CMS_IP and teamviewer["flows"][0]["destination_port"] == 5938


def test_analysis_identifies_each_remote_access_method(store: duckdb.DuckDBPyConnection) -> None:
    rows = store.execute(
        "SELECT method, client_ip, server_ip, server_port, user_name FROM remote_access ORDER BY ts"
    ).fetchall()
    assert rows == [
        ("rdp", VENDOR_IP, CMS_IP, 3389, "zpmc-svc"),
        ("vnc", "10.10.2.99", CMS_IP, 5900, None),
        ("teamviewer", CMS_IP, "217.146.28.143", 5938, None),
    ]
    cookie, requested, result = store.execute("SELECT cookie, requested_protocols, result FROM rdp").fetchone()  # type: ignore[misc]
    assert (cookie, requested, result) == ("zpmc-svc", ["SSL", "HYBRID"], "encrypted")
    vnc = store.execute("SELECT authentication_method, auth_success, width, desktop_name FROM vnc").fetchone()
    assert vnc == ("VNC", True, 1920, "CMS-SERVER")


def test_via_modem_without_the_modem_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cellular-modem"):
        run(tmp_path, [("vendor-remote-access", {"via": "modem"})])
