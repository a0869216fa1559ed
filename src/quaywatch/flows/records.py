"""Turn ended flow rows into the ``flows`` table: addresses, ids and states."""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa

from quaywatch.flows import table
from quaywatch.flows.community_id import community_ids

MAPPED_PREFIX = 0x0000FFFF00000000

FLOW_SCHEMA = pa.schema(
    [
        pa.field("capture_id", pa.string(), False, {"doc": "captures.capture_id"}),
        pa.field("flow_id", pa.string(), False, {"doc": "stable id: hash of 5-tuple, VLANs and first timestamp"}),
        pa.field("community_id", pa.string(), True, {"doc": "Community ID v1 (seed 0)"}),
        pa.field("ts", pa.timestamp("us", tz="UTC"), False, {"doc": "first packet"}),
        pa.field("last_ts", pa.timestamp("us", tz="UTC"), False, {"doc": "last packet"}),
        pa.field("duration", pa.float64(), False, {"doc": "seconds from first to last packet"}),
        pa.field("transport", pa.string(), False, {"doc": "tcp, udp, icmp, icmp6, sctp or the IP protocol number"}),
        pa.field("ip_protocol", pa.uint8(), False),
        pa.field("client_ip", pa.string(), False, {"doc": "originator: sent the SYN or the first packet"}),
        pa.field("client_port", pa.int32(), False, {"doc": "ICMP: request type"}),
        pa.field("server_ip", pa.string(), False),
        pa.field("server_port", pa.int32(), False, {"doc": "ICMP: code"}),
        pa.field("vlan", pa.int32(), True, {"doc": "outer 802.1Q/802.1ad tag"}),
        pa.field("inner_vlan", pa.int32(), True),
        pa.field("client_mac", pa.string(), True),
        pa.field("server_mac", pa.string(), True),
        pa.field("client_ttl", pa.uint8(), True, {"doc": "IP TTL / hop limit first seen from the client"}),
        pa.field("server_ttl", pa.uint8(), True),
        pa.field("packets_to_server", pa.int64(), False),
        pa.field("packets_to_client", pa.int64(), False),
        pa.field("bytes_to_server", pa.int64(), False, {"doc": "frame bytes on the wire, as tshark counts"}),
        pa.field("bytes_to_client", pa.int64(), False),
        pa.field("ip_bytes_to_server", pa.int64(), False, {"doc": "IP datagram bytes, as Zeek's orig_ip_bytes"}),
        pa.field("ip_bytes_to_client", pa.int64(), False),
        pa.field("payload_bytes_to_server", pa.int64(), False, {"doc": "transport payload bytes"}),
        pa.field("payload_bytes_to_client", pa.int64(), False),
        pa.field("tcp_flags_to_server", pa.string(), True, {"doc": "union of TCP flags, e.g. SAF"}),
        pa.field("tcp_flags_to_client", pa.string(), True),
        pa.field("state", pa.string(), False, {"doc": "Zeek conn_state code (S0, SF, REJ, ...) or OTH"}),
        pa.field("end_reason", pa.string(), False, {"doc": "idle, port_reuse or capture_end"}),
        pa.field("first_packet", pa.int64(), False, {"doc": "1-based packet number in the capture"}),
        pa.field("last_packet", pa.int64(), False),
        pa.field("application", pa.string(), True, {"doc": "decoder that claimed the flow"}),
    ]
)

TRANSPORT_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6", 132: "sctp", 47: "gre", 50: "esp"}
FLAG_LETTERS = ((0x02, "S"), (0x10, "A"), (0x08, "P"), (0x01, "F"), (0x04, "R"), (0x20, "U"))


