"""The shared ``remote_access`` table: one row per flow identified as remote access or a tunnel.

Every remote-access and tunnel decoder (RDP, VNC, TeamViewer, OpenVPN, WireGuard, IKE, PPTP, GTP, and TLS for
AnyDesk) lists this table in its ``tables`` and emits one row per flow, with what in the bytes identified it,
so that later detections ("a vendor remote session into a crane PC", "a hidden modem's VPN") need no protocol knowledge.
The dispatcher and the store merge tables by name, so every decoder declares the same schema object.
"""

from __future__ import annotations

import pyarrow as pa

from quaywatch.decode.base import Event

TABLE = "remote_access"

#: The values of ``method``.
METHODS = (
    "rdp",
    "vnc",
    "teamviewer",
    "anydesk",
    "openvpn",
    "wireguard",
    "ike",
    "pptp",
    "gtp_u",
    "gtp_c",
    "gtp_prime",
)


def _field(name: str, kind: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, kind, True, {"doc": doc})


SCHEMA = pa.schema(
    [
        _field(
            "method",
            pa.string(),
            "rdp, vnc, teamviewer, anydesk, openvpn, wireguard, ike, pptp, gtp_u, gtp_c, gtp_prime",
        ),
        _field("evidence", pa.string(), "what in the bytes identified the protocol (short text)"),
        _field("version", pa.string(), "protocol version seen, e.g. RFB 003.008, IKEv2, GTPv1"),
        _field("user_name", pa.string(), "user name the protocol revealed (RDP cookie mstshash=), as received"),
        _field("client_software", pa.string(), "client software or version where visible (RDP build, PPTP vendor)"),
        _field("server_software", pa.string(), "server software, desktop or host name where visible"),
        _field("tunnel_id", pa.string(), "tunnel or session identifier: GTP TEID, IKE/OpenVPN SPI/session id, hex"),
        _field("inner_client_ip", pa.string(), "tunnels: source address of the first inner IP packet"),
        _field("inner_server_ip", pa.string(), "tunnels: destination address of the first inner IP packet"),
    ]
)


def remote_access(method: str, evidence: str, **fields: object) -> Event:
    """The one ``remote_access`` row of a flow; ``fields`` are further columns of :data:`SCHEMA`."""
    return Event(TABLE, "remote_access", {"method": method, "evidence": evidence, **fields})


def text(data: bytes) -> str:
    """Packet bytes as text, kept as received (attacker-controlled: never interpreted)."""
    return data.decode("utf-8", "backslashreplace")
