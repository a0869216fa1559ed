"""GTP decoder: Zeek's GTPv1 tunnel.log baselines and tshark's TEIDs, hand-built headers and fuzzing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction
from quaywatch.decode.gtp import TABLES, GtpDecoder, GtpSession, parse
from tests.decode.oracles import RESEARCH, read_log
from tests.decode.remote_access.common import analyse, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
ZEEK = RESEARCH / "zeek-btest/testing/btest"
CASES = {
    "different_dl_and_ul": "gtp2_different_udp_port.pcap",
    "inner_ipv6": "gtp7_ipv6.pcap",
    "opt_header": "gtp6_gtp_0x32.pcap",
    "outer_ip_frag": "gtp1_gn_normal_incl_fragmentation.pcap",
    "unknown_or_too_short": "gtp9_unknown_or_too_short_payload.pcap",
}


def test_zeek_tunnels_and_tshark_teids(tmp_path: Path) -> None:
    """Every GTPv1 tunnel Zeek's tunnel.log discovers has our gtp_u row, and our G-PDU TEIDs are tshark's."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.fail("tshark is missing: run `make system-packages`")
    tunnels = found = teids_compared = teids_agreed = 0
    for baseline, trace in CASES.items():
        log = ZEEK / f"Baseline/core.tunnels.gtp.{baseline}/tunnel.log"
        capture = require(ZEEK / "Traces/tunnels/gtp" / trace)
        theirs = {
            frozenset({(r["id.orig_h"], r["id.orig_p"]), (r["id.resp_h"], r["id.resp_p"])})
            for r in read_log(log)
            if r["action"] == "Tunnel::DISCOVER" and r["tunnel_type"] == "Tunnel::GTPv1"
        }
        tables = analyse(tmp_path, capture, [GtpDecoder()])
        ours = {
            frozenset({(r["client_ip"], str(r["client_port"])), (r["server_ip"], str(r["server_port"]))})
            for r in tables["remote_access"]
            if r["method"] == "gtp_u"
        }
        tunnels += len(theirs)
        found += len(theirs & ours)
        output = subprocess.run(
            [tshark, "-r", str(capture), "-Y", "gtp.message == 255", "-T", "fields", "-e", "gtp.teid"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        expected = {int(value.split(",")[0], 0) for value in output.split()}
        mine = {r["teid"] for r in tables["gtp"] if r["message_type"] == 255}
        teids_compared += len(expected)
        teids_agreed += len(expected & mine)
    print(
        f"Zeek tunnel.log: {found}/{tunnels} GTPv1 tunnels found; tshark G-PDU TEIDs: {teids_agreed}/{teids_compared}"
    )
    assert found == tunnels
    assert teids_agreed == teids_compared


def gpdu(inner: bytes, teid: int = 0x1234, flags: int = 0x30) -> bytes:
    return bytes([flags, 255]) + len(inner).to_bytes(2, "big") + teid.to_bytes(4, "big") + inner


INNER = bytes.fromhex("4500001c000000004011") + b"\x00\x00" + bytes([10, 0, 0, 1, 8, 8, 8, 8]) + bytes(8)


def test_gpdu_teid_and_inner_addresses() -> None:
    row = parse(gpdu(INNER), 2152)
    assert row is not None
    assert (row["method"], row["teid"], row["inner_source"], row["inner_destination"]) == (
        "gtp_u",
        0x1234,
        "10.0.0.1",
        "8.8.8.8",
    )
    events = GtpSession(2152).feed(gpdu(INNER), Direction.TO_SERVER, 0.0)
    (access,) = [e.fields for e in events if e.table == "remote_access"]
    assert (access["method"], access["tunnel_id"], access["inner_client_ip"]) == ("gtp_u", "00001234", "10.0.0.1")


def test_length_mismatch_is_not_gtp() -> None:
    assert parse(gpdu(INNER)[:-1], 2152) is None  # the length field names one byte more than the datagram has
    assert not GtpDecoder().probe(gpdu(INNER) + b"\x00", Direction.TO_SERVER, 2152)
    assert not GtpDecoder().probe(b"\x30\xff\x00", Direction.TO_SERVER, 2152)


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(datagrams=st.lists(st.binary(max_size=120), max_size=8), flags=st.integers(0, 255))
def test_random_datagrams_never_raise(datagrams: list[bytes], flags: int) -> None:
    session = GtpSession(2152)
    for index, data in enumerate(datagrams):
        framed = gpdu(data, flags=flags) if index % 2 else data
        for event in session.feed(framed, Direction(index % 2), float(index)):
            assert event.table in TABLES
