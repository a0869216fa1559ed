"""Scenario 6: a Hikvision camera registering with its P2P cloud and streaming to a remote viewer."""

from __future__ import annotations

import itertools
from pathlib import Path

import duckdb
import pytest

from tests.sim.scenarios.changed_normal import check_scenario_frames
from tests.sim.scenarios.checks import analyse, fields, labels, run

CAMERA_IP = "10.60.0.16"  # camera-07, the first Hikvision camera of the default model
RENDEZVOUS_IP = "3.121.45.211"
PARAMETERS = {"start": 2, "period": 5, "watch_at": 20, "watch_seconds": 4}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sim-camera"), [("camera-p2p", PARAMETERS)])


@pytest.fixture(scope="module")
def store(attacked: Path) -> duckdb.DuckDBPyConnection:
    return analyse(attacked)


def test_capture_is_clean_labelled_and_leaves_normal_traffic_alone(attacked: Path, clean_run: Path) -> None:
    # The scenario installs a Hikvision camera, which the NVR then records: normal traffic changes by design, so
    # only the scenario's own frames are checked here (the whole capture's accounting: tests/sim/test_simulate.py).
    check_scenario_frames(attacked)


def test_keepalives_are_periodic_and_the_stream_is_a_video_burst(attacked: Path) -> None:
    found = labels(attacked)
    keepalive = found["camera-p2p/keepalive"]
    assert keepalive["hosts"] == [CAMERA_IP, RENDEZVOUS_IP] and "D4" in keepalive["expect"]["detections"]
    rows = fields(attacked / "capture.pcapng", "frame.time_epoch", "udp.length",
                  display_filter=f"ip.dst == {RENDEZVOUS_IP} && udp.length < 100")  # fmt: skip
    times = [float(row[0]) for row in rows]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(times) >= 7 and all(4.5 <= gap <= 5.5 for gap in gaps)
    stream = found["camera-p2p/stream"]
    assert stream["packets"] == 4 * 180
    big = fields(attacked / "capture.pcapng", "frame.time_epoch",
                 display_filter=f"ip.dst == {RENDEZVOUS_IP} && udp.length > 1000")  # fmt: skip
    assert len(big) == stream["packets"]
    assert float(big[-1][0]) - float(big[0][0]) == pytest.approx(4.0, abs=0.6)


def test_analysis_shows_cloud_dns_and_the_platform_sni(store: duckdb.DuckDBPyConnection) -> None:
    queries = {
        row[0] for row in store.execute("SELECT query_name FROM dns WHERE client_ip = ?", [CAMERA_IP]).fetchall()
    }
    assert "litedev.hik-connect.example.com" in queries
    names = store.execute("SELECT server_name FROM tls WHERE client_ip = ? AND handshake_type = 1", [CAMERA_IP])
    assert {row[0] for row in names.fetchall()} == {"litedev.hik-connect.example.com"}
    upstream = store.execute(
        "SELECT sum(payload_bytes_to_server) FROM flows WHERE client_ip = ? AND server_ip = ?",
        [CAMERA_IP, RENDEZVOUS_IP],
    ).fetchone()
    assert upstream is not None and upstream[0] > 4 * 180 * 1316
