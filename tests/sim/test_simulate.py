"""The simulator as a whole: tshark agrees with its accounting, runs are deterministic, physics holds.

One capture of the default terminal with every scenario on is generated once per
session (a few seconds) and shared by the tests that only read it.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from quaywatch.sim.model import load_model
from quaywatch.sim.physics import TerminalPhysics, check_digit
from quaywatch.sim.scenarios import SCENARIOS
from quaywatch.sim.simulate import CAPTURE, LABELS, TRUTH, parse_duration, parse_scenario, simulate
from tests.sim import sources

DURATION = 120.0


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two simulated minutes of the default terminal with every scenario switched on."""
    directory = tmp_path_factory.mktemp("sim-all")
    simulate(directory, seed=11, duration=DURATION, scenarios=[(scenario.name, {}) for scenario in SCENARIOS])
    return directory


def test_tshark_reads_every_packet_without_a_warning(everything: Path) -> None:
    capture = everything / CAPTURE
    warnings = sources.fields(
        capture, "frame.number", "_ws.expert.message", display_filter="_ws.malformed || _ws.expert.severity >= warning"
    )
    assert warnings == [], f"tshark warns on {len(warnings)} packets, first: {warnings[:5]}"
    truth = json.loads((everything / TRUTH).read_text())
    count = len(sources.fields(capture, "frame.number"))
    assert count == truth["packets"]


def test_tshark_per_protocol_counts_equal_the_generator_accounting(everything: Path) -> None:
    """Each frame counts for the last protocol in tshark's frame.protocols that is an accounting bucket."""
    truth = json.loads((everything / TRUTH).read_text())
    buckets = set(truth["packets_by_protocol"])
    counted: collections.Counter[str] = collections.Counter()
    for (protocols,) in sources.fields(everything / CAPTURE, "frame.protocols"):
        known = [name for name in protocols.split(":") if name in buckets]
        counted[known[-1] if known else f"unaccounted:{protocols}"] += 1
    assert dict(counted) == truth["packets_by_protocol"]


