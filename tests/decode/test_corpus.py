"""Every research capture through every decoder: no decoder fault, and message counts per protocol against tshark.

tshark runs once per capture and reports, frame by frame, how many PDUs of each protocol it dissected. Two things
make its view comparable with ours:

* Detection by content. quaywatch recognises a protocol on any port; tshark only on its registered ports. For each
  flow we claimed on a port tshark does not know for that protocol, tshark is told with ``-d`` (decode as), so a
  Modbus server on 5020 or OPC UA on 48010 is counted on both sides.
* TCP resegmentation. We reassemble each direction by sequence number (first data wins) before decoding; tshark
  dissects segment by segment and skips data it flags as retransmitted, out of order or after a lost segment.
  Where the counts of a connection differ and tshark flagged such an event in that connection, the difference is
  attributed to it and listed.

Every other difference must be listed in ``EXPLAINED`` with its reason.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.registry import all_decoders
from quaywatch.ingest.capture import detect_format
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

pytestmark = pytest.mark.oracle


@dataclass(frozen=True)
class Protocol:
    table: str
    condition: str  # which of our rows are one tshark PDU
    field: str  # a tshark field with one value per PDU
    dissector: str | None  # tshark's name for -d (decode as); None: carried inside another protocol
    ports: frozenset[int]  # where tshark finds it without being told
    application: str | None  # our flows.application value; None for layer-2 protocols, which have no flows


PROTOCOLS = {
    "modbus": Protocol(
        "modbus", "event_type IN ('request', 'response', 'exception')", "mbtcp.trans_id", "mbtcp",
        frozenset({502}), "modbus",
    ),
    "s7comm": Protocol("s7comm", "true", "s7comm.header.rosctr", "tpkt", frozenset({102}), "s7comm"),
    "enip": Protocol("enip", "true", "enip.command", "enip", frozenset({44818, 2222}), "enip"),
    "cip": Protocol("cip", "true", "cip.service", None, frozenset(), "enip"),
    "opcua": Protocol("opcua", "true", "opcua.transport.type", "opcua", frozenset({4840}), "opcua"),
    "iec104": Protocol("iec104", "true", "iec60870_104.type", "iec60870_104", frozenset({2404}), "iec104"),
    "mqtt": Protocol("mqtt", "true", "mqtt.hdrflags", "mqtt", frozenset({1883}), "mqtt"),
    "dnp3": Protocol("dnp3", "true", "dnp3.al.func", "dnp3", frozenset({20000}), "dnp3"),
    "bacnet": Protocol("bacnet", "true", "bvlc.function", "bvlc", frozenset({47808}), "bacnet"),
    "profinet_dcp": Protocol("profinet_dcp", "true", "pn_dcp.service_id", None, frozenset(), None),
}  # fmt: skip

#: tshark's TCP analysis flags that mean it dissected a connection's bytes differently from a reassembler.
TCP_EVENTS = (
    "tcp.analysis.retransmission",
    "tcp.analysis.spurious_retransmission",
    "tcp.analysis.out_of_order",
    "tcp.analysis.lost_segment",
    "tcp.analysis.ack_lost_segment",
)

#: (protocol, capture) -> why our count differs from tshark's, for differences not attributed to TCP events.
EXPLAINED = {
    ("modbus", "iti-ics-security-tools/pcaps/modicon/modicon_test.pcap"): (
        "frames 19-20 carry Schneider UMAS (function 90) ADUs whose MBAP length is 255: the Modbus Messaging on "
        "TCP/IP Implementation Guide v1.0b section 4.1 limits an ADU to 260 bytes (MBAP length <= 254), so we "
        "resynchronise past them with an invalid_mbap_header anomaly; tshark dissects them"
    ),
    ("modbus", "iti-ics-security-tools/pcaps/ModbusTCP/modbus_test_data_part1.pcap"): (
        "the capture starts mid-connection with the server's packets, so the flow's client is the server side; "
        "frame 113 follows 3 stray bytes we skip with an invalid_mbap_header anomaly before a valid MBAP header, "
        "tshark drops the segment"
    ),
    ("modbus", "iti-ics-security-tools/pcaps/openics/MODBUS-TestDataPart1.pcap"): "the same capture as above",
    ("s7comm", "zeek-btest/testing/btest/Traces/modbus/modbus-and-non-modbus-p502.pcap"): (
        "a scanner speaks COTP and S7comm to port 502; tshark cannot be told by connection, and port 502 is Modbus"
    ),
    ("dnp3", "icsnpp-dnp3/testing/traces/dnp3_example.pcap"): (
        "frames 18, 114, 210 and 810 carry single transport segments with FIN set and FIR clear (0x80); like Zeek "
        "and ICSNPP (whose logs we match) we decode them as whole fragments, tshark leaves them unreassembled "
        "(IEEE 1815-2012 clause 8.2 would discard a segment that does not start a fragment)"
    ),
    ("dnp3", "iti-ics-security-tools/pcaps/dnp3/opendnp3-3/conformance/6.6.2.2/dump.pcap"): (
        "user data in frames of link functions that may not carry it (IEEE 1815-2012 clause 9): see test_dnp3.py"
    ),
    ("dnp3", "iti-ics-security-tools/pcaps/dnp3/opendnp3-3/conformance/6.6.2.5/dump.pcap"): (
        "user data in TEST_LINK_STATES, RESET and REQUEST_LINK_STATUS frames (IEEE 1815-2012 clause 9)"
    ),
}
CORPORA = (
    "iti-ics-security-tools",
    "automayt-ICS-pcap",
    "icsnpp-modbus",
    "icsnpp-s7comm",
    "icsnpp-enip",
    "icsnpp-dnp3",
    "icsnpp-opcua-binary",
    "icsnpp-bacnet",
    "zeek-btest",
)


def captures() -> list[Path]:
    if not RESEARCH.exists():
        pytest.skip(f"research data not found at {RESEARCH}")
    found = []
    for corpus in CORPORA:
        for path in sorted((RESEARCH / corpus).rglob("*")):
            if path.is_file():
                with path.open("rb") as handle:
                    if detect_format(handle.read(4)):
                        found.append(path)
    return found


@dataclass
class Frames:
    """tshark's view of one capture: per frame, its connection, whether it flagged a TCP event, PDU counts."""

    connection: dict[int, str]
    flagged: set[str]
    counts: dict[str, Counter[int]]


