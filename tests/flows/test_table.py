"""Flow semantics: one record per conversation whichever side speaks first."""

from __future__ import annotations

from pathlib import Path

import dpkt
import pytest

from quaywatch.analysis import Analyzer
from quaywatch.store.database import Store
from tests.factories import icmp_frame, tcp_frame, udp_frame, write_pcap

SYN, ACK, FIN, RST, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH


def analyse(tmp_path: Path, frames: list[tuple[float, bytes]]) -> list[dict[str, object]]:
    capture = write_pcap(tmp_path / "flows.pcap", frames)
    store = Store(tmp_path / "flows.duckdb")
    try:
        Analyzer(store, decoders=[]).analyze(capture)
        cursor = store.connection.execute("SELECT * FROM flows ORDER BY ts, client_port")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        store.close()


def handshake(client: str, server: str, port: int, start: float, close: bool = True) -> list[tuple[float, bytes]]:
    frames = [
        (start, tcp_frame(client, server, port, 502, SYN, sequence=100)),
        (start + 0.001, tcp_frame(server, client, 502, port, SYN | ACK, sequence=900, acknowledgement=101)),
        (start + 0.002, tcp_frame(client, server, port, 502, ACK, sequence=101, acknowledgement=901)),
        (
            start + 0.003,
            tcp_frame(
                client, server, port, 502, PSH | ACK, b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\x01", 101, 901
            ),
        ),
        (
            start + 0.004,
            tcp_frame(server, client, 502, port, PSH | ACK, b"\x00\x01\x00\x00\x00\x05\x01\x03\x02\x00\x2a", 901, 113),
        ),
    ]
    if close:
        frames += [
            (start + 0.005, tcp_frame(client, server, port, 502, FIN | ACK, sequence=113, acknowledgement=912)),
            (start + 0.006, tcp_frame(server, client, 502, port, FIN | ACK, sequence=912, acknowledgement=114)),
            (start + 0.007, tcp_frame(client, server, port, 502, ACK, sequence=114, acknowledgement=913)),
        ]
    return frames


def test_full_tcp_connection_is_one_flow_with_zeek_state(tmp_path: Path) -> None:
    (flow,) = analyse(tmp_path, handshake("10.10.1.20", "10.10.1.10", 40000, 1_700_000_000.0))
    assert (flow["client_ip"], flow["client_port"], flow["server_ip"], flow["server_port"]) == (
        "10.10.1.20", 40000, "10.10.1.10", 502,
    )  # fmt: skip
    assert (flow["packets_to_server"], flow["packets_to_client"]) == (5, 3)
    assert (flow["payload_bytes_to_server"], flow["payload_bytes_to_client"]) == (12, 11)
    assert flow["state"] == "SF"
    assert flow["tcp_flags_to_server"] == "SAPF"
    assert flow["community_id"].startswith("1:")
    assert flow["duration"] == pytest.approx(0.007)


def test_server_speaking_first_is_still_the_server(tmp_path: Path) -> None:
    """A capture that starts with the SYN-ACK (SPAN started late) keeps the PLC as server."""
    frames = handshake("10.10.1.20", "10.10.1.10", 40001, 1_700_000_000.0)[1:]
    (flow,) = analyse(tmp_path, frames)
    assert flow["server_ip"] == "10.10.1.10" and flow["server_port"] == 502


def test_mid_stream_low_port_side_is_server(tmp_path: Path) -> None:
    frames = [(1.0, tcp_frame("10.0.0.1", "10.0.0.2", 102, 50000, PSH | ACK, b"x"))]
    (flow,) = analyse(tmp_path, frames)
    assert (flow["client_ip"], flow["server_port"]) == ("10.0.0.2", 102)
    assert flow["state"] == "OTH"


