"""``make bench``: quaywatch against its peers, on the same capture, in the same run.

``python bench/run.py [--packets N] [--repeats R] [--only SECTION]``

Builds (once, cached in ``bench/data/``) a port-terminal capture with
``bench/make_capture.py``, then runs every benchmark section on it. Every
measured command is a fresh child process pinned to one core (``taskset -c 0``)
and run ``--repeats`` times; the fastest run counts, as is usual for throughput
on a shared machine, and the peak resident memory of the child is read from
``os.wait4``. Figures are printed and written to ``bench/data/results.json``.

Sections are the functions in :data:`SECTIONS`, registered with
:func:`section`; later work adds its own (decoders, detection, ...) without
touching the others.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA = BENCH / "data"
PYTHON = sys.executable
QUAYWATCH = str(Path(PYTHON).with_name("quaywatch"))
SEED = 7
TSHARK_PACKETS = 200_000  # tshark is slow: it reads a prefix of the same capture
TSHARK_FIELDS = [
    "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.proto", "tcp.srcport", "tcp.dstport", "udp.srcport",
    "udp.dstport",
]  # fmt: skip

# A fair minimal flow table in pure Python: bidirectional 5-tuple -> [packets, bytes].
DPKT_LOOP = r"""
import sys
import dpkt

flows = {}
packets = 0
with open(sys.argv[1], "rb") as handle:
    for _ts, frame in dpkt.pcap.Reader(handle):
        packets += 1
        ip = dpkt.ethernet.Ethernet(frame).data  # 802.1Q tags are unpacked by dpkt
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
            continue
        transport = ip.data
        if isinstance(transport, (dpkt.tcp.TCP, dpkt.udp.UDP)):
            a, b = (ip.src, transport.sport), (ip.dst, transport.dport)
        else:
            a, b = (ip.src, 0), (ip.dst, 0)
        key = (a, b, ip.p) if a <= b else (b, a, ip.p)
        entry = flows.get(key)
        if entry is None:
            flows[key] = [1, len(frame)]
        else:
            entry[0] += 1
            entry[1] += len(frame)
print(packets, len(flows))
"""
PLAIN_READ = "import sys\nf = open(sys.argv[1], 'rb')\nwhile f.read(16 << 20):\n    pass"
RECORD_LOOP = (
    "import sys, struct\nf = open(sys.argv[1], 'rb')\nf.read(24)\nunpack = struct.Struct('<IIII').unpack\n"
    "n = 0\nwhile h := f.read(16):\n    f.seek(unpack(h)[2], 1)\n    n += 1\nprint(n)"
)


@dataclass
class Measurement:
    name: str
    packets: int
    seconds: float | None  # None: could not be measured (see note)
    peak_mib: float | None = None
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.packets / self.seconds if self.seconds else None

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"packets_per_second": self.rate}


@dataclass
class Context:
    capture: Path
    packets: int
    truth: dict[str, Any]
    repeats: int
    console: Console
    results: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Run:
    seconds: float
    peak_mib: float
    output: bytes


class CommandFailed(RuntimeError):
    pass


# -- measuring -------------------------------------------------------------------------------


def pinned(command: list[str]) -> list[str]:
    """The command on core 0 (``taskset`` execs it, so the child measured is the command itself)."""
    return (["taskset", "-c", "0"] if shutil.which("taskset") else []) + command


def run_once(command: list[str], capture_output: bool = False) -> Run:
    """Wall seconds and peak resident MiB of one fresh child; raises CommandFailed on a non-zero exit."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            pinned(command), stdout=subprocess.PIPE if capture_output else subprocess.DEVNULL, stderr=errors
        )
        output = process.stdout.read() if process.stdout else b""
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = code = os.waitstatus_to_exitcode(status)  # already reaped: tell Popen
        if process.stdout:
            process.stdout.close()
        if code != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise CommandFailed(f"exit {code}: {tail[0][:160]}")
    return Run(seconds, usage.ru_maxrss / 1024, output)  # ru_maxrss is in KiB on Linux