def _address_text(upper: int, lower: int) -> str:
    if upper == 0 and (lower >> 32) == 0xFFFF:
        return str(ipaddress.IPv4Address(lower & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((upper << 64) | lower))


def address_array(high: np.ndarray, low: np.ndarray) -> pa.Array:
    """Text of each address as an Arrow array; each distinct address is formatted once."""
    if high.shape[0] == 0:
        return pa.array([], pa.string())
    if not high.any():
        unique, inverse = np.unique(low, return_inverse=True)
        text = [_address_text(0, lower) for lower in unique.tolist()]
    else:
        order = np.lexsort((low, high))
        sorted_high, sorted_low = high[order], low[order]
        starts = np.ones(order.shape[0], bool)
        starts[1:] = (sorted_high[1:] != sorted_high[:-1]) | (sorted_low[1:] != sorted_low[:-1])
        inverse = np.empty(order.shape[0], np.int64)
        inverse[order] = np.cumsum(starts) - 1
        text = [_address_text(upper, lower) for upper, lower in zip(
            sorted_high[starts].tolist(), sorted_low[starts].tolist(), strict=True
        )]  # fmt: skip
    return pa.array([text[i] for i in inverse.reshape(-1).tolist()], pa.string())


def address_strings(high: np.ndarray, low: np.ndarray) -> list[str]:
    """Text of each address; IPv4-mapped addresses print as dotted quads."""
    return list(address_array(high, low).to_pylist())


def address_bytes(high: int, low: int) -> bytes:
    if high == 0 and (low >> 32) == 0xFFFF:
        return (low & 0xFFFFFFFF).to_bytes(4, "big")
    return high.to_bytes(8, "big") + low.to_bytes(8, "big")


def mac_array(values: np.ndarray) -> pa.Array:
    """Colon-separated MAC addresses; zero (no MAC on this link type) is NULL."""
    unique, inverse = np.unique(values, return_inverse=True)
    text = [
        ":".join(f"{(v >> shift) & 0xFF:02x}" for shift in (40, 32, 24, 16, 8, 0)) if v else None
        for v in unique.tolist()
    ]
    return pa.array([text[i] for i in inverse.reshape(-1).tolist()], pa.string())


def mac_strings(values: np.ndarray) -> list[str | None]:
    return list(mac_array(values).to_pylist())


def flag_string(flags: int) -> str:
    return "".join(letter for bit, letter in FLAG_LETTERS if flags & bit)


FLAG_STRINGS = [flag_string(value) for value in range(256)]


def connection_states(rows: np.ndarray) -> np.ndarray:
    """Zeek's conn_state codes from the flags each side sent (Zeek base/protocols/conn/main.zeek).

    S0 attempt unanswered, S1 established, SF established and closed, REJ rejected, S2/S3 close
    attempt by the client/server only, RSTO/RSTR reset by client/server, RSTOS0 client SYN then
    RST, RSTRH/SHR server SYN-ACK then RST/FIN with no client SYN seen, SH client SYN then FIN,
    OTH no SYN seen.
    """
    tcp = rows["transport"] == 6
    client = rows["flags_to_server"].astype(np.int64)
    server = rows["flags_to_client"].astype(np.int64)
    syn = (client & 0x02) != 0
    server_syn = (server & 0x02) != 0
    synack = (server & 0x12) == 0x12
    established = syn & synack
    client_fin, server_fin = (client & 1) != 0, (server & 1) != 0
    client_rst, server_rst = (client & 4) != 0, (server & 4) != 0
    rules = [
        (~tcp, "OTH"),
        (established & client_rst, "RSTO"),
        (established & server_rst, "RSTR"),
        (established & client_fin & server_fin, "SF"),
        (established & client_fin, "S2"),
        (established & server_fin, "S3"),
        (established, "S1"),
        (syn & server_rst & ~server_syn, "REJ"),
        (syn & client_rst, "RSTOS0"),
        (syn & client_fin, "SH"),
        (syn & (server == 0), "S0"),
        (~syn & synack & server_rst, "RSTRH"),
        (~syn & synack & server_fin, "SHR"),
    ]
    return np.select([condition for condition, _ in rules], [code for _, code in rules], default="OTH")


def flows_to_arrow(rows: np.ndarray, capture_id: str, decoder_names: list[str]) -> pa.Table:
    """Build the flows table for ended flow rows."""
    count = rows.shape[0]
    clients = address_array(rows["client_high"], rows["client_low"])
    servers = address_array(rows["server_high"], rows["server_low"])
    community = community_ids(
        rows["transport"], rows["client_high"], rows["client_low"], rows["server_high"], rows["server_low"],
        rows["client_port"], rows["server_port"],
    )  # fmt: skip
    first = rows["first_timestamp"]
    last = rows["last_timestamp"]
    vlan = rows["vlan_outer"]
    inner = rows["vlan_inner"]
    decoders = rows["decoder"]
    applications = [decoder_names[d] if 0 <= d < len(decoder_names) else None for d in decoders.tolist()]
    flags_server = rows["flags_to_server"].tolist()
    flags_client = rows["flags_to_client"].tolist()
    tcp = rows["transport"] == 6
    columns = {
        "capture_id": pa.array([capture_id] * count, pa.string()),
        "flow_id": pa.array([f"{h:016x}" for h in rows["hash"].tolist()], pa.string()),
        "community_id": pa.array(community, pa.string()),
        "ts": pa.array(first // 1000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "last_ts": pa.array(last // 1000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "duration": pa.array((last - first) / 1e9, pa.float64()),
        "transport": pa.array([TRANSPORT_NAMES.get(t, str(t)) for t in rows["transport"].tolist()], pa.string()),
        "ip_protocol": pa.array(rows["transport"], pa.uint8()),
        "client_ip": clients,
        "client_port": pa.array(rows["client_port"], pa.int32()),
        "server_ip": servers,
        "server_port": pa.array(rows["server_port"], pa.int32()),
        "vlan": pa.array(vlan, pa.int32(), mask=vlan < 0),
        "inner_vlan": pa.array(inner, pa.int32(), mask=inner < 0),
        "client_mac": mac_array(rows["client_mac"]),
        "server_mac": mac_array(rows["server_mac"]),
        "client_ttl": pa.array(rows["client_ttl"], pa.uint8()),
        "server_ttl": pa.array(rows["server_ttl"], pa.uint8(), mask=rows["packets_to_client"] == 0),
        "packets_to_server": pa.array(rows["packets_to_server"], pa.int64()),
        "packets_to_client": pa.array(rows["packets_to_client"], pa.int64()),
        "bytes_to_server": pa.array(rows["bytes_to_server"], pa.int64()),
        "bytes_to_client": pa.array(rows["bytes_to_client"], pa.int64()),
        "ip_bytes_to_server": pa.array(rows["ip_bytes_to_server"], pa.int64()),
        "ip_bytes_to_client": pa.array(rows["ip_bytes_to_client"], pa.int64()),
        "payload_bytes_to_server": pa.array(rows["payload_bytes_to_server"], pa.int64()),
        "payload_bytes_to_client": pa.array(rows["payload_bytes_to_client"], pa.int64()),
        "tcp_flags_to_server": pa.array([FLAG_STRINGS[f] for f in flags_server], pa.string(), mask=~tcp),
        "tcp_flags_to_client": pa.array([FLAG_STRINGS[f] for f in flags_client], pa.string(), mask=~tcp),
        "state": pa.array(connection_states(rows).tolist(), pa.string()),
        "end_reason": pa.array([table.END_REASONS[r] for r in rows["end_reason"].tolist()], pa.string()),
        "first_packet": pa.array(rows["first_packet"], pa.int64()),
        "last_packet": pa.array(rows["last_packet"], pa.int64()),
        "application": pa.array(applications, pa.string()),
    }
    return pa.table(columns, schema=FLOW_SCHEMA)
