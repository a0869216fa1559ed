"""The asset inventory on real captures (oracles: ICSNPP logs) and on small synthetic ones."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.assets.inventory import build_inventory
from quaywatch.decode.registry import all_decoders
from quaywatch.store.database import Store
from tests.factories import tcp_frame, udp_frame, write_pcap

RESEARCH = Path(__file__).resolve().parents[2].parent / "shared" / "research-data"
ENIP = RESEARCH / "icsnpp-enip/tests"
S7 = RESEARCH / "icsnpp-s7comm/tests"
#: Column names of ICSNPP's cip_identity log (its baseline has no #fields header).
CIP_IDENTITY_FIELDS = [
    "ts", "uid", "orig_h", "orig_p", "resp_h", "resp_p", "is_orig", "source_h", "source_p", "destination_h",
    "destination_p", "encapsulation_version", "socket_address", "socket_port", "vendor_id", "vendor_name",
    "device_type_id", "device_type_name", "product_code", "revision", "device_status", "serial_number",
    "product_name", "device_state",
]  # fmt: skip

HIKVISION_MAC = b"\x44\x19\xb6\x00\x00\x10"
QUECTEL_MAC = b"\x50\x80\x4a\x00\x00\x30"
CLIENT_MAC = b"\x00\x1b\x1b\x00\x00\x20"
HOSTILE_MAC = b"\x00\x1b\x1b\x00\x00\x99"
MODBUS_IDENTITY = (b"Schneider Electric", b"BMX P34 2020", b"v2.70")
HOSTILE_NAME = '=HYPERLINK("http://x")<script>\x1b[31m'


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: this oracle test needs ../shared/research-data (ICSNPP baselines)")
    return path


def analysed(tmp_path: Path, *captures: Path) -> Store:
    store = Store(tmp_path / "inventory.duckdb")
    analyzer = Analyzer(store, decoders=all_decoders())
    for capture in captures:
        analyzer.analyze(capture)
    store.flush()
    return store


def attribute_rows(store: Store, asset_id: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for attribute, value, evidence in store.connection.execute(
        "SELECT attribute, value, evidence FROM asset_attributes WHERE asset_id = ?", [asset_id]
    ).fetchall():
        found.setdefault(attribute, set()).add(value)
        assert evidence, f"{attribute}={value} carries no evidence"
    return found


def asset_of_ip(store: Store, ip: str) -> dict[str, object]:
    cursor = store.connection.execute("SELECT * FROM assets WHERE list_contains(ips, ?)", [ip])
    names = [column[0] for column in cursor.description]
    rows = cursor.fetchall()
    assert len(rows) == 1, f"{ip}: {len(rows)} assets"
    return dict(zip(names, rows[0], strict=True))


@pytest.mark.oracle
def test_cip_identity_equals_icsnpp(tmp_path: Path) -> None:
    log = require(ENIP / "baseline/analyzer.basic/cip_identity.log")
    (line,) = [line for line in log.read_text().splitlines() if line and not line.startswith("#")]
    known = dict(zip(CIP_IDENTITY_FIELDS, line.split("\t"), strict=True))
    store = analysed(tmp_path, require(ENIP / "traces/enip_cip_example.pcap"))
    build_inventory(store)
    asset = asset_of_ip(store, known["source_h"])  # the identity's sender: the device itself
    attributes = attribute_rows(store, str(asset["asset_id"]))
    assert attributes["vendor"] == {known["vendor_name"]}
    assert attributes["model"] == {known["product_name"]}
    assert attributes["firmware"] == {known["revision"]}
    assert attributes["serial"] == {known["serial_number"]}
    assert attributes["device_type"] == {known["device_type_name"]}
    assert (asset["model"], asset["firmware"], asset["serial"]) == (
        known["product_name"],
        known["revision"],
        known["serial_number"],
    )
    assert "enip" in asset["protocols_served"]  # type: ignore[operator]
    store.close()


@pytest.mark.oracle
def test_s7_module_identity_equals_icsnpp_known_devices(tmp_path: Path) -> None:
    log = require(S7 / "baseline/analyzer.s7ident/s7comm_known_devices.log")
    rows = [line.split("\t") for line in log.read_text().splitlines() if line and not line.startswith("#")]
    fields = next(line for line in log.read_text().splitlines() if line.startswith("#fields")).split("\t")[1:]
    (known,) = [dict(zip(fields, row, strict=True)) for row in rows]
    store = analysed(tmp_path, require(S7 / "traces/s7ident.pcap"))
    build_inventory(store)
    asset = asset_of_ip(store, known["id.resp_h"])  # the capture has no MACs: the asset is keyed by its address
    attributes = attribute_rows(store, str(asset["asset_id"]))
    assert attributes["serial"] == {known["module_serial"]}
    assert attributes["module_name"] == {known["module_name"]}
    assert attributes["hostname"] == {known["automation_system_name"]}
    assert attributes["model"] == {"6ES7 315-2EH14-0AB0"}  # SZL 0x0011, which ICSNPP does not log
    assert asset["serial"] == known["module_serial"]
    assert asset["role"] == "PLC"
    store.close()


@pytest.mark.oracle
def test_s7_read_szl_module_identification_with_site_networks(tmp_path: Path) -> None:
    # snap7.pcap uses public addresses: declared local here, or the router rule would treat them as remote.
    require(S7 / "baseline/analyzer.snap7/s7comm_read_szl.log")
    store = analysed(tmp_path, require(S7 / "traces/snap7.pcap"))
    summary = build_inventory(store)
    assert all(not row[0] for row in store.connection.execute("SELECT ips FROM assets").fetchall())
    assert summary.roles == {"unknown": 2}  # one remote address each: routed for by the rule, too few for a role
    build_inventory(store, local_networks=["134.217.61.0/24"])
    asset = asset_of_ip(store, "134.217.61.211")
    assert (asset["model"], asset["firmware"], asset["serial"]) == ("6ES7 315-2EH14-0AB0", "V3.2.7", "S C-B1U393142011")
    assert asset["vendor"] == "Siemens AG" and asset["role"] == "PLC"
    store.close()


def with_macs(frame: bytes, source: bytes, destination: bytes) -> bytes:
    return destination + source + frame[12:]


def dhcp_request(mac: bytes, hostname: str) -> bytes:
    message = dpkt.dhcp.DHCP(
        chaddr=mac,
        xid=0x1234,
        opts=((dpkt.dhcp.DHCP_OPT_MSGTYPE, b"\x03"), (dpkt.dhcp.DHCP_OPT_HOSTNAME, hostname.encode())),
    )
    return with_macs(udp_frame("0.0.0.0", "255.255.255.255", 68, 67, bytes(message)), mac, b"\xff" * 6)


def modbus_device_identification() -> list[bytes]:
    """A Modbus 43/14 read device identification exchange: 10.0.0.20 asks PLC 10.0.0.40 (Schneider OUI)."""
    objects = b"".join(bytes([number, len(text)]) + text for number, text in enumerate(MODBUS_IDENTITY))
    request_pdu = b"\x2b\x0e\x01\x00"
    response_pdu = b"\x2b\x0e\x01\x01\x00\x00" + bytes([len(MODBUS_IDENTITY)]) + objects
    request = struct.pack(">HHHB", 7, 0, len(request_pdu) + 1, 1) + request_pdu
    response = struct.pack(">HHHB", 7, 0, len(response_pdu) + 1, 1) + response_pdu
    syn, synack = dpkt.tcp.TH_SYN, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    push = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    plc, client = b"\x00\x80\xf4\x00\x00\x40", CLIENT_MAC
    return [
        with_macs(tcp_frame("10.0.0.20", "10.0.0.40", 50001, 502, syn, sequence=10), client, plc),
        with_macs(
            tcp_frame("10.0.0.40", "10.0.0.20", 502, 50001, synack, sequence=90, acknowledgement=11), plc, client
        ),
        with_macs(tcp_frame("10.0.0.20", "10.0.0.40", 50001, 502, push, request, 11, 91), client, plc),
        with_macs(tcp_frame("10.0.0.40", "10.0.0.20", 502, 50001, push, response, 91, 11 + len(request)), plc, client),
    ]


def synthetic_capture(path: Path) -> Path:
    request = b"OPTIONS rtsp://10.0.0.10/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n"
    response = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nServer: Hikvision-Webs\r\nPublic: OPTIONS, DESCRIBE\r\n\r\n"
    syn, synack = dpkt.tcp.TH_SYN, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    push = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    camera = [
        tcp_frame("10.0.0.20", "10.0.0.10", 50000, 554, syn, sequence=100),
        tcp_frame("10.0.0.10", "10.0.0.20", 554, 50000, synack, sequence=500, acknowledgement=101),
        tcp_frame("10.0.0.20", "10.0.0.10", 50000, 554, dpkt.tcp.TH_ACK, sequence=101, acknowledgement=501),
        tcp_frame("10.0.0.20", "10.0.0.10", 50000, 554, push, request, 101, 501),
        tcp_frame("10.0.0.10", "10.0.0.20", 554, 50000, push, response, 501, 101 + len(request)),
    ]
    frames = [
        with_macs(frame, HIKVISION_MAC, CLIENT_MAC)
        if frame[26:30] == bytes([10, 0, 0, 10])
        else with_macs(frame, CLIENT_MAC, HIKVISION_MAC)
        for frame in camera
    ]
    frames.append(with_macs(udp_frame("10.0.0.30", "10.0.0.20", 40000, 5000, b"hello"), QUECTEL_MAC, CLIENT_MAC))
    frames.append(dhcp_request(HOSTILE_MAC, HOSTILE_NAME))
    frames.append(dhcp_request(HOSTILE_MAC, "crane4-hmi"))  # the same host later names itself otherwise: a conflict
    frames += modbus_device_identification()
    return write_pcap(path, [(1_700_000_000 + index * 0.01, frame) for index, frame in enumerate(frames)])


@pytest.fixture
def synthetic_store(tmp_path: Path) -> Store:
    store = analysed(tmp_path, synthetic_capture(tmp_path / "site.pcap"))
    build_inventory(store)
    return store


def test_hikvision_camera_is_a_listed_camera(synthetic_store: Store) -> None:
    camera = asset_of_ip(synthetic_store, "10.0.0.10")
    assert camera["mac"] == "44:19:b6:00:00:10"
    assert camera["role"] == "camera"
    assert camera["protocols_served"] == ["rtsp"]
    assert "Hikvision" in str(camera["maker"]) and camera["maker_country"] == "CN"
    assert {"FCC Covered List", "NDAA FY2019 section 889"} <= set(camera["listed"])  # type: ignore[arg-type]
    reasons = synthetic_store.connection.execute(
        "SELECT rule FROM asset_attributes WHERE asset_id = ? AND attribute = 'role' AND value = 'camera'",
        [camera["asset_id"]],
    ).fetchall()
    assert ("camera-maker-serving-rtsp",) in reasons
    assert attribute_rows(synthetic_store, str(camera["asset_id"]))["software"] == {"Hikvision-Webs"}


def test_quectel_oui_is_flagged_as_cellular_module_maker(synthetic_store: Store) -> None:
    modem = asset_of_ip(synthetic_store, "10.0.0.30")
    assert "cellular_module" in modem["maker_roles"]  # type: ignore[operator]
    assert "Quectel" in str(modem["maker"])
    assert modem["role"] == "cellular router or modem"


def test_client_is_not_credited_with_the_server_side(synthetic_store: Store) -> None:
    client = asset_of_ip(synthetic_store, "10.0.0.20")
    assert client["protocols_used"] == ["modbus", "rtsp"] and client["protocols_served"] == []
    # It asks the PLC for its Modbus 43/14 identification: what engineering tools do, not a recorder. Pulling RTSP
    # (a weak NVR sign) and the plain ICS-client rule are kept and shown too.
    assert (client["role"], client["role_confidence"]) == ("engineering workstation", 0.65)
    roles = synthetic_store.connection.execute(
        "SELECT value, rule FROM asset_attributes WHERE asset_id = ? AND attribute = 'role' ORDER BY confidence DESC",
        [client["asset_id"]],
    ).fetchall()
    assert roles == [
        ("engineering workstation", "ics-engineering-client"),
        ("NVR", "pulls-rtsp"),
        ("engineering workstation", "ics-client"),
    ]


def test_rebuild_gives_the_same_rows(synthetic_store: Store) -> None:
    con = synthetic_store.connection
    first = (con.execute("SELECT * FROM assets ORDER BY asset_id").fetchall(),
             con.execute("SELECT * FROM asset_attributes ORDER BY ALL").fetchall())  # fmt: skip
    build_inventory(synthetic_store)
    second = (con.execute("SELECT * FROM assets ORDER BY asset_id").fetchall(),
              con.execute("SELECT * FROM asset_attributes ORDER BY ALL").fetchall())  # fmt: skip
    assert first == second
    (macs,) = con.execute("SELECT count(*) - count(DISTINCT mac) FROM assets").fetchone()  # type: ignore[misc]
    assert macs == 0


def test_dhcp_hostnames_are_kept_as_received_and_their_conflict_shown(synthetic_store: Store) -> None:
    con = synthetic_store.connection
    (conflicts,) = con.execute("SELECT conflicts FROM assets WHERE mac = '00:1b:1b:00:00:99'").fetchone()  # type: ignore[misc]
    assert conflicts == ["hostname"]
    rows = con.execute(
        "SELECT value, t.conflicts, rule FROM asset_attributes t JOIN assets USING (asset_id) "
        "WHERE mac = '00:1b:1b:00:00:99' AND attribute = 'hostname' ORDER BY value"
    ).fetchall()
    assert rows == [
        ('=HYPERLINK("http://x")<script>\x1b[31m', 1, "dhcp_option_12_host_name"),
        ("crane4-hmi", 1, "dhcp_option_12_host_name"),
    ]


def test_modbus_device_identification(synthetic_store: Store) -> None:
    plc = asset_of_ip(synthetic_store, "10.0.0.40")
    attributes = attribute_rows(synthetic_store, str(plc["asset_id"]))
    vendor, model, revision = (text.decode() for text in MODBUS_IDENTITY)
    assert attributes["vendor"] == {vendor} and attributes["model"] == {model} and attributes["firmware"] == {revision}
    assert (plc["device_vendor"], plc["model"], plc["firmware"], plc["role"]) == (vendor, model, revision, "PLC")


def test_router_rule() -> None:
    import duckdb

    from quaywatch.flows.records import FLOW_SCHEMA

    store = Store(Path(":memory:"))
    store.ensure_core_tables(FLOW_SCHEMA)
    router, host = "00:00:5e:00:01:01", "00:1b:1b:00:00:05"
    rows = []
    for index in range(12):  # a host talking to 12 remote servers through one router MAC, and one local peer
        rows.append((f"f{index}", "10.0.0.5", host, f"203.0.113.{index}", router))
    rows.append(("g", "10.0.0.5", host, "10.0.0.6", "00:1b:1b:00:00:06"))
    for flow_id, client_ip, client_mac, server_ip, server_mac in rows:
        store.connection.execute(
            "INSERT INTO flows BY NAME SELECT 'c' AS capture_id, ? AS flow_id, now()::TIMESTAMPTZ AS ts, "
            "now()::TIMESTAMPTZ AS last_ts, 0.0 AS duration, 'tcp' AS transport, 6 AS ip_protocol, ? AS client_ip, "
            "1 AS client_port, ? AS server_ip, 80 AS server_port, ? AS client_mac, ? AS server_mac, "
            "1 AS packets_to_server, 1 AS packets_to_client, 0 AS bytes_to_server, 0 AS bytes_to_client, "
            "0 AS ip_bytes_to_server, 0 AS ip_bytes_to_client, 0 AS payload_bytes_to_server, "
            "0 AS payload_bytes_to_client, 'SF' AS state, 'idle' AS end_reason, 1 AS first_packet, 1 AS last_packet, "
            "'http' AS application",
            [flow_id, client_ip, server_ip, client_mac, server_mac],
        )
    build_inventory(store)
    found = dict(
        (mac, (ips, routed, served, role))
        for mac, ips, routed, served, role in store.connection.execute(
            "SELECT mac, ips, routed_ips, protocols_served, role FROM assets"
        ).fetchall()
    )
    assert found[router] == ([], 12, [], "network device")  # routes for the remote servers, serves nothing itself
    assert found[host][0] == ["10.0.0.5"]
    assert found["00:1b:1b:00:00:06"][:3] == (["10.0.0.6"], 0, ["http"])
    assert isinstance(store.connection, duckdb.DuckDBPyConnection)
    store.close()


ROUTER_MAC = b"\x00\x09\x0f\x00\x00\x01"  # a Fortinet OUI
SERVER_MAC = b"\x00\x1b\x1b\x00\x00\x50"
VICTIM_MAC = b"\x00\x1b\x1b\x00\x00\x60"
SPOOFER_MAC = b"\x00\x1b\x1b\x00\x00\x66"


def arp_reply(mac: bytes, ip: str) -> bytes:
    arp = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REPLY, sha=mac, spa=bytes(map(int, ip.split("."))), tha=b"\xff" * 6)
    return bytes(dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=mac, type=dpkt.ethernet.ETH_TYPE_ARP, data=arp))


def http_exchange(server: str, server_mac: bytes, port: int) -> list[bytes]:
    syn, synack, push = dpkt.tcp.TH_SYN, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    request, response = (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nServer: tos\r\nContent-Length: 0\r\n\r\n",
    )
    client = "10.0.0.20"
    return [
        with_macs(tcp_frame(client, server, port, 80, syn, sequence=10), CLIENT_MAC, server_mac),
        with_macs(tcp_frame(server, client, 80, port, synack, sequence=90, acknowledgement=11), server_mac, CLIENT_MAC),
        with_macs(tcp_frame(client, server, port, 80, push, request, 11, 91), CLIENT_MAC, server_mac),
        with_macs(tcp_frame(server, client, 80, port, push, response, 91, 11 + len(request)), server_mac, CLIENT_MAC),
    ]


def test_a_server_seen_only_beyond_a_router_still_serves_but_a_spoofer_credits_no_one(tmp_path: Path) -> None:
    frames = [arp_reply(SERVER_MAC, "10.0.1.50"), arp_reply(VICTIM_MAC, "10.0.1.60")]
    for remote in ("198.51.100.7", "203.0.113.9"):  # the router carries remote addresses: it routes for them
        frames.append(with_macs(udp_frame("10.0.0.20", remote, 40000, 9999, b"x"), CLIENT_MAC, ROUTER_MAC))
        frames.append(with_macs(udp_frame(remote, "10.0.0.20", 9999, 40000, b"y"), ROUTER_MAC, CLIENT_MAC))
    frames += http_exchange("10.0.1.50", ROUTER_MAC, 50010)  # seen on the client's side of the router
    frames += http_exchange("10.0.1.60", SPOOFER_MAC, 50011)  # one MAC answering for an address another claimed
    store = analysed(
        tmp_path, write_pcap(tmp_path / "routed.pcap", [(1_700_000_000 + i * 0.01, f) for i, f in enumerate(frames)])
    )
    build_inventory(store)
    server = asset_of_ip(store, "10.0.1.50")
    assert (server["protocols_served"], server["role"]) == (["http"], "server")
    assert "tos" in attribute_rows(store, str(server["asset_id"]))["software"]  # its Server header, not the router's
    router = store.connection.execute(
        "SELECT protocols_served, routed_ips FROM assets WHERE mac = '00:09:0f:00:00:01'"
    ).fetchone()
    assert router == ([], 3)  # the two remote addresses and the server's, which the server claimed itself
    victim = asset_of_ip(store, "10.0.1.60")
    assert victim["protocols_served"] == []
    store.close()
