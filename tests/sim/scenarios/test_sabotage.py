"""Scenario 4: an unauthorised Modbus write disabling the wind sensor, an S7 PLC STOP and a block download."""

from __future__ import annotations

import struct
from pathlib import Path

import duckdb
import numpy as np
import pytest

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.model import load_model
from quaywatch.sim.scenarios.sabotage import OUT_OF_BOUNDS_THRESHOLD, Sabotage
from tests.sim.scenarios.changed_normal import check_scenario_frames, protocol_counts
from tests.sim.scenarios.checks import analyse, check_capture, labels, run

PARAMETERS = {"write_at": 4, "stop_at": 12, "download_at": 22}
ATTACKER = "172.16.1.13"  # office-014: the default foothold
PLC = "10.10.1.10"  # sts01-plc, the first Siemens crane PLC
WEATHER_STATION = "10.70.0.10"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sim-sabotage"), [("sabotage", PARAMETERS)])


@pytest.fixture(scope="module")
def store(attacked: Path) -> duckdb.DuckDBPyConnection:
    return analyse(attacked)


def test_without_the_stop_normal_traffic_is_untouched(tmp_path: Path, clean_run: Path) -> None:
    check_capture(run(tmp_path, [("sabotage", {**PARAMETERS, "actions": "write+download"})]), clean_run)


def test_with_the_stop_only_the_stopped_crane_work_disappears(attacked: Path, clean_run: Path) -> None:
    """The STOP parks crane 1: its later OCR reads and TOS reports vanish; every poll loop keeps its count."""
    check_scenario_frames(attacked)
    normal, clean = protocol_counts(attacked), protocol_counts(clean_run)
    polls = ("modbus", "s7comm", "enip", "cip")
    assert {k: v for k, v in normal.items() if k.endswith(polls)} == {
        k: v for k, v in clean.items() if k.endswith(polls)
    }
    assert sum(normal.values()) < sum(clean.values())


def test_one_label_per_action_with_what_a_detection_must_report(attacked: Path) -> None:
    found = labels(attacked)
    assert set(found) == {"sabotage/modbus-write", "sabotage/plc-stop", "sabotage/download"}
    for record in found.values():
        assert record["expect"]["detections"] == ["D7"]
        assert record["expect"]["source"] == ATTACKER
    assert found["sabotage/modbus-write"]["expect"]["destination"] == WEATHER_STATION
    assert found["sabotage/plc-stop"]["expect"]["details"]["pi_service"] == "P_PROGRAM"
    assert "T0858" in found["sabotage/plc-stop"]["techniques"]
    assert "T0843" in found["sabotage/download"]["techniques"]


def test_modbus_rows_show_the_sensor_disabled_and_an_out_of_bounds_threshold(store: duckdb.DuckDBPyConnection) -> None:
    writes = store.execute(
        "SELECT function_code, address, values FROM modbus WHERE writes AND direction = 'to_server' "
        "AND client_ip = ? AND server_ip = ? ORDER BY ts",
        [ATTACKER, WEATHER_STATION],
    ).fetchall()
    assert writes == [(6, 40, [0]), (16, 41, [OUT_OF_BOUNDS_THRESHOLD])]
    assert store.execute("SELECT count(*) FROM modbus WHERE writes AND client_ip <> ?", [ATTACKER]).fetchone() == (0,)


def test_s7comm_rows_show_the_stop_and_the_download(store: duckdb.DuckDBPyConnection) -> None:
    rows = store.execute(
        "SELECT rosctr, function_code, pi_service, filename, block_type FROM s7comm "
        "WHERE controls_plc AND client_ip = ? AND server_ip = ? ORDER BY ts",
        [ATTACKER, PLC],
    ).fetchall()
    assert rows[0] == ("Job-Request", 0x29, "P_PROGRAM", None, None)
    assert rows[1][:2] == ("ACK-Data", 0x29)
    jobs = [row for row in rows if row[0] == "Job-Request"]
    assert [row[1] for row in jobs][:2] == [0x29, 0x1A] and [row[1] for row in jobs][-1] == 0x1C
    segments = [row for row in jobs if row[1] == 0x1B]
    assert len(segments) >= 2, "the block travels in several Download Block segments"
    assert {row[3:] for row in jobs[1:]} == {("_0800001P", "Organization Block")}


def test_the_stopped_crane_stops_moving_in_the_polled_values(store: duckdb.DuckDBPyConnection, attacked: Path) -> None:
    stopped_at = labels(attacked)["sabotage/plc-stop"]["end"]
    rows = store.execute(
        "SELECT ts >= CAST(? AS TIMESTAMPTZ), values[1] FROM s7comm WHERE server_ip = ? AND function_code = 4 "
        "AND rosctr = 'ACK-Data' AND client_ip <> ? ORDER BY ts",
        [stopped_at, PLC, ATTACKER],
    ).fetchall()
    registers = {
        after: [struct.unpack(">10H", bytes(value)) for later, value in rows if later == after]
        for after in (False, True)
    }
    after = np.array(registers[True][5:])  # a few polls past the stop
    assert after.shape[0] > 20
    assert np.all(after[:, 6] == 0), "moving bit after the STOP"
    assert np.all(after[:, :2] == after[0, :2]), "hoist and trolley frozen"
    assert np.all(after[:, 9] & 1 == 0), "run bit cleared"
    before = np.array(registers[False])
    assert np.any(before[:, 6] == 1) and np.ptp(before[:, 1]) > 0, "the crane worked before the STOP"


def test_stop_crane_freezes_the_crane_and_cancels_later_moves() -> None:
    model = load_model()
    context = SimulationContext(model, seed=3, start=model.start_epoch, end=model.start_epoch + 900, scale=1.0)
    physics = context.physics
    at = model.start_epoch + 300
    moves_before = len(physics.moves[1])
    physics.stop_crane(1, at)
    times = np.arange(at, at + 600, 1.0)
    state = physics.state(1, times)
    assert np.ptp(state["hoist_cm"]) == 0 and np.ptp(state["trolley_cm"]) == 0
    assert not state["moving"].any()
    assert all(move.locked_at < at for move in physics.moves[1]) and len(physics.moves[1]) < moves_before
    assert np.ptp(physics.state(2, times)["trolley_cm"]) > 0, "other cranes keep working"


def test_actions_are_switchable_and_checked() -> None:
    model = load_model()
    context = SimulationContext(model, seed=1, start=model.start_epoch, end=model.start_epoch + 60, scale=1.0)
    Sabotage(context, {"actions": "stop"})
    assert [label.instance for label in context.labels.values()] == ["sabotage/plc-stop"]
    with pytest.raises(ValueError, match="unknown action"):
        Sabotage(context, {"actions": "stop+explode"})
