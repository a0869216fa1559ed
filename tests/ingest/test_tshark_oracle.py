"""Every capture under ../shared/research-data against tshark, the oracle.

For each capture (any file with a pcap, pcapng or gzip magic, or named like a capture) tshark runs
once, with TCP reassembly and sequence analysis off, and prints per frame its length, its protocol
stack and its IP, TCP, UDP and SCTP fields. From that we build tshark's 5-tuples ourselves and
compare them with quaywatch's ``flows`` table, summed per 5-tuple (quaywatch splits a 5-tuple into
several flows on inactivity timeouts and port reuse, as Zeek does) and ignoring VLAN tags:

* the total packet count of every file tshark reads without error;
* the set of 5-tuples and, per 5-tuple, packets and frame bytes in each direction (so the sum of
  both directions too).

tshark's view is reduced to what quaywatch models, precisely and frame by frame; each rule is a
category counted and printed per file:

``icmp_error``
    ICMP or ICMPv6 error quoting a TCP/UDP header: tshark reports the quoted ports as a second
    layer. The frame's transport is ICMP (quaywatch counts it in an ICMP flow), so it is left out of
    tshark's TCP/UDP counts.
``ip_tunnel``
    IP-in-IP, GRE and other tunnels carried directly by IP: tshark reports the inner 5-tuple;
    quaywatch keeps one flow of the outer header (IP protocol 4, 41, 47...). Inner 5-tuples are
    left out.
``udp_tunnel``
    Tunnels inside UDP (GTP-U, Teredo, VXLAN...): both sides count the outer 5-tuple (tshark's
    first occurrence of each field is the outer header). Compared as is.
``reassembled``
    A frame completing a fragmented outer IP datagram: tshark shows the transport on it alone;
    quaywatch counts the datagram once there, with the frame bytes of all its fragments. Compared
    exactly, the bytes being summed over tshark's own fragment list (``ip.fragment``).
``fragment``
    An outer IP fragment that does not complete a datagram: no 5-tuple on either side.
``tshark_malformed``
    tshark flags a deeper layer of a 5-tuple frame as malformed: compared as is.
``quaywatch_malformed`` (excluded)
    tshark reads ports where quaywatch found the link, IP or transport header cut short or invalid
    and counted the packet as malformed (``anomaly`` table, by packet number): removed from tshark's
    counts.
``unsupported_link_type`` (excluded)
    quaywatch refuses the link type with a fault naming it; tshark's frames of that file are not
    compared.

Then at least 99.9 % of all 5-tuples must agree exactly, and every 5-tuple of the ICSNPP and
zeek-btest captures. The table printed (``pytest -s`` or ``-rA``) shows the figures per file and
corpus and each residual difference with its likely reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer, CaptureResult
from quaywatch.ingest.capture import detect_format
from quaywatch.store.database import Store

RESEARCH = Path(__file__).parents[2].parent / "shared" / "research-data"
if not RESEARCH.is_dir():
    pytest.skip(
        f"research data not found at {RESEARCH}: the tshark oracle compares against ../shared/research-data",
        allow_module_level=True,
    )

pytestmark = pytest.mark.oracle

STRICT_SOURCES = ("icsnpp-", "zeek-btest")
CAPTURE_SUFFIXES = {".pcap", ".pcapng", ".cap", ".ntar", ".dmp", ".erf", ".snoop"}
TRANSPORTS = ("tcp", "udp", "sctp")
TSHARK_FIELDS = [
    "frame.number", "frame.len", "frame.protocols",
    "ip.src", "ip.dst", "ip.flags.mf", "ip.frag_offset", "ip.fragment", "ip.fragment.count",
    "ipv6.src", "ipv6.dst", "ipv6.fraghdr.offset", "ipv6.fraghdr.more", "ipv6.fragment", "ipv6.fragment.count",
    "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "sctp.srcport", "sctp.dstport",
    "_ws.malformed",
]  # fmt: skip
TSHARK_OPTIONS = ["-o", "tcp.desegment_tcp_streams:FALSE", "-o", "tcp.analyze_sequence_numbers:FALSE"]
TSHARK_TIMEOUT = 600

CATEGORY_NOTES = {
    "icmp_error": "ICMP error quoting TCP/UDP: not in tshark's TCP/UDP counts (quaywatch: ICMP flow)",
    "ip_tunnel": "IP-in-IP/GRE tunnel: tshark's inner 5-tuple left out (quaywatch: outer flow)",
    "udp_tunnel": "tunnel in UDP: compared on the outer 5-tuple",
    "reassembled": "frame completing a fragmented datagram: bytes summed over ip.fragment, compared",
    "fragment": "fragment not completing a datagram: no 5-tuple on either side",
    "tshark_malformed": "deeper layer malformed for tshark: compared as is",
    "quaywatch_malformed": "EXCLUDED: quaywatch found the header cut short/invalid (anomaly table)",
    "unsupported_link_type": "EXCLUDED: link type quaywatch refuses with a fault naming it",
}

DirectedKey = tuple[str, str, int, int, str]  # source, destination, source port, destination port, transport


@dataclass
class FileReport:
    path: str  # relative to RESEARCH
    sources: list[str]  # every corpus holding an identical copy
    tshark_frames: int = 0
    tshark_error: str = ""
    packets: int = 0
    status: str = ""
    fault: str = ""
    compared: int = 0
    exact: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    disagreements: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    @property
    def strict(self) -> bool:
        return any(source.startswith(STRICT_SOURCES) for source in self.sources)

    @property
    def unsupported_link_type(self) -> bool:
        return "unsupported link type" in self.fault


@dataclass
class TsharkView:
    frames: int = 0
    error: str = ""
    tuples: dict[DirectedKey, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    frame_keys: dict[int, tuple[DirectedKey, int]] = field(default_factory=dict)  # frame -> (key, bytes)
    categories: Counter[str] = field(default_factory=Counter)


# -- discovery -------------------------------------------------------------------------------------


def discover() -> list[list[Path]]:
    """Captures under RESEARCH, grouped by content (identical copies in several corpora are run once)."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(p for p in RESEARCH.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            head = handle.read(4)
        named = path.suffix.lower() in CAPTURE_SUFFIXES or (path.suffix.lower() == ".gz" and ".pcap" in path.name)
        if detect_format(head) is None and not named:
            continue
        groups.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
    return list(groups.values())


