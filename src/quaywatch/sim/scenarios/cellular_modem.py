"""Scenario 1: an undeclared cellular modem on a crane component (the 2024 House investigation's finding).

A Quectel LTE module sits in a crane's e-house with its own address on the
crane VLAN. It is in no contract and no declared inventory. It is its own
gateway to the internet: its frames never cross the firewall (the capture
shows the module's MAC on both directions, and replies arrive with the
carrier path's TTL, not the firewall's). It:

* beacons over HTTPS (TLS with SNI) to a foreign cloud with jitter and missed beats, small regular sizes;
* resolves carrier and IoT-cloud names through its own cellular side (DNS to the carrier's resolver);
* reads the crane PLC (S7comm on a Siemens crane, CIP Read Tag on a Rockwell crane) to collect lift data;
* every N beats uploads the crane's recent moves (ISO 6346 ids, ports of loading/discharge, weights) in
  cleartext HTTP JSON: container-intelligence leakage;
* optionally runs a DHCP server on the crane VLAN, offering itself as router and DNS server.

Each behaviour is its own label instance, so a detection can be matched to exactly what it should find.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from typing import Any, ClassVar

import numpy as np

from quaywatch.sim.engine import SimulationContext
from quaywatch.sim.frames import TO_CLIENT, TO_SERVER, Endpoint, FrameBlock, tcp_session, udp_datagram
from quaywatch.sim.model import Device, ModelError, TerminalModel
from quaywatch.sim.normal.polling import (
    CIP_REPLY_DATA_OFFSET,
    CIP_SESSION,
    S7_DATA_OFFSET,
    S7_REGISTERS,
    cip_read_tag,
    s7_read,
)
from quaywatch.sim.pending import bucket
from quaywatch.sim.physics import REGISTER_NAMES
from quaywatch.sim.scenarios.wire import (
    ScheduledScenario,
    dhcp_message,
    dns_query,
    dns_response,
    external_host,
    http_ok,
    http_post,
    ip_option,
    own_uplink,
    reference,
    tls_data,
    tls_opening,
)

ROLE = "cellular router or modem"
LEASE_SECONDS = 3600
DNS_CACHE_SECONDS = 600


def modem_name(crane: int) -> str:
    return f"sts{crane:02d}-cellular-modem"


def find_modem(model: TerminalModel) -> Device | None:
    """The undeclared modem this scenario placed, if any (other scenarios route through it)."""
    return next((device for device in model.devices if device.role == ROLE and not device.declared), None)


class CellularModem(ScheduledScenario):
    """An undeclared Quectel module that beacons, leaks lift data and offers itself as a gateway."""

    name = "cellular-modem"
    build_order = 0  # the modem is the other scenarios' foothold when it is on
    description = (
        "Undeclared Quectel LTE module on a crane: jittered HTTPS beacon to a foreign cloud, carrier DNS, "
        "PLC reads, cleartext upload of container moves, rogue DHCP server; its own uplink bypasses the firewall"
    )
    techniques = ("T0883", "T0884", "T0869", "T0801", "T0802", "T0882", "T1011", "T1071")
    defaults: ClassVar[dict[str, Any]] = {
        "crane": 2,
        "start": 20,
        "period": 60,
        "jitter": 0.2,
        "missed": 0.1,
        "upload_every": 5,
        "plc_start": 12,
        "plc_period": 10,
        "dhcp": True,
        "dhcp_at": 25,
        "cloud_ip": reference("cellular_modem")["cloud_ip"],
        "cloud_domain": reference("cellular_modem")["cloud_domain"],
    }

    @classmethod
    def prepare(cls, model: TerminalModel, parameters: dict[str, Any]) -> None:
        chosen = {**cls.defaults, **parameters}
        data = reference("cellular_modem")
        crane = int(chosen["crane"])
        zone_name = f"sts-crane-{crane:02d}"
        if zone_name not in model.zones:
            raise ModelError(f"scenario {cls.name}: crane={crane}: the model has no zone {zone_name!r}")
        if "Quectel" not in model.makers:
            raise ModelError(f"scenario {cls.name}: the model's makers: lacks Quectel (its IEEE prefix)")
        external_host(model, "modem-cloud", str(chosen["cloud_ip"]), str(chosen["cloud_domain"]))
        external_host(model, "carrier-dns", str(data["carrier_resolver"]), role="service")

    def __init__(self, context: SimulationContext, parameters: dict[str, Any]) -> None:
        super().__init__(context, parameters)
        data = reference("cellular_modem")
        self.data = data
        self.crane = int(self.parameters["crane"])
        # The module joins the model here, after the normal sources were built: it is the scenario's device, so
        # normal behaviours neither talk for it nor shift their own draws because of it; all its frames are labelled.
        self.model.add_device(_modem_device(self.model, self.crane, data))
        self.modem = self.model.device(modem_name(self.crane))
        self.plc = self.model.device(f"sts{self.crane:02d}-plc")
        self.cloud = self.model.device("modem-cloud")
        self.resolver = self.model.device("carrier-dns")
        reply_ttl = int(data["cellular_reply_ttl"])
        self.near, self.cloud_end = own_uplink(context, self.modem, self.cloud, reply_ttl)
        _, self.resolver_end = own_uplink(context, self.modem, self.resolver, reply_ttl)
        self.imei = "86" + "".join(str(digit) for digit in self.random.integers(0, 10, 13))
        modem_ip, cloud_ip = self.modem.ip, self.cloud.ip
        period = float(self.parameters["period"])
        jitter = float(self.parameters["jitter"])
        beats = self._beats(period, jitter, float(self.parameters["missed"]))
        uploads = beats[1 :: max(int(self.parameters["upload_every"]), 1)]
        upload_moves = self._upload_moves(uploads)
        self.beacon_label = context.label(
            self.name, f"{self.name}/beacon", ["T0883", "T0884", "T0869", "T1071"], [modem_ip, cloud_ip],
            {
                "detections": ["D3", "D4", "D1", "D12"], "source": modem_ip, "destination": cloud_ip,
                "assets": [modem_ip],
                "details": {
                    "period_seconds": period, "jitter": jitter, "missed": float(self.parameters["missed"]),
                    "server_name": self.cloud.domain, "destination_port": 443, "maker": "Quectel",
                    "declared": False, "gateway_mac": self.modem.mac, "reply_ttl": reply_ttl,
                },
            },
            self.parameters,
        )  # fmt: skip
        self.dns_label = context.label(
            self.name, f"{self.name}/carrier-dns", ["T0884", "T1011"], [modem_ip, self.resolver.ip],
            {
                "detections": ["D3", "D1"], "source": modem_ip, "destination": self.resolver.ip, "assets": [modem_ip],
                "details": {"domains": [*data["carrier_domains"], self.cloud.domain]},
            },
            self.parameters,
        )  # fmt: skip
        self.upload_label = context.label(
            self.name, f"{self.name}/upload", ["T0802", "T0882", "T1011"], [modem_ip, cloud_ip],
            {
                "detections": ["D6", "D1"], "source": modem_ip, "destination": cloud_ip, "assets": [modem_ip],
                "details": {
                    "uploads": len(uploads), "container_ids": sum(len(moves) for moves in upload_moves),
                    "container_id_list": sorted({move.container for moves in upload_moves for move in moves}),
                    "protocol": "http", "uri": data["upload_uri"],
                },
            },
            self.parameters,
        )  # fmt: skip
        self.plc_label = context.label(
            self.name, f"{self.name}/plc-read", ["T0801", "T0802"], [modem_ip, self.plc.ip],
            {
                "detections": ["D8"], "source": modem_ip, "destination": self.plc.ip,
                "assets": [modem_ip, self.plc.ip],
                "details": {"protocol": "s7comm" if self.plc.maker == "Siemens" else "enip",
                            "period_seconds": float(self.parameters["plc_period"])},
            },
            self.parameters,
        )  # fmt: skip
        for moment in beats:
            self.schedule(moment, partial(self._beacon, moment))
        for moment, moves in zip(uploads, upload_moves, strict=True):
            self.schedule(moment + 1.5, partial(self._upload, moment + 1.5, moves))
        self._schedule_dns(beats)
        plc_moment = self.at("plc_start", 12)
        while plc_moment < context.end:
            self.schedule(plc_moment, partial(self._plc_read, plc_moment))
            plc_moment += float(self.parameters["plc_period"]) * (1 + float(self.random.uniform(-0.02, 0.02)))
        if self.parameters["dhcp"]:
            self._schedule_dhcp()

    # -- timeline ----------------------------------------------------------------------------------------

    def _beats(self, period: float, jitter: float, missed: float) -> list[float]:
        beats: list[float] = []
        nominal = self.at("start", 20)
        while nominal < self.context.end + period:
            offset = float(self.random.uniform(-jitter, jitter)) * period
            skip = float(self.random.random()) < missed
            if not skip and self.context.start <= nominal + offset < self.context.end:
                beats.append(nominal + offset)
            nominal += period
        if beats and beats[0] < self.at("start", 20):  # the first beat is never before the start
            beats[0] = self.at("start", 20)
        return sorted(beats)

    def _upload_moves(self, uploads: list[float]) -> list[list[Any]]:
        previous = self.context.start - 300.0  # the module buffers what it saw before the capture began
        out = []
        for moment in uploads:
            out.append(self.context.physics.moves_between(self.crane, previous, moment))
            previous = moment
        return out

    def _schedule_dns(self, beats: list[float]) -> None:
        if not beats:
            return
        self.schedule(max(self.context.start, beats[0] - 2.0), partial(self._dns, beats[0] - 2.0, True))
        resolved = beats[0] - 0.3
        self.schedule(max(self.context.start, resolved), partial(self._dns, beats[0] - 0.3, False))
        for moment in beats[1:]:
            if moment - resolved >= DNS_CACHE_SECONDS:
                resolved = moment - 0.3
                self.schedule(resolved, partial(self._dns, resolved, False))

    def _schedule_dhcp(self) -> None:
        self.dhcp_client = self.model.device(f"sts{self.crane:02d}-cab-hmi")
        self.dhcp_label = self.context.label(
            self.name, f"{self.name}/dhcp-server", ["T0884"], [self.modem.ip, self.dhcp_client.ip],
            {
                "detections": ["D3"], "source": self.modem.ip, "destination": None, "assets": [self.modem.ip],
                "details": {"router": self.modem.ip, "server_id": self.modem.ip, "client": self.dhcp_client.ip,
                            "lease_seconds": LEASE_SECONDS},
            },
            self.parameters,
        )  # fmt: skip
        moment = self.at("dhcp_at", 25)
        self.schedule(moment, partial(self._dhcp_exchange, moment, True))
        moment += LEASE_SECONDS / 2
        while moment < self.context.end:
            self.schedule(moment, partial(self._dhcp_exchange, moment, False))
            moment += LEASE_SECONDS / 2

    # -- frames ------------------------------------------------------------------------------------------

    def _isn(self) -> tuple[int, int]:
        return int(self.random.integers(1, 2**31)), int(self.random.integers(1, 2**31))

    def _beacon(self, moment: float) -> list[FrameBlock]:
        exchanges = tls_opening(self.cloud.domain, self.random, self.name)
        exchanges.append((TO_SERVER, tls_data(self.random, 176 + int(self.random.integers(0, 9))), 0.002))
        exchanges.append((TO_CLIENT, tls_data(self.random, 64 + int(self.random.integers(0, 5))), 0.09))
        blocks, _ = tcp_session(
            self.near, self.cloud_end, self.ports.take(), 443, moment, exchanges, "tls",
            label=self.beacon_label, round_trip=0.06, initial_sequence=self._isn(),
        )  # fmt: skip
        return bucket(blocks, "tls")

    def _dns(self, moment: float, carrier: bool) -> list[FrameBlock]:
        moment = max(moment, self.context.start)
        names = list(self.data["carrier_domains"]) if carrier else [self.cloud.domain]
        blocks = []
        for index, name in enumerate(names):
            at = moment + index * 0.01
            transaction = int(self.random.integers(0, 65536))
            port = self.ports.take()
            answer = self.cloud.ip if name == self.cloud.domain else _illustrative_address(name)
            blocks.append(
                udp_datagram(at, self.near, self.resolver_end, port, 53, dns_query(transaction, name), "dns",
                             self.dns_label)
            )  # fmt: skip
            blocks.append(
                udp_datagram(at + 0.045, self.resolver_end, self.near, 53, port,
                             dns_response(transaction, name, [answer]), "dns", self.dns_label)
            )  # fmt: skip
        return blocks

    def _upload(self, moment: float, moves: list[Any]) -> list[FrameBlock]:
        registers = self.context.physics.registers(self.crane, np.array([moment]))[0]
        document = {
            "imei": self.imei,
            "crane": f"STS{self.crane:02d}",
            "site": self.model.name,
            "ts": self.model.local_time(moment).isoformat(timespec="seconds"),
            "process": {name: int(value) for name, value in zip(REGISTER_NAMES, registers, strict=True)},
            "lifts": [
                {
                    "container": move.container, "iso_type": move.size_type, "weight_kg": move.weight_kg,
                    "move": move.kind, "bay_row_tier": f"{move.bay:03d}{move.row:02d}{move.tier:02d}",
                    "pol": move.port_of_loading, "pod": move.port_of_discharge,
                    "locked": self.model.local_time(move.locked_at).isoformat(timespec="seconds"),
                }
                for move in moves
            ],
        }  # fmt: skip
        body = json.dumps(document, separators=(",", ":")).encode()
        request = http_post(self.cloud.domain, str(self.data["upload_uri"]), str(self.data["user_agent"]),
                            "application/json", body)  # fmt: skip
        blocks, _ = tcp_session(
            self.near, self.cloud_end, self.ports.take(), 80, moment,
            [(TO_SERVER, request, 0.0), (TO_CLIENT, http_ok(), 0.12)], "http",
            label=self.upload_label, round_trip=0.06, initial_sequence=self._isn(),
        )  # fmt: skip
        return bucket(blocks, "http")

    def _plc_read(self, moment: float) -> list[FrameBlock]:
        modem, plc = self.context.endpoints(self.modem, self.plc)
        values = self.context.physics.registers(self.crane, np.array([moment + 0.01]))[0]
        if self.plc.maker == "Siemens":
            request, response = s7_read(db=10, start_byte=0, length=2 * S7_REGISTERS)
            response = response[:S7_DATA_OFFSET] + values.astype(">u2").tobytes() + response[S7_DATA_OFFSET + 20 :]
            exchanges = [
                (TO_SERVER, COTP_CONNECT, 0.0, "cotp"), (TO_CLIENT, COTP_CONFIRM, 0.002, "cotp"),
                (TO_SERVER, S7_SETUP, 0.001, "s7comm"), (TO_CLIENT, S7_SETUP_ACK, 0.003, "s7comm"),
                (TO_SERVER, request, 0.001, "s7comm"), (TO_CLIENT, response, 0.004, "s7comm"),
            ]  # fmt: skip
            port = 102
        else:
            request, response = cip_read_tag("CraneStatus", S7_REGISTERS)
            cut = CIP_REPLY_DATA_OFFSET
            response = response[:cut] + values.astype("<u2").tobytes() + response[cut + 20 :]
            exchanges = [
                (TO_SERVER, ENIP_REGISTER, 0.0, "enip"), (TO_CLIENT, ENIP_REGISTERED, 0.002, "enip"),
                (TO_SERVER, request, 0.001, "enip"), (TO_CLIENT, response, 0.003, "enip"),
            ]  # fmt: skip
            port = 44818
        blocks, _ = tcp_session(
            modem, plc, self.ports.take(), port, moment, [(d, p, w) for d, p, w, _ in exchanges], "tcp",
            label=self.plc_label, initial_sequence=self._isn(),
        )  # fmt: skip
        payload_protocols = iter(protocol for _, _, _, protocol in exchanges)
        for block in bucket(blocks, "data"):
            if block.protocol == "data":
                block.protocol = next(payload_protocols)
        return blocks

    def _dhcp_exchange(self, moment: float, initial: bool) -> list[FrameBlock]:
        modem, client = self.context.endpoints(self.modem, self.dhcp_client)
        mac = client.mac
        transaction = int(self.random.integers(1, 2**32))
        hostname = self.dhcp_client.name.upper().encode()
        client_options = [
            (61, b"\x01" + mac), (12, hostname), (60, b"MSFT 5.0"),
            (55, bytes([1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252])),
        ]  # fmt: skip
        server_options = [
            (54, ip_option(self.modem.ip)), (51, LEASE_SECONDS.to_bytes(4, "big")),
            (58, (LEASE_SECONDS // 2).to_bytes(4, "big")), (59, (LEASE_SECONDS * 7 // 8).to_bytes(4, "big")),
            (1, ip_option("255.255.255.0")), (3, ip_option(self.modem.ip)), (6, ip_option(self.modem.ip)),
        ]  # fmt: skip
        label = self.dhcp_label
        if not initial:  # a renewal: unicast REQUEST and ACK between the leased address and the server
            request = dhcp_message(1, 3, transaction, mac, client_options, ciaddr=client.ip)
            ack = dhcp_message(2, 5, transaction, mac, server_options, yiaddr=client.ip, ciaddr=client.ip)
            return [
                udp_datagram(moment, client, modem, 68, 67, request, "dhcp", label),
                udp_datagram(moment + 0.004, modem, client, 67, 68, ack, "dhcp", label),
            ]
        anyone = replace(client, ip="0.0.0.0")
        everyone = Endpoint("broadcast", "255.255.255.255", b"\xff" * 6, client.vlan, 64)
        modem_broadcast = Endpoint(modem.name, modem.ip, modem.mac, modem.vlan, modem.ttl)
        requested = [(50, ip_option(client.ip)), (54, ip_option(self.modem.ip))]
        discover = dhcp_message(1, 1, transaction, mac, client_options, broadcast=True)
        offer = dhcp_message(2, 2, transaction, mac, server_options, yiaddr=client.ip, broadcast=True)
        request = dhcp_message(1, 3, transaction, mac, requested + client_options, broadcast=True)
        ack = dhcp_message(2, 5, transaction, mac, server_options, yiaddr=client.ip, broadcast=True)
        return [
            udp_datagram(moment, anyone, everyone, 68, 67, discover, "dhcp", label),
            udp_datagram(moment + 0.006, modem_broadcast, everyone, 67, 68, offer, "dhcp", label),
            udp_datagram(moment + 0.012, anyone, everyone, 68, 67, request, "dhcp", label),
            udp_datagram(moment + 0.018, modem_broadcast, everyone, 67, 68, ack, "dhcp", label),
        ]


def _modem_device(model: TerminalModel, crane: int, data: dict[str, Any]) -> Device:
    zone = model.zones[f"sts-crane-{crane:02d}"]
    name = modem_name(crane)
    return Device(
        name=name,
        zone=zone.name,
        role=ROLE,
        maker="Quectel",
        ip=str(zone.subnet.network_address + int(data["host"])),
        mac=model.mac_for("Quectel", name),
        vlan=zone.vlan,
        model=str(data["model"]),
        firmware=str(data["firmware"]),
        crane=crane,
        declared=False,
    )


def _illustrative_address(name: str) -> str:
    """A stable public-looking answer for a carrier/cloud name (illustrative, from the name's hash)."""
    digest = sum(name.encode()) * 2654435761
    return f"{100 + digest % 100}.{(digest >> 8) % 250 + 1}.{(digest >> 16) % 250 + 1}.{(digest >> 24) % 250 + 1}"


def _tpkt(body: bytes) -> bytes:
    return b"\x03\x00" + (4 + len(body)).to_bytes(2, "big") + body


# COTP Connection Request / Confirm with the TSAPs a client uses for a PLC in rack 0 slot 1 (0x0100 -> 0x0101).
COTP_CONNECT = _tpkt(bytes.fromhex("11e00000000100c0010ac1020100c2020101"))
COTP_CONFIRM = _tpkt(bytes.fromhex("11d00001000100c0010ac1020100c2020101"))
S7_SETUP = _tpkt(bytes.fromhex("02f080" + "32010000010000080000" + "f0000001000101e0"))
S7_SETUP_ACK = _tpkt(bytes.fromhex("02f080" + "320300000100000800000000" + "f0000001000101e0"))
# EtherNet/IP RegisterSession (command 0x0065): protocol version 1, options 0; the reply carries the session handle.
ENIP_REGISTER = bytes.fromhex("65000400") + bytes(4) + bytes(4) + bytes(8) + bytes(4) + bytes.fromhex("01000000")
ENIP_REGISTERED = (
    bytes.fromhex("65000400") + CIP_SESSION.to_bytes(4, "little") + bytes(4) + bytes(8) + bytes(4)
    + bytes.fromhex("01000000")
)  # fmt: skip
