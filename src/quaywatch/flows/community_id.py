"""Community ID v1 flow hashing (corelight/community-id-spec)."""

from __future__ import annotations

import base64
import hashlib
import struct

import numpy as np

# ICMP types that have a counterpart (request <-> reply), per the specification.
ICMP_COUNTERPART = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 10: 9, 9: 10}
ICMP6_COUNTERPART = {
    128: 129,
    129: 128,
    133: 134,
    134: 133,
    135: 136,
    136: 135,
    130: 131,
    131: 130,
    139: 140,
    140: 139,
    144: 145,
    145: 144,
}
PORT_TRANSPORTS = frozenset({6, 17, 132, 1, 58})


def community_id(
    transport: int,
    source_ip: bytes,
    destination_ip: bytes,
    source_port: int,
    destination_port: int,
    seed: int = 0,
) -> str:
    """The version-1 Community ID of a flow, e.g. ``1:LQU9qZlK+B5F3KDmev6m5PMibrg=``."""
    one_way = False
    if transport == 1 or transport == 58:
        table = ICMP_COUNTERPART if transport == 1 else ICMP6_COUNTERPART
        icmp_type = source_port
        counterpart = table.get(icmp_type)
        if counterpart is None:
            one_way = True
        else:
            destination_port = counterpart
    if not one_way and (destination_ip, destination_port) < (source_ip, source_port):
        source_ip, destination_ip = destination_ip, source_ip
        source_port, destination_port = destination_port, source_port
    data = struct.pack("!H", seed & 0xFFFF) + source_ip + destination_ip + struct.pack("!BB", transport & 0xFF, 0)
    if transport in PORT_TRANSPORTS:
        data += struct.pack("!HH", source_port & 0xFFFF, destination_port & 0xFFFF)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


_ICMP_TABLES = {1: ICMP_COUNTERPART, 58: ICMP6_COUNTERPART}


def community_ids(
    transport: np.ndarray,
    client_high: np.ndarray,
    client_low: np.ndarray,
    server_high: np.ndarray,
    server_low: np.ndarray,
    client_port: np.ndarray,
    server_port: np.ndarray,
    seed: int = 0,
) -> list[str]:
    """Community IDs of many flows; addresses are IPv6 halves with IPv4 in the ::ffff:0:0/96 form.

    Builds every hash input with array operations and leaves only SHA-1 and
    base64 per flow, which keeps flow export off the hot path.
    """
    count = transport.shape[0]
    if count == 0:
        return []
    transport = transport.astype(np.int64)
    source_port = client_port.astype(np.int64).copy()
    destination_port = server_port.astype(np.int64).copy()
    one_way = np.zeros(count, bool)
    for number, table in _ICMP_TABLES.items():
        icmp = np.flatnonzero(transport == number)
        for index in icmp.tolist():
            counterpart = table.get(int(source_port[index]))
            if counterpart is None:
                one_way[index] = True
            else:
                destination_port[index] = counterpart
    ipv4 = (client_high == 0) & ((client_low >> np.uint64(32)) == np.uint64(0xFFFF))
    # Order the endpoints: the smaller (address, port) goes first unless the flow is one-way.
    greater = (client_high > server_high) | (
        (client_high == server_high)
        & ((client_low > server_low) | ((client_low == server_low) & (source_port > destination_port)))
    )
    swap = greater & ~one_way
    first_high = np.where(swap, server_high, client_high)
    first_low = np.where(swap, server_low, client_low)
    second_high = np.where(swap, client_high, server_high)
    second_low = np.where(swap, client_low, server_low)
    first_port = np.where(swap, destination_port, source_port)
    second_port = np.where(swap, source_port, destination_port)
    with_ports = np.isin(transport, list(PORT_TRANSPORTS))
    head = struct.pack("!H", seed & 0xFFFF)
    result: list[str] = [""] * count
    for family_mask, address_bytes in ((ipv4, 4), (~ipv4, 16)):
        for ports_mask in (with_ports, ~with_ports):
            rows = np.flatnonzero(family_mask & ports_mask)
            if rows.shape[0] == 0:
                continue
            columns = [np.frombuffer(head, np.uint8)[None, :].repeat(rows.shape[0], 0)]
            for high, low in ((first_high, first_low), (second_high, second_low)):
                if address_bytes == 4:
                    columns.append((low[rows] & np.uint64(0xFFFFFFFF)).astype(">u4").view(np.uint8).reshape(-1, 4))
                else:
                    columns.append(high[rows].astype(">u8").view(np.uint8).reshape(-1, 8))
                    columns.append(low[rows].astype(">u8").view(np.uint8).reshape(-1, 8))
            protocol = np.zeros((rows.shape[0], 2), np.uint8)
            protocol[:, 0] = transport[rows] & 0xFF
            columns.append(protocol)
            if ports_mask is with_ports:
                columns.append((first_port[rows] & 0xFFFF).astype(">u2").view(np.uint8).reshape(-1, 2))
                columns.append((second_port[rows] & 0xFFFF).astype(">u2").view(np.uint8).reshape(-1, 2))
            messages = np.concatenate(columns, axis=1)
            width = messages.shape[1]
            flat = messages.tobytes()
            sha1, encode = hashlib.sha1, base64.b64encode
            for position, row in enumerate(rows.tolist()):
                digest = sha1(flat[position * width : (position + 1) * width]).digest()
                result[row] = "1:" + encode(digest).decode("ascii")
    return result
