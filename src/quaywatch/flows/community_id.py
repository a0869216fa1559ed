"""Community ID v1 flow hashing (corelight/community-id-spec)."""

from __future__ import annotations

import base64
import hashlib
import struct

# ICMP types that have a counterpart (request <-> reply), per the specification.
ICMP_COUNTERPART = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 10: 9, 9: 10}
ICMP6_COUNTERPART = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130,
                     139: 140, 140: 139, 144: 145, 145: 144}
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
