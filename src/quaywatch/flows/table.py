"""The bidirectional flow table, updated by a compiled loop.

Flows live in a structured numpy array (one row per flow, :data:`FLOW_DTYPE`)
indexed by an open-addressing hash table keyed on the direction-independent
5-tuple plus VLAN tags. The loop assigns every packet its flow row and
direction, so the Python side can select the payloads a decoder wants with
vectorised masks.

A flow ends, as in Zeek, when it has been idle longer than its transport's
inactivity timeout, or when a closed TCP connection's ports are reused by a
new SYN. Both are decided packet by packet inside the loop, so the result does
not depend on how the capture was cut into batches.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from quaywatch.ingest.layers import L3_IPV4, L3_IPV6, STATUS_OK

# Why a flow ended.
OPEN = 0
ENDED_IDLE = 1
ENDED_PORT_REUSE = 2
ENDED_CAPTURE_END = 3
ENDED_EVICTED = 4  # the table reached its size limit and this flow was least recently active

END_REASONS = {
    OPEN: "open",
    ENDED_IDLE: "idle",
    ENDED_PORT_REUSE: "port_reuse",
    ENDED_CAPTURE_END: "capture_end",
    ENDED_EVICTED: "evicted",
}

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

DECODER_UNPROBED = -2
DECODER_NONE = -1

FLOW_DTYPE = np.dtype(
    [
        ("uid", np.int64),  # monotonic within one analysis; keys decoder sessions
        ("hash", np.uint64),  # stable flow id: key + first timestamp
        ("key_hash", np.uint64),
        ("vlan_outer", np.int32),
        ("vlan_inner", np.int32),
        ("transport", np.uint8),
        ("ip_version", np.uint8),
        ("end_reason", np.uint8),
        ("started_with_syn", np.uint8),
        ("flags_to_server", np.uint8),
        ("flags_to_client", np.uint8),
        ("client_ttl", np.uint8),
        ("server_ttl", np.uint8),
        ("client_high", np.uint64),
        ("client_low", np.uint64),
        ("server_high", np.uint64),
        ("server_low", np.uint64),
        ("client_port", np.int32),
        ("server_port", np.int32),
        ("client_mac", np.uint64),
        ("server_mac", np.uint64),
        ("first_timestamp", np.int64),
        ("last_timestamp", np.int64),
        ("first_packet", np.int64),
        ("last_packet", np.int64),
        ("packets_to_server", np.int64),
        ("packets_to_client", np.int64),
        ("bytes_to_server", np.int64),  # frame bytes on the wire
        ("bytes_to_client", np.int64),
        ("ip_bytes_to_server", np.int64),
        ("ip_bytes_to_client", np.int64),
        ("payload_bytes_to_server", np.int64),
        ("payload_bytes_to_client", np.int64),
        ("decoder", np.int16),
        ("probes", np.uint8),
    ]
)

# Loop status codes.
DONE = 0
TABLE_FULL = 1

MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def _mix(value: np.uint64) -> np.uint64:
    value ^= value >> np.uint64(30)
    value *= MIX1
    value ^= value >> np.uint64(27)
    value *= MIX2
    value ^= value >> np.uint64(31)
    return value


@njit(cache=True, inline="always")
def _icmp_request_type(transport: int, icmp_type: int) -> int:
    """Map ICMP replies onto their request type so both land in one flow."""
    if transport == 1:
        if icmp_type == 0:
            return 8
        if icmp_type == 14:
            return 13
        if icmp_type == 16:
            return 15
        if icmp_type == 18:
            return 17
        if icmp_type == 9:
            return 10
    else:
        if icmp_type == 129:
            return 128
        if icmp_type == 134:
            return 133
        if icmp_type == 136:
            return 135
        if icmp_type == 131:
            return 130
        if icmp_type == 140:
            return 139
        if icmp_type == 145:
            return 144
    return icmp_type


@njit(cache=True, inline="always")
def _is_icmp_reply(transport: int, icmp_type: int) -> bool:
    if transport == 1:
        return icmp_type == 0 or icmp_type == 14 or icmp_type == 16 or icmp_type == 18 or icmp_type == 9
    return (
        icmp_type == 129 or icmp_type == 134 or icmp_type == 136 or icmp_type == 131
        or icmp_type == 140 or icmp_type == 145
    )  # fmt: skip


@njit(cache=True, inline="always")
def _key_hash(
    vlan_outer: int, vlan_inner: int, transport: int,
    a_high: np.uint64, a_low: np.uint64, a_port: int,
    b_high: np.uint64, b_low: np.uint64, b_port: int,
) -> np.uint64:  # fmt: skip
    """Hash of the 5-tuple and VLANs, the same for both directions."""
    swap = False
    if a_high > b_high or (a_high == b_high and (a_low > b_low or (a_low == b_low and a_port > b_port))):
        swap = True
    if swap:
        a_high, b_high = b_high, a_high
        a_low, b_low = b_low, a_low
        a_port, b_port = b_port, a_port
    value = _mix(
        np.uint64(vlan_outer & 0xFFFF) | (np.uint64(vlan_inner & 0xFFFF) << np.uint64(16))
        | (np.uint64(transport) << np.uint64(32))
    )  # fmt: skip
    value = _mix(value ^ a_high)
    value = _mix(value ^ a_low)
    value = _mix(value ^ b_high)
    value = _mix(value ^ b_low)
    value = _mix(value ^ (np.uint64(a_port) << np.uint64(16)) ^ np.uint64(b_port))
    return value


@njit(cache=True)
def update(
    packets: np.ndarray,
    original_lengths: np.ndarray,
    timestamps: np.ndarray,
    first_packet_number: int,
    start: int,
    flows: np.ndarray,
    flow_count: int,
    slots: np.ndarray,
    next_uid: int,
    timeouts: np.ndarray,
    likely_servers: np.ndarray,
    flow_index: np.ndarray,
    direction: np.ndarray,
) -> tuple[int, int, int, int]:
    """Assign packets ``start..`` to flows. Returns (status, next packet, flow count, next uid).

    ``timeouts`` holds inactivity timeouts in nanoseconds: [tcp, udp, other]. ``likely_servers``
    (65536 booleans) marks service ports: when a flow does not start with a clean SYN, the side on
    such a port is the server, as in Zeek's ``likely_server_ports``.
    ``flow_index`` gets -1 for packets outside any flow (ARP, malformed, fragments).
    """
    mask = np.uint64(slots.shape[0] - 1)
    capacity = flows.shape[0]
    for index in range(start, packets.shape[0]):
        packet = packets[index]
        flow_index[index] = -1
        direction[index] = 0
        if packet.status != STATUS_OK or (packet.network != L3_IPV4 and packet.network != L3_IPV6):
            continue
        if flow_count >= capacity:
            return TABLE_FULL, index, flow_count, next_uid
        transport = np.int64(packet.transport)
        source_port = np.int64(packet.source_port)
        destination_port = np.int64(packet.destination_port)
        icmp = transport == 1 or transport == 58
        if icmp:
            key_source_port = _icmp_request_type(transport, source_port)
            key_destination_port = destination_port
            # Both directions of an ICMP exchange use the same (type, code) key.
            key_hash = _key_hash(
                packet.vlan_outer, packet.vlan_inner, transport,
                packet.source_high, packet.source_low, 0,
                packet.destination_high, packet.destination_low, 0,
            )  # fmt: skip
            key_hash = _mix(key_hash ^ np.uint64(key_source_port << 8 | key_destination_port))
        else:
            key_source_port = source_port
            key_destination_port = destination_port
            key_hash = _key_hash(
                packet.vlan_outer, packet.vlan_inner, transport,
                packet.source_high, packet.source_low, source_port,
                packet.destination_high, packet.destination_low, destination_port,
            )  # fmt: skip
        timestamp = timestamps[index]
        slot = key_hash & mask
        found = -1
        to_client = False
        while True:
            candidate = slots[slot]
            if candidate < 0:
                break
            flow = flows[candidate]
            if (
                flow.key_hash == key_hash
                and flow.transport == transport
                and flow.vlan_outer == packet.vlan_outer
                and flow.vlan_inner == packet.vlan_inner
            ):
                if icmp:
                    same_ports = flow.client_port == key_source_port and flow.server_port == key_destination_port
                    reverse_ports = same_ports
                else:
                    same_ports = flow.client_port == source_port and flow.server_port == destination_port
                    reverse_ports = flow.client_port == destination_port and flow.server_port == source_port
                if (
                    same_ports
                    and flow.client_high == packet.source_high
                    and flow.client_low == packet.source_low
                    and flow.server_high == packet.destination_high
                    and flow.server_low == packet.destination_low
                ):
                    found = candidate
                    to_client = False
                    break
                if (
                    reverse_ports
                    and flow.client_high == packet.destination_high
                    and flow.client_low == packet.destination_low
                    and flow.server_high == packet.source_high
                    and flow.server_low == packet.source_low
                ):
                    found = candidate
                    to_client = True
                    break
            slot = (slot + np.uint64(1)) & mask

        flags = packet.tcp_flags
        if found >= 0:
            flow = flows[found]
            timeout = timeouts[0] if transport == 6 else (timeouts[1] if transport == 17 else timeouts[2])
            ended = OPEN
            if timestamp - flow.last_timestamp > timeout:
                ended = ENDED_IDLE
            elif (
                transport == 6
                and (flags & (TCP_SYN | TCP_ACK)) == TCP_SYN
                and (
                    ((flow.flags_to_server | flow.flags_to_client) & TCP_RST) != 0
                    or ((flow.flags_to_server & TCP_FIN) != 0 and (flow.flags_to_client & TCP_FIN) != 0)
                )
            ):
                ended = ENDED_PORT_REUSE
            if ended != OPEN:
                flow.end_reason = ended
                found = -1  # a new flow takes over this slot below
        if found < 0:
            found = flow_count
            flow_count += 1
            flow = flows[found]
            reverse = False
            if transport == 6:
                synack = (flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)
                proper_syn = (flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST)) == TCP_SYN
                from_service = likely_servers[source_port] and not likely_servers[destination_port]
                reverse = synack or (not proper_syn and from_service)
            elif transport == 17 or transport == 132:
                reverse = likely_servers[source_port] and not likely_servers[destination_port]
            elif icmp:
                reverse = _is_icmp_reply(transport, source_port)
            flow.uid = next_uid
            next_uid += 1
            flow.key_hash = key_hash
            flow.vlan_outer = packet.vlan_outer
            flow.vlan_inner = packet.vlan_inner
            flow.transport = transport
            flow.ip_version = 4 if packet.network == L3_IPV4 else 6
            flow.end_reason = OPEN
            flow.started_with_syn = (
                1 if (transport == 6 and (flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST)) == TCP_SYN) else 0
            )
            flow.flags_to_server = 0
            flow.flags_to_client = 0
            flow.client_ttl = 0
            flow.server_ttl = 0
            if reverse:
                flow.client_high = packet.destination_high
                flow.client_low = packet.destination_low
                flow.server_high = packet.source_high
                flow.server_low = packet.source_low
                flow.client_mac = packet.destination_mac
                flow.server_mac = packet.source_mac
            else:
                flow.client_high = packet.source_high
                flow.client_low = packet.source_low
                flow.server_high = packet.destination_high
                flow.server_low = packet.destination_low
                flow.client_mac = packet.source_mac
                flow.server_mac = packet.destination_mac
            if icmp:
                flow.client_port = key_source_port
                flow.server_port = key_destination_port
            elif reverse:
                flow.client_port = destination_port
                flow.server_port = source_port
            else:
                flow.client_port = source_port
                flow.server_port = destination_port
            to_client = reverse
            flow.first_timestamp = timestamp
            flow.last_timestamp = timestamp
            flow.first_packet = first_packet_number + index
            flow.packets_to_server = 0
            flow.packets_to_client = 0
            flow.bytes_to_server = 0
            flow.bytes_to_client = 0
            flow.ip_bytes_to_server = 0
            flow.ip_bytes_to_client = 0
            flow.payload_bytes_to_server = 0
            flow.payload_bytes_to_client = 0
            flow.decoder = -2
            flow.probes = 0
            flow.hash = _mix(key_hash ^ np.uint64(timestamp))
            slots[slot] = found
        flow = flows[found]
        if timestamp > flow.last_timestamp:
            flow.last_timestamp = timestamp
        if timestamp < flow.first_timestamp:
            flow.first_timestamp = timestamp
        flow.last_packet = first_packet_number + index
        if to_client:
            flow.packets_to_client += 1
            flow.bytes_to_client += original_lengths[index]
            flow.ip_bytes_to_client += packet.network_length
            flow.payload_bytes_to_client += packet.payload_length
            flow.flags_to_client |= flags
            if flow.server_ttl == 0:
                flow.server_ttl = packet.ttl
            if flow.server_mac == 0:
                flow.server_mac = packet.source_mac
        else:
            flow.packets_to_server += 1
            flow.bytes_to_server += original_lengths[index]
            flow.ip_bytes_to_server += packet.network_length
            flow.payload_bytes_to_server += packet.payload_length
            flow.flags_to_server |= flags
            if flow.client_ttl == 0:
                flow.client_ttl = packet.ttl
            if flow.client_mac == 0:
                flow.client_mac = packet.source_mac
        flow_index[index] = found
        direction[index] = 1 if to_client else 0
    return DONE, packets.shape[0], flow_count, next_uid


@njit(cache=True)
def rebuild_slots(flows: np.ndarray, flow_count: int, slots: np.ndarray) -> None:
    """Re-index open flows after the array was compacted or grown."""
    slots[:] = -1
    mask = np.uint64(slots.shape[0] - 1)
    for index in range(flow_count):
        if flows[index].end_reason != OPEN:
            continue
        slot = flows[index].key_hash & mask
        while slots[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        slots[slot] = index


@njit(cache=True)
def mark_idle(flows: np.ndarray, flow_count: int, now: int, timeouts: np.ndarray) -> int:
    """End flows idle for longer than their timeout at time ``now``; returns how many."""
    ended = 0
    for index in range(flow_count):
        flow = flows[index]
        if flow.end_reason != OPEN:
            continue
        transport = flow.transport
        timeout = timeouts[0] if transport == 6 else (timeouts[1] if transport == 17 else timeouts[2])
        if now - flow.last_timestamp > timeout:
            flow.end_reason = ENDED_IDLE
            ended += 1
    return ended