def test_the_same_seed_gives_the_same_capture_byte_for_byte(tmp_path: Path) -> None:
    first = simulate(tmp_path / "a", seed=5, duration=30.0)
    second = simulate(tmp_path / "b", seed=5, duration=30.0)
    other = simulate(tmp_path / "c", seed=6, duration=30.0)

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(first.capture) == digest(second.capture)
    assert digest(first.capture) != digest(other.capture)
    assert (tmp_path / "a" / LABELS).read_text() == (tmp_path / "b" / LABELS).read_text()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same two minutes with no scenario."""
    directory = tmp_path_factory.mktemp("sim-clean")
    simulate(directory, seed=11, duration=DURATION)
    return directory


def test_switching_scenarios_on_leaves_normal_traffic_unchanged(clean: Path, tmp_path: Path) -> None:
    """Frames without a label comment are the same, byte for byte, whether or not the scenarios run.

    Scenarios that change normal frames on purpose (``alters_normal_traffic``) are checked by their own tests.
    """
    chosen = [(scenario.name, {}) for scenario in SCENARIOS if not scenario.alters_normal_traffic]
    attacked = simulate(tmp_path / "attacked", seed=11, duration=DURATION, scenarios=chosen)
    fields = ("frame.time_epoch", "frame.protocols", "frame.len", "eth.src", "ip.src", "ip.dst", "tcp.seq_raw")
    normal = sources.fields(attacked.capture, *fields, display_filter="not frame.comment")
    assert normal == sources.fields(clean / CAPTURE, *fields)


def test_labels_cover_exactly_the_commented_packets(everything: Path) -> None:
    labels = [json.loads(line) for line in (everything / LABELS).read_text().splitlines()]
    commented: collections.Counter[int] = collections.Counter()
    for _number, comment in sources.fields(
        everything / CAPTURE, "frame.number", "frame.comment", display_filter="frame.comment"
    ):
        assert comment.startswith("quaywatch-label: ")
        commented[int(comment.split()[1])] += 1
    assert {label["label"]: label["packets"] for label in labels} == dict(commented)
    for label in labels:
        assert label["packets"] > 0, label["instance"]
        assert label["start"] <= label["end"]
        assert label["techniques"], label["instance"]
        assert label["flows"], label["instance"]  # every scenario speaks IP: its flows are named by Community ID


def test_durations_and_scenario_arguments_parse_or_say_why() -> None:
    assert parse_duration("10m") == 600 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("ten minutes")
    if SCENARIOS:
        name = SCENARIOS[0].name
        assert parse_scenario(f"{name}:start=5,variant=mqtt") == (name, {"start": 5, "variant": "mqtt"})
    with pytest.raises(KeyError, match="unknown scenario"):
        parse_scenario("no-such-scenario")
    with pytest.raises(ValueError, match="key=value"):
        parse_scenario(f"{SCENARIOS[0].name if SCENARIOS else 'x'}:oops")


def test_no_crane_moves_in_wind_above_its_stop_limit() -> None:
    """Physics: a worked cycle never overlaps a 10-second mean wind at or above the limit."""
    model = load_model()
    model.wind_stop_mps = 9.0  # low enough that the simulated day crosses it
    start = model.start_epoch
    physics = TerminalPhysics(model, start, start + 4 * 3600, seed=3)
    times = np.arange(start, start + 4 * 3600, 0.5)
    windy = physics.wind_mean(times) >= model.wind_stop_mps
    assert windy.any() and not windy.all(), "the test needs both calm and windy periods"
    for crane in range(1, model.cranes + 1):
        state = physics.state(crane, times)
        assert not np.any((state["moving"] > 0) & windy), f"crane {crane} moves in wind above its limit"
        assert np.all(state["hoist_cm"] >= 0) and np.all(state["hoist_cm"] <= 4000)
        assert np.all((state["twistlocks_locked"] == 0) | (state["load_decitonnes"] > 0))


def test_every_move_has_a_valid_container_id() -> None:
    model = load_model()
    physics = TerminalPhysics(model, model.start_epoch, model.start_epoch + 3600, seed=4)
    moves = [move for crane in physics.moves for move in physics.moves[crane]]
    assert len(moves) > 50
    for move in moves:
        assert len(move.container) == 11 and move.container[3] == "U"
        assert check_digit(move.container[:10]) == int(move.container[10]), move.container


def test_request_response_pairing_and_latency_follow_the_device(clean: Path) -> None:
    """Every Modbus request has one response with its transaction id, within the device's 3-12 ms."""
    rows = sources.fields(
        clean / CAPTURE,
        "frame.time_epoch", "tcp.stream", "mbtcp.trans_id", "tcp.srcport",
        display_filter="modbus",
    )  # fmt: skip
    requests: dict[tuple[str, str], float] = {}
    latencies = []
    for epoch, stream, transaction, source_port in rows:
        key = (stream, transaction)
        if source_port != "502":
            assert key not in requests, f"transaction {transaction} reused before its response"
            requests[key] = float(epoch)
        else:
            latencies.append(float(epoch) - requests.pop(key))
    # Only the last request of a stream may be unanswered: the capture ended before its response.
    per_stream = collections.Counter(stream for stream, _ in requests)
    assert max(per_stream.values(), default=0) <= 1, f"unanswered requests: {per_stream}"
    assert latencies and min(latencies) >= 0.003 and max(latencies) <= 0.012


def test_every_scenario_technique_is_a_known_attack_technique(everything: Path) -> None:
    """Labels and scenario classes name ATT&CK ids that the alert data file knows (a typo would fail here)."""
    from quaywatch.detect.attack import technique_name

    for scenario in SCENARIOS:
        for technique in scenario.techniques:
            assert technique_name(technique)
    for line in (everything / LABELS).read_text().splitlines():
        for technique in json.loads(line)["techniques"]:
            assert technique_name(technique), technique
