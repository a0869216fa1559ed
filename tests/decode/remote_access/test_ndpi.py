"""The remote_access table against nDPI's per-flow classification (ndpi/tests/cfgs/default/result/*.out).

Recall: every flow nDPI identifies by content (Confidence: DPI) as TeamViewer, AnyDesk, OpenVPN, WireGuard,
IPsec/IKE, PPTP, GTP, RDP or VNC must have its remote_access row. nDPI lists the inner flows of a GTP tunnel as
``GTP:<inner protocol>``; we see the outer GTP-U flow, so such a flow counts as found when the capture has a
gtp_u row. nDPI's "Match by port" classifications are guesses, not identifications (gtp_false_positive.pcapng
is nDPI's own sample of UDP 2123 traffic that is not GTP), and are not required.
False positives: remote_access rows on flows nDPI classifies as something else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quaywatch.decode.gtp import GtpDecoder
from quaywatch.decode.ike import IkeDecoder
from quaywatch.decode.openvpn import OpenvpnTcpDecoder, OpenvpnUdpDecoder
from quaywatch.decode.pptp import PptpDecoder
from quaywatch.decode.rdp import RdpDecoder
from quaywatch.decode.teamviewer import TeamviewerTcpDecoder, TeamviewerUdpDecoder
from quaywatch.decode.vnc import VncDecoder
from quaywatch.decode.wireguard import WireguardDecoder
from tests.decode.oracles import RESEARCH
from tests.decode.remote_access.common import analyse

NDPI = RESEARCH / "ndpi/tests/cfgs/default"
WANTED = re.compile(r"\b(TeamViewer|AnyDesk|OpenVPN|WireGuard|IPSec|IPsec|IKE|PPTP|GTP|RDP|VNC)\b")
FLOW = re.compile(r"^\t\d+\t(\w+) \[?([0-9a-f.:]+?)\]?:(\d+) <?-> \[?([0-9a-f.:]+?)\]?:(\d+) .*?\[proto: ([^\]]+)\]")


def decoders() -> list:  # type: ignore[type-arg]
    return [
        RdpDecoder(),
        VncDecoder(),
        PptpDecoder(),
        GtpDecoder(),
        IkeDecoder(),
        WireguardDecoder(),
        OpenvpnUdpDecoder(),
        OpenvpnTcpDecoder(),
        TeamviewerTcpDecoder(),
        TeamviewerUdpDecoder(),
    ]


def flows(result: Path) -> list[tuple[frozenset[tuple[str, int]], str, bool]]:
    out = []
    for line in result.read_text().splitlines():
        match = FLOW.match(line)
        if match:
            ends = frozenset({(match[2], int(match[3])), (match[4], int(match[5]))})
            out.append((ends, match[6], "[Confidence: DPI]" in line))
    return out


def test_ndpi_recall_and_false_positives(tmp_path: Path) -> None:
    captures = sorted((NDPI / "pcap").glob("*.pcap*")) if NDPI.exists() else []
    if not captures:
        pytest.skip(f"research data missing: {NDPI / 'pcap'}")
    expected = found = rows = false_positives = 0
    misses: list[str] = []
    for capture in captures:
        result = NDPI / "result" / f"{capture.name}.out"
        if not result.exists():
            continue
        listed = flows(result)
        ours = analyse(tmp_path, capture, decoders())["remote_access"]
        ours_ends = {
            frozenset({(str(r["client_ip"]), int(r["client_port"])), (str(r["server_ip"]), int(r["server_port"]))}): r
            for r in ours  # type: ignore[call-overload]
        }
        for ends, proto, dpi in listed:
            if not (WANTED.search(proto) and dpi):
                continue
            expected += 1
            tunnelled = proto.startswith("GTP:")
            if (tunnelled and any(r["method"] == "gtp_u" for r in ours)) or ends in ours_ends:
                found += 1
            else:
                misses.append(f"{capture.name}: {proto} {sorted(ends)}")
        unrelated = {ends for ends, proto, _ in listed if not WANTED.search(proto)}
        rows += len(ours)
        false_positives += sum(1 for ends in ours_ends if ends in unrelated)
    print(
        f"nDPI: {found}/{expected} remote-access flows found; {false_positives} of {rows} remote_access rows on "
        f"flows nDPI classifies as unrelated, over {len(captures)} captures"
    )
    assert not misses or found / expected >= 0.95, misses
    assert false_positives == 0