def best(
    command: list[str], repeats: int, prepare: Callable[[], None] | None = None, capture_output: bool = False
) -> Run:
    """The fastest of ``repeats`` runs (its output), with the highest peak memory seen."""
    runs = []
    for _ in range(repeats):
        if prepare:
            prepare()
        runs.append(run_once(command, capture_output))
    fastest = min(runs, key=lambda run: run.seconds)
    return Run(fastest.seconds, max(run.peak_mib for run in runs), fastest.output)


def measure(
    name: str, packets: int, command: list[str], repeats: int, prepare: Callable[[], None] | None = None
) -> Measurement:
    try:
        run = best(command, repeats, prepare)
    except (CommandFailed, OSError) as error:
        return Measurement(name, packets, None, note=f"unavailable: {error}")
    return Measurement(name, packets, run.seconds, run.peak_mib)


# -- the capture -----------------------------------------------------------------------------


def make_capture(packets: int, seed: int, console: Console) -> tuple[Path, dict[str, Any]]:
    """The benchmark capture and its generator accounting, built once and cached under bench/data/."""
    import make_capture as generator  # bench/ is on sys.path when this file runs as a script

    DATA.mkdir(parents=True, exist_ok=True)
    capture = DATA / f"port-{packets}-seed{seed}.pcap"
    truth_path = capture.with_name(capture.name + ".truth.json")
    if capture.exists() and truth_path.exists():
        truth = json.loads(truth_path.read_text())
        if truth.get("generator") == generator.GENERATOR and truth.get("packets") == packets:
            return capture, truth
    console.print(f"generating {capture.name} ({packets:,} packets, seed {seed}) ...")
    partial = capture.with_name(capture.stem + ".partial.pcap")
    subprocess.run(
        [PYTHON, str(BENCH / "make_capture.py"), "--packets", str(packets), "--out", str(partial),
         "--seed", str(seed), "--quiet"],
        check=True,
    )  # fmt: skip
    partial.with_name(partial.name + ".truth.json").replace(truth_path)
    partial.replace(capture)
    return capture, json.loads(truth_path.read_text())


def prefix(capture: Path, packets: int) -> Path:
    """The first ``packets`` records of ``capture`` (cached beside it)."""
    target = capture.with_name(f"{capture.stem}-first-{packets}.pcap")
    if target.exists() and target.stat().st_mtime >= capture.stat().st_mtime:
        return target
    with capture.open("rb") as source, target.open("wb") as out:
        out.write(source.read(24))
        for _ in range(packets):
            header = source.read(16)
            if len(header) < 16:
                break
            out.write(header + source.read(struct.unpack_from("<I", header, 8)[0]))
    return target


# -- sections --------------------------------------------------------------------------------

SECTIONS: list[tuple[str, Callable[[Context], list[Measurement]]]] = []


def section(
    name: str,
) -> Callable[[Callable[[Context], list[Measurement]]], Callable[[Context], list[Measurement]]]:
    """Register a benchmark section: a function of the context returning its measurements."""

    def register(function: Callable[[Context], list[Measurement]]) -> Callable[[Context], list[Measurement]]:
        SECTIONS.append((name, function))
        return function

    return register


@section("generation")
def generation(context: Context) -> list[Measurement]:
    """bench/make_capture.py itself, as recorded when it built the capture."""
    seconds = float(context.truth.get("generation_seconds") or 0) or None
    truth = context.truth
    note = f"{truth.get('flows', 0):,} flows, {truth.get('simulated_seconds', 0):,.0f} s simulated"
    return [Measurement("make_capture.py (not pinned)", context.packets, seconds, note=note)]


