"""The live testbed: real peers in real namespaces, analysed by quaywatch, and always cleaned up."""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import manuf
import pytest
from click.testing import CliRunner

from quaywatch.analysis import Analyzer
from quaywatch.cli.sim_live import live, parse_duration
from quaywatch.decode.registry import all_decoders
from quaywatch.sim.live import namespaces
from quaywatch.sim.live.crane import WIND_STOP, Crane
from quaywatch.sim.live.topology import TopologyError, load_topology
from quaywatch.store.database import Store

TOPOLOGY = load_topology()
ADDRESS = {device.name: device.address for device in TOPOLOGY.devices}
UNAVAILABLE = namespaces.available()
needs_namespaces = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"live testbed cannot run here: {UNAVAILABLE}")
LIVE = [sys.executable, "-c", "from quaywatch.cli.sim_live import live; live()"]


@pytest.fixture
def exclusive_testbed() -> Iterator[None]:
    """One testbed per machine: namespace names are fixed, so tests on parallel workers (-n 2) take turns."""
    with open("/run/quaywatch-live-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def leftovers() -> list[str]:
    return [*namespaces.our_namespaces(), *namespaces.our_host_links()]


REGISTRANT = {"Schneider Electric": "Telemechanique"}  # the IEEE registrant of Schneider's 00:80:F4 block


def test_default_topology_macs_are_under_their_makers_oui() -> None:
    parser = manuf.MacParser()
    for device in TOPOLOGY.devices:
        registrant = parser.get_all(device.mac).manuf_long or ""
        assert REGISTRANT.get(device.maker, device.maker.split()[0]).lower() in registrant.lower(), device.name


def test_topology_errors_name_line_and_key(tmp_path: Path) -> None:
    text = TOPOLOGY_TEXT.replace("address: 10.203.0.12", "address: 10.99.0.12")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as error:
        load_topology(path)
    line = next(number for number, row in enumerate(text.splitlines(), 1) if "10.99.0.12" in row)
    assert f"bad.yaml:{line}: devices[1].address:" in str(error.value)
    path.write_text(TOPOLOGY_TEXT.replace("{modbus: crane-plc}", "{modbus: gantry-plc}"))
    with pytest.raises(TopologyError, match=r"devices\[5\]\.targets\.modbus: device 'gantry-plc' runs server 'enip'"):
        load_topology(path)


TOPOLOGY_TEXT = Path(TOPOLOGY.path).read_text()


def test_crane_stops_in_wind_above_limit_and_moves_below() -> None:
    settings = {**TOPOLOGY.crane, "mean_wind_m_s": 30.0}
    crane = Crane(settings, seed=3)
    crane.wind_m_s = 30.0
    start = (crane.hoist_m, crane.trolley_m)
    for _ in range(50):
        crane.step(0.1)
    assert crane.state == WIND_STOP and (crane.hoist_m, crane.trolley_m) == start
    crane.wind_sensor_enabled = False  # the sabotage: the PLC no longer sees the wind, so the crane moves
    for _ in range(50):
        crane.step(0.1)
    assert crane.trolley_m != start[1] and crane.registers()["wind_speed_dm_s"] == 0


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30 and parse_duration("2m") == 120 and parse_duration("1.5") == 1.5


@needs_namespaces
def test_run_captures_every_protocol_and_cleans_up(tmp_path: Path, exclusive_testbed: None) -> None:
    capture = tmp_path / "live.pcapng"
    result = CliRunner().invoke(live, ["run", "--duration", "9s", "--capture", str(capture)])
    assert result.exit_code == 0, result.output
    assert leftovers() == []
    store = Store(tmp_path / "q.duckdb")
    try:
        Analyzer(store, decoders=all_decoders()).analyze(capture)
        store.flush()

        def rows(sql: str) -> set[tuple[object, ...]]:
            return set(store.connection.execute(sql).fetchall())

        reads = rows("SELECT client_ip, server_ip FROM modbus WHERE function_code = 3 AND direction = 'to_server'")
        assert (ADDRESS["cms-station"], ADDRESS["crane-plc"]) in reads
        writes = rows("SELECT client_ip, server_ip, address, values[1] FROM modbus WHERE function_code = 6")
        setpoint = TOPOLOGY.crane["registers"]["hoist_speed_setpoint_cm_s"]
        sensor = TOPOLOGY.crane["registers"]["wind_sensor_enabled"]
        assert (ADDRESS["eng-ws"], ADDRESS["crane-plc"], setpoint, 150) in writes
        assert (ADDRESS["intruder"], ADDRESS["crane-plc"], sensor, 0) in writes
        # The register values follow the crane model: the trolley moves, and once the intruder has disabled
        # the wind sensor the PLC reports no wind at all.
        registers = TOPOLOGY.crane["registers"]
        polled = store.connection.execute(
            "SELECT ts, values FROM modbus WHERE client_ip = ? AND direction = 'to_client' AND function_code = 3 "
            "AND address = 0 ORDER BY ts",
            [ADDRESS["cms-station"]],
        ).fetchall()
        (attacked,) = store.connection.execute(
            "SELECT min(ts) FROM modbus WHERE client_ip = ? AND function_code = 6 AND direction = 'to_client'",
            [ADDRESS["intruder"]],
        ).fetchone()
        before = [values for ts, values in polled if ts < attacked]
        after = [values for ts, values in polled if ts > attacked]
        assert len({values[registers["trolley_position_cm"]] for _, values in polled}) > 3
        assert before and any(values[registers["wind_speed_dm_s"]] > 0 for values in before)
        assert after and all(values[registers["wind_speed_dm_s"]] == 0 for values in after)
        assert all(values[registers["wind_sensor_enabled"]] == 0 for values in after)
        opcua = rows("SELECT client_ip, server_ip FROM opcua WHERE service = 'ReadRequest'")
        assert opcua == {(ADDRESS["cms-station"], ADDRESS["cms-server"])}
        s7 = rows("SELECT client_ip, server_ip, function FROM s7comm WHERE rosctr_code = 1")
        assert (ADDRESS["cms-station"], ADDRESS["spreader-plc"], "Read Variable") in s7
        assert (ADDRESS["intruder"], ADDRESS["spreader-plc"], "PLC Stop") in s7
        cip = rows("SELECT client_ip, server_ip, tag FROM cip WHERE message = 'request' AND tag IS NOT NULL")
        assert (ADDRESS["cms-station"], ADDRESS["gantry-plc"], "hoist_position_m") in cip
        # Identification that asset fingerprinting relies on: Modbus 43/14 and CIP List Identity.
        identified = rows("SELECT server_ip, vendor_name, product_code FROM modbus WHERE function_code = 43")
        plc = TOPOLOGY.device("crane-plc")
        assert (plc.address, plc.maker, plc.identity["product_code"]) in identified
        identities = rows("SELECT server_ip, vendor_name FROM cip_identity")
        assert (ADDRESS["gantry-plc"], "Rockwell Automation/Allen-Bradley") in identities
        spreader = TOPOLOGY.device("spreader-plc")
        s7_identity = rows(
            "SELECT server_ip, coalesce(order_number, module_name) FROM s7comm "
            "WHERE szl_id IS NOT NULL AND direction = 'to_client'"
        )
        assert s7_identity == {
            (spreader.address, spreader.identity["order_number"]),
            (spreader.address, spreader.identity["module_name"]),
        }
        assert rows("SELECT * FROM anomaly") == set()  # real stacks' traffic decodes without a complaint
        macs = rows("SELECT DISTINCT client_mac FROM flows")
        assert TOPOLOGY.device("cms-station").mac in {str(mac).lower() for (mac,) in macs}
    finally:
        store.close()
    if shutil.which("tshark"):  # Wireshark's dissectors agree that what the real stacks sent is well formed
        malformed = subprocess.run(
            ["tshark", "-r", str(capture), "-Y", "_ws.malformed || _ws.expert.severity == error", "-T", "fields",
             "-e", "frame.number"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert malformed == []
    report = json.loads(CliRunner().invoke(live, ["status", "--json"]).output)
    assert report["running"] is False


@needs_namespaces
@pytest.mark.parametrize("interruption", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_removes_its_namespaces(interruption: signal.Signals, exclusive_testbed: None) -> None:
    process = subprocess.Popen([*LIVE, "run", "--duration", "60s"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(namespaces.our_namespaces()) <= len(TOPOLOGY.devices):
            time.sleep(0.1)
        assert len(namespaces.our_namespaces()) == len(TOPOLOGY.devices) + 1  # the devices and the switch
        time.sleep(1.0)  # peers are starting inside them
        assert namespaces.namespace_pids(TOPOLOGY.devices[0].namespace)
        process.send_signal(interruption)
        # Cleanup waits for each peer (3 s grace) and for dumpcap to close its file (5 s); on a loaded 2-core CI
        # machine, with peers still importing their libraries, that has taken more than 20 s.
        output, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            subprocess.run([*LIVE, "stop"], check=False)
    assert process.returncode == 130, output
    assert leftovers() == []


@needs_namespaces
def test_stop_removes_a_testbed_left_behind(exclusive_testbed: None) -> None:
    """'start' leaves the testbed running after it exits; 'stop', in another process, must find and end it all."""
    started = subprocess.run([*LIVE, "start", "--no-attacker"], capture_output=True, text=True, timeout=30, check=False)
    assert started.returncode == 0, started.stderr
    pids = [pid for name in namespaces.our_namespaces() for pid in namespaces.namespace_pids(name)]
    assert len(pids) >= len(TOPOLOGY.devices) - 1
    stopped = subprocess.run([*LIVE, "stop"], capture_output=True, text=True, timeout=30, check=False)
    assert stopped.returncode == 0 and "qw-switch" in stopped.stdout
    assert leftovers() == []
    assert not [pid for pid in pids if namespaces.alive(pid)]
