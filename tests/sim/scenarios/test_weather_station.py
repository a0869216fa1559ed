"""Scenario 5: the weather station's implant tunnels over DNS, beacons, and lies about the wind in a gust."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import duckdb
import numpy as np
import pytest

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.model import load_model
from quaywatch.sim.normal.polling import CranePolling
from quaywatch.sim.scenarios.weather_station import WeatherStationMalware
from tests.sim.scenarios.changed_normal import check_scenario_frames, protocol_counts
from tests.sim.scenarios.checks import analyse, fields, labels, run

PARAMETERS = {
    "tunnel_at": 2, "tunnel_period": 5, "beacon_at": 3, "beacon_period": 10, "tamper_at": 15,
    "tamper_duration": 25, "gust_rise": 6,
}  # fmt: skip
STATION = "10.70.0.10"
OT_DNS = "10.50.0.53"
RESOLVER = "198.51.100.53"
DOMAIN = "t.wx-metsync.example"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sim-weather"), [("weather-station-malware", PARAMETERS)])


@pytest.fixture(scope="module")
def store(attacked: Path) -> duckdb.DuckDBPyConnection:
    return analyse(attacked)


def _tamper_label(directory: Path) -> dict[str, object]:
    return labels(directory)["weather-station-malware/wind-frozen"]


def test_capture_is_clean_and_only_the_lying_answers_move_to_the_label(attacked: Path, clean_run: Path) -> None:
    """Normal traffic plus the tampered answers equals the clean run: same frames, some now labelled."""
    check_scenario_frames(attacked)
    tamper = int(_tamper_label(attacked)["label"])  # type: ignore[call-overload]
    assert protocol_counts(attacked, frozenset({tamper})) == protocol_counts(clean_run)
    senders = {row[0] for row in fields(attacked / "capture.pcapng", "ip.src",
                                        display_filter=f'frame.comment contains "label: {tamper} "')}  # fmt: skip
    assert senders == {STATION}, "only the station's responses carry the label, the PLCs' requests stay normal"


def test_the_station_reports_calm_while_the_crane_anemometers_see_the_gust(
    store: duckdb.DuckDBPyConnection, attacked: Path
) -> None:
    details = _tamper_label(attacked)["expect"]["details"]  # type: ignore[index]
    assert details["true_above_limit_seconds"] > 5 and details["reported_above_limit_seconds"] == 0
    start, end = labels(attacked)["weather-station-malware/wind-frozen"]["start"], _tamper_label(attacked)["end"]

    def means(server: str) -> list[int]:
        rows = store.execute(
            "SELECT values[2] FROM modbus WHERE server_ip = ? AND direction = 'to_client' AND function_code = 3 "
            "AND ts BETWEEN CAST(? AS TIMESTAMPTZ) AND CAST(? AS TIMESTAMPTZ)",
            [server, start, end],
        ).fetchall()
        return [row[0] for row in rows]

    reported, boom = means(STATION), means("10.10.1.31")
    assert len(set(reported)) == 1 and reported[0] < 200, "frozen below the 20 m/s stop limit"
    assert max(boom) >= 200, "the crane's own anemometer sees the real wind above the limit"


def test_dns_rows_show_the_tunnel_and_its_forwarding(store: duckdb.DuckDBPyConnection) -> None:
    rows = store.execute(
        "SELECT client_ip, server_ip, query_name, query_type_name, longest_label FROM dns WHERE NOT is_response "
        "AND query_name LIKE ?",
        ["%." + DOMAIN],
    ).fetchall()
    assert {(row[0], row[1]) for row in rows} == {(STATION, OT_DNS), (OT_DNS, RESOLVER)}
    assert all(row[3] == "TXT" and row[4] >= 50 for row in rows)
    first = next(row[2] for row in rows if row[0] == STATION)
    encoded = "".join(first.split(".")[:2]).upper()
    decoded = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    assert decoded.startswith(b"r|") and b"|ws=" in decoded, "the names carry the station's readings"
    answers = store.execute("SELECT count(*) FROM dns WHERE is_response AND 'TXT' = ANY(answer_type_names) "
                            "AND client_ip = ?", [STATION]).fetchone()  # fmt: skip
    assert answers is not None and answers[0] == sum(1 for row in rows if row[0] == STATION)


def test_tls_rows_show_the_beacon_to_the_c2(store: duckdb.DuckDBPyConnection) -> None:
    times = store.execute(
        "SELECT epoch(ts) FROM tls WHERE client_ip = ? AND server_name = 'api.wx-metsync.example' ORDER BY ts",
        [STATION],
    ).fetchall()
    gaps = np.diff([row[0] for row in times])
    assert len(times) >= 3 and np.all(np.abs(gaps - 10) <= 2 * 0.15 * 10 + 0.5)


def test_replay_repeats_the_window_before_and_only_the_station_lies() -> None:
    model = load_model()
    start = model.start_epoch
    context = SimulationContext(model, seed=2, start=start, end=start + 60, scale=1.0)
    physics = context.physics
    physics.tamper_wind(start + 30, start + 50, "replay", label=9)
    times = np.arange(start + 30, start + 50, 0.5)
    assert np.array_equal(physics.weather_station_registers(times), physics.anemometer_registers(times - 20))
    assert np.array_equal(physics.weather_station_labels(times), np.full(times.shape[0], 9))
    outside = np.arange(start, start + 30, 0.5)
    assert np.array_equal(physics.weather_station_registers(outside), physics.anemometer_registers(outside))
    with pytest.raises(ValueError, match="frozen or replay"):
        physics.tamper_wind(start, start + 1, "sideways", label=9)


def test_polling_splits_only_the_weather_station_answers_by_label() -> None:
    model = load_model(cranes=1)
    start = model.start_epoch
    context = SimulationContext(model, seed=2, start=start, end=start + 20, scale=1.0)
    polling = CranePolling(context)
    context.physics.tamper_wind(start + 5, start + 15, "frozen", label=4)
    blocks = polling.window(start, start + 20)
    labelled = [block for block in blocks if block.label]
    assert labelled and all(block.label == 4 for block in labelled)
    assert sum(block.frames.shape[0] for block in labelled) == pytest.approx(10, abs=1)  # one answer a second
    station = bytes(int(part) for part in STATION.split("."))
    for block in labelled:
        assert all(bytes(frame[30:34]) == station for frame in block.frames)  # IPv4 source after a VLAN tag
        values = {struct.unpack(">4H", bytes(frame[-8:])) for frame in block.frames}
        assert len(values) == 1, "frozen: every tampered answer carries the same registers"


def test_gust_front_takes_the_real_wind_over_the_stop_limit() -> None:
    model = load_model()
    start = model.start_epoch
    context = SimulationContext(model, seed=1, start=start, end=start + 120, scale=1.0)
    WeatherStationMalware(context, {"behaviours": "tamper"})
    mean = context.physics.wind_mean(np.arange(start + 60, start + 110, 1.0))
    assert mean.max() >= model.wind_stop_mps
    assert context.physics.wind_mean(np.array([start + 30]))[0] < model.wind_stop_mps
    with pytest.raises(ValueError, match="unknown behaviour"):
        WeatherStationMalware(context, {"behaviours": "tunnel+mine"})