@section("ingest")
def ingest(context: Context) -> list[Measurement]:
    """Capture to flows in the store, against tshark, a dpkt loop and plain reads of the same file."""
    capture, packets, repeats = context.capture, context.packets, context.repeats
    measurements: list[Measurement] = []
    # The I/O ceiling first: it also puts the file in the page cache for everyone after it.
    plain = measure("plain read, 16 MiB chunks", packets, [PYTHON, "-c", PLAIN_READ, str(capture)], repeats)
    plain.note = f"{capture.stat().st_size / 2**20:,.0f} MiB from the page cache"
    record_loop = measure(
        "pure-Python pcap record loop (struct)", packets, [PYTHON, "-c", RECORD_LOOP, str(capture)], repeats
    )
    record_loop.note = "reads each record header, seeks past the frame"
    quaywatch = _quaywatch(context, measurements)
    measurements += [plain, record_loop]
    if shutil.which("tshark"):
        head = prefix(capture, TSHARK_PACKETS)
        fields = [argument for name in TSHARK_FIELDS for argument in ("-e", name)]
        tshark = measure(
            "tshark -T fields (5-tuple)", min(packets, TSHARK_PACKETS),
            ["tshark", "-n", "-r", str(head), "-T", "fields", *fields], repeats,
        )  # fmt: skip
        tshark.note = f"first {min(packets, TSHARK_PACKETS):,} packets of the same file"
    else:
        tshark = Measurement("tshark -T fields (5-tuple)", 0, None, note="unavailable: tshark not installed")
    measurements.append(tshark)
    dpkt_loop = Measurement("dpkt loop (5-tuple flow table)", packets, None)
    try:
        run = best([PYTHON, "-c", DPKT_LOOP, str(capture)], repeats, capture_output=True)
        counted, flows = (int(word) for word in run.output.split())
        dpkt_loop = Measurement(dpkt_loop.name, packets, run.seconds, run.peak_mib, f"{flows:,} 5-tuples")
        if counted != packets:
            dpkt_loop.note += f"; read {counted:,} packets"
    except (CommandFailed, OSError, ValueError) as error:
        dpkt_loop.note = f"unavailable: {error}"
    measurements.append(dpkt_loop)

    def ratio(numerator: Measurement, denominator: Measurement) -> float | None:
        if numerator.rate is None or denominator.rate is None:
            return None
        return numerator.rate / denominator.rate

    context.ratios |= {
        "quaywatch / tshark": ratio(quaywatch, tshark),
        "quaywatch / dpkt loop": ratio(quaywatch, dpkt_loop),
        "plain read / quaywatch": ratio(plain, quaywatch),
        "pure-Python record loop / quaywatch": ratio(record_loop, quaywatch),
    }
    context.results["quaywatch_peak_mib"] = quaywatch.peak_mib
    return measurements


def _quaywatch(context: Context, measurements: list[Measurement]) -> Measurement:
    """``quaywatch analyze`` as a user runs it; appends its rows and returns the headline one."""
    capture, packets, repeats = context.capture, context.packets, context.repeats
    name = "quaywatch analyze --threads 1"
    if not Path(QUAYWATCH).exists():
        headline = Measurement(name, packets, None, note=f"unavailable: {QUAYWATCH} not installed")
        measurements.append(headline)
        return headline
    scratch = Path(tempfile.mkdtemp(prefix="quaywatch-bench-"))
    database = scratch / "bench.duckdb"

    def fresh() -> None:
        for path in (database, database.with_name(database.name + ".wal")):
            path.unlink(missing_ok=True)

    def analyze(path: Path, *extra: str) -> list[str]:
        return [
            QUAYWATCH,
            "analyze",
            str(path),
            "--db",
            str(database),
            "--quiet",
            "--json",
            "--threads",
            "1",
            *extra,
        ]

    try:
        fresh()
        run_once(analyze(prefix(capture, 1000)))  # warm the compiled-code cache, outside the timing
        run = best(analyze(capture), repeats, fresh, capture_output=True)
    except (CommandFailed, OSError) as error:
        shutil.rmtree(scratch, ignore_errors=True)
        headline = Measurement(name, packets, None, note=f"unavailable: {error}")
        measurements.append(headline)
        return headline
    headline = Measurement(name, packets, run.seconds, run.peak_mib, _summary_note(run.output, context.truth))
    measurements.append(headline)
    # Interpreter, numba and DuckDB start-up is a fixed cost: the same command on a one-packet capture.
    tiny = analyze(prefix(capture, 1))
    startup = measure("  of which start-up (1-packet capture)", 1, tiny, repeats, fresh)
    measurements.append(startup)
    if startup.seconds is not None and startup.seconds < run.seconds:
        steady = Measurement("  steady state (wall - start-up)", packets, run.seconds - startup.seconds)
        steady.note = "the rate on captures much larger than this one"
        measurements.append(steady)
    help_text = subprocess.run([QUAYWATCH, "analyze", "--help"], capture_output=True, text=True).stdout
    if "--decoders" in help_text:
        flows_only = measure(
            "quaywatch analyze --decoders none (flows only)", packets, analyze(capture, "--decoders", "none"),
            repeats, fresh,
        )  # fmt: skip
        measurements.append(flows_only)
    shutil.rmtree(scratch, ignore_errors=True)
    return headline


