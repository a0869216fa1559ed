"""``make bench``: quaywatch against its peers, on the same file, in the same run.

Every tool is pinned to one core (``taskset -c 0``) and run several times; the
best run counts, as is usual for throughput on a shared machine. Figures are
printed and written to ``bench/data/results.json``.

Sections are functions in :data:`SECTIONS`; later work adds its own (decode
throughput, detection throughput, simulator speed) without touching the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
PYTHON = sys.executable
QUAYWATCH = str(Path(PYTHON).with_name("quaywatch"))
REPEATS = 3
TSHARK_PACKETS = 200_000  # tshark is slow: it reads a prefix of the same capture

DPKT_LOOP = r"""
import sys, dpkt, collections
flows = collections.defaultdict(lambda: [0, 0])
packets = 0
with open(sys.argv[1], "rb") as handle:
    for _ts, frame in dpkt.pcap.Reader(handle):
        packets += 1
        ethernet = dpkt.ethernet.Ethernet(frame)
        ip = ethernet.data
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
            continue
        transport = ip.data
        ports = (transport.sport, transport.dport) if isinstance(transport, (dpkt.tcp.TCP, dpkt.udp.UDP)) else (0, 0)
        key = (ip.src, ip.dst, ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt) + ports
        entry = flows[key]
        entry[0] += 1
        entry[1] += len(frame)