def test_idle_timeout_splits_and_port_reuse_splits(tmp_path: Path) -> None:
    frames = [(1.0, udp_frame("10.0.0.5", "10.0.0.6", 123, 123, b"n" * 48))]
    frames.append((30.0, udp_frame("10.0.0.6", "10.0.0.5", 123, 123, b"n" * 48)))  # same flow, reply
    frames.append((200.0, udp_frame("10.0.0.5", "10.0.0.6", 123, 123, b"n" * 48)))  # > 60 s idle: new flow
    frames += handshake("10.10.1.20", "10.10.1.10", 40002, 300.0)
    frames += handshake("10.10.1.20", "10.10.1.10", 40002, 301.0)  # same ports reused after FIN
    flows = analyse(tmp_path, frames)
    udp = [f for f in flows if f["transport"] == "udp"]
    tcp = [f for f in flows if f["transport"] == "tcp"]
    assert [(f["packets_to_server"], f["packets_to_client"]) for f in udp] == [(1, 1), (1, 0)]
    assert udp[0]["end_reason"] == "idle"
    assert len(tcp) == 2 and tcp[0]["end_reason"] == "port_reuse"
    assert len({f["flow_id"] for f in flows}) == len(flows)
    assert tcp[0]["community_id"] == tcp[1]["community_id"]


def test_icmp_echo_request_and_reply_share_a_flow(tmp_path: Path) -> None:
    frames = [(1.0, icmp_frame("10.0.0.1", "10.0.0.2", 8)), (1.1, icmp_frame("10.0.0.2", "10.0.0.1", 0))]
    (flow,) = analyse(tmp_path, frames)
    assert (flow["transport"], flow["client_ip"], flow["packets_to_server"], flow["packets_to_client"]) == (
        "icmp", "10.0.0.1", 1, 1,
    )  # fmt: skip


def test_ipv6_and_vlan_are_part_of_the_key(tmp_path: Path) -> None:
    frames = [
        (1.0, tcp_frame("fd00::1", "fd00::2", 40000, 443, SYN)),
        (1.1, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 443, SYN, vlan=10)),
        (1.2, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 443, SYN, vlan=20)),
    ]
    flows = analyse(tmp_path, frames)
    assert [(f["client_ip"], f["vlan"]) for f in flows] == [("fd00::1", None), ("10.0.0.1", 10), ("10.0.0.1", 20)]
    assert all(f["state"] == "S0" for f in flows)


def test_rejected_connection(tmp_path: Path) -> None:
    frames = [
        (1.0, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 23, SYN)),
        (1.1, tcp_frame("10.0.0.2", "10.0.0.1", 23, 40000, RST | ACK)),
    ]
    (flow,) = analyse(tmp_path, frames)
    assert flow["state"] == "REJ"


def test_flow_ids_are_stable_across_runs(tmp_path: Path) -> None:
    frames = handshake("10.10.1.20", "10.10.1.10", 40003, 5.0)
    first = analyse(tmp_path, frames)
    (tmp_path / "flows.duckdb").unlink()
    second = analyse(tmp_path, frames)
    assert [f["flow_id"] for f in first] == [f["flow_id"] for f in second]


def test_many_flows_grow_the_table_and_batches_do_not_change_results(tmp_path: Path) -> None:
    """More flows than the initial table size, read with tiny buffers, equal one big read."""
    frames = []
    for number in range(20_000):
        frames.append(
            (
                10.0 + number * 0.001,
                udp_frame("10.1.0.1", f"10.2.{number // 250}.{number % 250}", 5000 + number % 1000, 53, b"q"),
            )
        )
    capture = write_pcap(tmp_path / "many.pcap", frames)
    results = []
    for buffer_bytes in (1 << 12, 16 << 20):
        store = Store(tmp_path / f"many-{buffer_bytes}.duckdb")
        Analyzer(store, decoders=[], buffer_bytes=buffer_bytes).analyze(capture)
        results.append(store.connection.execute("SELECT flow_id, packets_to_server FROM flows ORDER BY 1").fetchall())
        store.close()
    assert len(results[0]) == 20_000
    assert results[0] == results[1]
