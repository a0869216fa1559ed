"""Scenario 8: default-password logins over telnet, FTP and HTTP basic auth, one failure before each success."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.model import load_model
from quaywatch.sim.scenarios.default_credentials import DefaultCredentials
from tests.sim.scenarios.changed_normal import check_scenario_frames
from tests.sim.scenarios.checks import analyse, labels, run

PARAMETERS = {"at": 3, "spacing": 12}
ATTACKER = "172.16.1.13"
SWITCH, PLC, CAMERA = "10.50.0.2", "10.10.1.10", "10.60.0.16"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sim-credentials"), [("default-credentials", PARAMETERS)])


@pytest.fixture(scope="module")
def store(attacked: Path) -> duckdb.DuckDBPyConnection:
    return analyse(attacked)


def test_capture_is_clean_labelled_and_leaves_normal_traffic_alone(attacked: Path, clean_run: Path) -> None:
    # The scenario installs a Hikvision camera, which the NVR then records: normal traffic changes by design, so
    # only the scenario's own frames are checked here (the whole capture's accounting: tests/sim/test_simulate.py).
    check_scenario_frames(attacked)


def test_cleartext_credentials_show_the_failure_then_the_default_login(store: duckdb.DuckDBPyConnection) -> None:
    rows = store.execute(
        "SELECT protocol, server_ip, user_name, password_length, success FROM cleartext_credentials "
        "WHERE client_ip = ? ORDER BY ts",
        [ATTACKER],
    ).fetchall()
    assert rows == [
        ("telnet", SWITCH, "cisco", 5, False),
        ("telnet", SWITCH, "admin", 5, None),  # telnet: no failure text follows, success is not asserted
        ("ftp", PLC, "anonymous", 5, False),
        ("ftp", PLC, "admin", 5, True),
    ]


def test_telnet_and_ftp_rows(store: duckdb.DuckDBPyConnection) -> None:
    telnet = store.execute("SELECT login_attempts FROM telnet WHERE event_type = 'summary' AND client_ip = ?",
                           [ATTACKER]).fetchall()  # fmt: skip
    assert telnet == [(2,)]
    ftp = store.execute(
        "SELECT command, user, reply_code FROM ftp WHERE client_ip = ? AND command IN ('USER', 'PASS') ORDER BY ts",
        [ATTACKER],
    ).fetchall()
    assert [row[2] for row in ftp] == [331, 530, 331, 230]


def test_http_rows_show_401s_then_the_hikvision_default(store: duckdb.DuckDBPyConnection) -> None:
    rows = store.execute(
        "SELECT uri, username, password_length, status_code, server FROM http WHERE client_ip = ? ORDER BY ts",
        [ATTACKER],
    ).fetchall()
    assert [(row[1], row[2], row[3]) for row in rows] == [(None, None, 401), ("admin", 5, 401), ("admin", 5, 200)]
    assert {row[0] for row in rows} == {"/ISAPI/System/deviceInfo"} and {row[4] for row in rows} == {"App-webs/"}


def test_labels_one_per_protocol_and_protocols_switch(attacked: Path) -> None:
    found = labels(attacked)
    assert set(found) == {f"default-credentials/{name}" for name in ("telnet", "ftp", "http")}
    assert found["default-credentials/http"]["expect"]["destination"] == CAMERA
    assert all(record["expect"]["detections"] == ["D11"] for record in found.values())
    model = load_model()
    DefaultCredentials.prepare(model, {"protocols": "http"})  # installs the Hikvision camera it logs in to
    context = SimulationContext(model, seed=1, start=model.start_epoch, end=model.start_epoch + 60, scale=1.0)
    DefaultCredentials(context, {"protocols": "http", "source": "eng-ws-02"})
    (label,) = context.labels.values()
    assert label.instance == "default-credentials/http" and label.expect["source"] == "10.40.0.6"
    with pytest.raises(ValueError, match="unknown protocol"):
        DefaultCredentials(context, {"protocols": "smb"})