def tshark_frames(path: Path, decode_as: list[str]) -> Frames:
    command = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E", "separator=\t"]
    for name in ("frame.number", "tcp.stream", "udp.stream", *TCP_EVENTS, *(p.field for p in PROTOCOLS.values())):
        command += ["-e", name]
    for rule in decode_as:
        command += ["-d", rule]
    output = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    frames = Frames({}, set(), {name: Counter() for name in PROTOCOLS})
    for line in output.splitlines():
        values = line.split("\t")
        number = int(values[0])
        connection = f"tcp {values[1]}" if values[1] else f"udp {values[2]}" if values[2] else "none"
        frames.connection[number] = connection
        if any(values[3 : 3 + len(TCP_EVENTS)]):
            frames.flagged.add(connection)
        for name, value in zip(PROTOCOLS, values[3 + len(TCP_EVENTS) :], strict=False):
            if value:
                frames.counts[name][number] += len(value.split(","))
    return frames


@dataclass
class Corpus:
    store: Store
    identities: dict[Path, str]
    tshark: dict[Path, Frames]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    store = Store(tmp_path_factory.mktemp("corpus") / "corpus.duckdb")
    analyzer = Analyzer(store, decoders=all_decoders())
    identities = {path: analyzer.analyze(path).capture_id for path in captures()}
    store.flush()
    dissectors = {p.application: p for p in PROTOCOLS.values() if p.dissector}
    claimed = store.connection.execute(
        "SELECT DISTINCT capture_id, application, transport, server_port FROM flows WHERE application IS NOT NULL"
    ).fetchall()
    # A port is told only when it is no other protocol's: "-d tcp.port==502,tpkt" would hide the Modbus there.
    registered = {port for p in PROTOCOLS.values() for port in p.ports}
    decode_as: dict[str, list[str]] = defaultdict(list)
    for capture_id, application, transport, port in claimed:
        protocol = dissectors.get(application)
        if protocol and port not in registered:
            decode_as[capture_id].append(f"{transport}.port=={port},{protocol.dissector}")
    if shutil.which("tshark") is None:
        return Corpus(store, identities, {})
    with ThreadPoolExecutor(max_workers=2) as pool:
        views = pool.map(lambda p: tshark_frames(p, decode_as[identities[p]]), identities)
        return Corpus(store, identities, dict(zip(identities, views, strict=True)))


def test_no_decoder_fault_on_any_capture(corpus: Corpus) -> None:
    faults = corpus.store.connection.execute(
        "SELECT protocol, detail, count(*) FROM anomaly WHERE code = 'decoder_exception' GROUP BY ALL"
    ).fetchall()
    flows = Counter(
        dict(corpus.store.connection.execute("SELECT application, count(*) FROM flows GROUP BY 1").fetchall())
    )
    print(f"\n{len(corpus.identities)} captures; flows by decoder: {dict(flows)}")
    assert not faults, faults
    for protocol in {p.application for p in PROTOCOLS.values() if p.application}:
        assert flows[protocol] > 0, f"no {protocol} flow in the research corpus"


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_message_counts_agree_with_tshark(corpus: Corpus, name: str) -> None:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `make system-packages`")
    protocol = PROTOCOLS[name]
    rows = corpus.store.connection.execute(
        f"SELECT capture_id, packet_number, count(*) FROM {protocol.table} WHERE {protocol.condition} GROUP BY ALL"
    ).fetchall()
    ours: dict[str, Counter[int]] = defaultdict(Counter)
    for capture_id, number, count in rows:
        ours[capture_id][number] = count
    total_ours = total_theirs = equal = 0
    report, unexplained = [], []
    for path, identity in corpus.identities.items():
        mine, frames = ours.get(identity, Counter()), corpus.tshark[path]
        theirs = frames.counts[name]
        if not mine and not theirs:
            continue
        total_ours += mine.total()
        total_theirs += theirs.total()
        if mine == theirs:
            equal += 1
            continue
        relative = str(path.relative_to(RESEARCH))
        differing = {frames.connection.get(n, "none") for n in mine.keys() | theirs.keys() if mine[n] != theirs[n]}
        resegmented = differing & frames.flagged
        reason = EXPLAINED.get((name, relative))
        if resegmented == differing:
            reason = f"TCP events flagged by tshark in {', '.join(sorted(resegmented))}"
        report.append(f"  {relative}: quaywatch {mine.total()}, tshark {theirs.total()}: {reason or 'UNEXPLAINED'}")
        if reason is None:
            unexplained.append(f"{relative} ({', '.join(sorted(differing - frames.flagged))})")
    captures = equal + len(report)
    print(f"\n{name}: {captures} captures, {equal} with the same PDUs in the same frames as tshark; "
          f"PDUs quaywatch {total_ours}, tshark {total_theirs}", *report, sep="\n")  # fmt: skip
    assert captures > 0, f"no {name} capture in the research corpus"
    assert not unexplained, f"{name}: unexplained differences from tshark in {unexplained}"
    assert abs(total_ours - total_theirs) <= 0.005 * total_theirs
