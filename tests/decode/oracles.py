"""Shared tools of the decoder tests: oracle logs, field agreement, and replaying real TCP streams."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quaywatch.analysis import Analyzer
from quaywatch.decode.base import Decoder, Direction, Event, Session
from quaywatch.store.database import Store

RESEARCH = Path(__file__).resolve().parents[2].parent / "shared" / "research-data"

Row = dict[str, str | None]
Record = dict[str, object]
_STORES = itertools.count()


def require(path: Path) -> Path:
    """``path``, or a skip that names the missing research data."""
    if not path.exists():
        import pytest

        pytest.skip(f"research data missing: {path}")
    return path


def query(store: Store, sql: str) -> list[Record]:
    cursor = store.connection.execute(sql)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def analysed_tables(
    tmp_path: Path,
    capture: Path,
    decoders: list[Decoder],
    tables: Iterable[str],
    order: dict[str, str] | None = None,
) -> dict[str, list[Record]]:
    """Run the real pipeline on ``capture`` into a fresh store and return the named tables as rows.

    A table the run did not create is empty; rows are in ``order[table]`` (default: packet number). Every call
    gets its own database, so analysing one capture twice (with other decoders) never finds it already done.
    """
    store = Store(tmp_path / f"{capture.stem}-{next(_STORES)}.duckdb")
    Analyzer(store, decoders=decoders).analyze(require(capture))
    listed = store.connection.execute("SELECT table_name FROM information_schema.tables").fetchall()
    present = {row[0] for row in listed}
    result = {
        name: query(store, f'SELECT * FROM "{name}" ORDER BY {(order or {}).get(name, "packet_number")}')
        if name in present
        else []
        for name in tables
    }
    store.close()
    return result


def read_log(path: Path) -> list[Row]:
    """Rows of a Zeek TSV log; '-' (unset) becomes None, '(empty)' an empty string."""
    if not path.exists():
        import pytest

        pytest.skip(f"research data missing: {path}")
    names: list[str] = []
    rows: list[Row] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#fields"):
            names = line.split("\t")[1:]
            continue
        if not line or line.startswith("#"):
            continue
        values = line.split("\t")
        rows.append(
            {n: (None if v == "-" else "" if v == "(empty)" else v) for n, v in zip(names, values, strict=False)}
        )
    return rows


def tshark_values(
    capture: Path, display_filter: str, fields: dict[str, str], separator: str = ","
) -> list[dict[str, list[str]]]:
    """One dict per frame tshark shows under ``display_filter``: our name -> every occurrence of its field.

    ``fields`` maps tshark field names to ours. Fails (never skips) when tshark is missing: it is the oracle.
    """
    import shutil
    import subprocess

    import pytest

    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `make system-packages`")
    command = ["tshark", "-n", "-r", str(capture), "-Y", display_filter, "-T", "fields", "-E", "occurrence=a"]
    command += ["-E", f"aggregator={separator}"]
    for name in fields:
        command += ["-e", name]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [
        {
            ours: (value.split(separator) if value else [])
            for ours, value in zip(fields.values(), line.split("\t"), strict=True)
        }
        for line in output.splitlines()
    ]


def presence(row: Row, names: Iterable[str]) -> str:
    """Which of ``names`` a row defines, as one comparable field: catches a value only one side fills."""
    return ",".join(name for name in names if row.get(name) is not None)


@dataclass
class Agreement:
    """Per-field agreement between our rows and an oracle's, after alignment."""

    fields: Sequence[str]
    compared: dict[str, int] = field(default_factory=dict)
    agreed: dict[str, int] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    unmatched_ours: int = 0
    unmatched_theirs: int = 0

    def score(self, ours: list[Row], theirs: list[Row], key: Callable[[Row], object]) -> None:
        """Align both row lists on ``key`` (order-preserving) and compare every field both define."""
        matcher = difflib.SequenceMatcher(a=[key(r) for r in ours], b=[key(r) for r in theirs], autojunk=False)
        matched_ours: set[int] = set()
        matched_theirs: set[int] = set()
        for block in matcher.get_matching_blocks():
            for offset in range(block.size):
                mine, other = ours[block.a + offset], theirs[block.b + offset]
                matched_ours.add(block.a + offset)
                matched_theirs.add(block.b + offset)
                self._compare(mine, other)
        # Rows the alignment left over are compared pairwise in order, so every field difference counts.
        rest_ours = [r for i, r in enumerate(ours) if i not in matched_ours]
        rest_theirs = [r for i, r in enumerate(theirs) if i not in matched_theirs]
        for mine, other in zip(rest_ours, rest_theirs, strict=False):
            self._compare(mine, other)
        self.unmatched_ours += max(0, len(rest_ours) - len(rest_theirs))
        self.unmatched_theirs += max(0, len(rest_theirs) - len(rest_ours))

    def _compare(self, mine: Row, other: Row) -> None:
        for name in self.fields:
            a, b = mine.get(name), other.get(name)
            if a is None or b is None:
                continue
            self.compared[name] = self.compared.get(name, 0) + 1
            if a == b:
                self.agreed[name] = self.agreed.get(name, 0) + 1
            elif len(self.differences) < 30:
                self.differences.append(f"{name}: ours {a!r}, oracle {b!r}")

    def ratio(self, name: str) -> float:
        return self.agreed.get(name, 0) / self.compared[name] if self.compared.get(name) else 1.0

    def report(self, title: str) -> str:
        lines = [f"{title}: unmatched ours {self.unmatched_ours}, unmatched oracle {self.unmatched_theirs}"]
        for name in self.fields:
            compared = self.compared.get(name, 0)
            lines.append(f"  {name:24s} {self.agreed.get(name, 0):6d}/{compared:<6d} {100 * self.ratio(name):7.2f}%")
        lines += [f"  differs: {d}" for d in self.differences[:10]]
        return "\n".join(lines)


