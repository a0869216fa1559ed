"""The network background (ARP, LLDP, DHCP, DNS, NTP, SNMP) as tshark and quaywatch's own analysis see it."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from quaywatch.analysis import Analyzer
from quaywatch.assets.inventory import build_inventory
from quaywatch.cli.main import main as cli
from quaywatch.sim.engine import SimulationContext, run
from quaywatch.sim.model import TerminalModel, load_model
from quaywatch.sim.normal.background import NetworkBackground
from quaywatch.sim.simulate import CAPTURE, POLICY, TRUTH, simulate
from quaywatch.store.database import Store
from tests.sim.sources import fields

BUCKETS = ("arp", "lldp", "dhcp", "dns", "ntp", "snmp")


@pytest.fixture(scope="module")
def terminal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Store, TerminalModel]:
    """Two simulated minutes of the default terminal, analysed and inventoried once."""
    directory = tmp_path_factory.mktemp("background")
    result = simulate(directory, seed=3, duration=120.0)
    store = Store(directory / "q.duckdb")
    Analyzer(store).analyze(result.capture)
    build_inventory(store)
    return directory, store, result.model


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    cursor = store.connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_tshark_reads_the_background_alone_without_warnings_and_agrees_with_the_accounting(tmp_path: Path) -> None:
    model = load_model()
    context = SimulationContext(model, 7, model.start_epoch, model.start_epoch + 60.0, 1.0)
    summary = run(context, [NetworkBackground(context)], tmp_path / CAPTURE)
    warnings = fields(
        tmp_path / CAPTURE, "frame.number", display_filter="_ws.malformed || _ws.expert.severity >= warning"
    )
    assert warnings == []
    counted: collections.Counter[str] = collections.Counter()
    for (protocols,) in fields(tmp_path / CAPTURE, "frame.protocols"):
        known = [name for name in protocols.split(":") if name in BUCKETS]
        counted[known[-1] if known else protocols] += 1
    assert dict(counted) == summary.packets_by_protocol
    assert set(counted) == set(BUCKETS)


def test_every_model_device_appears_in_the_inventory_exactly_once_by_its_mac(
    terminal: tuple[Path, Store, TerminalModel],
) -> None:
    directory, store, _ = terminal
    truth = json.loads((directory / TRUTH).read_text())
    expected = collections.Counter(device["mac"] for device in truth["devices"])
    found = collections.Counter(row["mac"] for row in rows(store, "SELECT mac FROM assets"))
    assert found == expected


def test_lldp_shows_the_core_switch_and_the_siemens_plc_as_built_from_the_model(
    terminal: tuple[Path, Store, TerminalModel],
) -> None:
    _, store, model = terminal
    switch = model.device("core-switch")
    announced = rows(store, f"SELECT * FROM lldp WHERE source_mac = '{switch.mac}'")
    assert len({row["port_id"] for row in announced}) == len(model.zones)  # one port per zone, every 30 s
    first = announced[0]
    assert first["system_name"] == "core-switch"
    assert first["system_description"].startswith("Cisco IOS Software, IE5000 Software")
    assert "Version 15.2(8)E" in first["system_description"]
    assert set(first["enabled_capabilities"]) == {"Bridge", "Router"}
    assert first["management_addresses"] == [switch.ip]
    plc = model.device("sts01-plc")
    plc_rows = rows(store, f"SELECT * FROM lldp WHERE source_mac = '{plc.mac}'")
    assert len(plc_rows) >= 20  # PROFINET: every 5 s
    assert plc_rows[0]["system_description"] == (
        "Siemens, SIMATIC S7, CPU 1516-3 PN/DP, 6ES7 516-3AN02-0AB0, HW: Version 1, FW: Version V2.9.4"
    )
    assert plc_rows[0]["chassis_id"] == "sts01-plc" and plc_rows[0]["port_vlan_id"] == plc.vlan
    switch_asset = rows(store, f"SELECT role, hostname FROM assets WHERE mac = '{switch.mac}'")[0]
    assert switch_asset == {"role": "network device", "hostname": "core-switch"}


def test_dhcp_leases_carry_windows_hostnames_and_the_model_addresses(
    terminal: tuple[Path, Store, TerminalModel],
) -> None:
    _, store, model = terminal
    leases = rows(store, "SELECT * FROM dhcp ORDER BY ts")
    requests = [row for row in leases if row["message_type_name"] == "REQUEST"]
    assert requests, "a laptop joins just after the start"
    for request in requests:
        laptop = model.device(request["hostname"].lower())
        assert request["client_mac"] == laptop.mac
        assert request["vendor_class_id"] == "MSFT 5.0"
        assert request["parameter_request_string"] == "1,3,6,15,31,33,43,44,46,47,119,121,249,252"
    acks = [row for row in leases if row["message_type_name"] == "ACK"]
    assert {row["xid"] for row in acks} == {row["xid"] for row in requests}
    corp_dns = model.device("corp-dns")
    for ack in acks:
        laptop = next(device for device in model.devices if device.mac == ack["client_mac"])
        assert ack["yiaddr"] == laptop.ip and ack["server_id"] == corp_dns.ip
        assert ack["routers"] == [model.gateway_ip("corporate-it")] and ack["lease_time"] == 28800


def test_dns_answers_give_the_model_addresses(terminal: tuple[Path, Store, TerminalModel]) -> None:
    _, store, model = terminal
    answers = rows(store, "SELECT * FROM dns WHERE len(answer_data) > 0")
    assert len(answers) >= 10
    for answer in answers:
        name = answer["query_name"]
        device = next(d for d in model.devices if f"{d.name}.{model.domain}" == name or d.domain == name)
        assert answer["answer_data"] == [device.ip], name
        assert answer["matched"]
    ot_dns = model.device("ot-dns")
    assert any(answer["server_ip"] == ot_dns.ip and answer["client_ip"].startswith("10.10.") for answer in answers)


def test_ntp_clients_follow_ot_dns_and_it_answers_their_own_transmit_times(
    terminal: tuple[Path, Store, TerminalModel],
) -> None:
    _, store, model = terminal
    ot_dns = model.device("ot-dns")
    answers = rows(store, f"SELECT * FROM ntp WHERE mode = 'server' AND client_ip <> '{ot_dns.ip}'")
    asked = {round(row["transmit_time"], 5) for row in rows(store, "SELECT * FROM ntp WHERE mode = 'client'")}
    assert answers
    for answer in answers:
        assert answer["server_ip"] == ot_dns.ip and answer["stratum"] == 3
        assert answer["reference_id"] == model.device("ntp-pool").ip
        assert round(answer["origin_time"], 5) in asked
        assert answer["receive_time"] > answer["origin_time"]
    plcs = {device.ip for device in model.devices if device.role == "PLC"}
    assert plcs <= {row["client_ip"] for row in answers}  # PLCs poll every 64 s


def test_snmp_polls_the_switch_and_cameras_with_the_site_community(terminal: tuple[Path, Store, TerminalModel]) -> None:
    _, store, model = terminal
    responses = rows(store, "SELECT * FROM snmp WHERE pdu_type = 'response' AND sys_descr IS NOT NULL")
    polled = {row["server_ip"]: row for row in responses}
    cameras = [device for device in model.devices if device.role == "camera" and device.zone == "cctv"]
    assert set(polled) == {model.device("core-switch").ip} | {camera.ip for camera in cameras}
    assert {row["community"] for row in responses} == {"qw-ro-7f3k"}
    assert {row["client_ip"] for row in responses} == {model.device("ot-dns").ip}
    assert polled[model.device("core-switch").ip]["sys_descr"].startswith("Cisco IOS Software")
    assert polled[cameras[0].ip]["sys_descr"] == f"AXIS {cameras[0].model} Network Camera {cameras[0].firmware}"
    assert polled[cameras[0].ip]["sys_name"] == cameras[0].name


def test_the_policy_is_clean_and_background_flows_comply(terminal: tuple[Path, Store, TerminalModel]) -> None:
    directory, store, _ = terminal
    runner = CliRunner()
    checked = runner.invoke(cli, ["policy", "check", str(directory / POLICY)])
    assert checked.exit_code == 0, checked.output
    assert "0 errors, 0 warnings" in checked.output
    store.flush()
    evaluated = runner.invoke(
        cli, ["policy", "evaluate", "--db", str(directory / "q.duckdb"), "--policy", str(directory / POLICY), "--json"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    bad = rows(
        store,
        "SELECT * FROM flow_policy WHERE verdict IN ('violation', 'external_unapproved') "
        "AND protocol IN ('dns', 'ntp', 'snmp', 'dhcp')",
    )
    assert bad == []
    verdicts = {row["verdict"] for row in rows(store, "SELECT verdict FROM flow_policy WHERE protocol = 'ntp'")}
    assert "allowed" in verdicts


def test_arp_resolves_each_zone_gateway_and_rebooting_devices_announce_themselves(
    terminal: tuple[Path, Store, TerminalModel],
) -> None:
    _, store, model = terminal
    firewall = model.gateway("cctv")
    requests = rows(store, "SELECT * FROM arp WHERE kind = 'request'")
    asked = {row["sender_mac"]: row["target_ip"] for row in requests}
    for device in model.devices:
        if device.external or device.gateway_ips:
            continue
        assert asked[device.mac] == model.gateway_ip(device.zone), device.name
    replies = rows(store, "SELECT * FROM arp WHERE kind = 'reply'")
    assert {row["sender_mac"] for row in replies} == {firewall.mac}
    assert {row["sender_ip"] for row in replies} == {address for _, address in firewall.gateway_ips}
    probes = rows(store, "SELECT target_mac, target_ip FROM arp WHERE kind = 'probe'")
    announced = rows(store, "SELECT sender_mac, sender_ip FROM arp WHERE kind = 'announcement'")
    assert len(probes) == 9 and len(announced) == 6  # three devices: 3 probes and 2 announcements each (RFC 5227)
    assert {row["target_ip"] for row in probes} == {row["sender_ip"] for row in announced}
