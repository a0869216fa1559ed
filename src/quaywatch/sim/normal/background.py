"""The network's background: ARP, LLDP, DHCP, DNS, NTP and SNMP.

Analysts first see a network through this chatter: who resolves whom, which
switch and PLCs announce themselves, which laptops lease addresses. It is also
how every device of the model shows its MAC at least once in a short capture
(each one resolves its zone gateway when it first talks), so the asset
inventory can be checked against the ground truth.

* ARP: every internal device resolves its zone gateway (the firewall's address
  in its zone) within the first minute and then every few minutes; a few
  devices reboot during the run and probe and announce their address (RFC 5227).
* LLDP: the core switch announces itself on every zone's port every 30 s
  (bridge and router); the Siemens PLCs and the ABB drives send PROFINET-style
  LLDP every 5 s with a system description built from the model.
* DHCP: the corporate laptops lease from corp-dns (OT devices are static):
  renewals at T1, INIT-REBOOT requests when laptops wake or dock, whole
  DISCOVER/OFFER/REQUEST/ACK exchanges as they arrive in the morning, and, in
  work hours, one laptop joining just after the start so that a short run
  shows a whole lease.
* DNS: OT servers, HMIs and engineering workstations resolve the terminal's
  names at ot-dns (authoritative, answers from the model's addresses).
  Corporate lookups of websites come with each web session (corporate.py).
* NTP: PLCs and servers follow ot-dns, which follows ntp-pool on the internet.
* SNMP v2c: the OT NMS on ot-dns polls the core switch and the CCTV cameras
  every 5 minutes on the clock (system group and part of the ifTable).

Accounting buckets: tshark's protocol names (arp, lldp, dhcp, dns, ntp, snmp).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from quaywatch.sim.engine import SimulationContext, Source
from quaywatch.sim.frames import Endpoint, FrameBlock, mac_bytes, udp_datagram
from quaywatch.sim.model import Device
from quaywatch.sim.normal.streams import merge, periodic, tile
from quaywatch.yaml_files import load_yaml

BROADCAST_MAC = b"\xff" * 6
LLDP_MULTICAST = bytes.fromhex("0180c200000e")
NTP_EPOCH = 2208988800
CAPABILITY_BRIDGE, CAPABILITY_ROUTER, CAPABILITY_STATION = 0x04, 0x10, 0x80


@lru_cache(maxsize=1)
def services() -> dict[str, Any]:
    """The simulator's service reference data (data/sim/services.yaml)."""
    text = resources.files("quaywatch.data").joinpath("sim", "services.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = load_yaml(text)
    return document


# -- layer 2 ------------------------------------------------------------------------------------------------


def ethernet(destination: bytes, source: bytes, vlan: int | None, ether_type: int, payload: bytes) -> bytes:
    """An Ethernet II frame (802.1Q-tagged when ``vlan``), padded to the 60-octet minimum."""
    header = destination + source
    if vlan is not None:
        header += struct.pack("!HH", 0x8100, vlan)
    frame = header + struct.pack("!H", ether_type) + payload
    return frame + bytes(max(0, 60 - len(frame)))


def arp_payload(operation: int, sender_mac: bytes, sender_ip: str, target_mac: bytes, target_ip: str) -> bytes:
    return (
        struct.pack("!HHBBH", 1, 0x0800, 6, 4, operation)
        + sender_mac
        + ipaddress.IPv4Address(sender_ip).packed
        + target_mac
        + ipaddress.IPv4Address(target_ip).packed
    )


def lldp_tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!H", (kind << 9) | len(value)) + value


def lldp_payload(
    chassis: tuple[int, bytes],
    port: tuple[int, bytes],
    ttl: int,
    port_description: str,
    system_name: str,
    system_description: str,
    capabilities: int,
    management_ip: str,
    interface: int,
    port_vlan: int | None,
) -> bytes:
    """An LLDPDU (IEEE 802.1AB): mandatory TLVs, the optional ones analysts read, 802.1 PVID and 802.3 MAC/PHY."""
    body = lldp_tlv(1, bytes([chassis[0]]) + chassis[1]) + lldp_tlv(2, bytes([port[0]]) + port[1])
    body += lldp_tlv(3, struct.pack("!H", ttl))
    body += lldp_tlv(4, port_description.encode()) + lldp_tlv(5, system_name.encode())
    body += lldp_tlv(6, system_description.encode())
    body += lldp_tlv(7, struct.pack("!HH", capabilities, capabilities))
    address = ipaddress.IPv4Address(management_ip).packed
    body += lldp_tlv(8, bytes([5, 1]) + address + bytes([2]) + struct.pack("!I", interface) + b"\x00")
    if port_vlan is not None:
        body += lldp_tlv(127, bytes.fromhex("0080c2") + b"\x01" + struct.pack("!H", port_vlan))
    body += lldp_tlv(127, bytes.fromhex("00120f") + b"\x01" + b"\x03" + struct.pack("!HH", 0x6C01, 16))
    return body + lldp_tlv(0, b"")


# -- DHCP, DNS, NTP, SNMP messages ----------------------------------------------------------------------------


def dhcp_message(
    op: int,
    xid: int,
    client_mac: bytes,
    options: list[tuple[int, bytes]],
    ciaddr: str = "0.0.0.0",
    yiaddr: str = "0.0.0.0",
    secs: int = 0,
) -> bytes:
    """A BOOTP/DHCP message (RFC 2131) padded to the 300-octet BOOTP minimum."""
    fixed = struct.pack("!BBBBIHH", op, 1, 6, 0, xid, secs, 0)
    fixed += ipaddress.IPv4Address(ciaddr).packed + ipaddress.IPv4Address(yiaddr).packed + bytes(8)
    fixed += client_mac + bytes(10) + bytes(64) + bytes(128) + bytes.fromhex("63825363")
    for code, value in options:
        fixed += bytes([code, len(value)]) + value
    fixed += b"\xff"
    return fixed + bytes(max(0, 300 - len(fixed)))


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"


def dns_query(identifier: int, name: str, qtype: int = 1) -> bytes:
    return struct.pack("!HHHHHH", identifier, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", qtype, 1)


def dns_answer(identifier: int, name: str, addresses: list[str], ttl: int, authoritative: bool) -> bytes:
    """The response: the question again, then one A record per address pointing back at it (compression)."""
    flags = 0x8580 if authoritative else 0x8180
    message = struct.pack("!HHHHHH", identifier, flags, 1, len(addresses), 0, 0) + dns_name(name)
    message += struct.pack("!HH", 1, 1)
    for address in addresses:
        message += struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + ipaddress.IPv4Address(address).packed
    return message


def ntp_timestamp(epoch: float) -> bytes:
    seconds = int(epoch)
    return struct.pack("!II", (seconds + NTP_EPOCH) % (1 << 32), int((epoch - seconds) * (1 << 32)) & 0xFFFFFFFF)


def ntp_packet(
    mode: int,
    stratum: int,
    poll: int,
    precision: int,
    reference_id: bytes,
    reference: float,
    origin: float,
    receive: float,
    transmit: float,
    root_delay: float = 0.0,
    root_dispersion: float = 0.0,
) -> bytes:
    """An NTPv4 header (RFC 5905 7.3); zero times are sent as zero."""

    def stamp(value: float) -> bytes:
        return ntp_timestamp(value) if value else bytes(8)

    def short(value: float) -> int:
        return int(value * 65536) & 0xFFFFFFFF

    header = struct.pack("!BBbb", (0 << 6) | (4 << 3) | mode, stratum, poll, precision)
    header += struct.pack("!II", short(root_delay), short(root_dispersion)) + reference_id
    return header + stamp(reference) + stamp(origin) + stamp(receive) + stamp(transmit)


def ber_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def ber(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + ber_length(len(value)) + value


def ber_integer(value: int, tag: int = 0x02) -> bytes:
    length = max(1, (value.bit_length() + 8) // 8)
    return ber(tag, value.to_bytes(length, "big", signed=tag == 0x02))


def ber_oid(oid: str) -> bytes:
    parts = [int(part) for part in oid.split(".")]
    body = bytes([parts[0] * 40 + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return ber(0x06, body)


def snmp_message(community: str, pdu_tag: int, request_id: int, varbinds: list[tuple[str, bytes]]) -> bytes:
    """An SNMPv2c message (RFC 3416): version 1, community, a PDU with its variable bindings."""
    bindings = b"".join(ber(0x30, ber_oid(oid) + value) for oid, value in varbinds)
    pdu = ber_integer(request_id) + ber_integer(0) + ber_integer(0) + ber(0x30, bindings)
    return ber(0x30, ber_integer(1) + ber(0x04, community.encode()) + ber(pdu_tag, pdu))


SYS_DESCR, SYS_OBJECT_ID, SYS_UPTIME, SYS_NAME = (f"1.3.6.1.2.1.1.{n}.0" for n in (1, 2, 3, 5))
IF_COLUMNS = {"ifDescr": 2, "ifOperStatus": 8, "ifInOctets": 10, "ifOutOctets": 16}


def system_description(device: Device) -> str:
    """The LLDP/SNMP system description a device of this maker sends, built from the model."""
    data = services()["lldp"]
    template = data["descriptions"].get(device.maker, "{model} {firmware}")
    cpu = device.model[device.model.find("CPU") :] if "CPU" in device.model else device.model
    version = device.firmware.removeprefix("IOS ").strip()
    platform = device.model.replace("-", "").split("12S")[0] if device.maker == "Cisco" else device.model
    return str(template).format(
        model=device.model,
        firmware=device.firmware,
        version=version,
        order_number=device.order_number,
        cpu=cpu,
        platform=platform,
        image=data["cisco_images"].get(device.model, "UNIVERSALK9-M"),
    )


class NetworkBackground(Source):
    """ARP, LLDP, DHCP, DNS, NTP and SNMP of the whole terminal."""

    name = "background"

    def __init__(self, context: SimulationContext) -> None:
        super().__init__(context)
        self.data = services()
        self.ports = context.ports(self.name)
        model = self.model
        self.internal = [device for device in model.devices if not device.external and not device.gateway_ips]
        self._arp_setup()
        self._lldp_setup()
        self.dhcp_events = self._dhcp_schedule()
        self.dns_server = self._optional("ot-dns")
        self.corp_server = self._optional("corp-dns")
        self.pool = self._optional("ntp-pool")
        self.dns_clients: list[tuple[Device, float, float]] = []
        for device in self.internal:
            resolves = device.role in ("server", "HMI", "engineering workstation") and device.zone != "corporate-it"
            if resolves and device is not self.dns_server:
                period = float(self.random.uniform(*self.data["dns"]["ot_period_seconds"]))
                self.dns_clients.append((device, period, float(self.random.uniform(0, period))))
        ntp = self.data["ntp"]
        self.ntp_clients: list[tuple[Device, float, float]] = []
        for device in self.internal:
            if device.zone == "corporate-it" or device is self.dns_server:
                continue
            if device.role == "PLC":
                log2 = int(ntp["plc_poll_log2"])
            elif device.role in ("server", "NVR") and not device.name.endswith("-ocr"):
                log2 = int(self.random.integers(ntp["server_poll_log2"][0], ntp["server_poll_log2"][1] + 1))
            else:
                continue
            period = float(2**log2)
            self.ntp_clients.append((device, period, float(self.random.uniform(0, min(period, 120.0)))))
        self.upstream_offset = float(self.random.uniform(0, 2 ** int(ntp["upstream_poll_log2"])))
        snmp = self.data["snmp"]
        self.poller = self._optional(str(snmp["poller"]))
        self.snmp_targets = [
            d for d in self.internal if d.role == "network device" or (d.role == "camera" and d.zone == "cctv")
        ]
        self.boot = {
            device.name: context.start - float(self.random.uniform(8, 200)) * 86400 for device in self.internal
        }

    def _optional(self, name: str) -> Device | None:
        try:
            return self.model.device(name)
        except KeyError:
            return None

    # -- ARP ----------------------------------------------------------------------------------------------

    def _arp_setup(self) -> None:
        arp = self.data["arp"]
        self.arp: list[tuple[bytes, bytes, float, float, float]] = []
        for device in self.internal:
            try:
                gateway = self.model.gateway(device.zone)
                gateway_ip = self.model.gateway_ip(device.zone)
            except KeyError:
                continue
            own, router = mac_bytes(device.mac), mac_bytes(gateway.mac)
            request = ethernet(
                BROADCAST_MAC, own, device.vlan, 0x0806, arp_payload(1, own, device.ip, bytes(6), gateway_ip)
            )
            reply = ethernet(own, router, device.vlan, 0x0806, arp_payload(2, router, gateway_ip, own, device.ip))
            period = float(self.random.uniform(*arp["period_seconds"]))
            offset = float(self.random.uniform(0, min(float(arp["first_within_seconds"]), period)))
            self.arp.append((request, reply, period, offset, float(self.random.uniform(0.0002, 0.0012))))
        self.announcements: list[FrameBlock] = []
        span = self.context.end - self.context.start
        count = min(int(arp["gratuitous_devices"]), len(self.internal))
        for index in self.random.choice(len(self.internal), count, replace=False):
            device = self.internal[int(index)]
            own = mac_bytes(device.mac)
            boot = self.context.start + float(self.random.uniform(min(5.0, span / 2), max(min(100.0, span - 8.0), 5.5)))
            probe = ethernet(
                BROADCAST_MAC, own, device.vlan, 0x0806, arp_payload(1, own, "0.0.0.0", bytes(6), device.ip)
            )
            announce = ethernet(
                BROADCAST_MAC, own, device.vlan, 0x0806, arp_payload(1, own, device.ip, bytes(6), device.ip)
            )
            self.announcements.append(tile(probe, boot + np.array([0.0, 1.3, 2.5]), "arp"))
            self.announcements.append(tile(announce, boot + np.array([4.5, 6.5]), "arp"))

    def _arp_window(self, start: float, end: float) -> list[FrameBlock]:
        blocks: list[FrameBlock] = []
        for request, reply, period, offset, delay in self.arp:
            times = periodic(start, end, self.context.start, period, offset)
            if times.shape[0]:
                blocks += [tile(request, times, "arp"), tile(reply, times + delay, "arp")]
        for block in self.announcements:
            mine = (block.timestamps >= start) & (block.timestamps < end)
            if mine.any():
                blocks.append(FrameBlock(block.timestamps[mine], block.frames[mine], "arp"))
        return blocks

    # -- LLDP ---------------------------------------------------------------------------------------------

    def _lldp_setup(self) -> None:
        lldp = self.data["lldp"]
        self.lldp: list[tuple[bytes, float, float]] = []
        for switch in self.model.find(role="network device", maker="Cisco"):
            own = mac_bytes(switch.mac)
            for number, zone in enumerate(self.model.zones.values(), start=1):
                payload = lldp_payload(
                    (4, own), (5, f"Gi1/{number}".encode()), int(lldp["switch_ttl_seconds"]),
                    f"GigabitEthernet1/{number}", switch.name, system_description(switch),
                    CAPABILITY_BRIDGE | CAPABILITY_ROUTER, switch.ip, 10100 + number, zone.vlan,
                )  # fmt: skip
                frame = ethernet(LLDP_MULTICAST, own, zone.vlan, 0x88CC, payload)
                period = float(lldp["switch_period_seconds"])
                self.lldp.append((frame, period, float(self.random.uniform(0, period))))
        for device in self.internal:
            if not (
                (device.maker == "Siemens" and device.role == "PLC")
                or (device.maker == "ABB" and device.role == "drive")
            ):
                continue
            own = mac_bytes(device.mac)
            if device.maker == "Siemens":  # PROFINET: chassis and port ids are the station name
                chassis, port = (7, device.name.encode()), (7, f"port-001.{device.name}".encode())
            else:
                chassis, port = (4, own), (3, own)
            payload = lldp_payload(
                chassis, port, int(lldp["profinet_ttl_seconds"]), "X1 P1", device.name, system_description(device),
                CAPABILITY_STATION, device.ip, 1, device.vlan,
            )  # fmt: skip
            period = float(lldp["profinet_period_seconds"])
            frame = ethernet(LLDP_MULTICAST, own, device.vlan, 0x88CC, payload)
            self.lldp.append((frame, period, float(self.random.uniform(0, period))))

    def _lldp_window(self, start: float, end: float) -> list[FrameBlock]:
        blocks = []
        for frame, period, offset in self.lldp:
            times = periodic(start, end, self.context.start, period, offset)
            if times.shape[0]:
                blocks.append(tile(frame, times + self.random.uniform(0, 0.002, times.shape[0]), "lldp"))
        return blocks

    # -- DHCP ---------------------------------------------------------------------------------------------

    def _dhcp_schedule(self) -> list[tuple[float, str, Device]]:
        """(time, kind, laptop) for the whole run: renew, reboot (wake/dock) or arrive (whole exchange)."""
        dhcp = self.data["dhcp"]
        laptops = self.model.find(role="workstation", zone="corporate-it")
        start, end = self.context.start, self.context.end
        events: list[tuple[float, str, Device]] = []
        if not laptops or self._optional("corp-dns") is None:
            return events
        t1 = float(dhcp["lease_seconds"]) / 2
        for laptop in laptops:
            phase = float(self.random.uniform(0, t1))
            events += [(float(t), "renew", laptop) for t in periodic(start, end, start, t1, phase)]
        work, off = float(dhcp["reconnects_per_hour_work"]), float(dhcp["reconnects_per_hour_off"])
        top = max(work, off) * len(laptops) / 3600
        moment = start
        while True:
            moment += float(self.random.exponential(1 / top))
            if moment >= end:
                break
            rate = work if self.model.work_hours.contains(self.model.local_time(moment)) else off
            if self.random.uniform() < rate / max(work, off):
                events.append((moment, "reboot", laptops[int(self.random.integers(len(laptops)))]))
        first, last = (dt.time.fromisoformat(text) for text in dhcp["arrivals_local"])
        day = self.model.local_time(start).date()
        while True:
            opening = dt.datetime.combine(day, first, self.model.timezone).timestamp()
            if opening >= end:
                break
            closing = dt.datetime.combine(day, last, self.model.timezone).timestamp()
            if day.weekday() in self.model.work_hours.days:
                for laptop in laptops:
                    arrival = float(self.random.uniform(opening, closing))
                    if start <= arrival < end:
                        events.append((arrival, "arrive", laptop))
            day += dt.timedelta(days=1)
        joining = laptops[int(self.random.integers(len(laptops)))]
        joined = start + float(self.random.uniform(3, min(30, max(4, (end - start) / 2))))
        if self.model.work_hours.contains(self.model.local_time(joined)):  # someone always arrives late
            events.append((joined, "arrive", joining))
        return sorted(events, key=lambda event: event[0])

    def _dhcp_exchange(self, moment: float, kind: str, laptop: Device) -> list[FrameBlock]:
        server = self.corp_server
        assert server is not None
        dhcp = self.data["dhcp"]
        zone = self.model.zones[laptop.zone]
        mac = mac_bytes(laptop.mac)
        xid = int(self.random.integers(0, 2**32))
        fqdn = f"{laptop.name}.{dhcp['domain_suffix']}.{self.model.domain}"
        ip = ipaddress.IPv4Address(laptop.ip).packed
        server_ip = ipaddress.IPv4Address(server.ip).packed
        client_options = [(61, b"\x01" + mac)]
        tail = [(12, laptop.name.upper().encode()), (81, b"\x00\x00\x00" + fqdn.encode()),
                (60, dhcp["vendor_class"].encode()), (55, bytes(dhcp["parameter_request_list"]))]  # fmt: skip
        lease = int(dhcp["lease_seconds"])
        router = self.model.gateway_ip(laptop.zone)
        server_options = [
            (54, server_ip), (51, struct.pack("!I", lease)), (58, struct.pack("!I", lease // 2)),
            (59, struct.pack("!I", lease * 7 // 8)), (1, zone.subnet.netmask.packed),
            (3, ipaddress.IPv4Address(router).packed), (6, server_ip),
            (15, f"{dhcp['domain_suffix']}.{self.model.domain}".encode()),
        ]  # fmt: skip
        client_any = Endpoint(laptop.name, "0.0.0.0", mac, laptop.vlan, 128)
        everyone = Endpoint("broadcast", "255.255.255.255", BROADCAST_MAC, laptop.vlan, 128)
        client, server_end = self.context.endpoints(laptop, server)
        blocks: list[FrameBlock] = []
        now = moment

        def send(source: Endpoint, destination: Endpoint, ports: tuple[int, int], message: bytes) -> None:
            blocks.append(udp_datagram(now, source, destination, *ports, message, "dhcp"))

        def reply(message_type: int) -> None:
            send(
                server_end,
                client,
                (67, 68),
                dhcp_message(2, xid, mac, [(53, bytes([message_type])), *server_options], yiaddr=laptop.ip),
            )

        if kind == "renew":  # RENEWING: unicast to the server that granted the lease, ciaddr set
            send(
                client,
                server_end,
                (68, 67),
                dhcp_message(1, xid, mac, [(53, b"\x03"), *client_options, *tail], ciaddr=laptop.ip),
            )
            now += float(self.random.uniform(0.001, 0.004))
            reply(5)
            return blocks
        if kind == "arrive":
            send(
                client_any,
                everyone,
                (68, 67),
                dhcp_message(1, xid, mac, [(53, b"\x01"), *client_options, (50, ip), *tail[:1], *tail[2:]]),
            )
            now += float(self.random.uniform(0.002, 0.01))
            reply(2)
            now += float(self.random.uniform(0.01, 0.05))
            request = [(53, b"\x03"), *client_options, (50, ip), (54, server_ip), *tail]
        else:  # INIT-REBOOT: the laptop asks to keep its address
            request = [(53, b"\x03"), *client_options, (50, ip), *tail]
        send(client_any, everyone, (68, 67), dhcp_message(1, xid, mac, request, secs=0))
        now += float(self.random.uniform(0.001, 0.006))
        reply(5)
        return blocks

    # -- DNS, NTP -----------------------------------------------------------------------------------------

    def _dns_window(self, start: float, end: float) -> list[FrameBlock]:
        server = self.dns_server
        if server is None:
            return []
        names = [name for name in self.data["dns"]["ot_names"] if name in {d.name for d in self.internal}]
        ttl = int(self.data["dns"]["answer_ttl_seconds"])
        blocks: list[FrameBlock] = []
        for device, period, offset in self.dns_clients:
            for moment in periodic(start, end, self.context.start, period, offset).tolist():
                choices = [name for name in names if name != device.name]
                if not choices:
                    continue
                target = self.model.device(choices[int(self.random.integers(len(choices)))])
                fqdn = f"{target.name}.{self.model.domain}"
                blocks += dns_lookup(self.context, self.random, device, server, moment, fqdn, [target.ip], ttl, True)
        return blocks

    def _ntp_window(self, start: float, end: float) -> list[FrameBlock]:
        server = self.dns_server
        if server is None:
            return []
        ntp = self.data["ntp"]
        pool_id = ipaddress.IPv4Address(self.pool.ip).packed if self.pool else b"LOCL"
        blocks: list[FrameBlock] = []
        upstream_period = float(2 ** int(ntp["upstream_poll_log2"]))
        last_sync = self.context.start - upstream_period + self.upstream_offset
        for device, period, offset in self.ntp_clients:
            log2 = int(np.log2(period))
            for moment in periodic(start, end, self.context.start, period, offset).tolist():
                client, far = self.context.endpoints(device, server)
                port = 123 if device.role == "server" else self.ports.take()
                request = ntp_packet(3, 0, log2, -20, bytes(4), 0.0, 0.0, 0.0, moment)
                blocks.append(udp_datagram(moment, client, far, port, 123, request, "ntp"))
                received = moment + float(self.random.uniform(0.0002, 0.002))
                answer = ntp_packet(
                    4, int(ntp["stratum"]), log2, -23, pool_id, last_sync, moment, received, received + 0.00003,
                    root_delay=0.0142, root_dispersion=0.0315,
                )  # fmt: skip
                blocks.append(udp_datagram(received + 0.00003, far, client, 123, port, answer, "ntp"))
        if self.pool is not None:
            for moment in periodic(start, end, self.context.start, upstream_period, self.upstream_offset).tolist():
                near, pool = self.context.endpoints(server, self.pool)
                request = ntp_packet(
                    3, int(ntp["stratum"]), 10, -23, pool_id, moment - upstream_period, 0.0, 0.0, moment
                )
                blocks.append(udp_datagram(moment, near, pool, 123, 123, request, "ntp"))
                received = moment + float(self.random.uniform(0.008, 0.02))
                answer = ntp_packet(
                    4, 2, 10, -25, ipaddress.IPv4Address(ntp["pool_reference_id"]).packed, moment - 37.0, moment,
                    received - 0.004, received - 0.00397, root_delay=0.0031, root_dispersion=0.0009,
                )  # fmt: skip
                blocks.append(udp_datagram(received, pool, near, 123, 123, answer, "ntp"))
        return blocks

    # -- SNMP ---------------------------------------------------------------------------------------------

    def _snmp_window(self, start: float, end: float) -> list[FrameBlock]:
        if self.poller is None:
            return []
        snmp = self.data["snmp"]
        period = float(snmp["period_seconds"])
        local = self.model.local_time(self.context.start)
        midnight = dt.datetime.combine(local.date(), dt.time(0), self.model.timezone).timestamp()
        blocks: list[FrameBlock] = []
        for cycle in periodic(start - 30, end, midnight, period, 2.0).tolist():  # cron */5 plus start-up delay
            for number, device in enumerate(self.snmp_targets):
                moment = cycle + number * 0.35
                if start <= moment < end:
                    blocks += self._snmp_poll(device, moment, str(snmp["community"]), int(snmp["interfaces"]))
        return blocks

    def _snmp_poll(self, device: Device, moment: float, community: str, interfaces: int) -> list[FrameBlock]:
        assert self.poller is not None
        snmp = self.data["snmp"]
        poller, agent = self.context.endpoints(self.poller, device)
        port = self.ports.take()
        uptime = int((moment - self.boot[device.name]) * 100) % (1 << 32)
        if device.role == "camera":
            description = str(snmp["camera_descriptions"].get(device.maker, "{model}")).format(
                model=device.model, firmware=device.firmware
            )
        else:
            description = system_description(device)
        object_id = snmp["sys_object_ids"].get(device.maker, "1.3.6.1.4.1.8072.3.2.10")
        request_id = int(self.random.integers(1, 2**31))
        system = [SYS_DESCR, SYS_OBJECT_ID, SYS_UPTIME, SYS_NAME]
        null = b"\x05\x00"
        values = [
            ber(0x04, description.encode()),
            ber_oid(object_id),
            ber_integer(uptime, 0x43),
            ber(0x04, device.name.encode()),
        ]
        blocks: list[FrameBlock] = []
        now = moment
        for oids, answers in ((system, values), self._if_table(device, moment, interfaces)):
            ask = snmp_message(community, 0xA0, request_id, [(oid, null) for oid in oids])
            blocks.append(udp_datagram(now, poller, agent, port, 161, ask, "snmp"))
            now += float(self.random.uniform(0.001, 0.008))
            answer = snmp_message(community, 0xA2, request_id, list(zip(oids, answers, strict=True)))
            blocks.append(udp_datagram(now, agent, poller, 161, port, answer, "snmp"))
            now += 0.002
            request_id += 1
        return blocks

    def _if_table(self, device: Device, moment: float, interfaces: int) -> tuple[list[str], list[bytes]]:
        names = self.data["snmp"]["interface_names"]
        labels = names.get(device.maker, names["default"])
        oids: list[str] = []
        values: list[bytes] = []
        elapsed = moment - self.boot[device.name]
        for index in range(1, interfaces + 1):
            label = labels[(index - 1) % len(labels)]
            rate = (250_000 if device.role == "camera" else 4_000_000) / index
            up = index != interfaces or device.role != "camera"
            for column, number in IF_COLUMNS.items():
                oids.append(f"1.3.6.1.2.1.2.2.1.{number}.{index}")
                if column == "ifDescr":
                    values.append(ber(0x04, label.encode()))
                elif column == "ifOperStatus":
                    values.append(ber_integer(1 if up else 2))
                else:
                    factor = 0.08 if column == "ifInOctets" and device.role == "camera" else 1.0
                    values.append(ber_integer(int(elapsed * rate * factor * up) % (1 << 32), 0x41))
        return oids, values

    # -- the window ---------------------------------------------------------------------------------------

    def window(self, start: float, end: float) -> list[FrameBlock]:
        blocks = self._arp_window(start, end) + self._lldp_window(start, end)
        for moment, kind, laptop in self.dhcp_events:
            if start <= moment < end:
                blocks += self._dhcp_exchange(moment, kind, laptop)
        blocks += self._dns_window(start, end) + self._ntp_window(start, end) + self._snmp_window(start, end)
        return merge(blocks)

    def policy(self) -> dict[str, list[dict[str, Any]]]:
        conduits: list[dict[str, Any]] = []
        server = self.dns_server
        if server is None:
            return {}
        for protocol, port, clients in (
            ("dns", 53, [device for device, _, _ in self.dns_clients]),
            ("ntp", 123, [device for device, _, _ in self.ntp_clients]),
        ):
            for zone in sorted({device.zone for device in clients} - {server.zone}):
                conduits.append(
                    {
                        "name": f"{zone}-{protocol}",
                        "from": zone,
                        "to": server.zone,
                        "protocol": protocol,
                        "ports": [port],
                        "initiator": "from",
                        "description": f"{zone} uses {server.name} for {protocol.upper()}",
                    }
                )
        if self.poller is not None:
            for zone in sorted({device.zone for device in self.snmp_targets} - {self.poller.zone}):
                conduits.append(
                    {
                        "name": f"nms-to-{zone}",
                        "from": self.poller.zone,
                        "to": zone,
                        "protocol": "snmp",
                        "ports": [161],
                        "initiator": "from",
                        "description": f"the OT NMS on {self.poller.name} polls {zone} over SNMP v2c (read-only)",
                    }
                )
        sections: dict[str, list[dict[str, Any]]] = {"conduits": conduits}
        if self.pool is not None:
            conduits.append(
                {
                    "name": f"{server.zone}-ntp-out",
                    "from": server.zone,
                    "to": "external",
                    "protocol": "ntp",
                    "ports": [123],
                    "initiator": "from",
                    "description": f"{server.name} follows the public NTP pool",
                }
            )
            sections["external_destinations"] = [
                {
                    "name": "ntp-pool",
                    "reason": f"time source of {server.name}",
                    "cidrs": [f"{self.pool.ip}/32"],
                    "domains": [self.pool.domain] if self.pool.domain else [],
                    "zones": [server.zone],
                }
            ]
        return sections


def dns_lookup(
    context: SimulationContext,
    random: np.random.Generator,
    client: Device,
    server: Device,
    moment: float,
    name: str,
    addresses: list[str],
    ttl: int,
    authoritative: bool,
) -> list[FrameBlock]:
    """A resolver query for ``name`` and its answer, from a random source port with a random id."""
    near, far = context.endpoints(client, server)
    identifier = int(random.integers(0, 65536))
    port = int(random.integers(49152, 65536))
    query = udp_datagram(moment, near, far, port, 53, dns_query(identifier, name), "dns")
    answered = moment + float(random.uniform(0.0003, 0.002 if authoritative else 0.03))
    answer = udp_datagram(
        answered, far, near, 53, port, dns_answer(identifier, name, addresses, ttl, authoritative), "dns"
    )
    return [query, answer]
