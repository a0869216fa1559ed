"""The list of protocol decoders. Adding a protocol adds one line here."""

from __future__ import annotations

from quaywatch.decode.bacnet import BacnetDecoder
from quaywatch.decode.base import Decoder
from quaywatch.decode.cargo import CargoContent
from quaywatch.decode.cdp import CdpDecoder
from quaywatch.decode.dhcp import DhcpDecoder
from quaywatch.decode.dhcp.v6 import Dhcpv6Decoder
from quaywatch.decode.dnp3 import Dnp3TcpDecoder, Dnp3UdpDecoder
from quaywatch.decode.dns import DnsTcpDecoder, DnsUdpDecoder
from quaywatch.decode.enip import EnipTcpDecoder, EnipUdpDecoder
from quaywatch.decode.ftp import FtpDecoder
from quaywatch.decode.gtp import GtpDecoder
from quaywatch.decode.http import HttpDecoder
from quaywatch.decode.iec104 import Iec104Decoder
from quaywatch.decode.ike import IkeDecoder
from quaywatch.decode.lldp import LldpDecoder
from quaywatch.decode.modbus import ModbusDecoder
from quaywatch.decode.mqtt import MqttDecoder
from quaywatch.decode.ntp import NtpDecoder
from quaywatch.decode.opcua import OpcuaDecoder
from quaywatch.decode.openvpn import OpenvpnTcpDecoder, OpenvpnUdpDecoder
from quaywatch.decode.pptp import PptpDecoder
from quaywatch.decode.profinet_dcp import ProfinetDcpDecoder
from quaywatch.decode.rdp import RdpDecoder
from quaywatch.decode.rtsp import RtspDecoder
from quaywatch.decode.s7comm import S7Decoder
from quaywatch.decode.snmp import SnmpDecoder
from quaywatch.decode.ssh import SshDecoder
from quaywatch.decode.teamviewer import TeamviewerTcpDecoder, TeamviewerUdpDecoder
from quaywatch.decode.telnet import TelnetDecoder
from quaywatch.decode.tftp import TftpDecoder
from quaywatch.decode.tls import TlsDecoder
from quaywatch.decode.vnc import VncDecoder
from quaywatch.decode.wireguard import WireguardDecoder


def all_decoders() -> list[Decoder]:
    """Instances of every registered decoder, in probe order (most specific first)."""
    return [
        ModbusDecoder(),
        S7Decoder(),
        RdpDecoder(),
        VncDecoder(),
        PptpDecoder(),
        GtpDecoder(),
        IkeDecoder(),
        WireguardDecoder(),
        OpenvpnUdpDecoder(),
        OpenvpnTcpDecoder(),
        EnipTcpDecoder(),
        EnipUdpDecoder(),
        MqttDecoder(),
        Iec104Decoder(),
        OpcuaDecoder(),
        Dnp3TcpDecoder(),
        Dnp3UdpDecoder(),
        ProfinetDcpDecoder(),
        LldpDecoder(),
        CdpDecoder(),
        BacnetDecoder(),
        SnmpDecoder(),
        DhcpDecoder(),
        Dhcpv6Decoder(),
        DnsUdpDecoder(),
        DnsTcpDecoder(),
        TlsDecoder(),
        SshDecoder(),
        FtpDecoder(),
        RtspDecoder(),
        HttpDecoder(),
        TeamviewerTcpDecoder(),
        TeamviewerUdpDecoder(),
        TelnetDecoder(),
        NtpDecoder(),
        TftpDecoder(),
        CargoContent(),
    ]