# -- tshark's side ---------------------------------------------------------------------------------


def first(value: str) -> str:
    return value.split(",", 1)[0]


def run_tshark(path: Path) -> TsharkView:
    command = ["tshark", "-n", "-r", str(path), *TSHARK_OPTIONS, "-T", "fields", "-E", "separator=/t"]
    command += ["-E", "occurrence=a"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    process = subprocess.run(
        command, capture_output=True, text=True, errors="replace", check=False, timeout=TSHARK_TIMEOUT
    )
    view = TsharkView()
    if process.returncode != 0:
        lines = [line for line in process.stderr.splitlines() if line and not line.startswith("Running as user")]
        view.error = " ".join(lines)[-300:] or f"exit code {process.returncode}"
    lengths: dict[int, int] = {}
    for line in process.stdout.splitlines():
        values = dict(zip(TSHARK_FIELDS, line.split("\t"), strict=False))
        view.frames += 1
        number = int(values["frame.number"])
        lengths[number] = int(values["frame.len"])
        classify_frame(view, number, values, lengths)
    return view


def classify_frame(view: TsharkView, number: int, values: dict[str, str], lengths: dict[int, int]) -> None:
    """Add one frame to tshark's 5-tuples, as quaywatch models them, and count its category."""
    stack = values.get("frame.protocols", "").split(":")
    has_ports = any(values.get(f"{name}.srcport") for name in TRANSPORTS)
    outer = next((name for name in stack if name in ("ip", "ipv6")), None)
    if outer is None:
        return
    below = stack.index(outer) + 1
    carried = [name for name in stack[below:] if not name.startswith("ipv6.")]  # skip IPv6 extension headers
    transport = carried[0] if carried else ""
    if outer == "ip":
        outer_fragment = values.get("ip.flags.mf", "").startswith("1") or first(
            values.get("ip.frag_offset", "")
        ) not in ("", "0")
    else:
        extensions = stack[below : stack.index(transport, below)] if transport in stack[below:] else stack[below:]
        outer_fragment = "ipv6.fraghdr" in extensions
    if transport not in TRANSPORTS:
        if transport in ("icmp", "icmpv6") and has_ports:
            view.categories["icmp_error"] += 1
        elif has_ports:
            view.categories["ip_tunnel"] += 1
        elif outer_fragment:
            view.categories["fragment"] += 1
        return
    source_port, destination_port = values.get(f"{transport}.srcport", ""), values.get(f"{transport}.dstport", "")
    if not source_port or not destination_port:
        return  # tshark could not read the ports either
    size = lengths[number]
    fragments = values.get(f"{outer}.fragment", "")
    if outer_fragment and fragments:
        count = int(first(values.get(f"{outer}.fragment.count", "0")) or 0)
        numbers = [int(n) for n in fragments.split(",")][: count or None]
        size = sum(lengths.get(n, 0) for n in numbers)
        view.categories["reassembled"] += 1
    if sum(name in ("ip", "ipv6") for name in stack) > 1:
        view.categories["udp_tunnel"] += 1
    if values.get("_ws.malformed"):
        view.categories["tshark_malformed"] += 1
    key = (first(values[f"{outer}.src"]), first(values[f"{outer}.dst"]), int(first(source_port)),
           int(first(destination_port)), transport)  # fmt: skip
    entry = view.tuples[key]
    entry[0] += 1
    entry[1] += size
    view.frame_keys[number] = (key, size)


# -- quaywatch's side and the comparison -----------------------------------------------------------


def quaywatch_tuples(store: Store, capture_id: str) -> dict[DirectedKey, list[int]]:
    rows = store.connection.execute(
        """SELECT client_ip, server_ip, client_port, server_port, transport,
                  sum(packets_to_server), sum(bytes_to_server), sum(packets_to_client), sum(bytes_to_client)
           FROM flows WHERE capture_id = ? AND transport IN ('tcp', 'udp', 'sctp') GROUP BY ALL""",
        [capture_id],
    ).fetchall()
    ours: dict[DirectedKey, list[int]] = defaultdict(lambda: [0, 0])
    for client, server, client_port, server_port, transport, p_out, b_out, p_in, b_in in rows:
        for key, packets, size in (
            ((client, server, client_port, server_port, transport), p_out, b_out),
            ((server, client, server_port, client_port, transport), p_in, b_in),
        ):
            if packets:
                ours[key][0] += int(packets)
                ours[key][1] += int(size)
    return ours


def malformed_packets(store: Store, capture_id: str) -> dict[int, str]:
    rows = store.connection.execute(
        "SELECT packet_number, detail FROM anomaly WHERE capture_id = ? AND code LIKE 'malformed%'", [capture_id]
    ).fetchall()
    return {int(number): str(detail) for number, detail in rows}


def undirected(key: DirectedKey) -> tuple[tuple[str, int], tuple[str, int], str]:
    a, b = (key[0], key[2]), (key[1], key[3])
    return (min(a, b), max(a, b), key[4])


def compare(report: FileReport, view: TsharkView, result: CaptureResult, store: Store) -> None:
    report.tshark_frames, report.tshark_error = view.frames, view.error
    report.packets, report.status, report.fault = result.packets, result.status, result.fault or ""
    categories = Counter(view.categories)
    theirs = {key: list(value) for key, value in view.tuples.items()}
    if report.unsupported_link_type:
        categories["unsupported_link_type"] += sum(v[0] for v in theirs.values())
        report.excluded += [f"{key}: {value} (link type refused)" for key, value in theirs.items()]
        theirs = {}
    for number, detail in malformed_packets(store, result.capture_id).items():
        if number in view.frame_keys and view.frame_keys[number][0] in theirs:
            key, size = view.frame_keys[number]
            theirs[key][0] -= 1
            theirs[key][1] -= size
            categories["quaywatch_malformed"] += 1
            report.excluded.append(f"frame {number} {key}: quaywatch: {detail}")
    theirs = {key: value for key, value in theirs.items() if value[0]}
    ours = quaywatch_tuples(store, result.capture_id)
    for pair in sorted({undirected(k) for k in ours} | {undirected(k) for k in theirs}):
        (a, a_port), (b, b_port), transport = pair
        forward, backward = (a, b, a_port, b_port, transport), (b, a, b_port, a_port, transport)
        mine = (ours.get(forward, [0, 0]), ours.get(backward, [0, 0]))
        other = (theirs.get(forward, [0, 0]), theirs.get(backward, [0, 0]))
        report.compared += 1
        if mine == other:
            report.exact += 1
            continue
        if not any(p for p, _ in mine):
            reason = "only tshark has it"
        elif not any(p for p, _ in other):
            reason = "only quaywatch has it"
        elif [p for p, _ in mine] == [p for p, _ in other]:
            reason = "packets agree, frame bytes differ"
        else:
            reason = "packet counts differ"
        report.disagreements.append(
            f"{transport} {a}:{a_port} <-> {b}:{b_port}: quaywatch [packets, bytes] forward {mine[0]} backward "
            f"{mine[1]}, tshark forward {other[0]} backward {other[1]} ({reason})"
        )
    report.categories = dict(categories)


def compute(workdir: Path) -> list[FileReport]:
    if shutil.which("tshark") is None:
        pytest.fail(
            "tshark is not installed: run `make system-packages` (Debian package tshark). "
            "The oracle is required; skipping it would leave the readers unchecked."
        )
    groups = discover()
    assert groups, f"no captures found under {RESEARCH}"
    store = Store(workdir / "oracle.duckdb")
    analyzer = Analyzer(store, decoders=[])
    reports = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        views = [pool.submit(run_tshark, paths[0]) for paths in groups]
        for paths, future in zip(groups, views, strict=True):
            result = analyzer.analyze(paths[0], force=True)
            assert result.status in ("complete", "partial"), f"{paths[0]}: {result.status}"
            relative = [p.relative_to(RESEARCH) for p in paths]
            report = FileReport(str(relative[0]), sorted({p.parts[0] for p in relative}))
            compare(report, future.result(), result, store)
            reports.append(report)
    store.close()
    return reports


def shared_across_workers(tmp_path_factory: pytest.TempPathFactory, make: Callable[[Path], list[FileReport]]) -> list:
    """Compute once per test session, even when pytest-xdist spreads this module over workers."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp("oracle"))
    root = tmp_path_factory.getbasetemp().parent  # one fresh directory per session, shared by the workers
    target = root / "tshark-oracle.json"
    with (root / "tshark-oracle.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return [FileReport(**entry) for entry in json.loads(target.read_text())]
        reports = make(tmp_path_factory.mktemp("oracle"))
        target.write_text(json.dumps([asdict(report) for report in reports]))
        return reports


@pytest.fixture(scope="session")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[FileReport]:
    reports = shared_across_workers(tmp_path_factory, compute)
    print_table(reports)
    return reports


def print_table(reports: list[FileReport]) -> None:
    print(f"\ntshark oracle: {len(reports)} distinct captures under {RESEARCH}")
    print(f"{'capture':<78} {'tshark':>7} {'ours':>7} {'tuples':>6} {'exact':>6}  categories")
    for report in reports:
        categories = " ".join(f"{name}={count}" for name, count in sorted(report.categories.items()))
        note = f"  [tshark: {report.tshark_error[:60]}]" if report.tshark_error else ""
        print(
            f"{report.path[-78:]:<78} {report.tshark_frames:>7} {report.packets:>7} {report.compared:>6} "
            f"{report.exact:>6}  {categories}{note}"
        )
        for line in report.disagreements:
            print(f"      differs: {line}")
        for line in report.excluded:
            print(f"      excluded: {line}")
    print(f"\n{'corpus':<28} {'captures':>8} {'packets':>9} {'5-tuples':>9} {'exact':>9} {'agree %':>8}")
    corpora: dict[str, list[FileReport]] = defaultdict(list)
    for report in reports:
        corpora[report.sources[0]].append(report)
    for name, group in sorted(corpora.items()):
        compared, exact = sum(r.compared for r in group), sum(r.exact for r in group)
        print(
            f"{name:<28} {len(group):>8} {sum(r.packets for r in group):>9} {compared:>9} {exact:>9} "
            f"{100 * exact / max(compared, 1):>8.3f}"
        )
    totals: Counter[str] = Counter()
    for report in reports:
        totals.update(report.categories)
    print("\nframes per category:")
    for name, note in CATEGORY_NOTES.items():
        print(f"  {totals[name]:>7}  {name:<22} {note}")


# -- the checks ------------------------------------------------------------------------------------


def test_packet_count_equals_tshark(reports: list[FileReport]) -> None:
    clean = [r for r in reports if not r.tshark_error and not r.unsupported_link_type]
    different = [
        f"{r.path}: quaywatch {r.packets}, tshark {r.tshark_frames}" for r in clean if r.packets != r.tshark_frames
    ]
    assert not different, "packet counts differ from tshark's:\n" + "\n".join(different)
    # Files tshark reads with an error (a cut-off last record): the packets before the cut agree too.
    cut = [f"{r.path}: quaywatch {r.packets}, tshark {r.tshark_frames}" for r in reports if r.tshark_error]
    assert all(r.packets == r.tshark_frames for r in reports if r.tshark_error), "\n".join(cut)
    refused = [r for r in reports if r.unsupported_link_type]
    assert all(r.status == "partial" and ("byte 20:" in r.fault or "interface" in r.fault) for r in refused)
    assert len(clean) >= 0.95 * len(reports), "tshark read too few captures cleanly: is the oracle working?"
    assert sum(r.tshark_frames for r in clean) > 100_000


def test_five_tuples_agree_with_tshark(reports: list[FileReport]) -> None:
    compared, exact = sum(r.compared for r in reports), sum(r.exact for r in reports)
    print(f"\n5-tuples compared: {compared}, exact: {exact} ({100 * exact / max(compared, 1):.3f}%)")
    assert compared > 4000, "too few 5-tuples compared: is tshark dissecting?"
    residual = [f"{r.path}: {line}" for r in reports for line in r.disagreements]
    assert exact >= 0.999 * compared, f"{compared - exact} of {compared} 5-tuples differ:\n" + "\n".join(residual)


def test_icsnpp_and_zeek_btest_captures_agree_exactly(reports: list[FileReport]) -> None:
    strict = [r for r in reports if r.strict]
    assert len(strict) >= 20, "ICSNPP and zeek-btest captures missing from the research data"
    problems = [f"{r.path}: {line}" for r in strict for line in r.disagreements]
    problems += [
        f"{r.path}: quaywatch {r.packets} packets, tshark {r.tshark_frames}"
        for r in strict
        if r.packets != r.tshark_frames
    ]
    assert not problems, "\n".join(problems)
