"""Compiled extraction of link, network and transport headers into columns.

One call walks a whole :class:`~quaywatch.ingest.capture.RecordBatch` and
writes one row of :data:`PACKET_DTYPE` per packet. IP addresses are kept as
two 64-bit halves of an IPv6 address; IPv4 uses the IPv4-mapped form
``::ffff:a.b.c.d`` so both families share one set of columns and one flow key.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Network layer kinds.
L3_NONE = 0
L3_IPV4 = 4
L3_IPV6 = 6
L3_ARP = 8
L3_OTHER = 9  # an EtherType we do not decode here (LLDP, Profinet, ...)

# Packet status codes; non-zero rows are malformed and counted as anomalies.
STATUS_OK = 0
STATUS_SHORT_LINK = 1
STATUS_SHORT_NETWORK = 2
STATUS_BAD_NETWORK = 3
STATUS_SHORT_TRANSPORT = 4
STATUS_FRAGMENT = 5  # not malformed: an IP fragment awaiting reassembly
STATUS_UNKNOWN_LINK = 6

STATUS_NAMES = {
    STATUS_SHORT_LINK: "link-layer header cut short",
    STATUS_SHORT_NETWORK: "network-layer header cut short",
    STATUS_BAD_NETWORK: "network-layer header invalid",
    STATUS_SHORT_TRANSPORT: "transport header cut short",
    STATUS_UNKNOWN_LINK: "unsupported link type",
}

IPV4_MAPPED_PREFIX = np.uint64(0x0000FFFF00000000)

PACKET_DTYPE = np.dtype(
    [
        ("status", np.uint8),
        ("network", np.uint8),
        ("transport", np.uint8),  # IP protocol number
        ("ttl", np.uint8),
        ("tcp_flags", np.uint8),
        ("arp_operation", np.uint8),
        ("ether_type", np.uint16),
        ("vlan_outer", np.int32),  # -1 when untagged
        ("vlan_inner", np.int32),
        ("source_port", np.int32),  # ICMP: type
        ("destination_port", np.int32),  # ICMP: code
        ("source_mac", np.uint64),
        ("destination_mac", np.uint64),
        ("source_high", np.uint64),
        ("source_low", np.uint64),
        ("destination_high", np.uint64),
        ("destination_low", np.uint64),
        ("sequence", np.uint32),
        ("acknowledgement", np.uint32),
        ("network_offset", np.int64),  # absolute offset of the IP/ARP header in the buffer
        ("network_length", np.int32),  # IP total length as declared
        ("payload_offset", np.int64),  # absolute offset of the L4 payload (or L2 payload for L3_OTHER)
        ("payload_length", np.int32),  # declared payload length
        ("payload_captured", np.int32),  # payload bytes present in the capture
        ("fragment_id", np.uint32),
        ("fragment_offset", np.int32),  # in bytes
        ("more_fragments", np.uint8),
        ("arp_sender_mac", np.uint64),
        ("arp_target_mac", np.uint64),
    ]
)


@njit(cache=True, inline="always")
def _u16(buffer: np.ndarray, position: int) -> int:
    return (np.int64(buffer[position]) << 8) | np.int64(buffer[position + 1])


@njit(cache=True, inline="always")
def _u32(buffer: np.ndarray, position: int) -> np.uint32:
    return np.uint32(
        (np.uint32(buffer[position]) << 24)
        | (np.uint32(buffer[position + 1]) << 16)
        | (np.uint32(buffer[position + 2]) << 8)
        | np.uint32(buffer[position + 3])
    )


@njit(cache=True, inline="always")
def _u64(buffer: np.ndarray, position: int) -> np.uint64:
    value = np.uint64(0)
    for index in range(8):
        value = (value << np.uint64(8)) | np.uint64(buffer[position + index])
    return value


@njit(cache=True, inline="always")
def _mac(buffer: np.ndarray, position: int) -> np.uint64:
    value = np.uint64(0)
    for index in range(6):
        value = (value << np.uint64(8)) | np.uint64(buffer[position + index])
    return value


#: Per-batch tallies returned by :func:`parse_packets`: index by IP protocol
#: number (0-255), then these extra slots.
TALLY_ARP = 256
TALLY_OTHER = 257
TALLY_MALFORMED = 258
TALLY_FRAGMENT = 259
TALLY_SIZE = 260


@njit(cache=True, nogil=True)  # the analysis may parse ahead on a second thread
def parse_packets(
    buffer: np.ndarray,
    offsets: np.ndarray,
    captured_lengths: np.ndarray,
    link_types: np.ndarray,
    packets: np.ndarray,
) -> np.ndarray:
    """Fill ``packets`` (PACKET_DTYPE, zeroed by the caller) and return tallies."""
    tally = np.zeros(TALLY_SIZE, np.int64)
    for index in range(offsets.shape[0]):
        _parse_one(buffer, offsets[index], captured_lengths[index], link_types[index], packets, index)
        row = packets[index]
        status = row.status
        if status == STATUS_FRAGMENT:
            tally[TALLY_FRAGMENT] += 1
        elif status != STATUS_OK:
            tally[TALLY_MALFORMED] += 1
        elif row.network == L3_IPV4 or row.network == L3_IPV6:
            tally[row.transport] += 1
        elif row.network == L3_ARP:
            tally[TALLY_ARP] += 1
        elif row.network == L3_OTHER:
            tally[TALLY_OTHER] += 1
    return tally


@njit(cache=True, inline="always")
def _parse_one(buffer: np.ndarray, start: int, length: int, link_type: int, packets: np.ndarray, index: int) -> None:
    row = packets[index]
    row.vlan_outer = -1
    row.vlan_inner = -1
    row.network_offset = start
    row.payload_offset = start
    end = start + length
    position = start
    ether_type = -1
    if link_type == 1:  # Ethernet
        if length < 14:
            row.status = STATUS_SHORT_LINK
            return
        row.destination_mac = _mac(buffer, start)
        row.source_mac = _mac(buffer, start + 6)
        ether_type = _u16(buffer, start + 12)
        position = start + 14
    elif link_type == 113:  # Linux cooked v1
        if length < 16:
            row.status = STATUS_SHORT_LINK
            return
        if _u16(buffer, start + 4) == 6:
            row.source_mac = _mac(buffer, start + 6)
        ether_type = _u16(buffer, start + 14)
        position = start + 16
    elif link_type == 276:  # Linux cooked v2
        if length < 20:
            row.status = STATUS_SHORT_LINK
            return
        ether_type = _u16(buffer, start)
        if buffer[start + 11] == 6:
            row.source_mac = _mac(buffer, start + 12)
        position = start + 20
    elif link_type == 0 or link_type == 108:  # BSD null / OpenBSD loop
        if length < 4:
            row.status = STATUS_SHORT_LINK
            return
        if link_type == 108:
            family = np.int64(_u32(buffer, start))
        else:
            little = np.int64(buffer[start]) | (np.int64(buffer[start + 1]) << 8)
            family = little if little != 0 else np.int64(_u32(buffer, start))
        position = start + 4
        if family == 2:
            ether_type = 0x0800
        elif family == 24 or family == 28 or family == 30 or family == 10:
            ether_type = 0x86DD
        else:
            row.network = L3_OTHER
            return
    elif link_type == 101 or link_type == 12 or link_type == 14 or link_type == 228 or link_type == 229:
        if length < 1:
            row.status = STATUS_SHORT_NETWORK
            return
        version = buffer[start] >> 4
        if version == 4:
            ether_type = 0x0800
        elif version == 6:
            ether_type = 0x86DD
        else:
            row.status = STATUS_BAD_NETWORK
            return
    else:
        row.status = STATUS_UNKNOWN_LINK
        return

    # 802.1Q / 802.1ad / QinQ tags.
    tags = 0
    while ether_type == 0x8100 or ether_type == 0x88A8 or ether_type == 0x9100:
        if position + 4 > end:
            row.status = STATUS_SHORT_LINK
            return
        vlan = np.int32(_u16(buffer, position) & 0x0FFF)
        if tags == 0:
            row.vlan_outer = vlan
        elif tags == 1:
            row.vlan_inner = vlan
        tags += 1
        ether_type = _u16(buffer, position + 2)
        position += 4
    # PPPoE session (DSL and cellular routers) and MPLS label stacks carry IP after a shim.
    if ether_type == 0x8864:
        if position + 8 > end:
            row.status = STATUS_SHORT_LINK
            return
        ppp_protocol = _u16(buffer, position + 6)
        position += 8
        if ppp_protocol == 0x0021:
            ether_type = 0x0800
        elif ppp_protocol == 0x0057:
            ether_type = 0x86DD
    elif ether_type == 0x8847 or ether_type == 0x8848:
        for _ in range(16):
            if position + 4 > end:
                row.status = STATUS_SHORT_LINK
                return
            bottom = buffer[position + 2] & 1
            position += 4
            if bottom:
                break
        if position < end:
            version = buffer[position] >> 4
            if version == 4:
                ether_type = 0x0800
            elif version == 6:
                ether_type = 0x86DD
    row.ether_type = np.uint16(ether_type)
    row.network_offset = position

    if ether_type == 0x0800:
        _ipv4(buffer, position, end, row)
    elif ether_type == 0x86DD:
        _ipv6(buffer, position, end, row)
    elif ether_type == 0x0806:
        _arp(buffer, position, end, row)
    else:
        row.network = L3_OTHER
        row.payload_offset = position
        row.payload_length = np.int32(end - position)
        row.payload_captured = np.int32(end - position)


@njit(cache=True, inline="always")
def _arp(buffer: np.ndarray, position: int, end: int, row: np.ndarray) -> None:
    row.network = L3_ARP
    if position + 28 > end:
        row.status = STATUS_SHORT_NETWORK
        return
    if _u16(buffer, position) != 1 or _u16(buffer, position + 2) != 0x0800 or buffer[position + 4] != 6:
        row.status = STATUS_BAD_NETWORK
        return
    row.arp_operation = np.uint8(_u16(buffer, position + 6) & 0xFF)
    row.arp_sender_mac = _mac(buffer, position + 8)
    row.source_high = 0
    row.source_low = IPV4_MAPPED_PREFIX | np.uint64(_u32(buffer, position + 14))
    row.arp_target_mac = _mac(buffer, position + 18)
    row.destination_low = IPV4_MAPPED_PREFIX | np.uint64(_u32(buffer, position + 24))


@njit(cache=True, inline="always")
def _ipv4(buffer: np.ndarray, position: int, end: int, row: np.ndarray) -> None:
    row.network = L3_IPV4
    if position + 20 > end:
        row.status = STATUS_SHORT_NETWORK
        return
    version = buffer[position] >> 4
    header_length = np.int64(buffer[position] & 0x0F) * 4
    total_length = _u16(buffer, position + 2)
    if version != 4 or header_length < 20 or total_length < header_length:
        row.status = STATUS_BAD_NETWORK
        return
    if position + header_length > end:
        row.status = STATUS_SHORT_NETWORK
        return
    row.network_length = np.int32(total_length)
    row.ttl = buffer[position + 8]
    row.transport = buffer[position + 9]
    row.source_low = IPV4_MAPPED_PREFIX | np.uint64(_u32(buffer, position + 12))
    row.destination_low = IPV4_MAPPED_PREFIX | np.uint64(_u32(buffer, position + 16))
    flags_offset = _u16(buffer, position + 6)
    fragment_offset = (flags_offset & 0x1FFF) * 8
    more = (flags_offset >> 13) & 1
    datagram_end = position + total_length
    captured_end = end if end < datagram_end else datagram_end
    if fragment_offset != 0 or more != 0:
        row.status = STATUS_FRAGMENT
        row.fragment_id = np.uint32(_u16(buffer, position + 4))
        row.fragment_offset = np.int32(fragment_offset)
        row.more_fragments = np.uint8(more)
        row.payload_offset = position + header_length
        row.payload_length = np.int32(total_length - header_length)
        row.payload_captured = np.int32(max(0, captured_end - (position + header_length)))
        return
    _transport(buffer, position + header_length, datagram_end, captured_end, row)


@njit(cache=True, inline="always")
def _ipv6(buffer: np.ndarray, position: int, end: int, row: np.ndarray) -> None:
    row.network = L3_IPV6
    if position + 40 > end:
        row.status = STATUS_SHORT_NETWORK
        return
    if buffer[position] >> 4 != 6:
        row.status = STATUS_BAD_NETWORK
        return
    payload_length = _u16(buffer, position + 4)
    next_header = np.int64(buffer[position + 6])
    row.ttl = buffer[position + 7]
    row.source_high = _u64(buffer, position + 8)
    row.source_low = _u64(buffer, position + 16)
    row.destination_high = _u64(buffer, position + 24)
    row.destination_low = _u64(buffer, position + 32)
    row.network_length = np.int32(40 + payload_length)
    datagram_end = position + 40 + payload_length
    if payload_length == 0:  # jumbogram or header-only: trust the capture
        datagram_end = end
    captured_end = end if end < datagram_end else datagram_end
    cursor = position + 40
    for _ in range(16):
        if next_header == 0 or next_header == 43 or next_header == 60 or next_header == 135:
            if cursor + 8 > captured_end:
                row.status = STATUS_SHORT_NETWORK
                return
            next_header_value = np.int64(buffer[cursor])
            cursor += (np.int64(buffer[cursor + 1]) + 1) * 8
            next_header = next_header_value
        elif next_header == 51:  # authentication header
            if cursor + 8 > captured_end:
                row.status = STATUS_SHORT_NETWORK
                return
            next_header_value = np.int64(buffer[cursor])
            cursor += (np.int64(buffer[cursor + 1]) + 2) * 4
            next_header = next_header_value
        elif next_header == 44:  # fragment header
            if cursor + 8 > captured_end:
                row.status = STATUS_SHORT_NETWORK
                return
            field = _u16(buffer, cursor + 2)
            fragment_offset = field & 0xFFF8
            more = field & 1
            next_header_value = np.int64(buffer[cursor])
            identification = _u32(buffer, cursor + 4)
            cursor += 8
            next_header = next_header_value
            if fragment_offset != 0 or more != 0:
                row.transport = np.uint8(next_header)
                row.status = STATUS_FRAGMENT
                row.fragment_id = identification
                row.fragment_offset = np.int32(fragment_offset)
                row.more_fragments = np.uint8(more)
                row.payload_offset = cursor
                row.payload_length = np.int32(max(0, datagram_end - cursor))
                row.payload_captured = np.int32(max(0, captured_end - cursor))
                return
        else:
            break
    row.transport = np.uint8(next_header & 0xFF)
    if cursor > captured_end:
        row.status = STATUS_SHORT_NETWORK
        return
    _transport(buffer, cursor, datagram_end, captured_end, row)


@njit(cache=True, inline="always")
def _transport(buffer: np.ndarray, position: int, datagram_end: int, captured_end: int, row: np.ndarray) -> None:
    protocol = row.transport
    if protocol == 6:
        if position + 20 > captured_end:
            row.status = STATUS_SHORT_TRANSPORT
            return
        row.source_port = np.int32(_u16(buffer, position))
        row.destination_port = np.int32(_u16(buffer, position + 2))
        row.sequence = _u32(buffer, position + 4)
        row.acknowledgement = _u32(buffer, position + 8)
        header_length = np.int64(buffer[position + 12] >> 4) * 4
        row.tcp_flags = buffer[position + 13]
        if header_length < 20:
            row.status = STATUS_SHORT_TRANSPORT
            return
        payload = position + header_length
        row.payload_offset = payload
        row.payload_length = np.int32(max(0, datagram_end - payload))
        row.payload_captured = np.int32(max(0, captured_end - payload))
    elif protocol == 17 or protocol == 132:
        if position + 8 > captured_end:
            row.status = STATUS_SHORT_TRANSPORT
            return
        row.source_port = np.int32(_u16(buffer, position))
        row.destination_port = np.int32(_u16(buffer, position + 2))
        header_length = 8 if protocol == 17 else 12
        payload = position + header_length
        row.payload_offset = payload
        row.payload_length = np.int32(max(0, datagram_end - payload))
        row.payload_captured = np.int32(max(0, captured_end - payload))
    elif protocol == 1 or protocol == 58:
        if position + 4 > captured_end:
            row.status = STATUS_SHORT_TRANSPORT
            return
        row.source_port = np.int32(buffer[position])
        row.destination_port = np.int32(buffer[position + 1])
        row.payload_offset = position + 4
        row.payload_length = np.int32(max(0, datagram_end - position - 4))
        row.payload_captured = np.int32(max(0, captured_end - position - 4))
    else:
        row.payload_offset = position
        row.payload_length = np.int32(max(0, datagram_end - position))
        row.payload_captured = np.int32(max(0, captured_end - position))
