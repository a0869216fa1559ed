"""TLS decoder against tshark 4.0, Zeek's ssl.log baselines and nDPI's classification, through the real pipeline.

Run with ``-s`` to see the per-field agreement tables.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import ssl
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from quaywatch.decode.tls import VERSION_NAMES
from tests.decode.oracles import Agreement, Row, read_log
from tests.decode.tls import synthetic
from tests.decode.tls.common import NDPI, TRACES, ZEEK, Record, analyse, require

TSHARK = "/usr/bin/tshark"
CLIENT_FIELDS = ["server_name", "legacy_version", "cipher_suites", "ja3", "ja3_md5"]
SERVER_FIELDS = ["legacy_version", "cipher_suite", "ja3s", "ja3s_md5"]
CERT_FIELDS = ["serial", "sha256", "validity"]
TSHARK_COLUMNS = [
    "frame.number",
    "tls.handshake.type",
    "tls.handshake.extensions_server_name",
    "tls.handshake.version",
    "tls.handshake.ciphersuite",
    "tls.handshake.ja3_full",
    "tls.handshake.ja3",
    "tls.handshake.ja3s_full",
    "tls.handshake.ja3s",
    "tls.handshake.certificate",
    "x509af.serialNumber",
    "x509af.utcTime",
]


def tshark(capture: Path, port: int) -> list[list[str]]:
    if not Path(TSHARK).exists() or shutil.which(TSHARK) is None:
        pytest.fail("tshark is missing: run `make system-packages` (Debian's tshark 4.0 is the TLS oracle)")
    command = [TSHARK, "-r", str(capture), "-n", "-d", f"tcp.port=={port},tls", "-Y", "tls.handshake.type"]
    command += ["-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=|"]
    for column in TSHARK_COLUMNS:
        command += ["-e", column]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in output.splitlines()]


def _theirs(lines: list[list[str]]) -> tuple[list[Row], list[Row], list[Row]]:
    clients: list[Row] = []
    servers: list[Row] = []
    certificates: list[Row] = []
    for line in lines:
        cell = dict(zip(TSHARK_COLUMNS, line, strict=False))
        types = cell["tls.handshake.type"].split("|")
        versions = iter(cell["tls.handshake.version"].split("|"))
        number = cell["frame.number"]
        for kind in types:
            if kind == "1":
                clients.append(
                    {
                        "key": number,
                        "server_name": cell["tls.handshake.extensions_server_name"] or None,
                        "legacy_version": str(int(next(versions), 16)),
                        "cipher_suites": ",".join(
                            str(int(c, 16)) for c in cell["tls.handshake.ciphersuite"].split("|")
                        ),
                        "ja3": cell["tls.handshake.ja3_full"],
                        "ja3_md5": cell["tls.handshake.ja3"],
                    }
                )
            elif kind == "2":
                servers.append(
                    {
                        "key": number,
                        "legacy_version": str(int(next(versions), 16)),
                        "cipher_suite": str(int(cell["tls.handshake.ciphersuite"], 16)),
                        "ja3s": cell["tls.handshake.ja3s_full"],
                        "ja3s_md5": cell["tls.handshake.ja3s"],
                    }
                )
        ders = [d for d in cell["tls.handshake.certificate"].split("|") if d]
        serials = cell["x509af.serialNumber"].split("|")
        times = [re.sub(r" \(UTC\)$", "", t) for t in cell["x509af.utcTime"].split("|") if t]
        for position, der in enumerate(ders):
            certificates.append(
                {
                    "key": f"{number}/{position}",
                    "serial": serials[position].replace(":", "").lstrip("0") if position < len(serials) else None,
                    "sha256": hashlib.sha256(bytes.fromhex(der.replace(":", ""))).hexdigest(),
                    "validity": ",".join(times[2 * position : 2 * position + 2])
                    if len(times) == 2 * len(ders)
                    else None,
                }
            )
    return clients, servers, certificates


def _ours(tables: dict[str, list[Record]]) -> tuple[list[Row], list[Row], list[Row]]:
    clients = [
        {
            "key": str(r["packet_number"]),
            "server_name": r["server_name"],  # type: ignore[dict-item]
            "legacy_version": str(r["legacy_version"]),
            "cipher_suites": ",".join(map(str, r["cipher_suites"])),  # type: ignore[call-overload]
            "ja3": r["ja3"],  # type: ignore[dict-item]
            "ja3_md5": r["ja3_md5"],  # type: ignore[dict-item]
        }
        for r in tables["tls"]
        if r["event_type"] == "client_hello"
    ]
    servers = [
        {
            "key": str(r["packet_number"]),
            "legacy_version": str(r["legacy_version"]),
            "cipher_suite": str(r["cipher_suite"]),
            "ja3s": r["ja3s"],  # type: ignore[dict-item]
            "ja3s_md5": r["ja3s_md5"],  # type: ignore[dict-item]
        }
        for r in tables["tls"]
        if r["event_type"] == "server_hello"
    ]
    certificates = [
        {
            "key": f"{r['packet_number']}/{r['position']}",
            "serial": str(r["serial"]).lstrip("0"),
            "sha256": r["sha256"],  # type: ignore[dict-item]
            "validity": ",".join(t.strftime("%Y-%m-%d %H:%M:%S") for t in (r["not_before"], r["not_after"])),  # type: ignore[attr-defined]
        }
        for r in tables["tls_certificate"]
    ]
    return clients, servers, certificates


def test_against_tshark(tmp_path: Path) -> None:
    agreements = {
        "client_hello": Agreement(CLIENT_FIELDS),
        "server_hello": Agreement(SERVER_FIELDS),
        "certificate": Agreement(CERT_FIELDS),
    }
    total = 0
    with ThreadPoolExecutor(max_workers=2) as pool:  # tshark's start-up dominates; two cores are shared
        views = dict(zip(TRACES, pool.map(lambda t: tshark(require(t[0]), t[1]), TRACES.values()), strict=True))
    for name, (capture, _port) in TRACES.items():
        ours = _ours(analyse(tmp_path, capture))
        theirs = _theirs(views[name])
        for agreement, mine, other in zip(agreements.values(), ours, theirs, strict=True):
            agreement.score(mine, other, key=lambda row: row["key"])
            total += len(other)
        assert [r["key"] for r in ours[0]] == [r["key"] for r in theirs[0]], name
    for title, agreement in agreements.items():
        print(agreement.report(f"tshark {title}"))
        assert agreement.unmatched_ours == 0 and agreement.unmatched_theirs == 0, title
        for field in agreement.fields:
            assert agreement.ratio(field) >= 0.99, (title, field, agreement.differences)
    assert total >= 10


def _zeek_version(code: object) -> str:
    return str(VERSION_NAMES.get(int(code), "")).replace("TLS 1.", "TLSv1").replace("SSL 3.0", "SSLv3")  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("baseline", "trace"),
    [("rdp-to-ssl", "rdp-to-ssl"), ("rdp-no-cookie-msthash", "rdp-no-cookie-mstshash")],
)
def test_against_zeek_ssl_log(tmp_path: Path, baseline: str, trace: str) -> None:
    log = read_log(ZEEK / f"Baseline/scripts.base.protocols.rdp.{baseline}/ssl.log")
    tables = analyse(tmp_path, TRACES[trace][0])
    hellos = {r["flow_id"]: r for r in tables["tls"] if r["event_type"] == "client_hello"}
    ours: list[Row] = []
    for server in (r for r in tables["tls"] if r["event_type"] == "server_hello"):
        chain = [c for c in tables["tls_certificate"] if c["flow_id"] == server["flow_id"]]
        leaf = chain[0] if chain else {}
        ours.append(
            {
                "client_port": str(server["client_port"]),
                "version": _zeek_version(server["version"]),
                "cipher": server["cipher_suite_name"],  # type: ignore[dict-item]
                "server_name": hellos[server["flow_id"]]["server_name"],  # type: ignore[dict-item]
                "cert_chain_fps": ",".join(str(c["sha256"]) for c in chain),
                "subject": leaf.get("subject"),  # type: ignore[dict-item]
                "issuer": leaf.get("issuer"),  # type: ignore[dict-item]
            }
        )
    theirs = [{**r, "client_port": r["id.orig_p"]} for r in log]
    agreement = Agreement(["version", "cipher", "server_name", "cert_chain_fps", "subject", "issuer"])
    agreement.score(ours, theirs, key=lambda row: row["client_port"])
    print(agreement.report(f"zeek ssl.log {baseline}"))
    assert agreement.unmatched_ours == 0 and agreement.unmatched_theirs == 0
    for field in agreement.fields:
        assert agreement.ratio(field) == 1.0, (field, agreement.differences)


_FLOW = re.compile(r"^\s*\d+\s+TCP\s+(\S+):(\d+) <-> (\S+):(\d+) \[proto: [\d.]+/([^\]]+)\]")


def test_ndpi_tls_flows_are_claimed_with_the_same_fingerprints(tmp_path: Path) -> None:
    """Every flow nDPI classifies as TLS in the nDPI samples is claimed, with nDPI's JA3C, JA3S and JA4.

    One difference is expected: nDPI writes JA4's SNI flag as ``d`` for the dns2tcp_tunnel ClientHello that has no
    server_name extension (nDPI itself flags it "Missing SNI TLS Extn"). FoxIO's JA4 specification (JA4.md, "SNI"):
    "If the SNI extension (0x0000) exists, then the destination of the connection is a domain, or 'd' ... If the SNI
    does not exist, then the destination is an IP address, or 'i'". We follow the specification; the two hash parts
    agree with nDPI's.
    """
    claimed = expected = 0
    compared = 0
    for out in sorted(require(NDPI / "result").glob("*.out")):
        flows = []
        for line in out.read_text(errors="replace").splitlines():
            match = _FLOW.match(line)
            if match and match.group(5).split(".")[0] == "TLS":
                flows.append((int(match.group(2)), int(match.group(4)), line))
        if not flows:
            continue
        tables = analyse(tmp_path, NDPI / "pcap" / out.name.removesuffix(".out"))
        for client_port, server_port, line in flows:
            expected += 1
            rows = [r for r in tables["tls"] if {r["client_port"], r["server_port"]} == {client_port, server_port}]
            if not rows:
                continue
            claimed += 1
            hello = next(r for r in rows if r["event_type"] == "client_hello")
            server = next(r for r in rows if r["event_type"] == "server_hello")
            assert f"[JA3C: {hello['ja3_md5']}]" in line
            assert f"[JA3S: {server['ja3s_md5']}]" in line
            theirs = re.search(r"\[JA4: ([^\]]+)\]", line)
            assert theirs is not None
            ja4 = str(hello["ja4"])
            sni_flag = "d" if hello["server_name"] is not None else "i"
            assert ja4[3] == sni_flag and theirs.group(1)[:3] + sni_flag + theirs.group(1)[4:] == ja4
            compared += 1
    print(f"nDPI TLS flows claimed: {claimed}/{expected}, fingerprints compared {compared}")
    assert expected >= 1 and claimed / expected >= 0.95


def test_openssl_handshakes_against_tshark_and_the_issued_chain(tmp_path: Path) -> None:
    """TLS 1.2 (SNI, ALPN, a 20 kB three-certificate chain spanning records) and TLS 1.3 (no SNI, odd port) made by
    OpenSSL in-process: tshark on every hello field, and the certificates against what was issued."""
    chain = synthetic.make_chain(tmp_path)
    capture = tmp_path / "openssl.pcap"
    tls12 = synthetic.handshake(chain, ssl.TLSVersion.TLSv1_2, "crane4.terminal.example", ["h2", "http/1.1"])
    tls13 = synthetic.handshake(chain, ssl.TLSVersion.TLSv1_3, None, [])
    synthetic.write_pcap(capture, [(50001, 8443, tls12), (50002, 40443, tls13)])
    tables = analyse(tmp_path, capture)
    ours = _ours(tables)
    theirs = _theirs(tshark(capture, 40443))  # tshark knows 8443 itself
    for title, fields, mine, other in zip(
        ("client_hello", "server_hello", "certificate"), (CLIENT_FIELDS, SERVER_FIELDS, CERT_FIELDS), ours, theirs,
        strict=True,
    ):  # fmt: skip
        agreement = Agreement(fields)
        agreement.score(mine, other, key=lambda row: row["key"])
        print(agreement.report(f"tshark openssl {title}"))
        assert agreement.unmatched_ours == 0 and agreement.unmatched_theirs == 0, title
        assert all(agreement.ratio(f) == 1.0 for f in fields), agreement.differences
    hellos = [r for r in tables["tls"] if r["event_type"] == "client_hello"]
    servers = [r for r in tables["tls"] if r["event_type"] == "server_hello"]
    assert [h["server_name"] for h in hellos] == ["crane4.terminal.example", None]
    assert hellos[0]["alpn"] == ["h2", "http/1.1"] and servers[0]["alpn"] == ["h2"]
    assert str(hellos[0]["ja4"]).startswith("t12d") and str(hellos[0]["ja4"])[8:10] == "h2"
    assert str(hellos[1]["ja4"]).startswith("t13i") and str(servers[1]["ja4s"]).startswith("t13")
    assert [s["version_name"] for s in servers] == ["TLS 1.2", "TLS 1.3"]
    issued = chain.certificates
    rows = tables["tls_certificate"]
    assert len(rows) == 3  # TLS 1.3 sends its chain encrypted
    for row, certificate in zip(rows, issued, strict=True):
        der = certificate.public_bytes(serialization.Encoding.DER)
        assert row["sha256"] == hashlib.sha256(der).hexdigest() and row["length"] == len(der)
        assert row["serial"] == format(certificate.serial_number, "x")
        assert row["subject"] == certificate.subject.rfc4514_string()
        assert (row["not_before"], row["not_after"]) == (synthetic.NOT_BEFORE, synthetic.NOT_AFTER)
        assert row["signature_algorithm"] == "ecdsa-with-SHA256" and row["public_key_algorithm"] == "ec"
    assert [r["self_signed"] for r in rows] == [False, False, True]
    assert [r["is_ca"] for r in rows] == [False, True, True]
    assert [(r["public_key_size"], r["public_key_curve"]) for r in rows] == [
        (256, "secp256r1"),
        (256, "secp256r1"),
        (384, "secp384r1"),
    ]
    assert rows[0]["san_dns"] == synthetic.SAN_NAMES and rows[0]["san_ip"] == synthetic.SAN_IPS
    assert not [a for a in tables["anomaly"] if a["protocol"] == "tls"]
