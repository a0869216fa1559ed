"""Scenario 7: S7 SZL, Modbus 43/14 and CIP List Identity sweeps from an office workstation, and a SYN scan."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from quaywatch.sim.model import load_model
from tests.sim.scenarios.checks import analyse, check_capture, fields, labels, run

PARAMETERS = {"at": 3, "sweep_hosts": 40, "syn_probes": 4}
ATTACKER = "172.16.1.13"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("sim-recon"), [("reconnaissance", PARAMETERS)])


@pytest.fixture(scope="module")
def store(attacked: Path) -> duckdb.DuckDBPyConnection:
    return analyse(attacked)


def test_capture_is_clean_labelled_and_leaves_normal_traffic_alone(attacked: Path, clean_run: Path) -> None:
    check_capture(attacked, clean_run)


def test_s7comm_rows_carry_every_siemens_plc_identity(store: duckdb.DuckDBPyConnection) -> None:
    model = load_model()
    siemens = {device.ip: device for device in model.find(role="PLC", maker="Siemens")}
    modules = store.execute(
        "SELECT server_ip, order_number, firmware_version FROM s7comm WHERE szl_id = 17 AND client_ip = ? "
        "AND order_number IS NOT NULL",
        [ATTACKER],
    ).fetchall()
    assert {row[0]: (row[1], row[2]) for row in modules} == {
        ip: (device.order_number, device.firmware) for ip, device in siemens.items()
    }
    components = store.execute(
        "SELECT server_ip, module_name, location FROM s7comm WHERE szl_id = 28 AND module_name IS NOT NULL"
    ).fetchall()
    assert {row[0] for row in components} == set(siemens)
    assert ("10.10.1.10", "CPU 1516-3 PN/DP", "STS crane 1") in components


def test_modbus_rows_carry_the_sensors_device_identification(store: duckdb.DuckDBPyConnection) -> None:
    rows = store.execute(
        "SELECT server_ip, vendor_name, product_code, revision FROM modbus WHERE function_code = 43 "
        "AND direction = 'to_client' AND client_ip = ? ORDER BY server_ip",
        [ATTACKER],
    ).fetchall()
    assert ("10.70.0.10", "Vaisala Oyj", "WXT536 + Modbus gateway", "3.86") in rows
    assert sum(row[1] == "Gill Instruments Ltd" for row in rows) == 4  # one boom anemometer per crane


def test_cip_identity_rows_come_only_from_cip_devices(store: duckdb.DuckDBPyConnection, attacked: Path) -> None:
    rows = store.execute("SELECT server_ip, vendor_name, product_name, revision FROM cip_identity").fetchall()
    by_ip = {row[0]: row for row in rows}
    assert by_ip["10.10.2.10"][1:] == ("Rockwell Automation/Allen-Bradley", "1756-L85E/B LOGIX5585E", "33.11")
    assert by_ip["10.10.1.21"][1] == "ABB Industrial Systems"
    model = load_model()
    cip = {d.ip for d in model.devices if d.maker in ("Rockwell", "ABB") and d.zone.startswith(("sts", "yard"))}
    assert set(by_ip) == cip
    probes = fields(attacked / "capture.pcapng", "ip.dst", display_filter=f"enip && ip.src == {ATTACKER}")
    assert len(probes) > len(cip), "the sweep asks addresses where nothing answers"


def test_syns_to_empty_addresses_go_unanswered(attacked: Path) -> None:
    syns = fields(attacked / "capture.pcapng", "ip.dst", "tcp.dstport",
                  display_filter="frame.comment && tcp.flags == 0x002 && tcp.window_size_value == 1024")  # fmt: skip
    assert {int(port) for _, port in syns} == {102, 502, 44818}
    addresses = {address for address, _ in syns}
    known = {device.ip for device in load_model().devices}
    assert addresses and not addresses & known
    answered = fields(attacked / "capture.pcapng", "ip.src", display_filter="tcp.flags.syn == 1 && tcp.flags.ack == 1")
    assert not {row[0] for row in answered} & addresses
    assert labels(attacked)["reconnaissance/sweep"]["expect"]["detections"] == ["D1", "D8"]