print(packets, len(flows))
"""


@dataclass
class Measurement:
    name: str
    packets: int
    seconds: float
    peak_mib: float | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0


@dataclass
class Context:
    capture: Path
    packets: int
    console: Console
    results: dict[str, object] = field(default_factory=dict)


def pinned(command: list[str]) -> list[str]:
    return (["taskset", "-c", "0"] if shutil.which("taskset") else []) + command


def run_measured(command: list[str], stdout: int | None = subprocess.DEVNULL) -> tuple[float, float, bytes]:
    """Wall seconds, peak resident MiB of the child, and its output."""
    started = time.perf_counter()
    process = subprocess.Popen(pinned(command), stdout=subprocess.PIPE if stdout is None else stdout)
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss / 1024, output


def best(
    name: str, packets: int, command: list[str], prepare: Callable[[], None] | None = None, repeats: int = REPEATS
) -> Measurement:
    runs = []
    for _ in range(repeats):
        if prepare:
            prepare()
        seconds, peak, _ = run_measured(command)
        runs.append((seconds, peak))
    seconds = min(r[0] for r in runs)
    return Measurement(name, packets, seconds, max(r[1] for r in runs))


#: The benchmark terminal: more cranes and a higher poll rate than the demo, every scenario on.
BENCH_CRANES = 12
BENCH_SCALE = 4.0


def make_capture(packets: int) -> Path:
    """At least ``packets`` packets of the simulated terminal (``quaywatch sim``), also as classic pcap for the peers.

    A 20-second pilot run gives packets per simulated second; the real run's duration follows from it. Generation
    runs as its own process so that its wall time and peak memory are measured like every other tool's.
    """
    DATA.mkdir(parents=True, exist_ok=True)
    capture = DATA / f"terminal-{packets}.pcap"
    info_path = DATA / f"terminal-{packets}.generation.json"
    if capture.exists() and info_path.exists():
        return capture
    pilot = Path(tempfile.mkdtemp())
    subprocess.run(
        [QUAYWATCH, "sim", "--out", str(pilot), "--duration", "20s", "--cranes", str(BENCH_CRANES),
         "--scale", str(BENCH_SCALE), "--quiet"],
        check=True,
    )  # fmt: skip
    per_second = json.loads((pilot / "truth.json").read_text())["packets"] / 20.0
    shutil.rmtree(pilot, ignore_errors=True)
    duration = int(packets / per_second * 1.03) + 1
    directory = DATA / f"sim-{packets}"
    command = [
        QUAYWATCH, "sim", "--out", str(directory), "--duration", f"{duration}s", "--cranes", str(BENCH_CRANES),
        "--scale", str(BENCH_SCALE), "--all-scenarios", "--quiet",
    ]  # fmt: skip
    seconds, peak, _ = run_measured(command)
    truth = json.loads((directory / "truth.json").read_text())
    subprocess.run(["editcap", "-F", "pcap", str(directory / "capture.pcapng"), str(capture)], check=True)
    info_path.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "packets": truth["packets"],
                "packets_per_second": truth["packets"] / seconds,
                "generator_packets_per_second": truth["packets_per_second"],
                "peak_mib": peak,
                "simulated_seconds": duration,
                "cranes": BENCH_CRANES,
                "scale": BENCH_SCALE,
                "directory": str(directory),
            },
            indent=2,
        )
    )
    return capture


def prefix(capture: Path, packets: int) -> Path:
    """The first ``packets`` packets of ``capture`` (editcap, from the tshark package)."""
    target = capture.with_name(capture.stem + f"-first-{packets}.pcap")
    if not target.exists():
        subprocess.run(["editcap", "-F", "pcap", "-r", str(capture), str(target), f"1-{packets}"], check=True)
    return target


# -- sections -------------------------------------------------------------------------


def ingest(context: Context) -> list[Measurement]:
    """Capture to flows in the store, against tshark, a dpkt loop and plain reads."""
    capture, packets = context.capture, context.packets
    database = Path(tempfile.mkdtemp()) / "bench.duckdb"

    def fresh() -> None:
        for path in (database, database.with_name(database.name + ".wal")):
            path.unlink(missing_ok=True)

    analyze = [QUAYWATCH, "analyze", str(capture), "--db", str(database), "--quiet", "--threads", "1"]
    run_measured([*analyze, "--decoders", "none"])  # warm the compiled-code cache
    fresh()
    quaywatch = best("quaywatch analyze (ingest + flows + store)", packets, [*analyze, "--decoders", "none"], fresh)
    decoded_database = database.with_name("decoded.duckdb")

    def fresh_decoded() -> None:
        for path in (decoded_database, decoded_database.with_name(decoded_database.name + ".wal")):
            path.unlink(missing_ok=True)

    decoded = best(
        "quaywatch analyze, all decoders on (one core, 1 worker)", packets,
        [QUAYWATCH, "analyze", str(capture), "--db", str(decoded_database), "--quiet", "--threads", "1",
         "--workers", "1"],
        fresh_decoded, repeats=2,
    )  # fmt: skip
    # Both cores, the command's defaults (2 workers: inserts and sha256 beside the decoding; DuckDB on both cores).
    decoded_two = best(
        "quaywatch analyze, all decoders on (two cores, defaults)", packets,
        ["taskset", "-c", "0,1", QUAYWATCH, "analyze", str(capture), "--db", str(decoded_database), "--quiet"],
        fresh_decoded, repeats=2,
    )  # fmt: skip
    flows = subprocess.run(
        [PYTHON, "-c", f"import duckdb; print(duckdb.connect('{database}').execute('SELECT count(*) FROM flows')"
         ".fetchone()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    quaywatch.note = f"{int(flows):,} flows stored"
    # Interpreter, numba and DuckDB start-up is a fixed cost: measure it on a one-packet capture.
    tiny = prefix(capture, 1)
    startup = best(
        "  of which start-up (1-packet capture)", 1,
        [QUAYWATCH, "analyze", str(tiny), "--db", str(database), "--quiet", "--threads", "1", "--decoders", "none"],
        fresh,
    )  # fmt: skip
    steady = Measurement(
        "  quaywatch steady state (wall − start-up)", packets, max(quaywatch.seconds - startup.seconds, 1e-9)
    )
    decoded_steady = Measurement(
        "  all decoders, one core, steady state (wall − start-up)", packets,
        max(decoded.seconds - startup.seconds, 1e-9),
    )  # fmt: skip
    decoded_two_steady = Measurement(
        "  all decoders, two cores, steady state (wall − start-up)", packets,
        max(decoded_two.seconds - startup.seconds, 1e-9),
    )  # fmt: skip
    measurements = [quaywatch, startup, steady, decoded, decoded_steady, decoded_two, decoded_two_steady]
    if shutil.which("tshark"):
        head = prefix(capture, TSHARK_PACKETS)
        tshark = best(
            "tshark -T fields (5-tuple)", TSHARK_PACKETS,
            ["tshark", "-n", "-r", str(head), "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "ipv6.src",
             "-e", "ipv6.dst", "-e", "ip.proto", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "udp.srcport",
             "-e", "udp.dstport"],
        )  # fmt: skip
        tshark.note = f"first {TSHARK_PACKETS:,} packets of the same file"
        measurements.append(tshark)
        # Every dissector runs, but tshark builds no protocol tree for its summary line (bench/README.md).
        tshark_full = best("tshark summary lines (no protocol tree)", TSHARK_PACKETS, ["tshark", "-n", "-r", str(head)])
        tshark_full.note = f"first {TSHARK_PACKETS:,} packets of the same file"
        measurements.append(tshark_full)
        # Every field of every layer, as an analyst's packet-detail view prints it: tshark's full dissection.
        tshark_verbose = best(
            "tshark full dissection, every field (-V)", TSHARK_PACKETS, ["tshark", "-n", "-V", "-r", str(head)]
        )
        tshark_verbose.note = f"first {TSHARK_PACKETS:,} packets of the same file"
        measurements.append(tshark_verbose)
    dpkt_loop = best("dpkt loop (5-tuple flow table)", packets, [PYTHON, "-c", DPKT_LOOP, str(capture)], repeats=1)
    measurements.append(dpkt_loop)
    plain = best(
        "plain read (16 MiB chunks)", packets,
        [PYTHON, "-c", "import sys\nf=open(sys.argv[1],'rb')\nwhile f.read(16<<20): pass", str(capture)],
    )  # fmt: skip
    measurements.append(plain)
    record_loop = best(
        "pure-Python pcap record loop", packets,
        [PYTHON, "-c", (
            "import sys,struct\nf=open(sys.argv[1],'rb');f.read(24);u=struct.Struct('<IIII').unpack\n"
            "while (h:=f.read(16)):\n f.seek(u(h)[2],1)"
        ), str(capture)],
    )  # fmt: skip
    measurements.append(record_loop)
    rate = quaywatch.rate
    # Every decoder on, one core and two, against tshark's dissection of every layer and of every field.
    decoded_ratios: dict[str, float | None] = {}
    for label, measurement in (
        ("all_decoders", decoded),
        ("all_decoders_steady_state", decoded_steady),
        ("all_decoders_two_cores", decoded_two),
        ("all_decoders_two_cores_steady_state", decoded_two_steady),
    ):
        for peer, peer_name in (
            ("summary_lines", "tshark summary lines (no protocol tree)"),
            ("full_dissection", "tshark full dissection, every field (-V)"),
        ):
            peer_rate = next((m.rate for m in measurements if m.name == peer_name), None)
            decoded_ratios[f"{label}_over_tshark_{peer}"] = measurement.rate / peer_rate if peer_rate else None
    context.results["ingest"] = {
        "capture": str(capture),
        "packets": packets,
        "flows": int(flows),
        "measurements": [m.__dict__ | {"packets_per_second": m.rate} for m in measurements],
        "ratios": {
            "quaywatch_over_tshark": rate / tshark.rate if shutil.which("tshark") else None,
            **decoded_ratios,
            "quaywatch_steady_state_over_tshark": steady.rate / tshark.rate if shutil.which("tshark") else None,
            "quaywatch_over_dpkt": rate / dpkt_loop.rate,
            "quaywatch_steady_state_over_dpkt": steady.rate / dpkt_loop.rate,
            "plain_read_over_quaywatch": plain.rate / rate,
            "plain_read_over_quaywatch_steady_state": plain.rate / steady.rate,
            "record_loop_over_quaywatch": record_loop.rate / rate,
        },
        "quaywatch_peak_mib": quaywatch.peak_mib,
        "quaywatch_startup_seconds": startup.seconds,
    }
    # The store analysed with every decoder stays for the inventory and detection sections, which remove it.
    fresh()
    context.results["decoded_database"] = str(decoded_database)
    return measurements


def generation(context: Context) -> list[Measurement]:
    """quaywatch sim writing the benchmark capture: throughput and peak memory (issue 5's figures)."""
    info_path = context.capture.with_name(context.capture.stem + ".generation.json")
    if not info_path.exists():
        return []
    info = json.loads(info_path.read_text())
    context.results["generation"] = info
    measurement = Measurement(
        "quaywatch sim (every scenario on, pcapng to disk)", info["packets"], info["seconds"], info["peak_mib"]
    )
    measurement.note = (
        f"{info['cranes']} cranes, scale {info['scale']}, {info['simulated_seconds']:,} s simulated; "
        f"{info['generator_packets_per_second']:,.0f}/s without start-up"
    )
    return [measurement]


def inventory_and_detection(context: Context) -> list[Measurement]:
    """Asset inventory build and the detection stage over the benchmark store (issues 6 and 7)."""
    database = context.results.get("decoded_database")
    info = context.results.get("generation")
    if not isinstance(database, str) or not isinstance(info, dict):
        return []
    policy = Path(info["directory"]) / "policy.yaml"
    inventory = Path(info["directory"]) / "declared-inventory.csv"
    build = (
        "import sys; from pathlib import Path; from quaywatch.store.database import Store\n"
        "from quaywatch.assets.inventory import build_inventory\n"
        "store = Store(Path(sys.argv[1])); build_inventory(store); store.close()"
    )
    seconds, peak, _ = run_measured([PYTHON, "-c", build, database])
    flows = int(
        subprocess.run(
            [PYTHON, "-c", f"import duckdb; print(duckdb.connect('{database}').execute('SELECT count(*) FROM flows')"
             ".fetchone()[0])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    built = Measurement("asset inventory build (flows and events to assets)", context.packets, seconds, peak)
    built.note = f"{flows:,} flows; packets/s column: capture packets per second of build time"
    subprocess.run(
        [QUAYWATCH, "assets", "--db", database, "--inventory", str(inventory), "--json"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(
        [QUAYWATCH, "policy", "evaluate", "--db", database, "--policy", str(policy), "--json"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    seconds, peak, _ = run_measured([QUAYWATCH, "detect", "--db", database, "--policy", str(policy), "--json"])
    detection = Measurement("detection stage (quaywatch detect: rules and modules)", flows, seconds, peak)
    detection.note = f"packets column holds flows: {flows / seconds:,.0f} flows/s"
    context.results["inventory"] = {"seconds": built.seconds, "peak_mib": built.peak_mib, "flows": flows}
    context.results["detection"] = {"seconds": seconds, "flows_per_second": flows / seconds, "peak_mib": peak}
    shutil.rmtree(Path(database).parent, ignore_errors=True)
    return [built, detection]


#: Runs of each detection-throughput configuration: more than REPEATS, as each takes about a second, where one
#: stall of this shared machine's neighbours costs as much as the work.
DETECTION_REPEATS = 5
#: Flows in the detection-throughput store (bench/detection_store.py: a short simulated terminal repeated in time).
DETECTION_FLOWS = 1_000_000
DETECTION_RUN = r"""
import json, sys, time
from pathlib import Path
import duckdb
from quaywatch.detect.context import DetectionContext
from quaywatch.detect.registry import run_detections
from quaywatch.policy.load import load_policy
policy = load_policy(Path(sys.argv[2]))[0]
con = duckdb.connect(sys.argv[1])
con.execute(f"SET threads = {int(sys.argv[3])}")  # the process is pinned to as many cores (taskset)
import quaywatch.detect.beacon_score  # numba and scipy load here, before the timer: start-up, not detection
started, cpu_started = time.perf_counter(), time.process_time()
# A fifth of the span as D8's learning period, as a site would run it: without one the baseline does nothing.
summary = run_detections(con, DetectionContext(policy=policy, options={"learning_share": 0.2}),
                         workers=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
                  "summary": summary.to_dict()}))
"""


def detection_throughput(context: Context) -> list[Measurement]:
    """run_detections over a store of about a million flows that looks like the simulated terminal's (issue 7).

    The store is five simulated minutes of the default terminal with every scenario on, analysed with its policy
    and inventory, then repeated in time (bench/detection_store.py explains why that is honest). The timed child
    runs the detections alone (no interpreter start-up in the flows/s figure; the wall time with start-up is
    reported beside it), on one core with one worker and one DuckDB thread, then on two with two of each; each
    DETECTION_REPEATS times from a fresh copy of the store, the best counting (all runs are in the note and the
    results).
    """
    work = Path(tempfile.mkdtemp())
    seed = work / "seed"
    subprocess.run([QUAYWATCH, "sim", "--out", str(seed), "--duration", "5m", "--all-scenarios", "--quiet"], check=True)
    seed_db = seed / "seed.duckdb"
    subprocess.run(
        [QUAYWATCH, "analyze", str(seed / "capture.pcapng"), "--db", str(seed_db), "--quiet", "--threads", "1",
         "--inventory", str(seed / "declared-inventory.csv"), "--policy", str(seed / "policy.yaml")],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    sys.path.insert(0, str(ROOT / "bench"))
    from detection_store import build

    database = work / "detection.duckdb"
    counts = build(seed_db, database, DETECTION_FLOWS)
    flows = counts["flows"]
    measurements = []
    results = {}
    for cores in (1, 2):  # one core as every other row; both cores of this machine, as a site would run it
        runs = []
        for _ in range(DETECTION_REPEATS):  # the best run counts, as for every other row (module docstring)
            copy = work / f"detection-{cores}.duckdb"
            shutil.copy(database, copy)  # each run writes its alerts: each starts from the same store
            wall, peak, output = run_measured(
                ["taskset", "-c", ",".join(map(str, range(cores))), PYTHON, "-c", DETECTION_RUN, str(copy),
                 str(seed / "policy.yaml"), str(cores)],
                stdout=None,
            )  # fmt: skip
            copy.unlink()
            runs.append((wall, peak, json.loads(output)))
        wall, peak, result = min(runs, key=lambda run: float(run[2]["seconds"]))
        all_seconds = sorted(float(run[2]["seconds"]) for run in runs)
        seconds = float(result["seconds"])
        per_detection = result["summary"]["seconds"]
        label = "one core, 1 worker, 1 DuckDB thread" if cores == 1 else "two cores, 2 workers, 2 DuckDB threads"
        measurement = Measurement(f"detection throughput (1M-flow store, {label})", flows, seconds, peak)
        every = ", ".join(f"{value:.2f}" for value in all_seconds)
        measurement.note = (  # CPU seconds too: a busy machine stretches the wall time more than the work
            f"packets column holds flows; best of {len(runs)} ({every} s); "
            f"{wall:.1f} s with start-up; {float(result['cpu_seconds']):.2f} s CPU; {result['summary']['total']} alerts"
        )
        measurements.append(measurement)
        for name, value in sorted(per_detection.items(), key=lambda item: -item[1]):
            if cores == 1:
                measurements.append(Measurement(f"  {name}", flows, max(float(value), 1e-9), note="flows/s alone"))
        results[f"cores_{cores}"] = {
            "seconds": seconds,
            "seconds_of_every_run": all_seconds,
            "cpu_seconds": float(result["cpu_seconds"]),
            "wall_seconds_with_startup": wall,
            "flows_per_second": flows / seconds,
            "peak_mib": peak,
            "seconds_per_detection": per_detection,
            "alerts": result["summary"]["alerts"],
        }
    context.results["detection_throughput"] = {
        "flows": flows,
        **results,
        "rows": {name: count for name, count in counts.items() if count},
    }
    shutil.rmtree(work, ignore_errors=True)
    return measurements


#: Per decoder: a research capture rich in its messages, and how its payloads are found there
#: ("tcp"/"udp" and the server port, or "ethernet" and the EtherType).
DECODER_CASES = {
    "modbus": ("icsnpp-modbus/testing/traces/modbus_example.pcap", "tcp", 502),
    "s7comm": ("icsnpp-s7comm/tests/traces/snap7.pcap", "tcp", 102),
    "enip": ("icsnpp-enip/tests/traces/enip_cip_example.pcap", "tcp", 44818),
    "mqtt": ("zeek-btest/testing/btest/Traces/mqtt.pcap", "tcp", 1883),
    "dnp3": ("icsnpp-dnp3/testing/traces/dnp3_example.pcap", "tcp", 20000),
    "opcua": ("icsnpp-opcua-binary/pcaps/open62541_read_service_test_data.pcap", "tcp", 4840),
    "iec104": ("iti-ics-security-tools/pcaps/IEC60870-5-104/TestDissectIec104.pcap", "tcp", 2404),
    "bacnet": ("icsnpp-bacnet/testing/traces/bacnet_example.pcap", "udp", 47808),
    "profinet_dcp": ("iti-ics-security-tools/pcaps/profinet/PROFINET-RT-DCP/PROFINET-RT.pcap", "ethernet", 0x8892),
}


def _frames(capture: Path) -> tuple[int, list[bytes]]:
    """The capture's link type and its frames."""
    import dpkt

    with capture.open("rb") as handle:
        magic = handle.read(4)
        handle.seek(0)
        reader = dpkt.pcapng.Reader(handle) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(handle)
        return reader.datalink(), [bytes(frame) for _, frame in reader]


def _payloads(capture: Path, transport: str, port: int) -> list[list[tuple[object, bytes]]]:
    """Each connection's (direction, payload) sequence, or each layer-2 sender's frames, read with dpkt."""
    from collections import defaultdict

    import dpkt

    from quaywatch.decode.base import Direction

    flows: dict[tuple[bytes, int], list[tuple[object, bytes]]] = defaultdict(list)
    link_type, frames = _frames(capture)
    for frame in frames:
        try:
            ethernet = dpkt.loopback.Loopback(frame) if link_type == 0 else dpkt.ethernet.Ethernet(frame)
        except (dpkt.NeedData, dpkt.UnpackError):
            continue
        if transport == "ethernet":
            if link_type != 0 and ethernet.type == port:
                flows[(ethernet.src, 0)].append((Direction.TO_SERVER, frame[-len(ethernet.data) :]))
            continue
        ip = ethernet.data
        kind = dpkt.tcp.TCP if transport == "tcp" else dpkt.udp.UDP
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, kind) or not ip.data.data:
            continue
        segment = ip.data
        if segment.dport == port:
            flows[(ip.src, segment.sport)].append((Direction.TO_SERVER, bytes(segment.data)))
        elif segment.sport == port:
            flows[(ip.dst, segment.dport)].append((Direction.TO_CLIENT, bytes(segment.data)))
    return list(flows.values())


def decoders(context: Context) -> list[Measurement]:
    """Each decoder alone on real message streams from the research captures: messages per second."""
    from quaywatch.decode.registry import all_decoders

    research = ROOT.parent / "shared" / "research-data"
    available = {decoder.name: decoder for decoder in all_decoders()}
    measurements = []
    figures = {}
    for name, (relative, transport, port) in DECODER_CASES.items():
        capture = research / relative
        if name not in available or not capture.exists():
            context.console.print(f"decoder {name}: skipped ({capture} or the decoder is missing)")
            continue
        flows = _payloads(capture, transport, port)
        decoder = available[name]
        messages = repeats = 0
        started = time.perf_counter()
        while time.perf_counter() - started < 1.0:
            for chunks in flows:
                session = decoder.session()
                for direction, data in chunks:
                    events = session.feed(data, direction, 0.0)  # type: ignore[arg-type]
                    messages += sum(1 for event in events if event.table != "anomaly")
                session.close()
            repeats += 1
        seconds = time.perf_counter() - started
        measurements.append(
            Measurement(f"decoder {name} alone (events)", messages, seconds, note=f"{capture.name}, {repeats} passes")
        )
        figures[name] = messages / seconds
    context.results["decoders_events_per_second"] = figures
    return measurements


SECTIONS: list[Callable[[Context], list[Measurement]]] = [
    generation,
    ingest,
    inventory_and_detection,
    detection_throughput,
    decoders,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=10_000_000)
    parser.add_argument("--only", action="append", help="run only this section (repeatable), e.g. detection_throughput")
    arguments = parser.parse_args()
    # The children keep Python's byte-code cache, as an installed package does: with PYTHONDONTWRITEBYTECODE set
    # (some sandboxes set it) every quaywatch start would compile its ~150 modules again (0.3 s of "start-up").
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    console = Console(width=150)
    capture = make_capture(arguments.packets)
    # The packets the file really holds (the simulator overshoots the request a little), so that every rate is true.
    info = DATA / f"terminal-{arguments.packets}.generation.json"
    packets = int(json.loads(info.read_text())["packets"]) if info.exists() else arguments.packets
    context = Context(capture, packets, console)
    table = Table(title=f"quaywatch benchmarks on {capture.name} ({capture.stat().st_size / 2**20:.0f} MiB), one core")
    for column in ("what", "packets", "seconds", "packets/s", "peak MiB", "note"):
        table.add_column(column, justify="left" if column in ("what", "note") else "right")
    for section in SECTIONS:
        if arguments.only and section.__name__ not in arguments.only:
            continue
        for measurement in section(context):
            table.add_row(
                measurement.name, f"{measurement.packets:,}", f"{measurement.seconds:.3f}", f"{measurement.rate:,.0f}",
                f"{measurement.peak_mib:.0f}" if measurement.peak_mib else "", measurement.note,
            )  # fmt: skip
    console.print(table)
    ratios = context.results.get("ingest", {}).get("ratios", {})  # type: ignore[union-attr]
    for name, value in ratios.items():
        if value is not None:
            console.print(f"{name.replace('_', ' ')}: {value:.1f}×")
    DATA.mkdir(parents=True, exist_ok=True)
    results_path = DATA / "results.json"
    if arguments.only and results_path.exists():  # a partial run updates the earlier figures, never drops them
        context.results = json.loads(results_path.read_text()) | context.results
    results_path.write_text(json.dumps(context.results, indent=2, default=str))
    console.print(f"figures written to {DATA / 'results.json'}")


if __name__ == "__main__":
    main()
