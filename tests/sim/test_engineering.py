"""Engineering sessions, run alone: TIA Portal S7 sessions and RSLinx/Studio 5000 CIP sessions, checked by tshark,
by quaywatch's decoders and by its asset inventory against the terminal model."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from quaywatch.cli.main import main
from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.model import load_model
from quaywatch.sim.normal.engineering import Engineering, cip_serial
from tests.sim.sources import Generated, analyse, generate, policy_check, rows, tshark, tshark_buckets, warnings

# Seed 7 with two cranes (one Siemens, one Rockwell): both workstations go online within the first minute of the
# 09:55 Tuesday start and both change a setpoint within 150 s.
SEED, CRANES, DURATION = 7, 2, 150


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generate(tmp_path_factory.mktemp("engineering"), Engineering, SEED, DURATION, CRANES)


@pytest.fixture(scope="module")
def store(generated: Generated) -> Path:
    return analyse(generated)


def test_a_demo_run_starts_a_session_from_each_workstation_within_minutes() -> None:
    model = load_model(None, 4)
    for seed in (1, 2, 3):
        context = SimulationContext(model, seed, model.start_epoch, model.start_epoch + 120, 1.0)
        sessions = Engineering(context).sessions
        assert {session.workstation for session in sessions if session.start < context.start + 90} == {
            "eng-ws-01",
            "eng-ws-02",
        }


def test_tshark_decodes_s7_and_cip_cleanly_and_agrees_with_the_accounting(generated: Generated) -> None:
    assert warnings(generated.capture) == ""
    seen = tshark_buckets(generated.capture, set(generated.summary.packets_by_protocol))
    assert dict(seen) == generated.summary.packets_by_protocol
    info = tshark(generated.capture, "-T", "fields", "-e", "_ws.col.Info")
    for expected in ("CR TPDU", "Setup communication", "ID=0x0011", "ID=0x001c", "ID=0x011c", "Write Var",
                     "List Identity (Rsp)", "Register Session", "Get Attributes All"):  # fmt: skip
        assert expected in info


def test_inventory_identifies_every_engineered_device_as_the_model_has_it(generated: Generated, store: Path) -> None:
    listing = CliRunner().invoke(main, ["assets", "--db", str(store), "--json"])
    assert listing.exit_code == 0, listing.output
    assets = {asset["ips"][0]: asset for asset in map(json.loads, listing.output.splitlines())}
    model = generated.model
    siemens = [model.device(name) for name in ("sts01-plc", "sts01-spreader-plc")]
    for plc in siemens:
        asset = assets[plc.ip]
        assert (asset["role"], asset["model"], asset["firmware"], asset["serial"]) == (
            "PLC", plc.order_number, plc.firmware, plc.serial,
        )  # fmt: skip
    rockwell = [device for device in model.devices if device.maker == "Rockwell" and device.role == "PLC"]
    drives = model.find(role="drive", zone="sts-crane-02")
    assert len(rockwell) == 4 and len(drives) == 3  # the Rockwell crane's PLC, three RTG PLCs, three ABB drives
    for device in [*rockwell, *drives]:
        asset = assets[device.ip]
        assert asset["role"] == device.role
        assert asset["model"] == device.model
        assert [int(part) for part in asset["firmware"].split(".")] == [int(p) for p in device.firmware.split(".")]
        assert int(asset["serial"], 16) == cip_serial(device)


def test_writes_come_only_from_the_engineering_workstations_and_comply(generated: Generated, store: Path) -> None:
    assert "0 errors, 0 warnings" in policy_check(generated)
    s7_writes = rows(store, 'SELECT client_ip, "values" FROM s7comm WHERE function_code = 5 AND rosctr_code = 1')
    cip_writes = rows(store, "SELECT client_ip FROM cip WHERE service_code = 77 AND direction = 'to_server'")
    assert {row["client_ip"] for row in s7_writes} == {generated.model.device("eng-ws-01").ip}
    setpoints = [int.from_bytes(value, "big") for row in s7_writes for value in row["values"]]
    assert setpoints and all(70 <= value <= 100 for value in setpoints)  # the authorised hoist speed limit, percent
    assert {row["client_ip"] for row in cip_writes} == {generated.model.device("eng-ws-02").ip}
    verdicts = rows(store, "SELECT verdict FROM flow_policy")
    assert verdicts and {row["verdict"] for row in verdicts} == {"allowed"}


def test_no_sessions_outside_work_hours(tmp_path: Path) -> None:
    text = resources.files("quaywatch.data").joinpath("sim", "terminal.yaml").read_text(encoding="utf-8")
    night = tmp_path / "night.yaml"
    night.write_text(text.replace('start: "2025-11-25T09:55:00"', 'start: "2025-11-25T19:30:00"'))
    generated = generate(tmp_path / "night", Engineering, SEED, 11 * 3600, CRANES, model=night)  # 19:30 to 06:30
    assert generated.summary.packets == 0