def _summary_note(output: bytes, truth: dict[str, Any]) -> str:
    """What quaywatch counted, against the generator's own accounting."""
    try:
        summary = json.loads(output)
        counted, flows = int(summary["packets"]), int(summary["flows"])
    except (ValueError, KeyError, TypeError):
        return "no JSON summary"
    note = f"{flows:,} flows stored"
    if counted != truth.get("packets"):
        note += f"; counted {counted:,} packets of {truth.get('packets', 0):,}!"
    return note


# -- report ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = lines[0].split(":", 1)[1].strip() if lines else ""
    tshark = ""
    if shutil.which("tshark"):
        tshark = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tshark": tshark,
        "pinned": bool(shutil.which("taskset")),
    }


def report(context: Context, rows: list[tuple[str, Measurement]]) -> None:
    console = context.console
    size = context.capture.stat().st_size / 2**20
    table = Table(title=f"{context.capture.name}: {context.packets:,} packets, {size:,.0f} MiB; one core")
    for column in ("section", "what", "packets", "seconds", "packets/s", "peak MiB", "note"):
        table.add_column(column, justify="left" if column in ("section", "what", "note") else "right")
    for name, measurement in rows:
        rate, seconds, peak = measurement.rate, measurement.seconds, measurement.peak_mib
        table.add_row(
            name, measurement.name, f"{measurement.packets:,}", "-" if seconds is None else f"{seconds:.3f}",
            "-" if rate is None else f"{rate:,.0f}", "" if peak is None else f"{peak:,.0f}", measurement.note,
        )  # fmt: skip
    console.print(table)
    for name, value in context.ratios.items():
        console.print(f"{name}: " + ("n/a" if value is None else f"{value:,.1f}x"))
    peak = context.results.get("quaywatch_peak_mib")
    console.print("quaywatch peak memory: " + ("n/a" if peak is None else f"{peak:,.0f} MiB"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packets", type=int, default=2_500_000, help="capture size (default 2,500,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts")
    names = [name for name, _ in SECTIONS]
    parser.add_argument("--only", action="append", choices=names, help="run only this section (repeatable)")
    arguments = parser.parse_args(argv)
    console = Console(width=160)
    capture, truth = make_capture(arguments.packets, SEED, console)
    context = Context(capture, arguments.packets, truth, max(1, arguments.repeats), console)
    rows: list[tuple[str, Measurement]] = []
    sections: dict[str, list[dict[str, Any]]] = {}
    for name, function in SECTIONS:
        if arguments.only and name not in arguments.only:
            continue
        console.print(f"[dim]running {name} ...[/]")
        measurements = function(context)
        rows += [(name, measurement) for measurement in measurements]
        sections[name] = [measurement.as_json() for measurement in measurements]
    report(context, rows)
    results = {
        "capture": {"path": str(capture), **truth},
        "machine": machine(),
        "repeats": context.repeats,
        "sections": sections,
        "ratios": context.ratios,
        **context.results,
    }
    (DATA / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"figures written to {DATA / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
