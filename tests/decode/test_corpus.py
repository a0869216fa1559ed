"""Every research capture through every decoder: no decoder fault, and message counts against tshark."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quaywatch.analysis import Analyzer
from quaywatch.decode.registry import all_decoders
from quaywatch.ingest.capture import detect_format
from quaywatch.store.database import Store
from tests.decode.oracles import RESEARCH

pytestmark = pytest.mark.oracle

#: our table and message filter, tshark display filter and the field with one value per PDU.
PROTOCOLS = {
    "modbus": ("modbus", "event_type IN ('request', 'response', 'exception')", "mbtcp", "mbtcp.trans_id"),
    "s7comm": ("s7comm", "true", "s7comm", "s7comm.header.rosctr"),
}
CORPORA = ("iti-ics-security-tools", "automayt-ICS-pcap", "icsnpp-modbus", "icsnpp-s7comm", "zeek-btest")


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


def tshark_count(path: Path, display_filter: str, field: str) -> int:
    result = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-E", "occurrence=a", "-e", field],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return sum(len(line.split(",")) for line in result.stdout.splitlines() if line)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[Path, str]]:
    store = Store(tmp_path_factory.mktemp("corpus") / "corpus.duckdb")
    analyzer = Analyzer(store, decoders=all_decoders())
    identities = {path: analyzer.analyze(path).capture_id for path in captures()}
    return store, identities


def test_no_decoder_fault_on_any_capture(analysed: tuple[Store, dict[Path, str]]) -> None:
    store, identities = analysed
    faults = store.connection.execute(
        "SELECT protocol, detail, count(*) FROM anomaly WHERE code = 'decoder_exception' GROUP BY ALL"
    ).fetchall()
    counts = Counter(dict(store.connection.execute("SELECT application, count(*) FROM flows GROUP BY 1").fetchall()))
    print(f"\n{len(identities)} captures; flows by decoder: {dict(counts)}")
    assert not faults, faults
    assert counts["modbus"] > 50 and counts["s7comm"] > 20


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_message_counts_agree_with_tshark(analysed: tuple[Store, dict[Path, str]], protocol: str) -> None:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `make system-packages`")
    store, identities = analysed
    table, condition, display_filter, field = PROTOCOLS[protocol]
    ours = dict(
        store.connection.execute(f"SELECT capture_id, count(*) FROM {table} WHERE {condition} GROUP BY 1").fetchall()
    )
    paths = [p for p in identities if ours.get(identities[p])]
    with ThreadPoolExecutor(max_workers=2) as pool:
        theirs = dict(zip(paths, pool.map(lambda p: tshark_count(p, display_filter, field), paths), strict=True))
    equal = [p for p in paths if ours[identities[p]] == theirs[p]]
    print(f"\n{protocol}: {len(paths)} captures with messages, {len(equal)} with the same count as tshark")
    for path in paths:
        if ours[identities[path]] != theirs[path]:
            print(f"  {path.relative_to(RESEARCH)}: quaywatch {ours[identities[path]]}, tshark {theirs[path]}")
    total_ours = sum(ours[identities[p]] for p in paths)
    total_theirs = sum(theirs.values())
    print(f"  messages: quaywatch {total_ours}, tshark {total_theirs}")
    # Residual per-file differences (a few messages in fuzzed or cut captures) are not yet explained
    # message by message; they are listed above and in the issue notes. Bound them meanwhile.
    close = [p for p in paths if abs(ours[identities[p]] - theirs[p]) <= max(2, 0.01 * theirs[p])]
    assert len(close) >= 0.9 * len(paths)
    assert abs(total_ours - total_theirs) <= 0.005 * total_theirs
