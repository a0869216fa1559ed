"""DNS against tshark 4.0 on every research capture with DNS, field by field, and against nDPI's flow
classification. Run with ``-s`` to see the agreement tables.

No Zeek ``dns.log`` baseline and no suricata-verify DNS case is in the research data (grep of
zeek-btest/testing/btest/Baseline and suricata-verify/tests), so tshark is the field oracle.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.decode.dns.common import NDPI, Record, analyse, analyse_many, present, require_tshark
from tests.decode.oracles import Agreement, Row

pytestmark = pytest.mark.oracle

SEPARATOR = "\x1f"
#: GTP-U is not decapsulated by quaywatch (README, network layers), so DNS inside a GTP tunnel (gtp7_ipv6.pcap) is
#: not ours to decode; tshark is told to leave it out.
FILTER = "(dns || mdns || llmnr) && !gtp"
TSHARK_FIELDS = [
    "frame.number", "dns.id", "dns.flags.response", "dns.flags.opcode", "dns.flags.rcode", "dns.count.queries",
    "dns.count.answers", "dns.count.auth_rr", "dns.count.add_rr", "dns.qry.name", "dns.qry.type", "dns.resp.ttl",
    "dns.a", "dns.aaaa", "dns.cname", "dns.flags.authoritative", "dns.flags.truncated", "dns.flags.recdesired",
    "dns.flags.recavail", "dns.flags.authenticated", "dns.flags.checkdisable", "dns.qry.class", "dns.resp.type",
    "dns.resp.name", "dns.rr.udp_payload_size", "dns.resp.z.do", "dns.ptr.domain_name", "dns.srv.port",
]  # fmt: skip
FLAGS = {"aa": "authoritative", "tc": "truncated", "rd": "recursion_desired", "ra": "recursion_available",
         "ad": "authentic_data", "cd": "checking_disabled"}  # fmt: skip
TSHARK_FLAGS = {"aa": "authoritative", "tc": "truncated", "rd": "recdesired", "ra": "recavail",
                "ad": "authenticated", "cd": "checkdisable"}  # fmt: skip
COMPARED = ["id", "response", "opcode", "rcode", *FLAGS, "qd", "an", "ns", "ar", "qry_name", "qry_type", "qry_class",
            "resp_type", "resp_name", "ttl", "a", "aaaa", "cname", "ptr", "srv_port", "edns_udp_size",
            "edns_do"]  # fmt: skip


def tshark_rows(capture: Path) -> list[Row]:
    """One row per frame with DNS (also mDNS and LLMNR, which tshark dissects with the same dns.* fields).

    ``capture`` may be several captures concatenated by mergecap; frame numbers then run on across them."""
    arguments = ["tshark", "-n", "-r", str(capture), "-Y", FILTER, "-T", "fields", "-E", "occurrence=a"]
    arguments += ["-E", f"aggregator={SEPARATOR}"]
    for name in TSHARK_FIELDS:
        arguments += ["-e", name]
    output = subprocess.run(arguments, capture_output=True, text=True, check=False, errors="backslashreplace").stdout
    rows: list[Row] = []
    for line in output.splitlines():
        values = dict(zip(TSHARK_FIELDS, line.split("\t"), strict=False))
        if SEPARATOR in values.get("dns.id", ""):
            continue  # several messages in one frame: not compared per frame
        lists = {name: [v for v in values.get(name, "").split(SEPARATOR) if v] for name in TSHARK_FIELDS}
        # Representation only: tshark writes the root name '<Root>', we write '.' (docs/decoders/dns.md, Names).
        for name in ("dns.qry.name", "dns.resp.name"):
            lists[name] = ["." if v == "<Root>" else v for v in lists[name]]
        rows.append(
            {
                "packet": values["frame.number"],
                "id": str(int(values["dns.id"], 16)) if values.get("dns.id") else None,
                "response": values.get("dns.flags.response") or None,
                "opcode": values.get("dns.flags.opcode") or None,
                "rcode": values.get("dns.flags.rcode") or None,
                "qd": values.get("dns.count.queries") or None,
                "an": values.get("dns.count.answers") or None,
                "ns": values.get("dns.count.auth_rr") or None,
                "ar": values.get("dns.count.add_rr") or None,
                "qry_name": lists["dns.qry.name"][0] if lists["dns.qry.name"] else None,
                "qry_type": lists["dns.qry.type"][0] if lists["dns.qry.type"] else None,
                "ttl": ",".join(lists["dns.resp.ttl"]),
                "a": ",".join(lists["dns.a"]),
                "aaaa": ",".join(lists["dns.aaaa"]),
                "cname": ",".join(lists["dns.cname"]),
                **{flag: values.get(f"dns.flags.{name}") or None for flag, name in TSHARK_FLAGS.items()},
                "qry_class": str(int(lists["dns.qry.class"][0], 16)) if lists["dns.qry.class"] else None,
                "resp_type": ",".join(lists["dns.resp.type"]),
                "resp_name": ",".join(lists["dns.resp.name"]),
                "ptr": ",".join(lists["dns.ptr.domain_name"]),
                "srv_port": ",".join(lists["dns.srv.port"]),
                "edns_udp_size": lists["dns.rr.udp_payload_size"][0] if lists["dns.rr.udp_payload_size"] else None,
                "edns_do": lists["dns.resp.z.do"][0] if lists["dns.resp.z.do"] else None,
            }
        )
    return rows


def _ours(row: Record, theirs: Row | None) -> Row:
    """Our row in tshark's terms. tshark's record lists run over all three sections (answers first, OPT has no
    TTL); ours are the answer section, so their lists are cut to the length of ours before comparing."""
    types = list(row["answer_types"] or [])  # type: ignore[call-overload]
    data = list(row["answer_data"] or [])  # type: ignore[call-overload]
    names = list(row["answer_names"] or [])  # type: ignore[call-overload]
    ttls = [str(t) for t, k in zip(row["answer_ttls"] or [], types, strict=True) if k != 41]  # type: ignore[call-overload]

    def of(kind: int) -> list[str]:
        return [d for d, k in zip(data, types, strict=True) if k == kind]

    def prefix(values: list[str], name: str) -> str | None:
        if theirs is None or theirs.get(name) is None:
            return ",".join(values)
        their = [v for v in str(theirs[name]).split(",") if v]
        if len(their) < len(values):
            return ",".join(values)
        their = their[: len(values)]
        for index, value in enumerate(their):
            # A name that a chain of compression pointers makes longer than 255 octets (malformed_dns.pcap, RFC 1035
            # section 2.3.4): tshark prints '<Name too long>', we keep the RDATA in hex and report name_too_long.
            # Explained: their placeholder is written as our value.
            if value == "<Name too long>" and "name_too_long" in str(row["malformed"]):
                EXPLAINED.append(f"packet {row['packet_number']}: {name} '<Name too long>' vs hex {values[index]}")
                their[index] = values[index]
        theirs[name] = ",".join(their)
        return ",".join(values)

    rcode = row["rcode"]
    return {
        "packet": str(row["packet_number"]),
        "id": str(row["transaction_id"]),
        "response": "1" if row["is_response"] else "0",
        "opcode": str(row["opcode"]),
        # tshark's dns.flags.rcode is the header's 4 bits; ours is extended by EDNS (RFC 6891 section 6.1.3).
        "rcode": str(int(rcode) & 0xF) if rcode is not None else None,  # type: ignore[call-overload]
        "qd": str(row["qd_count"]),
        "an": str(row["an_count"]),
        "ns": str(row["ns_count"]),
        "ar": str(row["ar_count"]),
        "qry_name": row["query_name"],  # type: ignore[dict-item]
        "qry_type": None if row["query_type"] is None else str(row["query_type"]),
        "ttl": prefix(ttls, "ttl"),
        "a": prefix(of(1), "a"),
        "aaaa": prefix(of(28), "aaaa"),
        "cname": prefix(of(5), "cname"),
        **{flag: "1" if row[name] else "0" for flag, name in FLAGS.items()},
        # tshark splits an mDNS QCLASS into dns.qry.class (low 15 bits) and dns.qry.qu (RFC 6762 section 5.4).
        "qry_class": None if row["query_class"] is None else str(int(row["query_class"]) & 0x7FFF),  # type: ignore[call-overload]
        "resp_type": prefix([str(t) for t in types], "resp_type"),
        # tshark 4.0 writes an SRV owner as dns.srv.service/proto/name, not dns.resp.name: SRV owners are left out.
        "resp_name": prefix([n for n, k in zip(names, types, strict=True) if k != 33], "resp_name"),
        "ptr": prefix(of(12), "ptr"),
        "srv_port": prefix([d.split(" ")[2] for d in of(33) if d.count(" ") == 3], "srv_port"),
        "edns_udp_size": None if row["edns_udp_size"] is None else str(row["edns_udp_size"]),
        "edns_do": None if row["edns_do"] is None else ("1" if row["edns_do"] else "0"),
    }


def test_fields_agree_with_tshark(tmp_path: Path) -> None:
    require_tshark()
    captures = present()
    # tshark starts once, on the captures concatenated (its start-up costs more than dissecting them all).
    merged = tmp_path / "merged.pcapng"
    subprocess.run(["mergecap", "-a", "-F", "pcapng", "-w", str(merged), *map(str, captures)], check=True)
    with ThreadPoolExecutor(1) as pool:  # tshark runs while we analyse
        running = pool.submit(tshark_rows, merged)
        decoded, packets = analyse_many(tmp_path, captures)
        every = running.result()
    agreement = Agreement(COMPARED)
    first = 0
    for capture in captures:
        ours = [r for r in decoded[capture] if r["event_type"] != "unanswered"]
        last = first + packets[capture]
        theirs = [
            {**r, "packet": str(int(str(r["packet"])) - first)} for r in every if first < int(str(r["packet"])) <= last
        ]
        first = last
        by_packet = {str(r["packet"]): r for r in theirs}
        mine = [_ours(r, by_packet.get(str(r["packet_number"]))) for r in ours]
        agreement.score(mine, theirs, key=lambda r: r["packet"])
    print()
    print(agreement.report(f"dns vs tshark, {len(captures)} captures"))
    answers = ("resp_type", "resp_name", "ttl", "a", "aaaa", "cname", "ptr", "srv_port")
    filled = {name: sum(1 for r in every if r.get(name)) for name in answers}
    print("frames where tshark's value is not empty:", filled)
    print("explained:", *EXPLAINED, sep="\n  ")
    for name in COMPARED:
        assert agreement.ratio(name) >= 0.99, agreement.report("dns vs tshark")
    assert agreement.unmatched_ours == 0 and agreement.unmatched_theirs == 0, agreement.report("dns vs tshark")


EXPLAINED: list[str] = []
_FLOW = re.compile(r"^\s*\d+\s+(UDP|TCP) (\S+):(\d+) <-> (\S+):(\d+) .*\[proto: [\d.]+/DNS")


def test_every_flow_ndpi_calls_dns_is_claimed(tmp_path: Path) -> None:
    """nDPI's per-flow classification (result/*.out): every flow it calls DNS (proto 5, DNS.<app>) is ours."""
    results = sorted((NDPI / "result").glob("*.out")) if (NDPI / "result").exists() else []
    if not results:
        pytest.skip(f"research data missing: {NDPI / 'result'}")
    expected = claimed = 0
    missed: list[str] = []
    for result in results:
        flows = [m.groups() for line in result.read_text(errors="replace").splitlines() if (m := _FLOW.match(line))]
        capture = NDPI / "pcap" / result.name.removesuffix(".out")
        if not flows or not capture.exists():
            continue
        ours = analyse(tmp_path, capture)["flows"]
        ends = {
            frozenset({(f["client_ip"], str(f["client_port"])), (f["server_ip"], str(f["server_port"]))}): f
            for f in ours
        }
        for transport, a, a_port, b, b_port in flows:
            expected += 1
            flow = ends.get(frozenset({(a, a_port), (b, b_port)}))
            if flow is not None and flow["application"] == "dns":
                claimed += 1
            else:
                missed.append(f"{capture.name} {transport} {a}:{a_port} <-> {b}:{b_port}")
    print(f"\nnDPI DNS flows claimed: {claimed}/{expected}; missed: {missed}")
    assert expected and claimed >= 0.95 * expected, missed


def test_tshark_is_installed() -> None:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run `make system-packages`")
