"""Every capture under ../shared/research-data against tshark: packet counts, 5-tuples, per-flow counts.

tshark (Debian package, installed by ``make system-packages``) is the oracle. For each capture we
compare the total packet count, and for TCP, UDP and SCTP the set of 5-tuples with their packet and
frame-byte counts in each direction. VLAN tags are ignored (tshark's conversations ignore them too)
and quaywatch's flows are summed per 5-tuple, because quaywatch splits a 5-tuple into several flows
on inactivity and port reuse as Zeek does.

Differences that are by design, each counted and printed:

* fragmented datagrams: tshark counts a reassembled datagram once, on the frame that completes it,
  with that frame's length; quaywatch counts it once with the bytes of every fragment on the wire.
  Packets are compared, bytes are not.
* transport headers cut short by the snap length or damaged: tshark may still print ports from a
  partial header; quaywatch does not trust them and counts the packet as malformed.
* tunnels and ICMP errors: both sides use the outer header (tshark's first value of a repeated
  field), so UDP tunnels compare on the outer 5-tuple and IP-in-IP, GRE and ICMP are not 5-tuples.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.ingest.capture import detect_format
from quaywatch.store.database import Store

RESEARCH = Path(__file__).resolve().parents[2].parent / "shared" / "research-data"
FIELDS = [
    "frame.len", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.proto", "ipv6.nxt",
    "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "sctp.srcport", "sctp.dstport",
    "ip.frag_offset", "ip.flags.mf", "ipv6.fraghdr.offset", "_ws.malformed", "_ws.expert.message",
    "frame.protocols",
]  # fmt: skip
TRANSPORT_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}

pytestmark = pytest.mark.oracle


@dataclass
class Comparison:
    path: Path
    packets_ours: int = 0
    packets_tshark: int = 0
    tuples_compared: int = 0
    tuples_exact: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    disagreements: list[str] = field(default_factory=list)


def captures() -> list[Path]:
    if not RESEARCH.exists():
        pytest.skip(f"research data not found at {RESEARCH}")
    seen: set[str] = set()
    unique = []
    for path in sorted(p for p in RESEARCH.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            if detect_format(handle.read(4)) is None:
                continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append(path)
    return unique


def first(value: str) -> str:
    return value.split(",")[0] if value else ""


def tshark_tuples(path: Path) -> tuple[int, dict[tuple[str, str, int, int, str], list[int]], set, set, bool]:
    """Frame count, per directed 5-tuple [packets, bytes], fragmented and cut tuples, and whether tshark erred."""
    command = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"]
    for name in FIELDS:
        command += ["-e", name]
    process = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    frames = 0
    tuples: dict[tuple[str, str, int, int, str], list[int]] = defaultdict(lambda: [0, 0])
    fragmented: set[tuple[str, str, int, int, str]] = set()
    cut: set[tuple[str, str, int, int, str]] = set()
    for line in process.stdout.splitlines():
        frames += 1
        values = dict(zip(FIELDS, line.split("\t"), strict=False))
        layers = values.get("frame.protocols", "").split(":")
        outer_ipv6 = "ipv6" in layers and ("ip" not in layers or layers.index("ipv6") < layers.index("ip"))
        family = "ipv6" if outer_ipv6 else "ip"
        source = first(values.get(f"{family}.src", ""))
        destination = first(values.get(f"{family}.dst", ""))
        if not source or family not in layers:
            continue
        # The layer carried directly by the outer IP header (IPv6 extension headers are skipped).
        following = [name for name in layers[layers.index(family) + 1 :] if not name.startswith("ipv6.")]
        transport = following[0] if following else ""
        if transport not in TRANSPORT_NAMES.values():
            continue
        source_port = first(values.get(f"{transport}.srcport", ""))
        destination_port = first(values.get(f"{transport}.dstport", ""))
        if not source_port or not destination_port:
            continue  # a fragment that does not carry the transport header
        key = (source, destination, int(source_port), int(destination_port), transport)
        entry = tuples[key]
        entry[0] += 1
        entry[1] += int(first(values["frame.len"]))
        if first(values.get("ip.frag_offset", "")) not in ("", "0") or first(
            values.get("ipv6.fraghdr.offset", "")
        ) not in ("", "0"):
            fragmented.add(key)
        if values.get("_ws.malformed") or "truncated" in values.get("_ws.expert.message", "").lower():
            cut.add(key)
    return frames, tuples, fragmented, cut, process.returncode != 0


@pytest.fixture(scope="module")
def comparisons(tmp_path_factory: pytest.TempPathFactory) -> list[Comparison]:
    if shutil.which("tshark") is None:
        pytest.fail(
            "tshark is not installed: run `make system-packages` (Debian package tshark); the oracle is required"
        )
    paths = captures()
    store = Store(tmp_path_factory.mktemp("oracle") / "oracle.duckdb")
    analyzer = Analyzer(store, decoders=[])
    identities = {path: analyzer.analyze(path) for path in paths}
    with ThreadPoolExecutor(max_workers=2) as pool:
        oracle = dict(zip(paths, pool.map(tshark_tuples, paths), strict=True))
    results = []
    for path in paths:
        result = identities[path]
        comparison = Comparison(path, packets_ours=result.packets)
        frames, theirs, fragmented, cut, tshark_failed = oracle[path]
        comparison.packets_tshark = frames
        if result.fault and "unsupported link type" in result.fault:
            comparison.categories["link type quaywatch does not decode: refused with a fault naming it"] += 1
            results.append(comparison)
            continue
        if tshark_failed and frames == 0:
            comparison.categories["tshark cannot read the file"] += 1
            results.append(comparison)
            continue
        rows = store.connection.execute(
            """SELECT client_ip, server_ip, client_port, server_port, transport,
                      sum(packets_to_server), sum(bytes_to_server), sum(packets_to_client), sum(bytes_to_client)
               FROM flows WHERE capture_id = ? AND transport IN ('tcp', 'udp', 'sctp') GROUP BY ALL""",
            [result.capture_id],
        ).fetchall()
        ours: dict[tuple[str, str, int, int, str], list[int]] = defaultdict(lambda: [0, 0])
        for client, server, client_port, server_port, transport, p_out, b_out, p_in, b_in in rows:
            if p_out:
                entry = ours[(client, server, client_port, server_port, transport)]
                entry[0] += p_out
                entry[1] += b_out
            if p_in:
                entry = ours[(server, client, server_port, client_port, transport)]
                entry[0] += p_in
                entry[1] += b_in
        for key in sorted(set(ours) | set(theirs)):
            mine, other = ours.get(key), theirs.get(key)
            comparison.tuples_compared += 1
            if mine == other:
                comparison.tuples_exact += 1
            elif key in fragmented and mine is not None and other is not None and mine[0] == other[0]:
                comparison.tuples_exact += 1
                comparison.categories["fragmented datagram: packets equal, bytes counted on every fragment"] += 1
            elif key in cut and (mine is None or (other is not None and mine[0] < other[0])):
                comparison.tuples_exact += 1
                comparison.categories["transport header cut short: counted as malformed, not in a flow"] += 1
            else:
                comparison.disagreements.append(f"{key}: quaywatch {mine}, tshark {other}")
        results.append(comparison)
    store.close()
    return results


def test_every_capture_has_the_same_packet_count_as_tshark(comparisons: list[Comparison]) -> None:
    different = [
        f"{c.path.relative_to(RESEARCH)}: quaywatch {c.packets_ours}, tshark {c.packets_tshark}"
        for c in comparisons
        if c.packets_ours != c.packets_tshark and not c.categories
    ]
    readable = [c for c in comparisons if not c.categories["tshark cannot read the file"]]
    print(
        f"\n{len(readable)} of {len(comparisons)} captures read by tshark, "
        f"{len(different)} with different packet counts"
    )
    assert len(readable) >= 0.95 * len(comparisons), "tshark read too few captures: is the oracle working?"
    assert sum(c.packets_tshark for c in readable) > 100_000
    assert not different, "\n".join(different)


def test_five_tuples_and_per_direction_counts_equal_tshark(comparisons: list[Comparison]) -> None:
    compared = sum(c.tuples_compared for c in comparisons)
    exact = sum(c.tuples_exact for c in comparisons)
    categories: Counter[str] = Counter()
    for comparison in comparisons:
        categories.update(comparison.categories)
    print(f"\n5-tuples compared: {compared}, agreeing: {exact} ({100 * exact / max(compared, 1):.3f}%)")
    for name, count in categories.most_common():
        print(f"  {count:6d}  {name}")
    residual = [line for c in comparisons for line in c.disagreements]
    for line in residual[:40]:
        print("  differs:", line)
    assert exact / max(compared, 1) >= 0.999, f"{len(residual)} 5-tuples differ"
    strict = [c for c in comparisons if "icsnpp" in str(c.path) or "zeek-btest" in str(c.path)]
    strict_residual = [line for c in strict for line in c.disagreements]
    assert not strict_residual, "\n".join(strict_residual)