def compare_by_packet(
    fields: Sequence[str],
    captures: Iterable[Path],
    title: str,
    analyse: Callable[[Path], tuple[list[Record], list[Record]]],
    ours: Callable[[list[Record]], list[Row]],
    theirs: Callable[[Path], list[Row]],
) -> Agreement:
    """Our rows against tshark's, aligned on packet number, over several captures; none may raise an anomaly."""
    agreement = Agreement(fields)
    for capture in captures:
        rows, anomalies = analyse(capture)
        assert not anomalies, anomalies
        agreement.score(ours(rows), theirs(capture), key=lambda row: row["packet"])
    print("\n" + agreement.report(title))
    return agreement


def tcp_streams(capture: Path, port: int) -> list[list[tuple[Direction, bytes, float]]]:
    """TCP payloads of each connection to ``port``, in capture order, read with dpkt (independent of our ingest).

    pcap or pcapng; Ethernet, BSD loopback, Linux cooked (v1) and raw IP links.
    """
    import dpkt

    links = {1: dpkt.ethernet.Ethernet, 0: dpkt.loopback.Loopback, 113: dpkt.sll.SLL}
    connections: dict[tuple[bytes, int], list[tuple[Direction, bytes, float]]] = {}
    with capture.open("rb") as handle:
        pcapng = handle.read(4) == b"\x0a\x0d\x0d\x0a"
        handle.seek(0)
        reader = dpkt.pcapng.Reader(handle) if pcapng else dpkt.pcap.Reader(handle)
        link = links.get(reader.datalink())
        for timestamp, frame in reader:
            try:
                ip = link(frame).data if link else dpkt.ip.IP(frame)
            except (dpkt.NeedData, dpkt.UnpackError):
                continue
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP) or not ip.data.data:
                continue
            tcp = ip.data
            if tcp.dport == port:
                connections.setdefault((ip.src, tcp.sport), []).append((Direction.TO_SERVER, tcp.data, timestamp))
            elif tcp.sport == port:
                connections.setdefault((ip.dst, tcp.dport), []).append((Direction.TO_CLIENT, tcp.data, timestamp))
    return list(connections.values())


def replay(session: Session, chunks: list[tuple[Direction, bytes, float]], one_byte: bool) -> list[Event]:
    """Feed a connection's payloads whole, or one byte per call, and close: the events must not differ."""
    events: list[Event] = []
    for direction, data, timestamp in chunks:
        for piece in [data[i : i + 1] for i in range(len(data))] if one_byte else [data]:
            events += session.feed(piece, direction, timestamp)
    return events + session.close()
