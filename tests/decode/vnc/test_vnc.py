"""VNC (RFB) decoder: Zeek's rfb.log baselines and suricata-verify's rfb cases through the real pipeline, one
byte at a time, fuzzing and a hand-built handshake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from quaywatch.decode.base import Direction
from quaywatch.decode.vnc import TABLES, VncDecoder, VncSession
from tests.decode.oracles import RESEARCH, Agreement, read_log, replay, tcp_streams
from tests.decode.remote_access.common import Record, analyse, require

EXAMPLES = int(os.environ.get("QUAYWATCH_FUZZ_EXAMPLES", "100"))
ZEEK = RESEARCH / "zeek-btest/testing/btest"
CASES = {
    "rfb-apple-remote-desktop": "vncmac.pcap",
    "vnc-mac-to-linux": "vnc-mac-to-linux.pcap",
    "vnc-scanner": "vnc-scanner.pcap",
}
FIELDS = (
    "client_major_version",
    "client_minor_version",
    "server_major_version",
    "server_minor_version",
    "authentication_method",
    "auth",
    "share_flag",
    "desktop_name",
    "width",
    "height",
)


def zeek_view(row: Record) -> dict[str, str | None]:
    def flag(value: object) -> str | None:
        return None if value is None else "T" if value else "F"

    client, server = str(row["client_version"]).split("."), str(row["server_version"]).split(".")
    return {
        "port": str(row["client_port"]),
        "client_major_version": client[0],
        "client_minor_version": client[1],
        "server_major_version": server[0],
        "server_minor_version": server[1],
        "authentication_method": row.get("authentication_method"),  # type: ignore[dict-item]
        "auth": flag(row.get("auth_success")),
        "share_flag": flag(row.get("share_flag")),
        "desktop_name": None
        if row.get("desktop_name") is None
        else "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 else c for c in str(row["desktop_name"])),
        "width": None if row.get("width") is None else str(row["width"]),
        "height": None if row.get("height") is None else str(row["height"]),
    }


def test_zeek_rfb_log(tmp_path: Path) -> None:
    """Zeek's TSV writer escapes non-printable bytes as \\xNN; ours are kept as received and escaped the same
    way for the comparison."""
    agreement = Agreement(FIELDS)
    for baseline, trace in CASES.items():
        theirs = read_log(ZEEK / f"Baseline/scripts.base.protocols.rfb.{baseline}/rfb.log")
        for row in theirs:
            row["port"] = row["id.orig_p"]
        ours = [zeek_view(r) for r in analyse(tmp_path, ZEEK / "Traces/rfb" / trace, [VncDecoder()])["vnc"]]
        agreement.score(ours, theirs, key=lambda r: r["port"])
    print(agreement.report("Zeek rfb.log"))
    assert agreement.unmatched_ours == agreement.unmatched_theirs == 0
    for name in FIELDS:
        assert agreement.ratio(name) >= 0.99, name


SURICATA = {
    "rfb.server_protocol_version.major": lambda r: str(r["server_version"])[:3],
    "rfb.server_protocol_version.minor": lambda r: str(r["server_version"])[4:],
    "rfb.client_protocol_version.major": lambda r: str(r["client_version"])[:3],
    "rfb.client_protocol_version.minor": lambda r: str(r["client_version"])[4:],
    "rfb.authentication.security_type": lambda r: r["security_type"],
    "rfb.authentication.security_result": lambda r: "OK" if r["auth_success"] else "FAIL",
    "rfb.screen_shared": lambda r: r["share_flag"],
    "rfb.framebuffer.width": lambda r: r["width"],
    "rfb.framebuffer.height": lambda r: r["height"],
    "rfb.framebuffer.name": lambda r: r["desktop_name"],
    "rfb.server_security_failure_reason": lambda r: r["failure_reason"],
    **{
        f"rfb.framebuffer.pixel_format.{name}": (lambda n: lambda r: r[n])(name)
        for name in ("bits_per_pixel", "depth", "big_endian", "true_color", "red_max", "green_max", "blue_max")
    },
    **{
        f"rfb.framebuffer.pixel_format.{name}": (lambda n: lambda r: r[n])(name)
        for name in ("red_shift", "green_shift", "blue_shift")
    },
}


@pytest.mark.parametrize("case", ["rfb-protocol-3.3", "rfb-protocol-3.7", "rfb-protocol-3.8", "rfb-failure"])
def test_suricata_verify_rfb(tmp_path: Path, case: str) -> None:
    """Every eve rfb field we have; the VNC challenge and response are deliberately never stored."""
    directory = RESEARCH / "suricata-verify/tests" / case
    spec = yaml.safe_load(require(directory / "test.yaml").read_text())
    capture = (directory / spec["pcap"]).resolve() if "pcap" in spec else next(directory.glob("*.pcap"))
    (row,) = analyse(tmp_path, capture, [VncDecoder()])["vnc"]
    compared = agreed = 0
    for check in spec["checks"]:
        match = check["filter"]["match"]
        if match.get("event_type") != "rfb":
            continue
        for key, value in match.items():
            if key in SURICATA:
                compared += 1
                ours = SURICATA[key](row)
                agreed += ours == (value.replace("\\\\", "\\") if isinstance(value, str) else value)
    print(f"suricata-verify {case}: {agreed}/{compared} eve fields agree")
    assert compared and agreed == compared


def test_one_byte_at_a_time_equals_whole() -> None:
    for trace in CASES.values():
        capture = require(ZEEK / "Traces/rfb" / trace)
        for port in (5900, 5901):
            for stream in tcp_streams(capture, port):
                assert replay(VncSession(), stream, one_byte=True) == replay(VncSession(), stream, one_byte=False)


def test_hand_built_handshake_and_remote_access_row() -> None:
    session = VncSession()
    assert VncDecoder().probe(b"RFB 003.008\n", Direction.TO_CLIENT, 6000)
    assert not VncDecoder().probe(b"RFB 3.8\n", Direction.TO_CLIENT, 5900)
    steps = [
        (Direction.TO_CLIENT, b"RFB 003.008\n"),
        (Direction.TO_SERVER, b"RFB 003.008\n"),
        (Direction.TO_CLIENT, b"\x02\x01\x02"),
        (Direction.TO_SERVER, b"\x01"),
        (Direction.TO_CLIENT, b"\x00\x00\x00\x00"),
        (Direction.TO_SERVER, b"\x01"),
        (Direction.TO_CLIENT, b"\x04\x00\x03\x00" + bytes(16) + b"\x00\x00\x00\x05crane"),
    ]
    events = [e for direction, data in steps for e in session.feed(data, direction, 0.0)]
    (vnc,) = [e.fields for e in events if e.table == "vnc"]
    (access,) = [e.fields for e in events if e.table == "remote_access"]
    assert vnc["security_types"] == [1, 2] and vnc["authentication_method"] == "None"
    assert (vnc["auth_success"], vnc["width"], vnc["height"], vnc["desktop_name"]) == (True, 1024, 768, "crane")
    assert (access["method"], access["version"], access["server_software"]) == ("vnc", "RFB 003.008", "crane")


def test_bad_version_is_an_anomaly() -> None:
    session = VncSession()
    events = session.feed(b"RFB 003.008\n", Direction.TO_CLIENT, 0.0) + session.feed(
        b"HELLO WORLD!", Direction.TO_SERVER, 0.0
    )
    assert [e.fields["code"] for e in events if e.table == "anomaly"] == ["malformed"]


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None)
@given(chunks=st.lists(st.tuples(st.booleans(), st.binary(max_size=64)), max_size=10))
def test_random_streams_never_raise(chunks: list[tuple[bool, bytes]]) -> None:
    session = VncSession()
    session.feed(b"RFB 003.008\n", Direction.TO_CLIENT, 0.0)
    session.feed(b"RFB 003.008\n", Direction.TO_SERVER, 0.0)
    for index, (to_client, data) in enumerate(chunks):
        for event in session.feed(data, Direction(int(to_client)), float(index)):
            assert event.table in (*TABLES, "anomaly")
    session.close()
